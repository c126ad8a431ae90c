r"""Jigsaw puzzles (Noroozi & Favaro 2016) pre-training: which permutation shuffled the tiles?

Variants after the colon: digits (default; offline MNIST-5k), cifar10, cifar100,
stl10, imagenet2012, imagenette, image_folder; append ',runlocal' for a laptop
smoke run. Examples:

  python -m ssl_jax.main --config=configs/jigsaw.py:digits --workdir=runs/jigsaw_digits
  python -m ssl_jax.main --config=configs/jigsaw.py:cifar10 --workdir=runs/jigsaw_c10
  python -m ssl_jax.main --config=configs/jigsaw.py:imagenet2012 \
      --config.data.manual_dir=/data/imagenet --workdir=gs://bucket/jigsaw_in1k
"""

from ssl_jax import config_lib
from ssl_jax import optim

DATASETS = config_lib.DATASETS


def get_config(arg=None):
  dataset, flags = config_lib.parse_variant(arg, DATASETS, default="digits")
  c = config_lib.base_config(dataset)
  c.method = "jigsaw"
  c.jigsaw = dict(
      grid=3,                     # Sec. 3: a 3x3 grid of tiles
      tile_size=64,               # Sec. 3: 64x64 tiles inside 75x75 cells of a 225 crop
      num_permutations=1000,      # Sec. 3.2 / Table 3: 1,000 permutations work best
      permutation_seed=0,         # the set is a pure function of this seed
      hidden_dim=4096,            # fc7 (4096) after the concatenated per-tile features
      head_bn=False,              # the paper's CFN has no BatchNorm in fc7
      crop_scale=(0.3, 1.0),      # ours: a random crop of the image (paper: 225 of 256)
      flip_prob=0.0,              # the paper does not flip
      channel_jitter=2,           # Sec. 3.3: each colour channel jittered by 0-2 px
      # Sec. 3.3 "colour jittering" per tile (strengths ours: torchvision-style
      # 0.4/0.4/0.4/0.1, with probability 0.8); grayscale tiles against chromatic
      # aberration (30% in the released PyTorch code).
      jitter_prob=0.8,
      brightness=0.4,
      contrast=0.4,
      saturation=0.4,
      hue=0.1,
      grayscale_prob=0.3,
  )
  # Sec. 4 / the released Caffe solver: SGD, lr 0.01 (batch 256), step decay x0.1
  # (every ~1/3 of the 350k iterations), momentum 0.9, weight decay 5e-4.
  c.optim = optim.default_optim_config("sgd")
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.lr_scaling = "linear"
  c.optim.base_learning_rate = 0.01
  c.optim.warmup_epochs = 0.0
  c.optim.schedule = "step"
  c.optim.decay_fractions = (1 / 3, 2 / 3)
  c.optim.decay_factor = 0.1
  c.batch_size = 256
  c.total_epochs = 70.0             # 350k iterations x 256 / 1.28M images
  c.model.depth = 50
  c.model.stem = "imagenet"
  c.augment.preset = "none"         # unused: view_recipes reads config.jigsaw
  c.augment.size = 225

  if dataset in config_lib.CIFAR_RECIPE_DATASETS:
    # Ours for 32-px images, proportional to the paper: a 30-px view (no larger
    # than the images, which the trainer and the kNN centre crop require),
    # 10-px cells, 8-px tiles (the paper: 64 of 75, a gap of 15%; here 20%), 1-px
    # channel jitter; 100 permutations (the paper's Table 3 also tests 100), a
    # smaller head; ResNet-18 with the CIFAR stem; lr 0.05 x B/256 (SGD on ResNet).
    c.model.stem = "cifar"
    c.model.depth = 18
    c.augment.size = 30
    c.jigsaw.tile_size = 8
    c.jigsaw.channel_jitter = 1
    c.jigsaw.num_permutations = 100
    c.jigsaw.hidden_dim = 512
    c.jigsaw.head_bn = True
    c.batch_size = 256
    c.optim.base_learning_rate = 0.05
    c.total_epochs = 200.0
    c.eval_batch_size = 512
  if dataset == "stl10":
    c.augment.size = 96
    c.jigsaw.tile_size = 28
    c.data.train_split = "train+unlabelled"
  if dataset == "digits":
    # Offline default, sized for a few minutes on two CPU cores (as simclr.py).
    config_lib.apply_digits(c)
  if "runlocal" in flags:
    config_lib.apply_runlocal(c)
  return c
