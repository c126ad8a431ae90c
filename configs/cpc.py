r"""CPC v2 (Hénaff et al. 2019) pre-training: predict patch features rows ahead.

Variants after the colon: digits (default; offline MNIST-5k), cifar10, cifar100,
stl10, imagenet2012, imagenette, image_folder; append ',runlocal' for a laptop
smoke run. Examples:

  python -m ssl_jax.main --config=configs/cpc.py:digits --workdir=runs/cpc_digits
  python -m ssl_jax.main --config=configs/cpc.py:cifar10 --workdir=runs/cpc_c10
  python -m ssl_jax.main --config=configs/cpc.py:cifar10 --config.cpc.bidirectional=True \
      --workdir=runs/cpc_c10_bidir
  python -m ssl_jax.main --config=configs/cpc.py:imagenet2012 \
      --config.data.manual_dir=/data/imagenet --workdir=gs://bucket/cpc_in1k
"""

from ssl_jax import config_lib
from ssl_jax import optim

DATASETS = config_lib.DATASETS


def get_config(arg=None):
  dataset, flags = config_lib.parse_variant(arg, DATASETS, default="digits")
  c = config_lib.base_config(dataset)
  c.method = "cpc"
  c.cpc = dict(
      # Hénaff et al. 2019 Appendix A.2 (steps_to_ignore=2, steps_to_predict=3):
      # predict only the row 3 below; rows 1 and 2 below overlap the context's
      # patches or touch them (van den Oord et al. 2018 predicted k = 1..5).
      prediction_offsets=(3,),
      target_dim=64,              # Appendix A.2: targets are a 1x1 projection of z to 64-d
      embedding_scale=0.1,        # Appendix A.2: emb_scale, multiplies the predictions
      context_width=1024,         # ours (CPC v2's context network is a wide ResNet)
      context_bottleneck=256,
      context_blocks=5,           # ours; CPC v2 uses a deeper PixelCNN-style stack
      context_dim=1024,
      context_rows=2,             # causal kernel: rows r-1..r (a 3x3 kernel masked below its centre)
      context_cols=3,
      bidirectional=False,        # experimental: second autoregressor from the bottom
      crop_scale=(0.3, 1.0),      # the crop the grid is cut from (v1: random 224 of 256)
      flip_prob=0.5,
      patch_flip_prob=0.5,        # Hénaff et al. Sec. 3: per-patch random flips
      color_drop_prob=1.0,        # Sec. 3: "colour dropping": 2 of 3 channels removed per patch
  )
  # van den Oord et al. 2018 Sec. 3.3 / Hénaff et al. Sec. 3: 64-px patches with
  # 50% overlap (stride 32) -> a 7x7 grid, which covers 6 x 32 + 64 = 256 px (a
  # 224 crop would give 6x6); layer normalisation instead of batch norm (no
  # statistic shared between patches).
  c.model.patch_size = 64
  c.model.patch_stride = 32
  c.model.norm = "layer"
  c.model.depth = 50
  c.model.stem = "imagenet"
  c.augment.preset = "none"       # unused: view_recipes reads config.cpc
  c.augment.size = 256
  # van den Oord et al. 2018 Sec. 3.3: Adam, lr 2e-4 (no weight decay); ours:
  # cosine decay over the run.
  c.optim = optim.default_optim_config("adamw")
  c.optim.base_learning_rate = 2e-4
  c.optim.lr_scaling = "none"
  c.optim.weight_decay = 0.0
  c.optim.warmup_epochs = 0.0
  c.optim.end_learning_rate = 0.0
  c.batch_size = 512
  c.total_epochs = 100.0

  small_images = dataset in config_lib.CIFAR_RECIPE_DATASETS
  if small_images:
    # Ours for 32-px images, proportional to the paper: 8-px patches, stride 4
    # (50% overlap) -> the same 7x7 grid, so the same offsets; ResNet-18 with
    # the CIFAR stem; a smaller context network; Adam 1e-3.
    c.model.patch_size = 8
    c.model.patch_stride = 4
    c.model.stem = "cifar"
    c.model.depth = 18
    c.augment.size = 32
    c.cpc.context_width = 256
    c.cpc.context_bottleneck = 64
    c.cpc.context_blocks = 3
    c.cpc.context_dim = 256
    c.batch_size = 256
    c.optim.base_learning_rate = 1e-3
    c.total_epochs = 200.0
    c.eval_batch_size = 512
  if dataset == "stl10":
    c.augment.size = 96
    c.model.patch_size = 24
    c.model.patch_stride = 12
    c.data.train_split = "train+unlabelled"
  if dataset == "digits":
    # Offline default, sized for a few minutes on two CPU cores (as simclr.py).
    config_lib.apply_digits(c, batch_size=128, total_epochs=10.0, knn_every_epochs=5.0)
  if small_images:
    # Ours: a linear warm-up over the first 5% of the run. Without it, Adam's
    # first full-size steps shrink the patch features towards a constant (std
    # ratio 0.06 -> 0.01 on CIFAR-10) and InfoNCE sits at log N for ~60 steps.
    c.optim.warmup_epochs = 0.05 * c.total_epochs
  if "runlocal" in flags:
    config_lib.apply_runlocal(c)
  return c
