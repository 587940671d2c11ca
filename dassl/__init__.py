"""Our own implementation of the Dassl engine's public API (Zhou et al., Dassl.pytorch 0.6.3).

Module paths and names match upstream so trainer code and YAML configs written for
CoOp/CoCoOp/MaPLe run unchanged. Upstream: KaiyangZhou/Dassl.pytorch (c61a1b5); README.md
("Fixed on purpose") lists where we differ from it.
"""

__version__ = "0.6.3"
