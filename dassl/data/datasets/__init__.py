from .build import DATASET_REGISTRY, build_dataset, postprocess_dataset, register_dataset_postprocess  # noqa: F401
from .base_dataset import Datum, DatasetBase  # noqa: F401
