r"""MoCo v2 (Chen, Fan, Girshick & He 2020) pre-training.

Variants after the colon: digits (default; offline MNIST-5k), cifar10, cifar100,
stl10, imagenet2012, imagenette, image_folder; append ',runlocal' for a laptop
smoke run. Examples:

  python -m ssl_jax.main --config=configs/mocov2.py:digits --workdir=runs/mocov2_digits
  python -m ssl_jax.main --config=configs/mocov2.py:cifar10 --workdir=runs/mocov2_c10
  python -m ssl_jax.main --config=configs/mocov2.py:imagenet2012 \
      --config.data.manual_dir=/data/imagenet --workdir=gs://bucket/mocov2_in1k
"""

from ssl_jax import config_lib
from ssl_jax import optim

DATASETS = config_lib.DATASETS


def get_config(arg=None):
  dataset, flags = config_lib.parse_variant(arg, DATASETS, default="digits")
  c = config_lib.base_config(dataset)
  c.method = "mocov2"
  c.mocov2 = dict(
      temperature=0.2,            # v2 Sec. 2 / Table 1: tau = 0.2 with the MLP head
      queue_size=65536,           # MoCo Sec. 4: K = 65,536 (a multiple of the global batch)
      momentum=0.999,             # MoCo Sec. 4.1 / Table 4: m = 0.999
      projection_dim=128,         # MoCo: 128-d keys; v2's MLP head 2048 -> 128
      projector_hidden_dim=0,     # 0: the encoder's feature width (2048 for ResNet-50)
  )
  # v2 Sec. 2 and facebookresearch/moco: SGD momentum 0.9, lr 0.03 x B/256,
  # weight decay 1e-4, cosine schedule (v2's "cos"), batch 256, 200 epochs,
  # ResNet-50, the --aug-plus augmentations (preset 'mocov2': blur added).
  c.optim = optim.default_optim_config("sgd")
  c.optim.base_learning_rate = 0.03
  c.optim.lr_scaling = "linear"
  c.optim.weight_decay = 1e-4
  # torch.optim.SGD(model.parameters(), weight_decay=1e-4) in main_moco.py
  # decays every parameter, biases and BN scales included.
  c.optim.exclude_bias_and_norm = False
  c.optim.warmup_epochs = 0.0
  c.batch_size = 256
  c.total_epochs = 200.0
  c.model.depth = 50
  c.model.stem = "imagenet"
  c.augment.preset = "mocov2"
  c.augment.size = 224

  if dataset in config_lib.CIFAR_RECIPE_DATASETS:
    # The official MoCo CIFAR-10 demo (facebookresearch/moco colab): ResNet-18
    # with the CIFAR stem, batch 512, lr 0.06 (= 0.03 x 512/256), weight decay
    # 5e-4, K = 4096, m = 0.99, T = 0.1, 200 epochs; its augmentations are
    # SimCLR's CIFAR ones (crop 0.08-1, jitter 0.4/0.4/0.4/0.1 p=0.8, grey 0.2,
    # no blur): preset 'simclr_cifar'. (The demo also symmetrises the loss; we
    # keep the paper's one-directional loss.)
    c.model.stem = "cifar"
    c.model.depth = 18
    c.augment.preset = "simclr_cifar"
    c.augment.size = 32
    c.batch_size = 512
    c.eval_batch_size = 512
    c.optim.weight_decay = 5e-4
    c.mocov2.queue_size = 4096
    c.mocov2.momentum = 0.99
    c.mocov2.temperature = 0.1
  if dataset == "stl10":
    c.augment.size = 96
    c.data.train_split = "train+unlabelled"
  if dataset == "digits":
    # Offline default sized for minutes on two CPU cores (ResNet-18 at 1/8
    # width, ~300 steps); a queue of 4 batches (the training set has 4,000
    # images: a larger queue would hold keys of the query's own image).
    config_lib.apply_digits(c)
    c.mocov2.queue_size = 1024
  if "runlocal" in flags:
    config_lib.apply_runlocal(c)
    c.mocov2.queue_size = 4 * c.batch_size
  return c
