"""vlprompt: prompt learning and parameter-efficient fine-tuning of CLIP, on a Dassl-compatible engine."""
from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="vlprompt",
    version="0.1.0",
    description="Prompt learning and PEFT for CLIP (CoOp, CoCoOp, CLIP-LoRA, DISEF, LangevinCoOp, DPT, MLPT, LMPT) "
                "on a Dassl-compatible engine",
    long_description=long_description,
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["dassl", "dassl.*", "clip", "clip.*", "trainers", "trainers.*", "datasets",
                                    "datasets.*"]),
    py_modules=["train", "parse_test_res"],
    install_requires=[
        "torch>=2.2",
        "torchvision",
        "yacs",
        "tabulate",
        "tqdm",
        "tensorboard",
        "gdown",
        "numpy",
        "pillow",
        "scipy",  # .mat annotation files (StanfordCars, OxfordFlowers)
        "scikit-learn",  # macro-F1, AP/mAP, the GMM of MLPT
        "open_clip_torch==3.3.0",  # BPE vocabulary/tokenizer for clip/, and the test oracle
        "ftfy",
        "regex",
    ],
    extras_require={
        "generation": ["diffusers", "transformers", "accelerate", "bitsandbytes"],  # DISEF: captioner, img2img, 4-bit
        "cluster": ["submitit"],  # Slurm grids
        "dev": ["pytest", "pytest-xdist", "diffusers", "transformers", "submitit"],
    },
)
