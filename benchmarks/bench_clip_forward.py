"""CLIP forward with ViT-B/16-sized random weights: ours vs open_clip, and the prompt text encoder
cropped at the last EOT vs all 77 positions (exact under causal attention, and cheaper).

    python benchmarks/bench_clip_forward.py [--device cuda] [--repeats 5] [--small]
"""
from __future__ import annotations

import torch

from common import Report, max_abs_diff, parser, time_fn

VIT_B16 = dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
               context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12)
SMALL = dict(embed_dim=64, image_resolution=32, vision_layers=2, vision_width=128, vision_patch_size=8,
             context_length=77, vocab_size=49408, transformer_width=128, transformer_heads=2, transformer_layers=2)


def build_models(config, device):
    import open_clip

    from vlprompt.clip.model import CLIP

    torch.manual_seed(0)
    ours = CLIP(**config).float().eval()
    # open_clip's OpenAI loader rounds weights to fp16: pre-round so both hold identical fp32 weights.
    state_dict = {k: (v.half().float() if v.is_floating_point() else v) for k, v in ours.state_dict().items()}
    ours.load_state_dict(state_dict)
    oracle = open_clip.model.build_model_from_openai_state_dict({k: v.clone() for k, v in state_dict.items()})
    oracle = oracle.float().eval()
    return ours.to(device), oracle.to(device)


def main() -> None:
    args = parser(__doc__).parse_args()
    config = SMALL if args.small else VIT_B16
    device = args.device
    report = Report("CLIP forward (ViT-B/16 sizes)" if not args.small else "CLIP forward (tiny)", device)
    ours, oracle = build_models(config, device)
    torch.backends.mha.set_fastpath_enabled(False)  # open_clip's MHA fast path differs by ~1e-6

    n_img = 8 if args.small else 32
    images = torch.randn(n_img, 3, config["image_resolution"], config["image_resolution"], device=device)
    with torch.no_grad():
        ref_t = time_fn(lambda: oracle.encode_image(images), device, args.repeats, args.warmup)
        our_t = time_fn(lambda: ours.encode_image(images), device, args.repeats, args.warmup)
        diff = max_abs_diff(oracle.encode_image(images), ours.encode_image(images))
    report.add(f"encode_image batch {n_img} (open_clip vs ours)", ref_t, our_t, diff)

    from vlprompt.clip import tokenize
    from vlprompt.trainers.common.text_encoder import TextEncoder

    n_cls = 10 if args.small else 100
    prompts = [" ".join(["X"] * 16) + f" class number {i}." for i in range(n_cls)]
    tokens = tokenize(prompts).to(device)
    with torch.no_grad():
        ref_t = time_fn(lambda: oracle.encode_text(tokens), device, args.repeats, args.warmup)
        our_t = time_fn(lambda: ours.encode_text(tokens), device, args.repeats, args.warmup)
        diff = max_abs_diff(oracle.encode_text(tokens), ours.encode_text(tokens))
    report.add(f"encode_text {n_cls} prompts (open_clip vs ours)", ref_t, our_t, diff)

    full = TextEncoder(ours, truncate_at_eot=False)
    cropped = TextEncoder(ours, truncate_at_eot=True)
    with torch.no_grad():
        embeddings = ours.token_embedding(tokens)
        ref_t = time_fn(lambda: full(embeddings, tokens), device, args.repeats, args.warmup)
        our_t = time_fn(lambda: cropped(embeddings, tokens), device, args.repeats, args.warmup)
        diff = max_abs_diff(full(embeddings, tokens), cropped(embeddings, tokens))
    eot = int(tokens.argmax(-1).max()) + 1
    report.add(f"prompt text encoder, {n_cls} prompts × 16 ctx (77 positions vs {eot})", ref_t, our_t, diff)
    report.save(args.json)


if __name__ == "__main__":
    main()
