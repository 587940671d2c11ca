"""LMPT (prompt tuning with class-specific embedding loss): the trainer (``trainer.py``), its model
(``model.py``) and the multi-label losses it trains with (``losses.py``).  Importing the package registers
``LMPT``."""
from .losses import (ClassSpecificEmbeddingLoss, DistributionBalancedLoss, asymmetric_loss, bce_loss,  # noqa: F401
                     focal_loss)
from .model import LMPTCLIP, tokenize_captions  # noqa: F401
from .trainer import LMPT  # noqa: F401
