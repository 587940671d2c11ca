"""The complete default config tree of Dassl 0.6.3 (KaiyangZhou/Dassl.pytorch ``dassl/config/defaults.py``).

Types matter: yacs refuses to merge a value of another type (write ``OPTIM.LR 1.0``, not ``1``).
Method and project keys (TRAINER.COOP, DATASET.SUBSAMPLE_CLASSES, ...) are added by
the ``@register_cfg_defaults`` hooks that ``dassl.config.extend_cfg`` applies before any YAML is merged.
"""
from yacs.config import CfgNode as CN

_C = CN()

_C.VERSION = 1
# Directory for log.txt, tensorboard/ and checkpoints
_C.OUTPUT_DIR = "./output"
# Directory to resume from; empty means OUTPUT_DIR is used for auto-resume
_C.RESUME = ""
# >= 0 fixes the seed of random, numpy and torch; negative means unseeded
_C.SEED = -1
_C.USE_CUDA = True
# Print dataset/trainer/evaluator loading lines and the dataset summary table
_C.VERBOSE = True

###########################
# Input
###########################
_C.INPUT = CN()
_C.INPUT.SIZE = (224, 224)
# bilinear, bicubic or nearest
_C.INPUT.INTERPOLATION = "bilinear"
# Augmentation names (see dassl/data/transforms/transforms.py:AVAI_CHOICES); order is irrelevant
_C.INPUT.TRANSFORMS = ()
# True: return raw PIL images (no transform at all)
_C.INPUT.NO_TRANSFORM = False
# ImageNet statistics by default
_C.INPUT.PIXEL_MEAN = [0.485, 0.456, 0.406]
_C.INPUT.PIXEL_STD = [0.229, 0.224, 0.225]
_C.INPUT.CROP_PADDING = 4
_C.INPUT.RRCROP_SCALE = (0.08, 1.0)
_C.INPUT.CUTOUT_N = 1
_C.INPUT.CUTOUT_LEN = 16
_C.INPUT.GN_MEAN = 0.0
_C.INPUT.GN_STD = 0.15
_C.INPUT.RANDAUGMENT_N = 2
_C.INPUT.RANDAUGMENT_M = 10
_C.INPUT.COLORJITTER_B = 0.4
_C.INPUT.COLORJITTER_C = 0.4
_C.INPUT.COLORJITTER_S = 0.4
_C.INPUT.COLORJITTER_H = 0.1
_C.INPUT.RGS_P = 0.2
_C.INPUT.GB_P = 0.5
_C.INPUT.GB_K = 21

###########################
# Dataset
###########################
_C.DATASET = CN()
# Folder that contains the dataset folders
_C.DATASET.ROOT = ""
# Registered dataset class name
_C.DATASET.NAME = ""
_C.DATASET.SOURCE_DOMAINS = ()
_C.DATASET.TARGET_DOMAINS = ()
# SSL: total number of labeled images (-1 = unused)
_C.DATASET.NUM_LABELED = -1
# Images per class for few-shot learning; < 1 uses all images
_C.DATASET.NUM_SHOTS = -1
_C.DATASET.VAL_PERCENT = 0.1
_C.DATASET.STL10_FOLD = -1
_C.DATASET.CIFAR_C_TYPE = ""
_C.DATASET.CIFAR_C_LEVEL = 1
_C.DATASET.ALL_AS_UNLABELED = False

