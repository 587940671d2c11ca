"""Kept for tests written against the old helper module; new tests import ``helpers``."""
from helpers import REPO_ROOT, SYNTHETIC_YAML as SYNTHETIC_CONFIG, TOY_CONFIG, last_accuracy, run_train, toy_args  # noqa: F401
