from .build import TRAINER_REGISTRY, build_trainer, trainer_cli_flags  # noqa: F401
from .loop import EpochProgress, TrainingPass, cycle  # noqa: F401
from .trainer import SimpleNet, SimpleTrainer, TrainerBase, TrainerX, TrainerXU  # noqa: F401
