"""Miniature on-disk copies of every dataset, in the real file formats.

Each ``make_<dataset>(root)`` writes a handful of real JPEG files plus the dataset's real list /
meta files (text lists, ``.mat`` files through ``scipy.io.savemat``, JSON, CIFAR pickles) under
``root`` and returns a ``Miniature`` with what a correct reader must produce: class names in label
order and the (train, val, test) sizes for ``NUM_SHOTS=-1``. The sizes are derived by hand from
the per-class counts below and the readers' split rules (50/20/30 with ``round``, 80/20 trainval),
never by calling the reader.
"""
from __future__ import annotations

import json
import os
import os.path as osp
import pickle
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

SPLIT_RULE_50_20_30 = {10: (5, 2, 3), 30: (15, 6, 9)}  # images per class -> per-class train/val/test
TRAINVAL_80_20 = {10: (8, 2), 7: (5, 2)}  # trainval images per class -> per-class train/val


@dataclass
class Miniature:
    name: str  # registered dataset name
    classnames: List[str]  # expected class names in label order
    sizes: Tuple[int, int, int]  # expected (train, val, test) sizes with all classes, NUM_SHOTS=-1
    dataset_dir: str  # absolute dataset folder
    split_json: str = ""  # the split JSON the reader writes / reads ("" = the dataset has none)
    eval_only: bool = False  # ImageNet variants: train_x = test, no val
    extra: Dict[str, object] = field(default_factory=dict)


def write_image(path: str) -> str:
    """A tiny real JPEG whose colour depends on the path."""
    os.makedirs(osp.dirname(path), exist_ok=True)
    seed = sum(path.encode()) % 251
    Image.new("RGB", (8, 8), (seed, (seed * 7) % 256, (seed * 13) % 256)).save(path, format="JPEG")
    return path


def _write_lines(path: str, lines: Sequence[str]) -> None:
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def _folder_per_class(image_dir: str, folders: Sequence[str], n: int, ext: str = ".jpg") -> None:
    for folder in folders:
        for i in range(n):
            write_image(osp.join(image_dir, folder, f"{folder}_{i:04d}{ext}"))


def _sizes_50_20_30(n_classes: int, n: int) -> Tuple[int, int, int]:
    trn, val, tst = SPLIT_RULE_50_20_30[n]
    return n_classes * trn, n_classes * val, n_classes * tst


# ----------------------------------------------------------------------------- folder-per-class


def make_dtd(root: str, n: int = 10) -> Miniature:
    folders = ["banded", "blotchy", "braided", "bubbly", "bumpy"]
    d = osp.join(root, "dtd")
    _folder_per_class(osp.join(d, "images"), folders, n)
    return Miniature("DescribableTextures", folders, _sizes_50_20_30(5, n), d,
                     osp.join(d, "split_zhou_DescribableTextures.json"))


def make_food101(root: str, n: int = 10) -> Miniature:
    folders = ["apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare"]
    d = osp.join(root, "food-101")
    _folder_per_class(osp.join(d, "images"), folders, n)
    return Miniature("Food101", folders, _sizes_50_20_30(5, n), d, osp.join(d, "split_zhou_Food101.json"))


def make_caltech101(root: str, n: int = 10) -> Miniature:
    folders = ["BACKGROUND_Google", "Faces", "Faces_easy", "Leopards", "Motorbikes", "accordion", "airplanes"]
    d = osp.join(root, "caltech-101")
    _folder_per_class(osp.join(d, "101_ObjectCategories"), folders, n)
    # upper-case folders sort first; two folders are ignored and four are renamed
    classnames = ["face", "leopard", "motorbike", "accordion", "airplane"]
    return Miniature("Caltech101", classnames, _sizes_50_20_30(5, n), d, osp.join(d, "split_zhou_Caltech101.json"))


