from .data_manager import DataManager, DatasetWrapper  # noqa: F401
