"""Every method registers itself in ``TRAINER_REGISTRY`` when this package is imported."""
from . import vanilla  # noqa: F401
