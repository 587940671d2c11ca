"""DISEF (Turrisi da Costa et al., arXiv:2312.03046): the trainer and the synthetic-image generation pipeline.

- ``trainer``: the ``DISEF`` trainer (LoRA on real + synthetic images, Mixup/CutMix, the F1-guided variant);
  ``mixing``: batch Mixup/CutMix with soft targets.
- Generation (``scripts/disef/generate.py``): ``config`` (settings and the ``disef_paper`` / ``notebook`` presets),
  ``models`` (captioner, img2img, CLIP filter), ``manifest`` (files of a run), ``sharding`` (classes split over
  processes), ``pipeline`` (the generation loop), ``cli`` (the command line) and ``fakes`` (offline tiny models).

Documentation: docs/methods/disef.md.
"""
from .trainer import DISEF  # noqa: F401  (registers the trainer)
