"""Offline stand-ins for the generation models: randomly initialised tiny Stable Diffusion and LLaVA.

Built from config objects only (no download, ``HF_HUB_OFFLINE=1`` is fine): a toy BPE tokenizer, a 2-layer CLIP
text encoder, a 2-block UNet and VAE with DPM-Solver++ (32 px images -> 16 px latents), and a LLaVA with a word-level
tokenizer, an 8 px CLIP vision tower and a 2-layer Llama.  Their images and captions are meaningless; they exercise
the real diffusers / transformers code paths in tests and ``generate.py --tiny-models`` smoke runs.
"""
from __future__ import annotations

import json
import os.path as osp
import re
from typing import Iterable

import torch


def tiny_img2img_pipeline(words: Iterable[str] = (), seed: int = 0):
    """A randomly initialised, offline Stable Diffusion img2img pipeline for tests and smoke runs."""
    import tempfile

    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionImg2ImgPipeline, \
        UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    specials = ["<|startoftext|>", "<|endoftext|>", "<unk>"]
    pieces = sorted({w.lower() + "</w>" for w in ["a", "photo", "of", *words] if w.isalpha()})
    vocab = {token: i for i, token in enumerate(specials + pieces)}
    with tempfile.TemporaryDirectory() as folder:
        with open(osp.join(folder, "vocab.json"), "w") as f:
            json.dump(vocab, f)
        with open(osp.join(folder, "merges.txt"), "w") as f:
            f.write("#version: 0.2\n")
        tokenizer = CLIPTokenizer.from_pretrained(folder, unk_token="<unk>", model_max_length=77)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"], max_position_embeddings=77))
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[32, 64],
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    scheduler = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                            algorithm_type="dpmsolver++", steps_offset=1)
    return StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                          scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)


TINY_CHAT_TEMPLATE = (  # the llava-1.5-hf chat format: "USER: <image>\n<text> ASSISTANT:"
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}"
    "{% endif %}{% for item in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}"
    "{% endfor %}{% for item in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ item['text'] + ' ' }}{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")


def tiny_llava(words: Iterable[str] = (), seed: int = 0):
    """A randomly initialised, offline LLaVA model and processor for tests and smoke runs."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, \
        LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast

    base = ["<unk>", "<s>", "</s>", "<pad>", "<image>", "USER:", "ASSISTANT:", "a", "photo", "of", "the"]
    extra = sorted({w for text in words for w in re.findall(r"\w+", text)} - set(base))
    vocab = {token: i for i, token in enumerate(base + extra)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>", pad_token="<pad>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_size, patch = 8, 2
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=image_size, patch_size=patch, num_channels=3, hidden_size=32,
                                       projection_dim=32, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=37),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=4, intermediate_size=37, max_position_embeddings=256,
                                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), projector_hidden_act="gelu",
        vision_feature_select_strategy="default", vision_feature_layer=-1,
        image_seq_length=(image_size // patch) ** 2)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=TINY_CHAT_TEMPLATE)
    return model, processor

