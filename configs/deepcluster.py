r"""DeepCluster v1 (Caron et al. 2018) pre-training: k-means pseudo-labels every epoch.

Variants after the colon: digits (default; offline MNIST-5k), cifar10, cifar100,
stl10, imagenet2012, imagenette, image_folder; append ',runlocal' for a laptop
smoke run. Examples:

  python -m ssl_jax.main --config=configs/deepcluster.py:digits --workdir=runs/dc_digits
  python -m ssl_jax.main --config=configs/deepcluster.py:cifar10 --workdir=runs/dc_c10
"""

from ssl_jax import config_lib
from ssl_jax import optim

DATASETS = config_lib.DATASETS


def get_config(arg=None):
  dataset, flags = config_lib.parse_variant(arg, DATASETS, default="digits")
  c = config_lib.base_config(dataset)
  c.method = "deepcluster"
  # Paper Sec. 4 / facebookresearch/deepcluster main.py defaults.
  c.deepcluster = dict(
      num_clusters=10000,         # Sec. 4.2 / Fig. 3: k = 10,000 is best on ImageNet
      pca_dim=256,                # Sec. 3.3: PCA-reduced to 256 dimensions, whitened, L2
      kmeans_iters=20,            # faiss Clustering niter = 20 (clustering.py run_kmeans)
      kmeans_init="random",       # faiss: k random training points
      head_init_std=0.01,         # main.py: top_layer.weight.normal_(0, 0.01), bias 0
      crop_scale=(0.08, 1.0),     # main.py: RandomResizedCrop(224) (torchvision's scale)
  )
  # main.py: SGD, lr 0.05 (constant), momentum 0.9, weight decay 10^-5, batch 256;
  # Sec. 4: 500 epochs for AlexNet.
  c.optim = optim.default_optim_config("sgd")
  c.optim.base_learning_rate = 0.05
  c.optim.lr_scaling = "none"
  c.optim.end_learning_rate = 0.05  # = the peak: a constant learning rate
  c.optim.weight_decay = 1e-5
  # main.py's torch.optim.SGD(weight_decay=10**-5) decays every parameter,
  # biases and BN scales included.
  c.optim.exclude_bias_and_norm = False
  c.optim.momentum = 0.9
  c.batch_size = 256
  c.total_epochs = 500.0
  c.model.depth = 50
  c.model.stem = "imagenet"
  c.augment.size = 224

  if dataset in config_lib.CIFAR_RECIPE_DATASETS:
    # No CIFAR recipe in the paper; our choice: ResNet-18 with the CIFAR stem,
    # k = 10 x the classes (the paper over-segments ImageNet 10x), 200 epochs.
    c.model.stem = "cifar"
    c.model.depth = 18
    c.augment.size = 32
    c.deepcluster.num_clusters = 100
    c.eval_batch_size = 512
    c.total_epochs = 200.0
  if dataset == "cifar100":
    c.deepcluster.num_clusters = 1000
  if dataset == "stl10":
    c.augment.size = 96
    c.data.train_split = "train+unlabelled"
  if dataset == "digits":
    config_lib.apply_digits(c, batch_size=None)
  if "runlocal" in flags:
    config_lib.apply_runlocal(c)
  return c
