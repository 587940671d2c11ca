"""Datasets registered in ``DATASET_REGISTRY``; importing this package registers all of them."""
from dassl.config import register_cfg_defaults


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    """Project-wide dataset keys (CoOp's extend_cfg and ours)."""
    # all, base or new: keep all classes, the first ceil(n/2) labels, or the rest (relabelled 0..m-1)
    cfg.DATASET.SUBSAMPLE_CLASSES = "all"


from . import synthetic  # noqa: E402,F401

# CoOp's 11 datasets and the 4 ImageNet variants (KaiyangZhou/CoOp ``datasets/``)
from . import (  # noqa: E402,F401
    caltech101,
    dtd,
    eurosat,
    fgvc_aircraft,
    food101,
    imagenet,
    imagenet_a,
    imagenet_r,
    imagenet_sketch,
    imagenetv2,
    oxford_flowers,
    oxford_pets,
    stanford_cars,
    sun397,
    ucf101,
)

# the seed notebook's Flowers102, CIFAR-LT (LangevinCoOp) and COCO-LT / VOC-LT (LMPT)
from . import cifar_lt, coco_lt, flowers102, voc_lt  # noqa: E402,F401
from . import synthetic_multilabel  # noqa: E402,F401

# Dataset-level post-processing registered with the engine: DATASET.NUM_FP label noise (MLPT's protocol)
from . import label_noise  # noqa: E402,F401
