import logging

from dassl.utils import Registry, check_availability

logger = logging.getLogger(__name__)

TRAINER_REGISTRY = Registry("TRAINER")


def build_trainer(cfg):
    """Instantiate the registered trainer ``cfg.TRAINER.NAME``."""
    avai_trainers = TRAINER_REGISTRY.registered_names()
    check_availability(cfg.TRAINER.NAME, avai_trainers)
    if cfg.VERBOSE:
        logger.info(f"Loading trainer: {cfg.TRAINER.NAME}")
    return TRAINER_REGISTRY.get(cfg.TRAINER.NAME)(cfg)


def trainer_cli_flags() -> dict:
    """Every registered trainer's ``CLI_FLAGS``: flag -> (config key, help); a flag declared twice must agree."""
    flags: dict = {}
    for name in TRAINER_REGISTRY.registered_names():
        for flag, (key, help_text) in getattr(TRAINER_REGISTRY.get(name), "CLI_FLAGS", {}).items():
            if flag in flags and flags[flag][0] != key:
                raise KeyError(f"command-line flag {flag} is declared for both {flags[flag][0]} and {key} "
                               f"(trainer {name}); rename one")
            flags[flag] = (key, help_text)
    return flags
