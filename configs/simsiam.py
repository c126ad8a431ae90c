r"""SimSiam (Chen & He 2021) pre-training.

Variants after the colon: digits (default; offline MNIST-5k), cifar10, cifar100,
stl10, imagenet2012, imagenette, image_folder; append ',runlocal' for a laptop
smoke run. Examples:

  python -m ssl_jax.main --config=configs/simsiam.py:digits --workdir=runs/simsiam_digits
  python -m ssl_jax.main --config=configs/simsiam.py:cifar10 --workdir=runs/simsiam_c10
  python -m ssl_jax.main --config=configs/simsiam.py:imagenet2012 \
      --config.data.manual_dir=/data/imagenet --workdir=gs://bucket/simsiam_in1k
"""

from ssl_jax import config_lib
from ssl_jax import optim

DATASETS = config_lib.DATASETS


def get_config(arg=None):
  dataset, flags = config_lib.parse_variant(arg, DATASETS, default="digits")
  c = config_lib.base_config(dataset)
  c.method = "simsiam"
  c.simsiam = dict(
      projection_dim=2048,        # Sec. 3: projector output 2048-d
      projector_hidden_dim=2048,  # Sec. 3: "The hidden fc is 2048-d" (CIFAR too, Appendix D)
      projector_layers=3,         # Sec. 3: 3 layers, BN on each (output BN without affine)
      predictor_hidden_dim=512,   # Sec. 3: the predictor's 512-d bottleneck
  )
  # Sec. 3 "Optimizer": SGD momentum 0.9, lr 0.05 x B/256, weight decay 1e-4,
  # cosine decay, no warm-up, batch 512, 100 epochs; the predictor's lr is not
  # decayed (Sec. 4.1 / Table 1(a), reference --fix-pred-lr). ResNet-50, MoCo
  # v2's augmentations (Sec. 3).
  c.optim = optim.default_optim_config("sgd")
  c.optim.base_learning_rate = 0.05
  c.optim.lr_scaling = "linear"
  c.optim.weight_decay = 1e-4
  c.optim.warmup_epochs = 0.0
  c.optim.fixed_lr_params = ("predictor",)
  # The reference's torch.optim.SGD(weight_decay=1e-4) decays every parameter,
  # biases and BN scales included.
  c.optim.exclude_bias_and_norm = False
  c.batch_size = 512
  c.total_epochs = 100.0
  c.model.depth = 50
  c.model.stem = "imagenet"
  c.augment.preset = "mocov2"
  c.augment.size = 224

  if dataset in config_lib.CIFAR_RECIPE_DATASETS:
    # Appendix D (CIFAR-10): ResNet-18 with the CIFAR stem, 2-layer projector,
    # SGD lr 0.03 x B/256, weight decay 5e-4, batch 512, 800 epochs. MoCo v2's
    # augmentations without blur on 32 px images (preset 'mocov2_cifar': crop
    # area 0.2-1, jitter 0.4/0.4/0.4/0.1 p=0.8, grey 0.2), as the CIFAR
    # reproduction that matches the paper's 91.8% linear.
    c.model.stem = "cifar"
    c.model.depth = 18
    c.simsiam.projector_layers = 2
    c.augment.preset = "mocov2_cifar"
    c.augment.size = 32
    c.optim.base_learning_rate = 0.03
    c.optim.weight_decay = 5e-4
    c.total_epochs = 800.0
    c.eval_batch_size = 512
  if dataset == "stl10":
    c.augment.size = 96
    c.data.train_split = "train+unlabelled"
  if dataset == "digits":
    # Offline default sized for minutes on two CPU cores (ResNet-18 at 1/8 width).
    config_lib.apply_digits(c)
  if "runlocal" in flags:
    config_lib.apply_runlocal(c)
  return c
