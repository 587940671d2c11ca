"""COCO-LT: the long-tailed multi-label split of MS-COCO 2017 from the Distribution-Balanced loss
paper (Wu et al., ECCV 2020), as used by LMPT (Xia et al., arXiv:2305.04536). 80 classes;
1,909 train images from ``train2017/``, all 5,000 ``val2017/`` images as test; head/medium/tail
22/33/25 classes.
"""
from dassl.data.datasets import DATASET_REGISTRY

from .lt_multilabel import MultiLabelLongTail

COCO_CLASSNAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)


@DATASET_REGISTRY.register()
class COCOLT(MultiLabelLongTail):
    dataset_dir = "coco"  # holds train2017/ and val2017/
    list_subdir = "coco"
    train_list = "coco_lt_train.txt"
    test_list = "coco_lt_test.txt"
    caption_file = "coco_lt_captions.txt"
    CLASSNAMES = COCO_CLASSNAMES
    DBL_NEG_SCALE = 2.0  # DB loss: negative-logit scale (LMPT train.py, DBL config)
    DBL_MAP_MU = 0.2  # DB loss: centre of the re-balancing map