###########################
# Dataloader
###########################
_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4
# Apply the train transform K times per image (train loader only)
_C.DATALOADER.K_TRANSFORMS = 1
# Also return the un-augmented image as img0
_C.DATALOADER.RETURN_IMG0 = False
_C.DATALOADER.TRAIN_X = CN()
_C.DATALOADER.TRAIN_X.SAMPLER = "RandomSampler"
_C.DATALOADER.TRAIN_X.BATCH_SIZE = 32
# RandomDomainSampler: domains per batch (<= 0 means all)
_C.DATALOADER.TRAIN_X.N_DOMAIN = 0
# RandomClassSampler: instances per class
_C.DATALOADER.TRAIN_X.N_INS = 16
_C.DATALOADER.TRAIN_U = CN()
# Copy the sampler/batch settings of TRAIN_X
_C.DATALOADER.TRAIN_U.SAME_AS_X = True
_C.DATALOADER.TRAIN_U.SAMPLER = "RandomSampler"
_C.DATALOADER.TRAIN_U.BATCH_SIZE = 32
_C.DATALOADER.TRAIN_U.N_DOMAIN = 0
_C.DATALOADER.TRAIN_U.N_INS = 16
# vlprompt additions (not in upstream Dassl):
# Keep DataLoader workers alive between epochs (only with NUM_WORKERS > 0)
_C.DATALOADER.PERSISTENT_WORKERS = False
# Keep decoded images in memory when a split has at most this many images (0 disables); the
# transform still runs on every access, so results are unchanged
_C.DATALOADER.CACHE_IMAGES_MAX = 0
_C.DATALOADER.TEST = CN()
_C.DATALOADER.TEST.SAMPLER = "SequentialSampler"
_C.DATALOADER.TEST.BATCH_SIZE = 32

###########################
# Model
###########################
_C.MODEL = CN()
# Path to weights loaded with load_pretrained_weights after the model is built
_C.MODEL.INIT_WEIGHTS = ""
_C.MODEL.BACKBONE = CN()
# Backbone name (CLIP name for CLIP methods, e.g. RN50, ViT-B/16, tiny-vit)
_C.MODEL.BACKBONE.NAME = ""
_C.MODEL.BACKBONE.PRETRAINED = True
_C.MODEL.HEAD = CN()
_C.MODEL.HEAD.NAME = ""
# Hidden sizes of the head; empty means no head
_C.MODEL.HEAD.HIDDEN_LAYERS = ()
_C.MODEL.HEAD.ACTIVATION = "relu"
_C.MODEL.HEAD.BN = True
_C.MODEL.HEAD.DROPOUT = 0.0

###########################
# Optimization
###########################
_C.OPTIM = CN()
# adam, amsgrad, sgd, rmsprop, radam or adamw
_C.OPTIM.NAME = "adam"
_C.OPTIM.LR = 0.0003
_C.OPTIM.WEIGHT_DECAY = 5e-4
_C.OPTIM.MOMENTUM = 0.9
_C.OPTIM.SGD_DAMPNING = 0
_C.OPTIM.SGD_NESTEROV = False
_C.OPTIM.RMSPROP_ALPHA = 0.99
_C.OPTIM.ADAM_BETA1 = 0.9
_C.OPTIM.ADAM_BETA2 = 0.999
# Separate learning rates for the children named in NEW_LAYERS and the rest
_C.OPTIM.STAGED_LR = False
_C.OPTIM.NEW_LAYERS = ()
_C.OPTIM.BASE_LR_MULT = 0.1
# single_step, multi_step or cosine
_C.OPTIM.LR_SCHEDULER = "single_step"
# Step size(s); <= 0 for single_step means MAX_EPOCH
_C.OPTIM.STEPSIZE = (-1,)
_C.OPTIM.GAMMA = 0.1
_C.OPTIM.MAX_EPOCH = 10
# > 0 enables warmup for this many epochs (the main schedule is delayed by as much)
_C.OPTIM.WARMUP_EPOCH = -1
# constant or linear
_C.OPTIM.WARMUP_TYPE = "linear"
_C.OPTIM.WARMUP_CONS_LR = 1e-5
_C.OPTIM.WARMUP_MIN_LR = 1e-5
# True: the main schedule starts from its own step 0 after warmup
_C.OPTIM.WARMUP_RECOUNT = True

###########################
# Train
###########################
_C.TRAIN = CN()
# Save a checkpoint every N epochs; <= 0 saves only the last epoch
_C.TRAIN.CHECKPOINT_FREQ = 0
# Print a train line every N batches
_C.TRAIN.PRINT_FREQ = 10
# TrainerXU epoch length: train_x, train_u or smaller_one
_C.TRAIN.COUNT_ITER = "train_x"

###########################
# Test
###########################
_C.TEST = CN()
_C.TEST.EVALUATOR = "Classification"
_C.TEST.PER_CLASS_RESULT = False
# Save the row-normalised confusion matrix to OUTPUT_DIR/cmat.pt
_C.TEST.COMPUTE_CMAT = False
# Skip every evaluation
_C.TEST.NO_TEST = False
# Split used by test() when none is given: val or test
_C.TEST.SPLIT = "test"
# last_step or best_val
_C.TEST.FINAL_MODEL = "last_step"

