"""AutoAugment policies under Dassl's names, backed by torchvision's implementation."""
from torchvision.transforms import AutoAugment, AutoAugmentPolicy


def ImageNetPolicy():
    """AutoAugment ImageNet policy (Cubuk et al., 2019)."""
    return AutoAugment(AutoAugmentPolicy.IMAGENET)


def CIFAR10Policy():
    """AutoAugment CIFAR-10 policy."""
    return AutoAugment(AutoAugmentPolicy.CIFAR10)


def SVHNPolicy():
    """AutoAugment SVHN policy."""
    return AutoAugment(AutoAugmentPolicy.SVHN)
