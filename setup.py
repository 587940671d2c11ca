"""Packaging: the metadata lives in pyproject.toml; this file maps the repository's folders to packages.

CoOp's layout keeps ``clip/``, ``datasets/`` and ``trainers/`` at the top level of the repository; they install
as ``vlprompt.clip``, ``vlprompt.datasets`` and ``vlprompt.trainers`` (so they never shadow HuggingFace
``datasets`` or OpenAI's ``clip``), next to ``vlprompt`` itself and the engine ``dassl``.  Every subpackage is
found here, so a new method package needs no edit.
"""
from setuptools import find_packages, setup

# installed name -> folder in the repository
ROOTS = {"vlprompt": "vlprompt", "vlprompt.clip": "clip", "vlprompt.datasets": "datasets",
         "vlprompt.trainers": "trainers", "dassl": "dassl"}

packages = []
for name, folder in ROOTS.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=ROOTS)