def make_eurosat(root: str, n: int = 10) -> Miniature:
    folders = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "SeaLake"]
    d = osp.join(root, "eurosat")
    _folder_per_class(osp.join(d, "2750"), folders, n)
    classnames = ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road", "Sea or Lake"]
    return Miniature("EuroSAT", classnames, _sizes_50_20_30(5, n), d, osp.join(d, "split_zhou_EuroSAT.json"))


# ----------------------------------------------------------------------------- list / mat files


def make_oxford_pets(root: str) -> Miniature:
    breeds = ["Abyssinian", "american_bulldog", "Bengal", "boxer", "Egyptian_Mau"]  # class ids 1..5
    d = osp.join(root, "oxford_pets")
    trainval, test = [], []
    for class_id, breed in enumerate(breeds, start=1):
        species = 1 if breed[0].isupper() else 2  # cats are capitalised in the real lists
        for i in range(13):
            imname = f"{breed}_{i + 1}"
            write_image(osp.join(d, "images", imname + ".jpg"))
            (trainval if i < 10 else test).append(f"{imname} {class_id} {species} {i % 3 + 1}")
    _write_lines(osp.join(d, "annotations", "trainval.txt"), trainval)
    _write_lines(osp.join(d, "annotations", "test.txt"), test)
    classnames = ["abyssinian", "american_bulldog", "bengal", "boxer", "egyptian_mau"]
    return Miniature("OxfordPets", classnames, (5 * 8, 5 * 2, 5 * 3), d, osp.join(d, "split_zhou_OxfordPets.json"))


def _mat_struct_array(records: List[Dict[str, object]]) -> np.ndarray:
    """A 1×N MATLAB struct array like the Stanford Cars annotation files."""
    keys = list(records[0].keys())
    arr = np.zeros((1, len(records)), dtype=[(k, "O") for k in keys])
    for j, rec in enumerate(records):
        arr[0, j] = tuple(rec[k] for k in keys)
    return arr


def make_stanford_cars(root: str) -> Miniature:
    from scipy.io import savemat

    meta_names = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Type-S 2008",
                  "Aston Martin V8 Vantage Convertible 2012", "smart fortwo Convertible 2012"]
    d = osp.join(root, "stanford_cars")
    names = np.empty((1, len(meta_names)), dtype=object)
    for i, name in enumerate(meta_names):
        names[0, i] = name
    os.makedirs(osp.join(d, "devkit"), exist_ok=True)
    savemat(osp.join(d, "devkit", "cars_meta.mat"), {"class_names": names})

    def _annos(folder: str, per_class: int) -> np.ndarray:
        records, k = [], 0
        for i in range(per_class):
            for cls in range(1, len(meta_names) + 1):
                k += 1
                fname = f"{k:05d}.jpg"
                write_image(osp.join(d, folder, fname))
                box = np.array([[10]], dtype=np.uint16)
                records.append({"bbox_x1": box, "bbox_y1": box, "bbox_x2": box, "bbox_y2": box,
                                "class": np.array([[cls]], dtype=np.uint8), "fname": fname})
        return _mat_struct_array(records)

    savemat(osp.join(d, "devkit", "cars_train_annos.mat"), {"annotations": _annos("cars_train", 10)})
    savemat(osp.join(d, "cars_test_annos_withlabels.mat"), {"annotations": _annos("cars_test", 3)})
    classnames = ["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2008 Acura TL Type-S",
                  "2012 Aston Martin V8 Vantage Convertible", "2012 smart fortwo Convertible"]
    return Miniature("StanfordCars", classnames, (5 * 8, 5 * 2, 5 * 3), d,
                     osp.join(d, "split_zhou_StanfordCars.json"))


