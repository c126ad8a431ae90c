r"""SimCLR (Chen et al. 2020) pre-training.

Variants after the colon: digits (default; offline MNIST-5k), cifar10, cifar100,
stl10, imagenet2012, imagenette, image_folder; append ',runlocal' for a laptop
smoke run. Examples:

  python -m ssl_jax.main --config=configs/simclr.py:digits --workdir=runs/simclr_digits
  python -m ssl_jax.main --config=configs/simclr.py:cifar10 --workdir=runs/simclr_c10
  python -m ssl_jax.main --config=configs/simclr.py:image_folder \
      --config.data.folder=/path/to/root --workdir=runs/mine
  python -m ssl_jax.main --config=configs/simclr.py:imagenet2012 \
      --config.data.manual_dir=/data/imagenet --workdir=gs://bucket/simclr_in1k
"""

from ssl_jax import config_lib

DATASETS = config_lib.DATASETS


def get_config(arg=None):
  dataset, flags = config_lib.parse_variant(arg, DATASETS, default="digits")
  c = config_lib.base_config(dataset)
  c.method = "simclr"
  c.simclr = dict(
      temperature=0.1,            # Sec. 5.1 / Table 5: 0.1 with large batches (ImageNet)
      projection_dim=128,         # Sec. 4.2: g(.) is a 2-layer MLP to 128 dimensions
      projector_layers=2,         # v1: 2 layers, BN on each (SimCLR v2 uses 3)
      projector_hidden_dim=0,     # 0: the encoder's feature width (2048 for ResNet-50)
  )
  # Sec. 4/B.1: LARS, lr = 0.3 x B/256, weight decay 1e-6, 10 warm-up epochs then
  # cosine decay, batch 4096, 100 epochs (the paper's main runs go to 1000).
  c.optim.name = "lars"
  c.optim.base_learning_rate = 0.3
  c.optim.lr_scaling = "linear"
  c.optim.weight_decay = 1e-6
  c.optim.warmup_epochs = 10.0
  c.batch_size = 4096
  c.total_epochs = 100.0
  c.model.depth = 50
  c.model.stem = "imagenet"
  c.augment.preset = "simclr"     # colour strength 1.0, blur p=0.5 (appendix A)
  c.augment.size = 224

  if dataset in config_lib.CIFAR_RECIPE_DATASETS:
    # Appendix B.9 and the reference repo's CIFAR-10 command: CIFAR stem (3x3/1,
    # no max-pool), ResNet-18 there, colour strength 0.5, no blur, temperature
    # 0.5, batch 512, lr 1.0 x B/256, weight decay 1e-4, 1000 epochs.
    c.model.stem = "cifar"
    c.model.depth = 18
    c.augment.preset = "simclr_cifar"
    c.augment.size = 32
    c.simclr.temperature = 0.5
    c.batch_size = 512
    c.optim.base_learning_rate = 1.0
    c.optim.weight_decay = 1e-4
    c.total_epochs = 1000.0
    c.eval_batch_size = 512
  if dataset == "stl10":
    c.augment.size = 96
    c.data.train_split = "train+unlabelled"
  if dataset == "digits":
    # The offline default: 4,000 real MNIST digits (32x32). Sized for a few
    # minutes on two CPU cores (ResNet-18 at 1/8 width); kNN on the 1,000
    # held-out digits.
    config_lib.apply_digits(c)
    c.optim.warmup_epochs = 1.0
  if "runlocal" in flags:
    config_lib.apply_runlocal(c)
  return c
