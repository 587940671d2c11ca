"""``Datum`` and ``DatasetBase`` (Dassl's ``dassl.data.datasets.base_dataset``).

The module path and the private attribute names of ``Datum`` are part of the on-disk
format: CoOp's few-shot pickles and ImageNet's ``preprocessed.pkl`` store ``Datum``
objects by this path, so we must be able to unpickle them.
"""
from __future__ import annotations

import logging
import os.path as osp
import random
import tarfile
import zipfile
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple, Union

logger = logging.getLogger(__name__)

Label = Union[int, Tuple[int, ...]]


class Datum:
    """One sample: image path, label, domain and class name.

    ``label`` is an int for single-label datasets, or a tuple of positive class indices for
    multi-label datasets (``is_multilabel``). ``true_label`` keeps the clean label when label
    noise was injected (``None`` otherwise); ``caption`` optionally holds a text caption.
    """

    def __init__(
        self,
        impath: str = "",
        label: Label = 0,
        domain: int = 0,
        classname: str = "",
        true_label: Optional[Label] = None,
        caption: Optional[str] = None,
        check_file: bool = True,
    ):
        if not isinstance(impath, str):
            raise TypeError(f"Datum.impath must be a str, got {type(impath).__name__}")
        if check_file and not osp.isfile(impath):
            raise FileNotFoundError(f"image not found: {impath} (see DATASETS.md for the expected layout)")
        self._impath = impath
        self._label = label
        self._domain = domain
        self._classname = classname
        if true_label is not None:
            self._true_label = true_label
        if caption is not None:
            self._caption = caption

    @property
    def impath(self) -> str:
        return self._impath

    @property
    def label(self) -> Label:
        return self._label

    @property
    def domain(self) -> int:
        return self._domain

    @property
    def classname(self) -> str:
        return self._classname

    @property
    def true_label(self) -> Label:
        """The clean label (equals ``label`` unless noise was injected)."""
        return self.__dict__.get("_true_label", self._label)

    @property
    def is_noisy(self) -> bool:
        return self.true_label != self._label

    @property
    def caption(self) -> Optional[str]:
        return self.__dict__.get("_caption")

    @property
    def is_multilabel(self) -> bool:
        return isinstance(self._label, (tuple, list))

    def __repr__(self) -> str:
        return f"Datum(impath={self._impath!r}, label={self._label!r}, domain={self._domain}, classname={self._classname!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Datum) and self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash((self._impath, str(self._label), self._domain, self._classname))


class DatasetBase:
    """A dataset as four lists of ``Datum``: ``train_x``, ``train_u``, ``val`` and ``test``.

    ``num_classes``, ``lab2cname`` and ``classnames`` are derived from ``train_x`` only, as
    in Dassl. Multi-label datasets pass ``classnames`` explicitly.
    """

    dataset_dir = ""  # the folder name under DATASET.ROOT
    domains: List[str] = []  # domain names (DA/DG datasets only)

    def __init__(self, train_x=None, train_u=None, val=None, test=None, classnames: Optional[Sequence[str]] = None):
        self._train_x = train_x
        self._train_u = train_u
        self._val = val
        self._test = test
        if classnames is not None:
            self._classnames = list(classnames)
            self._lab2cname = {i: c for i, c in enumerate(self._classnames)}
            self._num_classes = len(self._classnames)
        else:
            self._num_classes = self.get_num_classes(train_x)
            self._lab2cname, self._classnames = self.get_lab2cname(train_x)

    @property
    def train_x(self):
        return self._train_x

    @property
    def train_u(self):
        return self._train_u

    @property
    def val(self):
        return self._val

    @property
    def test(self):
        return self._test

    @property
    def lab2cname(self) -> Dict[int, str]:
        return self._lab2cname

    @property
    def classnames(self) -> List[str]:
        return self._classnames

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @staticmethod
    def get_num_classes(data_source: Sequence[Datum]) -> int:
        if not data_source:
            raise ValueError("cannot count classes of an empty training set")
        return max(item.label for item in data_source) + 1

    @staticmethod
    def get_lab2cname(data_source: Sequence[Datum]) -> Tuple[Dict[int, str], List[str]]:
        container = {(item.label, item.classname) for item in data_source}
        mapping = {label: classname for label, classname in container}
        labels = sorted(mapping.keys())
        return mapping, [mapping[label] for label in labels]

    def check_input_domains(self, source_domains, target_domains) -> None:
        if not source_domains or not target_domains:
            raise ValueError("source and target domains must both be given")
        self.is_input_domain_valid(source_domains)
        self.is_input_domain_valid(target_domains)

    def is_input_domain_valid(self, input_domains) -> None:
        for domain in input_domains:
            if domain not in self.domains:
                raise ValueError(f"Input domain must belong to {self.domains}, but got [{domain}]")

    def download_data(self, url: str, dst: str, from_gdrive: bool = True) -> None:
        """Download ``url`` (Google Drive through gdown) to ``dst`` and extract it next to it."""
        from dassl.utils import mkdir_if_missing

        mkdir_if_missing(osp.dirname(dst))
        if not from_gdrive:
            raise NotImplementedError("only Google Drive downloads are supported here")
        import gdown

        gdown.download(url, dst, quiet=False)
        logger.info("Extracting file ...")
        target = osp.dirname(dst)
        if dst.endswith(".zip"):
            with zipfile.ZipFile(dst, "r") as zf:
                zf.extractall(target)
        elif dst.endswith(".tar") or dst.endswith(".tar.gz") or dst.endswith(".tgz"):
            with tarfile.open(dst) as tf:
                tf.extractall(target, filter="data")
        else:
            raise NotImplementedError(f"cannot extract {dst}")
        logger.info(f"File extracted to {target}")

    def generate_fewshot_dataset(self, *data_sources, num_shots: int = -1, repeat: bool = False):
        """Sample ``num_shots`` items per label from each source with Python's global ``random``.

        Same semantics and call order as Dassl: labels are visited in order of first appearance;
        a label with at least K items gets ``random.sample(items, K)``, otherwise
        ``random.choices(items, k=K)`` when ``repeat`` else all its items.
        """
        if num_shots < 1:
            return data_sources[0] if len(data_sources) == 1 else data_sources
        logger.info(f"Creating a {num_shots}-shot dataset")
        output = []
        for data_source in data_sources:
            tracker = self.split_dataset_by_label(data_source)
            dataset = []
            for items in tracker.values():
                if len(items) >= num_shots:
                    sampled = random.sample(items, num_shots)
                elif repeat:
                    sampled = random.choices(items, k=num_shots)
                else:
                    sampled = items
                dataset.extend(sampled)
            output.append(dataset)
        return output[0] if len(output) == 1 else output

    @staticmethod
    def split_dataset_by_label(data_source: Sequence[Datum]) -> Dict[int, List[Datum]]:
        output = defaultdict(list)
        for item in data_source:
            output[item.label].append(item)
        return output

    @staticmethod
    def split_dataset_by_domain(data_source: Sequence[Datum]) -> Dict[int, List[Datum]]:
        output = defaultdict(list)
        for item in data_source:
            output[item.domain].append(item)
        return output
