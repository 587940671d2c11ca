"""RAdam (Liu et al., 2019, arXiv:1908.03265): torch's implementation under Dassl's names."""
from torch.optim import AdamW, RAdam  # noqa: F401

PlainRAdam = RAdam
