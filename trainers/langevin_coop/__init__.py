"""LangevinCoOp (Walter-pixel/COOP_Langevin_Public@7fe769c): SGLD sampling of CoOp prompts and a hard-vote ensemble.

- ``trainer``: the ``LangevinCoOp`` trainer and its ``TRAINER.LANGEVINCOOP`` config keys.
- ``sgld``: the SGLD optimizer (noise modes, seeded noise generator).
- ``sample_bank``: the FIFO bank of prompt samples, in memory and on disk.
- ``votes``: hard (majority, lowest-index tie-break) and soft votes.
- ``recipe``: lr per epoch, logit-adjustment prior, the reference's CIFAR augmentation and fp16 rounding.
- ``metrics``: many/medium/few accuracies, the last-test-batch slice, TensorBoard tag styles.
"""
from .metrics import OUR_TAGS, REFERENCE_TAGS, group_accuracies, last_batch_size  # noqa: F401
from .recipe import log_prior, lr_at_epoch, reference_transforms, round_text_tower_to_fp16  # noqa: F401
from .sample_bank import SampleBank  # noqa: F401
from .sgld import NOISE_MODES, SGLD  # noqa: F401
from .trainer import LangevinCoOp  # noqa: F401
from .votes import VoteAccumulator, hard_vote, soft_vote  # noqa: F401