###########################
# Trainer specifics (Dassl's built-in methods; kept so foreign configs merge)
###########################
_C.TRAINER = CN()
_C.TRAINER.NAME = ""

_C.TRAINER.MCD = CN()
_C.TRAINER.MCD.N_STEP_F = 4
_C.TRAINER.MME = CN()
_C.TRAINER.MME.LMDA = 0.1
_C.TRAINER.CDAC = CN()
_C.TRAINER.CDAC.CLASS_LR_MULTI = 10
_C.TRAINER.CDAC.RAMPUP_COEF = 30
_C.TRAINER.CDAC.RAMPUP_ITRS = 1000
_C.TRAINER.CDAC.TOPK_MATCH = 5
_C.TRAINER.CDAC.P_THRESH = 0.95
_C.TRAINER.CDAC.STRONG_TRANSFORMS = ()
_C.TRAINER.SE = CN()
_C.TRAINER.SE.EMA_ALPHA = 0.999
_C.TRAINER.SE.CONF_THRE = 0.95
_C.TRAINER.SE.RAMPUP = 300
_C.TRAINER.M3SDA = CN()
_C.TRAINER.M3SDA.LMDA = 0.5
_C.TRAINER.M3SDA.N_STEP_F = 4
_C.TRAINER.DAEL = CN()
_C.TRAINER.DAEL.WEIGHT_U = 0.5
_C.TRAINER.DAEL.CONF_THRE = 0.95
_C.TRAINER.DAEL.STRONG_TRANSFORMS = ()
_C.TRAINER.CROSSGRAD = CN()
_C.TRAINER.CROSSGRAD.EPS_F = 1.0
_C.TRAINER.CROSSGRAD.EPS_D = 1.0
_C.TRAINER.CROSSGRAD.ALPHA_F = 0.5
_C.TRAINER.CROSSGRAD.ALPHA_D = 0.5
_C.TRAINER.DDAIG = CN()
_C.TRAINER.DDAIG.G_ARCH = ""
_C.TRAINER.DDAIG.LMDA = 0.3
_C.TRAINER.DDAIG.CLAMP = False
_C.TRAINER.DDAIG.CLAMP_MIN = -1.0
_C.TRAINER.DDAIG.CLAMP_MAX = 1.0
_C.TRAINER.DDAIG.WARMUP = 0
_C.TRAINER.DDAIG.ALPHA = 0.5
_C.TRAINER.DAELDG = CN()
_C.TRAINER.DAELDG.WEIGHT_U = 0.5
_C.TRAINER.DAELDG.CONF_THRE = 0.95
_C.TRAINER.DAELDG.STRONG_TRANSFORMS = ()
_C.TRAINER.DOMAINMIX = CN()
_C.TRAINER.DOMAINMIX.TYPE = "crossdomain"
_C.TRAINER.DOMAINMIX.ALPHA = 1.0
_C.TRAINER.DOMAINMIX.BETA = 1.0
_C.TRAINER.ENTMIN = CN()
_C.TRAINER.ENTMIN.LMDA = 1e-3
_C.TRAINER.MEANTEACHER = CN()
_C.TRAINER.MEANTEACHER.WEIGHT_U = 1.0
_C.TRAINER.MEANTEACHER.EMA_ALPHA = 0.999
_C.TRAINER.MEANTEACHER.RAMPUP = 5
_C.TRAINER.MIXMATCH = CN()
_C.TRAINER.MIXMATCH.WEIGHT_U = 100.0
_C.TRAINER.MIXMATCH.TEMP = 2.0
_C.TRAINER.MIXMATCH.MIXUP_BETA = 0.75
_C.TRAINER.MIXMATCH.RAMPUP = 20000
_C.TRAINER.FIXMATCH = CN()
_C.TRAINER.FIXMATCH.WEIGHT_U = 1.0
_C.TRAINER.FIXMATCH.CONF_THRE = 0.95
_C.TRAINER.FIXMATCH.STRONG_TRANSFORMS = ()
