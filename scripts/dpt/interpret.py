"""Print the learned discrete prompt of a DPT checkpoint (the selection DPT's trainer makes from its scores).

    python scripts/dpt/interpret.py output/base2new/train_base/dtd/shots_16/DPT/vit_b16_c4_ep8_batch4/seed1
    python scripts/dpt/interpret.py RUN/prompt_learner/model.pth.tar-8 --select-mode paper --top 5

The argument is a run folder, its ``prompt_learner`` folder (the checkpoint named in its ``checkpoint`` file is
used) or a checkpoint file.  Selection settings and the template come from the run's ``log.txt`` config dump when
it is there, else from the DPT defaults; flags override both.  The selection is a pure function of the scores, so
this is the prompt the run used at that epoch.
"""
from __future__ import annotations

import argparse
import logging
import os.path as osp
import sys

import yaml

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.append(REPO_ROOT)

from dassl.utils.safe_pickle import torch_load_weights  # noqa: E402
from vlprompt.parse_test_res import read_run_config  # noqa: E402
from vlprompt.trainers.dpt.discrete_prompt import SELECT_MODES, default_oracle, select_tokens  # noqa: E402
from vlprompt.trainers.config import get_cfg  # noqa: E402
from vlprompt.trainers.dpt.model import TEMPLATES, prompt_record, template_parts  # noqa: E402

logger = logging.getLogger("interpret")
SCORES_KEY = "emb_toggler.scores"
_KEYS = ("N_CTX", "CTX_INIT", "TEMPLATE", "SELECT_MODE", "FILTER_SPECIAL", "ROUNDTRIP", "MAX_SELECT_ITERS", "TOPK")


def resolve_checkpoint(path: str) -> str:
    """Checkpoint file for a run folder, a ``prompt_learner`` folder or a file."""
    if osp.isfile(path):
        return path
    for folder in (osp.join(path, "prompt_learner"), path):
        pointer = osp.join(folder, "checkpoint")
        if osp.isfile(pointer):
            with open(pointer) as f:
                return osp.join(folder, f.readline().strip())
    raise FileNotFoundError(f"{path}: no checkpoint file and no prompt_learner/checkpoint pointer; pass a DPT run "
                            "folder or a prompt_learner/model.pth.tar-<epoch> file")


def run_settings(checkpoint: str) -> dict:
    """DPT settings of the run that wrote ``checkpoint`` (its log.txt), falling back to the defaults."""
    node = get_cfg().TRAINER.DPT
    settings = {key: node[key] for key in _KEYS}
    log_path = osp.join(osp.dirname(osp.dirname(checkpoint)), "log.txt")
    if osp.isfile(log_path):
        logged = read_run_config(log_path)
        for key, default in settings.items():
            value = logged.get(f"TRAINER.DPT.{key}")
            if value is not None:
                parsed = yaml.safe_load(value) if value else ""  # yacs dumps YAML scalars ('' for "")
                settings[key] = type(default)("" if parsed is None else parsed)
    return settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="DPT run folder, its prompt_learner folder, or a checkpoint file")
    parser.add_argument("--select-mode", choices=SELECT_MODES, help="override TRAINER.DPT.SELECT_MODE")
    parser.add_argument("--no-filter-special", action="store_true", help="TRAINER.DPT.FILTER_SPECIAL False")
    parser.add_argument("--no-roundtrip", action="store_true", help="TRAINER.DPT.ROUNDTRIP False")
    parser.add_argument("--ctx-init", help="override TRAINER.DPT.CTX_INIT (the template the tokens sit in)")
    parser.add_argument("--template", choices=TEMPLATES, help="override TRAINER.DPT.TEMPLATE")
    parser.add_argument("--top", type=int, default=3, help="runner-up tokens listed per position")
    return parser


def main(argv=None) -> int:
    handler = logging.StreamHandler(sys.stdout)  # this command's output: plain lines on stdout
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        return interpret(build_parser().parse_args(argv))
    except (FileNotFoundError, KeyError, ValueError) as err:  # bad input: one line, as train.py does
        sys.stderr.write(f"error: {err.args[0] if err.args else err}\n")
        return 1
    finally:
        logger.removeHandler(handler)


def interpret(args: argparse.Namespace) -> int:
    checkpoint_path = resolve_checkpoint(args.path)
    # Tensors and plain data only (weights_only=True): a checkpoint from elsewhere cannot run code here.
    checkpoint = torch_load_weights(checkpoint_path, map_location="cpu")
    if not isinstance(checkpoint, dict) or SCORES_KEY not in checkpoint.get("state_dict", {}):
        raise KeyError(f"{checkpoint_path} has no {SCORES_KEY}; is it a DPT prompt_learner checkpoint?")
    scores = checkpoint["state_dict"][SCORES_KEY].float()  # (n_ctx, V)
    settings = run_settings(checkpoint_path)
    if args.select_mode:
        settings["SELECT_MODE"] = args.select_mode
    settings["FILTER_SPECIAL"] &= not args.no_filter_special
    settings["ROUNDTRIP"] &= not args.no_roundtrip
    settings["CTX_INIT"] = settings["CTX_INIT"] if args.ctx_init is None else args.ctx_init
    settings["TEMPLATE"] = args.template or settings["TEMPLATE"]
    oracle = default_oracle()
    selection = select_tokens(scores, oracle, settings["SELECT_MODE"], settings["FILTER_SPECIAL"],
                              settings["ROUNDTRIP"], settings["MAX_SELECT_ITERS"], settings["TOPK"])
    _, tail_ids = template_parts(settings["CTX_INIT"], scores.shape[0], settings["TEMPLATE"])
    record = prompt_record(selection.ids.tolist(), tail_ids, oracle)
    logger.info(f"checkpoint: {checkpoint_path} (epoch {checkpoint.get('epoch')})")
    logger.info(f"selection: {settings['SELECT_MODE']}, filter_special={settings['FILTER_SPECIAL']}, "
                f"roundtrip={settings['ROUNDTRIP']} ({selection.iterations} iterations, fallback={selection.fallback})")
    logger.info(f'prompt: "{record["prompt"]}"')
    logger.info(f'template: "{record["template"]}"')
    logger.info(f"ids: {record['ids']}")
    ranked = scores.topk(args.top + 1, dim=1)
    for i, token in enumerate(record["ids"]):
        others = [f"{oracle.tokenizer.decoder[int(t)]!r} {float(s):.4f}"
                  for s, t in zip(ranked.values[i], ranked.indices[i]) if int(t) != token][:args.top]
        logger.info(f"position {i + 1}: {oracle.tokenizer.decoder[token]!r} (id {token}, score "
                    f"{float(scores[i, token]):.4f}); top others: {', '.join(others)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
