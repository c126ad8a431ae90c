r"""BYOL (Grill et al. 2020) pre-training; ',gn_ws' for the variant without batch
statistics (Richemond et al. 2020: GroupNorm + Weight Standardisation).

Variants after the colon: digits (default; offline MNIST-5k), cifar10, cifar100,
stl10, imagenet2012, imagenette, image_folder; append ',gn_ws' for GN+WS and
',runlocal' for a laptop smoke run. Examples:

  python -m ssl_jax.main --config=configs/byol.py:digits --workdir=runs/byol_digits
  python -m ssl_jax.main --config=configs/byol.py:cifar10 --workdir=runs/byol_c10
  python -m ssl_jax.main --config=configs/byol.py:cifar10,gn_ws --workdir=runs/byol_gnws_c10
  python -m ssl_jax.main --config=configs/byol.py:imagenet2012 \
      --config.data.manual_dir=/data/imagenet --workdir=gs://bucket/byol_in1k
"""

from ssl_jax import config_lib

DATASETS = config_lib.DATASETS


def get_config(arg=None):
  words = [w.strip() for w in (arg or "").split(",") if w.strip()]
  gn_ws = "gn_ws" in words
  dataset, flags = config_lib.parse_variant(
      ",".join(w for w in words if w != "gn_ws"), DATASETS, default="digits")
  c = config_lib.base_config(dataset)
  c.method = "byol"
  c.byol = dict(
      projector_hidden_dim=4096,  # Sec. 3.3: MLP 4096 hidden (BN, ReLU) -> 256
      projection_dim=256,
      predictor_hidden_dim=4096,  # Sec. 3.3: the predictor has the projector's shape
      tau_base=0.996,             # Sec. 3.2: tau from 0.996 to 1 (cosine), 1000 epochs
      head_norm="batch",          # 'layer' without batch statistics (gn_ws)
  )
  # Sec. 3.3 / appendix C: LARS, lr 0.2 x B/256, weight decay 1.5e-6 (biases and
  # norms excluded from both), 10 warm-up epochs, cosine decay, batch 4096,
  # 1000 epochs; ResNet-50; the asymmetric augmentations of Table 6.
  c.optim.name = "lars"
  c.optim.base_learning_rate = 0.2
  c.optim.lr_scaling = "linear"
  c.optim.weight_decay = 1.5e-6
  c.optim.warmup_epochs = 10.0
  c.batch_size = 4096
  c.total_epochs = 1000.0
  c.model.depth = 50
  c.model.stem = "imagenet"
  c.augment.preset = "byol"
  c.augment.size = 224

  if dataset in config_lib.CIFAR_RECIPE_DATASETS:
    # BYOL has no CIFAR recipe. The CIFAR stem, ResNet-18 and no blur (preset
    # byol_cifar) as SimCLR's appendix B.9; the optimizer of solo-learn's CIFAR
    # BYOL (92.58% linear after 1000 epochs, scripts/pretrain/cifar/byol.yaml):
    # batch 256, LARS lr 1.0 x B/256 with LARC's clipped trust ratio, eta 0.02,
    # weight decay 1e-5, tau 0.99 -> 1. With the ImageNet settings (lr 0.2 x B/256,
    # eta 1e-3) a 300-step CIFAR-10 run ended below the random-init encoder.
    c.model.stem = "cifar"
    c.model.depth = 18
    c.augment.preset = "byol_cifar"
    c.augment.size = 32
    c.batch_size = 256
    c.eval_batch_size = 512
    c.optim.base_learning_rate = 1.0
    c.optim.trust_coefficient = 0.02
    c.optim.clip_trust_ratio = True
    c.optim.weight_decay = 1e-5
    c.byol.tau_base = 0.99
  if dataset == "stl10":
    c.augment.size = 96
    c.data.train_split = "train+unlabelled"
  if dataset == "digits":
    # Offline default sized for minutes on two CPU cores (ResNet-18 at 1/8 width,
    # ~300 steps), with the CIFAR recipe above.
    config_lib.apply_digits(c)
    c.optim.warmup_epochs = 1.0
  if gn_ws:
    # Richemond et al. 2020: GN + WS in the encoder, no BN anywhere (LayerNorm in
    # the MLP heads), so the train state has no batch statistics. On CIFAR-10 at
    # CPU scale (width 8, batch 256) it collapses within 50 steps, as every
    # batch-free head tried does; see the README's results.
    c.model.norm = "group_ws"
    c.byol.head_norm = "layer"
  if "runlocal" in flags:
    config_lib.apply_runlocal(c)
  return c
