"""DPT (Discrete Prompt Tuning): the trainer (``trainer.py``), its model (``model.py``) and the discrete token
selection with its straight-through estimator (``discrete_prompt.py``).  Importing the package registers ``DPT``."""
from .discrete_prompt import DiscretePrompt, RoundTripOracle, select_tokens  # noqa: F401
from .model import DPTCLIP, DPTPromptLearner, prompt_record, template_parts  # noqa: F401
from .trainer import DPT  # noqa: F401