def make_oxford_flowers(root: str) -> Miniature:
    from scipy.io import savemat

    d = osp.join(root, "oxford_flowers")
    labels = [(i % 5) + 1 for i in range(50)]  # interleaved 1..5, 10 images each
    for i in range(1, len(labels) + 1):
        write_image(osp.join(d, "jpg", f"image_{i:05d}.jpg"))
    savemat(osp.join(d, "imagelabels.mat"), {"labels": np.array([labels], dtype=np.uint8)})
    names = {"1": "pink primrose", "2": "hard-leaved pocket orchid", "3": "canterbury bells",
             "4": "sweet pea", "5": "english marigold"}
    with open(osp.join(d, "cat_to_name.json"), "w") as f:
        json.dump(names, f)
    return Miniature("OxfordFlowers", [names[str(i)] for i in range(1, 6)], _sizes_50_20_30(5, 10), d,
                     osp.join(d, "split_zhou_OxfordFlowers.json"))


def make_fgvc_aircraft(root: str) -> Miniature:
    variants = ["707-320", "A300B4", "Cessna 172", "F/A-18", "Tu-154"]
    d = osp.join(root, "fgvc_aircraft")
    _write_lines(osp.join(d, "variants.txt"), variants)
    per_split = {"train": 4, "val": 3, "test": 3}
    k = 1000000
    for split, n in per_split.items():
        lines = []
        for i in range(n):
            for variant in variants:
                k += 1
                write_image(osp.join(d, "images", f"{k}.jpg"))
                lines.append(f"{k} {variant}")
        _write_lines(osp.join(d, f"images_variant_{split}.txt"), lines)
    return Miniature("FGVCAircraft", variants, (20, 15, 15), d)


def make_sun397(root: str) -> Miniature:
    keys = ["a/abbey", "a/apartment_building/outdoor", "b/bakery/shop", "b/bamboo_forest", "c/canyon"]
    d = osp.join(root, "sun397")
    _write_lines(osp.join(d, "ClassName.txt"), ["/" + k for k in keys])
    train_lines, test_lines = [], []
    for key in keys:
        for i in range(13):
            rel = f"{key}/sun_{key.replace('/', '_')}_{i:04d}.jpg"
            write_image(osp.join(d, "SUN397", rel))
            (train_lines if i < 10 else test_lines).append("/" + rel)
    _write_lines(osp.join(d, "Training_01.txt"), train_lines)
    _write_lines(osp.join(d, "Testing_01.txt"), test_lines)
    classnames = ["abbey", "outdoor apartment_building", "shop bakery", "bamboo_forest", "canyon"]
    return Miniature("SUN397", classnames, (40, 10, 15), d, osp.join(d, "split_zhou_SUN397.json"))


def make_ucf101(root: str) -> Miniature:
    actions = ["ApplyEyeMakeup", "ApplyLipstick", "Archery", "BabyCrawling", "YoYo"]
    d = osp.join(root, "ucf101")
    lists = osp.join(d, "ucfTrainTestlist")
    _write_lines(osp.join(lists, "classInd.txt"), [f"{i} {a}" for i, a in enumerate(actions, start=1)])
    renamed = ["Apply_Eye_Makeup", "Apply_Lipstick", "Archery", "Baby_Crawling", "Yo_Yo"]
    train_lines, test_lines = [], []
    for label, (action, folder) in enumerate(zip(actions, renamed), start=1):
        for i in range(13):
            video = f"v_{action}_g{i + 1:02d}_c01"
            write_image(osp.join(d, "UCF-101-midframes", folder, video + ".jpg"))
            if i < 10:
                train_lines.append(f"{action}/{video}.avi {label}")
            else:
                test_lines.append(f"{action}/{video}.avi")
    _write_lines(osp.join(lists, "trainlist01.txt"), train_lines)
    _write_lines(osp.join(lists, "testlist01.txt"), test_lines)
    return Miniature("UCF101", renamed, (40, 10, 15), d, osp.join(d, "split_zhou_UCF101.json"))


# ----------------------------------------------------------------------------- ImageNet family

IMAGENET_CLASSES = [  # (wnid, CLIP class name) — written to classnames.txt in this order
    ("n01440764", "tench"),
    ("n01443537", "goldfish"),
    ("n01484850", "great white shark"),
    ("n01491361", "tiger shark"),
    ("n01494475", "hammerhead shark"),
]


