"""Our own implementation of the Dassl engine's public API (Zhou et al., Dassl.pytorch 0.6.3).

Module paths and names match upstream so trainer code and YAML configs written for
CoOp/CoCoOp/MaPLe run unchanged. See ../shared/specs/dassl_engine.md and README.md
("Fixed on purpose") for where we differ from upstream.
"""

__version__ = "0.6.3"
