"""Fetch a dataset into DATASET.ROOT in the layout its reader expects (see DATASETS.md).

Usage (from the repository root)::

    python -m vlprompt.datasets.download oxford_pets --root $DATA            # print the plan, fetch nothing
    python -m vlprompt.datasets.download oxford_pets --root $DATA --download # fetch it
    scripts/download_data.sh oxford_pets $DATA                      # the same, with --download

Nothing here runs during training: the readers never download. Sources are the public ones
named in CoOp's DATASETS.md (KaiyangZhou/CoOp): official archive URLs,
torchvision's downloaders (CIFAR, Flowers102, EuroSAT, Caltech101) and Google Drive (through gdown)
for CoOp's ``split_zhou_*.json`` files. Datasets whose licence needs a sign-up (ImageNet) or whose
official links are dead (Stanford Cars) get a ``manual`` step with instructions.
"""
from __future__ import annotations

import argparse
import logging
import os
import os.path as osp
import shutil
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

logger = logging.getLogger(__name__)

GDRIVE_URL = "https://drive.google.com/uc?id={}"
IMAGENET_CLASSNAMES_GDRIVE = "1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF"  # CoOp's imagenet/classnames.txt


@dataclass(frozen=True)
class Step:
    """One action; paths are relative to the data root.

    kind: ``url`` (download ``source`` into ``target``; extract archives into ``target``'s folder),
    ``gdrive`` (same, ``source`` is a Drive file id), ``torchvision`` (``source`` is a dataset class
    built with ``root=target, download=True``), ``move`` (rename ``source`` to ``target``),
    ``copy`` (copy the file ``source`` to ``target`` if ``target`` is missing) or ``manual``
    (``source`` tells the user what to do).
    """

    kind: str
    source: str
    target: str = ""
    extract: bool = False


def _split_json(dataset_dir: str, name: str, file_id: str) -> Step:
    return Step("gdrive", file_id, f"{dataset_dir}/split_zhou_{name}.json")


def _imagenet_classnames(dataset_dir: str) -> List[Step]:
    return [Step("copy", "imagenet/classnames.txt", f"{dataset_dir}/classnames.txt"),
            Step("gdrive", IMAGENET_CLASSNAMES_GDRIVE, f"{dataset_dir}/classnames.txt")]


