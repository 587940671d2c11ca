#!/usr/bin/env python
"""Summarise test results over seed folders or a whole output tree (see ``python parse_test_res.py --help``).

    python parse_test_res.py output/dtd/CoOp/rn50_ep50_16shots/nctx16_cscFalse_ctpend   # mean ± std over seeds
    python parse_test_res.py output --table                                             # every run, one table

The code lives in ``vlprompt/parse_test_res.py``; once installed, ``vlprompt-parse`` takes the same arguments.
"""
import os
import sys

# As in train.py: the repository root goes last, so it never shadows installed `datasets` / `clip`.
_ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _ROOT] + [_ROOT]

from vlprompt.parse_test_res import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli())
