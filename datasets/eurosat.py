"""EuroSAT: Helber et al., "EuroSAT: A Novel Dataset and Deep Learning Benchmark for Land Use and
Land Cover Classification" (IEEE JSTARS 2019), https://github.com/phelber/EuroSAT (RGB version).

10 class folders under ``2750/``, renamed to CoOp's descriptive names; without the split JSON
each class is split 50/20/30 (as in KaiyangZhou/CoOp ``datasets/``).
"""
from __future__ import annotations

from dassl.data.datasets import DATASET_REGISTRY

from .coop_base import CoOpDataset, Splits
from .splits import read_and_split_data

NEW_CNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


@DATASET_REGISTRY.register()
class EuroSAT(CoOpDataset):
    # Hand-written zero-shot prompt ("{}" = class name), as CoOp's CUSTOM_TEMPLATES
    TEMPLATE = "a centered satellite photo of {}."

    dataset_dir = "eurosat"
    image_folder = "2750"
    split_file = "split_zhou_EuroSAT.json"

    def build_split(self) -> Splits:
        return read_and_split_data(self.image_dir, new_cnames=NEW_CNAMES)
