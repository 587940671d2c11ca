"""ImageNetSketch: Wang et al., "Learning Robust Global Representations by Penalizing Local
Predictive Power" (NeurIPS 2019), https://github.com/HaohanWang/ImageNet-Sketch.

1,000 wnid folders under ``images/`` (50,889 test images), sorted → labels as ImageNet's.
"""
from dassl.data.datasets import DATASET_REGISTRY

from .imagenet_variants import ImageNetVariant


@DATASET_REGISTRY.register()
class ImageNetSketch(ImageNetVariant):
    # Hand-written zero-shot prompt ("{}" = class name), as CoOp's CUSTOM_TEMPLATES
    TEMPLATE = "a photo of a {}."

    dataset_dir = "imagenet-sketch"
    image_folder = "images"
