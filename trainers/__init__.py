"""Every method registers itself in ``TRAINER_REGISTRY`` when this package is imported."""
from .common import feature_cache  # noqa: F401  (registers TEST.FEATURE_CACHE keys)
from . import vanilla  # noqa: F401
from . import zsclip, coop, cocoop  # noqa: F401,E401
from . import kgcoop  # noqa: F401
from . import taskres  # noqa: F401
from . import langevin_coop  # noqa: F401
from . import lmpt, zsclip_multilabel  # noqa: F401,E401
from . import dpt  # noqa: F401
from . import mlpt  # noqa: F401
from . import clip_lora, disef  # noqa: F401,E401
from . import maple  # noqa: F401  (MaPLe, IVLP, VPT)
from . import linear_probe, clip_adapter, tip_adapter  # noqa: F401,E401
from . import promptsrc  # noqa: F401  (PromptSRC, on IVLP's deep prompts)