def _write_classnames(dataset_dir: str) -> None:
    _write_lines(osp.join(dataset_dir, "classnames.txt"), [f"{w} {n}" for w, n in IMAGENET_CLASSES])


def make_imagenet(root: str) -> Miniature:
    d = osp.join(root, "imagenet")
    _write_classnames(d)
    for split, n in (("train", 6), ("val", 3)):
        for wnid, _ in reversed(IMAGENET_CLASSES):  # creation order differs from label order
            for i in reversed(range(n)):
                write_image(osp.join(d, "images", split, wnid, f"{wnid}_{i}.JPEG"))
    return Miniature("ImageNet", [n for _, n in IMAGENET_CLASSES], (30, 15, 15), d)


def make_imagenetv2(root: str) -> Miniature:
    d = osp.join(root, "imagenetv2")
    _write_classnames(d)
    for label in range(len(IMAGENET_CLASSES)):
        for i in range(3):
            write_image(osp.join(d, "imagenetv2-matched-frequency-format-val", str(label), f"{i}abc.jpeg"))
    return Miniature("ImageNetV2", [n for _, n in IMAGENET_CLASSES], (15, 0, 15), d, eval_only=True)


def make_imagenet_sketch(root: str) -> Miniature:
    d = osp.join(root, "imagenet-sketch")
    _write_classnames(d)
    for wnid, _ in IMAGENET_CLASSES:
        for i in range(3):
            write_image(osp.join(d, "images", wnid, f"sketch_{i}.JPEG"))
    return Miniature("ImageNetSketch", [n for _, n in IMAGENET_CLASSES], (15, 0, 15), d, eval_only=True)


def _make_200_way(root: str, name: str, dataset_dir: str, image_folder: str) -> Miniature:
    d = osp.join(root, dataset_dir)
    _write_classnames(d)
    kept = [IMAGENET_CLASSES[i] for i in (1, 3, 4)]  # a subset of the 1,000 wnids, as the real 200
    for wnid, _ in kept:
        for i in range(3):
            write_image(osp.join(d, image_folder, wnid, f"{i}.jpg"))
    _write_lines(osp.join(d, image_folder, "README.txt"), ["not a class folder"])
    return Miniature(name, [n for _, n in kept], (9, 0, 9), d, eval_only=True)


def make_imagenet_a(root: str) -> Miniature:
    return _make_200_way(root, "ImageNetA", "imagenet-adversarial", "imagenet-a")


def make_imagenet_r(root: str) -> Miniature:
    return _make_200_way(root, "ImageNetR", "imagenet-rendition", "imagenet-r")


# ----------------------------------------------------------------------------- Flowers102 (torchvision)

FLOWERS102_LABELS = (0, 1, 50, 51, 101)  # 0-based; base = {0, 1, 50}, new = {51, 101}
FLOWERS102_NAMES = ["pink primrose", "hard-leaved pocket orchid", "petunia", "wild pansy", "blackberry lily"]


def make_flowers102(root: str) -> Miniature:
    from scipy.io import savemat

    d = osp.join(root, "flowers-102")
    per_split = {"trnid": 4, "valid": 3, "tstid": 3}
    labels, ids = [], {k: [] for k in per_split}
    image_id = 0
    for key, n in per_split.items():
        for _ in range(n):
            for label in FLOWERS102_LABELS:
                image_id += 1
                labels.append(label + 1)
                ids[key].append(image_id)
                write_image(osp.join(d, "jpg", f"image_{image_id:05d}.jpg"))
    savemat(osp.join(d, "imagelabels.mat"), {"labels": np.array([labels], dtype=np.uint8)})
    savemat(osp.join(d, "setid.mat"), {k: np.array([v], dtype=np.uint16) for k, v in ids.items()})
    return Miniature("Flowers102", FLOWERS102_NAMES, (20, 15, 15), d, extra={"labels": FLOWERS102_LABELS})


