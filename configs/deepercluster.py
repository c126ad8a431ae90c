r"""DeeperCluster (Caron et al. 2019) pre-training: rotation x two-level clustering targets.

Variants after the colon: digits (default; offline MNIST-5k), cifar10, cifar100,
stl10, imagenet2012, imagenette, image_folder; append ',runlocal' for a laptop
smoke run. The imagenet2012 variant carries the paper's settings (its YFCC100M
data is not in TFDS). Examples:

  python -m ssl_jax.main --config=configs/deepercluster.py:digits --workdir=runs/dcc_digits
  python -m ssl_jax.main --config=configs/deepercluster.py:cifar10 --workdir=runs/dcc_c10
  python -m ssl_jax.main --config=configs/deepercluster.py:imagenet2012 \
      --config.data.manual_dir=/data/imagenet --workdir=gs://bucket/dcc_in1k
"""

from ssl_jax import config_lib
from ssl_jax import optim

DATASETS = config_lib.DATASETS


def get_config(arg=None):
  dataset, flags = config_lib.parse_variant(arg, DATASETS, default="digits")
  c = config_lib.base_config(dataset)
  c.method = "deepercluster"
  # Paper Sec. 4 / facebookresearch/DeeperCluster main.py and main.sh.
  c.deepercluster = dict(
      num_clusters=320000,        # Sec. 4: k = 320,000 on YFCC100M (main.sh --k 320000)
      num_super_clusters=4,       # 4 super-clusters x 4 rotations = 16 super-classes
      rotation=True,              # --rotnet true: targets are (rotation, cluster) pairs
      reassign_every_epochs=3,    # --reassignment 3
      pca_dim=4096,               # --dim_pca 4096 (VGG-16's fc features; min with D)
      kmeans_iters=10,            # --niter 10
      kmeans_init="random",       # random training points as centroids (clustering.py)
      warm_start=False,           # --warm_restart false
      head_init_std=0.01,         # as DeepCluster: N(0, 0.01^2) weights, zero bias
      crop_scale=(0.08, 1.0),     # loader.py: RandomResizedCrop(224) + flip
      groups=0,                   # mesh groups for the sub-classifiers; 0: automatic
  )
  # main.py / main.sh: SGD (momentum 0.9), lr 0.1 constant, weight decay 1e-5,
  # batch 48 per GPU on 64 GPUs (3,072), 100 epochs; VGG-16 with BN on Sobel
  # input. The library's backbone is the ResNet: ResNet-50 here.
  c.optim = optim.default_optim_config("sgd")
  c.optim.base_learning_rate = 0.1
  c.optim.lr_scaling = "none"
  c.optim.end_learning_rate = 0.1  # = the peak: a constant learning rate
  c.optim.weight_decay = 1e-5
  # src/model/model_factory.py sgd_optimizer: torch.optim.SGD over every
  # parameter with requires_grad, biases and BN scales decayed too.
  c.optim.exclude_bias_and_norm = False
  c.optim.momentum = 0.9
  c.optim.warmup_epochs = 0.0
  c.batch_size = 3072
  c.total_epochs = 100.0
  c.model.depth = 50
  c.model.stem = "imagenet"
  c.model.input_filter = "sobel"
  c.augment.preset = "none"       # unused: view_recipes reads config.deepercluster
  c.augment.size = 224

  if dataset in config_lib.CIFAR_RECIPE_DATASETS:
    # No CIFAR recipe in the paper; our choice, as for DeepCluster: ResNet-18 with
    # the CIFAR stem, RGB input, k = 10 x the classes split over 4 super-clusters,
    # batch 256, 200 epochs.
    c.model.stem = "cifar"
    c.model.depth = 18
    c.model.input_filter = "none"
    c.augment.size = 32
    c.deepercluster.num_clusters = 100
    c.batch_size = 256
    c.eval_batch_size = 512
    c.total_epochs = 200.0
  if dataset == "cifar100":
    c.deepercluster.num_clusters = 1000
  if dataset == "stl10":
    c.augment.size = 96
    c.data.train_split = "train+unlabelled"
  if dataset == "digits":
    config_lib.apply_digits(c, batch_size=None)
    c.deepercluster.reassign_every_epochs = 1
  if "runlocal" in flags:
    config_lib.apply_runlocal(c)
  return c
