"""RandAugment variants under Dassl's names, backed by torchvision's ``RandAugment``.

Dassl ships three hand-written variants; torchvision's op set differs slightly, which only
matters for semi-supervised methods that vlprompt does not implement.
"""
from torchvision.transforms import RandAugment as _TVRandAugment


def RandAugment(n: int = 2, m: int = 10):
    """RandAugment with n ops of magnitude m (of 30 levels in torchvision; Dassl uses 0–30 too)."""
    return _TVRandAugment(num_ops=n, magnitude=m)


def RandAugment2(n: int = 2, p: float = 0.6):
    """Random magnitude per call, as Dassl's RandAugment2 (approximated by the mid magnitude)."""
    return _TVRandAugment(num_ops=n, magnitude=9)


def RandAugmentFixMatch(n: int = 2):
    """FixMatch's RandAugment (random magnitude; approximated by the mid magnitude)."""
    return _TVRandAugment(num_ops=n, magnitude=9)
