"""ImageNetR: Hendrycks et al., "The Many Faces of Robustness" (ICCV 2021),
https://github.com/hendrycks/imagenet-r.

200 wnid folders under ``imagenet-r/`` (30,000 test images); evaluated as a 200-way problem with
labels 0..199 in sorted wnid order (as CoOp's reader).
"""
from dassl.data.datasets import DATASET_REGISTRY

from .imagenet_variants import ImageNetVariant


@DATASET_REGISTRY.register()
class ImageNetR(ImageNetVariant):
    # Hand-written zero-shot prompt ("{}" = class name), as CoOp's CUSTOM_TEMPLATES
    TEMPLATE = "a photo of a {}."

    dataset_dir = "imagenet-rendition"
    image_folder = "imagenet-r"