VGG = "https://www.robots.ox.ac.uk/~vgg/data"
IMAGENETV2_URL = "https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main"
PLANS: Dict[str, List[Step]] = {
    "ImageNet": [
        Step("manual", "download ILSVRC2012 train/val from https://image-net.org (sign-up needed) and put the "
                       "1,000 wnid folders of each under imagenet/images/train and imagenet/images/val", "imagenet"),
        Step("gdrive", IMAGENET_CLASSNAMES_GDRIVE, "imagenet/classnames.txt"),
    ],
    "Caltech101": [
        Step("torchvision", "Caltech101", "caltech-101/.torchvision"),
        Step("move", "caltech-101/.torchvision/caltech101/101_ObjectCategories", "caltech-101/101_ObjectCategories"),
        _split_json("caltech-101", "Caltech101", "1hyarUivQE36mY6jSomru6Fjd-JzwcCzN"),
    ],
    "OxfordPets": [
        Step("url", f"{VGG}/pets/data/images.tar.gz", "oxford_pets/images.tar.gz", extract=True),
        Step("url", f"{VGG}/pets/data/annotations.tar.gz", "oxford_pets/annotations.tar.gz", extract=True),
        _split_json("oxford_pets", "OxfordPets", "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs"),
    ],
    "StanfordCars": [
        Step("manual", "the official Stanford links are dead: get cars_train/, cars_test/, devkit/ and "
                       "cars_test_annos_withlabels.mat from a mirror (see DATASETS.md#stanfordcars)", "stanford_cars"),
        _split_json("stanford_cars", "StanfordCars", "1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT"),
    ],
    "OxfordFlowers": [
        Step("url", f"{VGG}/flowers/102/102flowers.tgz", "oxford_flowers/102flowers.tgz", extract=True),
        Step("url", f"{VGG}/flowers/102/imagelabels.mat", "oxford_flowers/imagelabels.mat"),
        Step("gdrive", "1AkcxCXeK_RCGCEC_GvmWxjcjaNhu-at0", "oxford_flowers/cat_to_name.json"),
        _split_json("oxford_flowers", "OxfordFlowers", "1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT"),
    ],
    "Food101": [
        Step("url", "http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz", "food-101.tar.gz", extract=True),
        _split_json("food-101", "Food101", "1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl"),
    ],
    "FGVCAircraft": [
        Step("url", f"{VGG}/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
             ".fgvc/fgvc-aircraft-2013b.tar.gz", extract=True),
        Step("move", ".fgvc/fgvc-aircraft-2013b/data", "fgvc_aircraft"),
    ],
    "SUN397": [
        Step("url", "http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz", "sun397/SUN397.tar.gz",
             extract=True),
        Step("url", "https://vision.princeton.edu/projects/2010/SUN/download/Partitions.zip",
             "sun397/Partitions.zip", extract=True),
        _split_json("sun397", "SUN397", "1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq"),
    ],
    "DescribableTextures": [
        Step("url", f"{VGG}/dtd/download/dtd-r1.0.1.tar.gz", "dtd-r1.0.1.tar.gz", extract=True),
        _split_json("dtd", "DescribableTextures", "1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x"),
    ],
    "EuroSAT": [
        Step("torchvision", "EuroSAT", ""),  # torchvision writes <root>/eurosat/2750, CoOp's layout
        _split_json("eurosat", "EuroSAT", "1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o"),
    ],
    "UCF101": [
        Step("gdrive", "10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O", "ucf101/UCF-101-midframes.zip", extract=True),
        _split_json("ucf101", "UCF101", "1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y"),
    ],
    "ImageNetV2": [
        Step("url", f"{IMAGENETV2_URL}/imagenetv2-matched-frequency.tar.gz",
             "imagenetv2/imagenetv2-matched-frequency.tar.gz", extract=True),
        *_imagenet_classnames("imagenetv2"),
    ],
    "ImageNetSketch": [
        Step("manual", "download ImageNet-Sketch from https://github.com/HaohanWang/ImageNet-Sketch and put its "
                       "1,000 wnid folders under imagenet-sketch/images", "imagenet-sketch"),
        *_imagenet_classnames("imagenet-sketch"),
    ],
    "ImageNetA": [
        Step("url", "https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar",
             "imagenet-adversarial/imagenet-a.tar", extract=True),
        *_imagenet_classnames("imagenet-adversarial"),
    ],
    "ImageNetR": [
        Step("url", "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar",
             "imagenet-rendition/imagenet-r.tar", extract=True),
        *_imagenet_classnames("imagenet-rendition"),
    ],
    "Flowers102": [Step("torchvision", "Flowers102", "")],  # <root>/flowers-102
    "CIFAR10LT": [Step("torchvision", "CIFAR10", "cifar-10-python")],  # <root>/cifar-10-python/cifar-10-batches-py
    "CIFAR100LT": [Step("torchvision", "CIFAR100", "cifar-100-python")],
    "COCOLT": [
        Step("url", "http://images.cocodataset.org/zips/train2017.zip", "coco/train2017.zip", extract=True),
        Step("url", "http://images.cocodataset.org/zips/val2017.zip", "coco/val2017.zip", extract=True),
    ],
    "VOCLT": [
        Step("url", "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
             "voc/VOCtrainval_11-May-2012.tar", extract=True),
        Step("url", "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar",
             "voc/VOCtest_06-Nov-2007.tar", extract=True),
    ],
}
ALIASES = {"dtd": "DescribableTextures"}  # config stems that are not the class name in lower case


