"""ImageNetA: Hendrycks et al., "Natural Adversarial Examples" (CVPR 2021),
https://github.com/hendrycks/natural-adv-examples.

200 wnid folders under ``imagenet-a/`` (7,500 test images); evaluated as a 200-way problem with
labels 0..199 in sorted wnid order (as CoOp's reader).
"""
from dassl.data.datasets import DATASET_REGISTRY

from .imagenet_variants import ImageNetVariant


@DATASET_REGISTRY.register()
class ImageNetA(ImageNetVariant):
    # Hand-written zero-shot prompt ("{}" = class name), as CoOp's CUSTOM_TEMPLATES
    TEMPLATE = "a photo of a {}."

    dataset_dir = "imagenet-adversarial"
    image_folder = "imagenet-a"
