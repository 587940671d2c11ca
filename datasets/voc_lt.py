"""VOC-LT: the long-tailed multi-label split of PASCAL VOC from the Distribution-Balanced loss paper
(Wu et al., ECCV 2020), as used by LMPT (Xia et al., arXiv:2305.04536). 20 classes; 1,142 train
images from VOC2012 trainval, the 4,952 VOC2007 test images as test; head/medium/tail 6/6/8
classes. Class names keep VOC's spellings (``diningtable``).
"""
from dassl.data.datasets import DATASET_REGISTRY

from .lt_multilabel import MultiLabelLongTail

VOC_CLASSNAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


@DATASET_REGISTRY.register()
class VOCLT(MultiLabelLongTail):
    dataset_dir = "voc"  # holds VOCdevkit/VOC2007 and VOCdevkit/VOC2012
    list_subdir = "voc"
    train_list = "voc_lt_train.txt"
    test_list = "voc_lt_test.txt"
    caption_file = "voc_lt_captions.txt"
    CLASSNAMES = VOC_CLASSNAMES
    DBL_NEG_SCALE = 5.0  # DB loss: negative-logit scale (LMPT train.py, DBL config)
    DBL_MAP_MU = 0.3  # DB loss: centre of the re-balancing map