def resolve_name(name: str) -> str:
    """A registered class name or a config stem (``oxford_pets``, ``imagenet_sketch``) → class name."""
    key = name.replace("_", "").replace("-", "").lower()
    for candidate in PLANS:
        if candidate.lower() == key:
            return candidate
    if name.lower() in ALIASES:
        return ALIASES[name.lower()]
    from dassl.utils import get_most_similar_str_to_a_from_b

    closest = get_most_similar_str_to_a_from_b(name, list(PLANS))
    raise KeyError(f"unknown dataset {name!r} (did you mean {closest}?); choose one of {', '.join(PLANS)} "
                   f"or their configs/datasets/*.yaml stems")


def describe(step: Step) -> str:
    if step.kind == "manual":
        return f"manual: {step.source}"
    arrow = f" -> {step.target or '.'}"
    return f"{step.kind}: {step.source}{arrow}{' (extract)' if step.extract else ''}"


def extract_archive(path: str, dest: str) -> None:
    """Extract a .zip / .tar / .tar.gz / .tgz archive into ``dest`` (no paths outside it)."""
    logger.info(f"Extracting {path} into {dest}")
    if path.endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            zf.extractall(dest)
    elif path.endswith((".tar", ".tar.gz", ".tgz")):
        with tarfile.open(path) as tf:
            tf.extractall(dest, filter="data")
    else:
        raise ValueError(f"cannot extract {path}: expected .zip, .tar, .tar.gz or .tgz")


def _fetch(step: Step, root: str) -> None:
    from dassl.utils import download_url

    dst = osp.join(root, step.target)
    if osp.exists(dst) and not step.extract:
        logger.info(f"{dst} exists, skipped")
        return
    os.makedirs(osp.dirname(dst), exist_ok=True)
    if step.kind == "url":
        download_url(step.source, dst)
    else:
        import gdown

        if gdown.download(GDRIVE_URL.format(step.source), dst, quiet=False) is None:
            raise RuntimeError(f"Google Drive download of {step.source} to {dst} failed (quota or region block?); "
                               f"fetch it by hand as described in DATASETS.md")
    if step.extract:
        extract_archive(dst, osp.dirname(dst))
        os.remove(dst)


def _torchvision(step: Step, root: str) -> None:
    import torchvision.datasets as tvd

    target = osp.join(root, step.target)
    if step.source == "Flowers102":
        for split in ("train", "val", "test"):
            tvd.Flowers102(target, split=split, download=True)
    elif step.source in ("CIFAR10", "CIFAR100"):
        for train in (True, False):
            getattr(tvd, step.source)(target, train=train, download=True)
    else:
        getattr(tvd, step.source)(target, download=True)


def run_step(step: Step, root: str) -> None:
    """Execute one step under ``root``."""
    logger.info(describe(step))
    if step.kind in ("url", "gdrive"):
        _fetch(step, root)
    elif step.kind == "torchvision":
        _torchvision(step, root)
    elif step.kind == "move":
        src, dst = osp.join(root, step.source), osp.join(root, step.target)
        if not osp.exists(dst):
            shutil.move(src, dst)
    elif step.kind == "copy":
        src, dst = osp.join(root, step.source), osp.join(root, step.target)
        if osp.exists(src) and not osp.exists(dst):
            shutil.copyfile(src, dst)
    elif step.kind == "manual":
        logger.warning(f"MANUAL STEP: {step.source}")
    else:
        raise ValueError(f"unknown step kind {step.kind!r}")


def plan(name: str) -> List[Step]:
    """The steps for ``name`` (a class name or config stem), in order."""
    return list(PLANS[resolve_name(name)])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="+", help="class names or config stems, e.g. OxfordPets or oxford_pets")
    parser.add_argument("--root", required=True, help="the data root (DATASET.ROOT / --root of train.py)")
    parser.add_argument("--download", action="store_true", help="actually download; without it, print the plan")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    root = osp.abspath(osp.expanduser(args.root))
    for name in args.datasets:
        try:
            steps = plan(name)
        except KeyError as err:
            parser.error(err.args[0])
        logger.info(f"{resolve_name(name)} into {root}:")
        for step in steps:
            if args.download:
                run_step(step, root)  # a file that exists is kept (e.g. classnames.txt copied from imagenet/)
            else:
                logger.info(f"  {describe(step)}")
    if not args.download:
        logger.info("dry run: pass --download to fetch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
