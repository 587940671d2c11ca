"""MaPLe and its baselines IVLP and VPT (deep prompts in CLIP's towers), with the pieces they share.

- ``prompts.py``: ``PromptSet`` and the deep prompt learners (``ClassPromptLearner``, ``IVLPPromptLearner``,
  ``VisionPromptLearner``); ``model.py``: ``DeepPromptCLIP``; ``trainer.py``: ``DeepPromptTrainer`` and the
  reference-checkpoint conversion; ``maple.py``, ``ivlp.py``, ``vpt.py``: the three registered trainers.
The tower-side convention lives in ``clip/prompting.py``.  Importing the package registers MaPLe, IVLP and VPT.
"""
from .ivlp import IVLP  # noqa: F401
from .maple import MaPLe, MaPLePromptLearner, couple  # noqa: F401
from .model import DeepPromptCLIP  # noqa: F401
from .prompts import (ClassPromptLearner, IVLPPromptLearner, PromptSet, VisionPromptLearner,  # noqa: F401
                      layer_prompts, prompt_list, template_context)
from .trainer import DeepPromptTrainer, from_reference_layout, is_reference_layout  # noqa: F401
from .vpt import VPT  # noqa: F401