# ----------------------------------------------------------------------------- CIFAR pickles

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _key(name: str, bytes_keys: bool):
    return name.encode() if bytes_keys else name


def write_cifar10(folder: str, per_batch: int = 200, n_test: int = 100, bytes_keys: bool = True,
                  seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 python files (5 batches, labels i % 10); returns the full train (rows, labels)."""
    rng = np.random.RandomState(seed)
    os.makedirs(folder, exist_ok=True)
    k = lambda s: _key(s, bytes_keys)  # noqa: E731
    names = [n.encode() for n in CIFAR10_NAMES] if bytes_keys else CIFAR10_NAMES
    with open(osp.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({k("label_names"): names, k("num_cases_per_batch"): per_batch, k("num_vis"): 3072}, f, protocol=2)
    rows_all, labels_all = [], []
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    offset = 0
    for filename in files:
        n = n_test if filename == "test_batch" else per_batch
        rows = rng.randint(0, 256, size=(n, 3072)).astype(np.uint8)
        labels = [(offset + i) % 10 for i in range(n)]
        batch = {k("batch_label"): b"batch", k("labels"): labels, k("data"): rows,
                 k("filenames"): [f"img_{i}.png".encode() for i in range(n)]}
        with open(osp.join(folder, filename), "wb") as f:
            pickle.dump(batch, f, protocol=2)
        if filename != "test_batch":
            rows_all.append(rows)
            labels_all.extend(labels)
            offset += n
    return np.concatenate(rows_all), np.asarray(labels_all)


def write_cifar100(folder: str, per_class: int = 5, bytes_keys: bool = False, seed: int = 0) -> List[str]:
    """CIFAR-100 python files (train / test / meta); returns the fine names."""
    rng = np.random.RandomState(seed)
    os.makedirs(folder, exist_ok=True)
    k = lambda s: _key(s, bytes_keys)  # noqa: E731
    fine = [f"fine_{c:02d}" for c in range(100)]
    coarse = [f"coarse_{c:02d}" for c in range(20)]
    enc = (lambda xs: [x.encode() for x in xs]) if bytes_keys else (lambda xs: xs)
    with open(osp.join(folder, "meta"), "wb") as f:
        pickle.dump({k("fine_label_names"): enc(fine), k("coarse_label_names"): enc(coarse)}, f, protocol=2)
    for filename, n_per in (("train", per_class), ("test", 1)):
        labels = [c for _ in range(n_per) for c in range(100)]
        batch = {k("filenames"): [b"x.png"] * len(labels), k("batch_label"): b"b", k("fine_labels"): labels,
                 k("coarse_labels"): [c // 5 for c in labels],
                 k("data"): rng.randint(0, 256, size=(len(labels), 3072)).astype(np.uint8)}
        with open(osp.join(folder, filename), "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return fine


# ----------------------------------------------------------------------------- registry of builders

COOP_BUILDERS: Dict[str, Callable[[str], Miniature]] = {
    "OxfordPets": make_oxford_pets,
    "Caltech101": make_caltech101,
    "StanfordCars": make_stanford_cars,
    "OxfordFlowers": make_oxford_flowers,
    "Food101": make_food101,
    "FGVCAircraft": make_fgvc_aircraft,
    "SUN397": make_sun397,
    "DescribableTextures": make_dtd,
    "EuroSAT": make_eurosat,
    "UCF101": make_ucf101,
    "ImageNet": make_imagenet,
    "ImageNetV2": make_imagenetv2,
    "ImageNetSketch": make_imagenet_sketch,
    "ImageNetA": make_imagenet_a,
    "ImageNetR": make_imagenet_r,
    "Flowers102": make_flowers102,
}

# every reader delivered with the dataset issue: the CoOp suite + Flowers102, CIFAR-LT, COCO-LT / VOC-LT
ALL_DATASETS = tuple(COOP_BUILDERS) + ("CIFAR10LT", "CIFAR100LT", "COCOLT", "VOCLT")
