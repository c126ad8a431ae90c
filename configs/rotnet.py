r"""RotNet (Gidaris, Singh & Komodakis 2018) pre-training: predict 0/90/180/270.

Variants after the colon: digits (default; offline MNIST-5k), cifar10, cifar100,
stl10, imagenet2012, imagenette, image_folder; append ',runlocal' for a laptop
smoke run. Examples:

  python -m ssl_jax.main --config=configs/rotnet.py:digits --workdir=runs/rotnet_digits
  python -m ssl_jax.main --config=configs/rotnet.py:cifar10 --workdir=runs/rotnet_c10
  python -m ssl_jax.main --config=configs/rotnet.py:imagenet2012 \
      --config.data.manual_dir=/data/imagenet --workdir=gs://bucket/rotnet_in1k
"""

from ssl_jax import config_lib
from ssl_jax import optim

DATASETS = config_lib.DATASETS


def get_config(arg=None):
  dataset, flags = config_lib.parse_variant(arg, DATASETS, default="digits")
  c = config_lib.base_config(dataset)
  c.method = "rotnet"
  c.rotnet = dict(
      # ImageNet: torchvision RandomSizedCrop(224) + flip (FeatureLearningRotNet
      # dataloader.py, config/ImageNet_RotNet_AlexNet.py random_sized_crop=True).
      # No colour augmentation anywhere in the paper.
      crop_scale=(0.08, 1.0),
      crop_ratio=(3 / 4, 4 / 3),
      flip_prob=0.5,
  )
  # Reference ImageNet config (config/ImageNet_RotNet_AlexNet.py): SGD, Nesterov
  # momentum 0.9, weight decay 5e-4, batch 192 (x 4 rotations), lr 0.01 dropped
  # 10x at epochs 15, 30, 45 of 50 (LUT_lr).
  c.optim = optim.default_optim_config("sgd")
  c.optim.momentum = 0.9
  c.optim.nesterov = True
  c.optim.weight_decay = 5e-4
  # algorithms/Algorithm.py builds torch.optim.SGD over every parameter with
  # requires_grad: biases and BN scales are decayed too.
  c.optim.exclude_bias_and_norm = False
  c.optim.lr_scaling = "linear"
  c.optim.base_learning_rate = 0.01 * 256 / 192   # = 0.01 at batch 192
  c.optim.warmup_epochs = 0.0
  c.optim.schedule = "step"
  c.optim.decay_fractions = (15 / 50, 30 / 50, 45 / 50)
  c.optim.decay_factor = 0.1
  c.batch_size = 192
  c.total_epochs = 50.0
  c.model.depth = 50
  c.model.stem = "imagenet"
  c.augment.preset = "none"       # unused: view_recipes reads config.rotnet
  c.augment.size = 224

  if dataset in config_lib.CIFAR_RECIPE_DATASETS:
    # Sec. 3.1 (CIFAR-10): SGD, batch 128, momentum 0.9, weight decay 5e-4, lr 0.1
    # dropped by a factor of 5 after 30, 60 and 80 of 100 epochs (the released
    # config/CIFAR10_RotNet_NIN4blocks.py: Nesterov, the same drops at 60/120/160
    # of 200 epochs). Data: RandomCrop(32, padding=4) + flip; we approximate the
    # 4-px translation with a mild random resized crop (area 0.64-1).
    c.model.stem = "cifar"
    c.model.depth = 18
    c.augment.size = 32
    c.rotnet.crop_scale = (0.64, 1.0)
    c.batch_size = 128
    c.optim.base_learning_rate = 0.1 * 256 / 128  # = 0.1 at batch 128
    c.optim.decay_fractions = (0.3, 0.6, 0.8)
    c.optim.decay_factor = 0.2
    c.total_epochs = 100.0
    c.eval_batch_size = 512
  if dataset == "stl10":
    c.augment.size = 96
    c.data.train_split = "train+unlabelled"
  if dataset == "digits":
    # Offline default, sized for a few minutes on two CPU cores (as simclr.py).
    config_lib.apply_digits(c)
  if "runlocal" in flags:
    config_lib.apply_runlocal(c)
  return c
