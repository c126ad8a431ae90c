r"""MoCo v3 (Chen, Xie & He 2021) pre-training, ResNet form.

Variants after the colon: digits (default; offline MNIST-5k), cifar10, cifar100,
stl10, imagenet2012, imagenette, image_folder; append ',runlocal' for a laptop
smoke run. Examples:

  python -m ssl_jax.main --config=configs/mocov3.py:digits --workdir=runs/mocov3_digits
  python -m ssl_jax.main --config=configs/mocov3.py:cifar10 --workdir=runs/mocov3_c10
  python -m ssl_jax.main --config=configs/mocov3.py:imagenet2012 \
      --config.data.manual_dir=/data/imagenet --workdir=gs://bucket/mocov3_in1k
"""

from ssl_jax import config_lib

DATASETS = config_lib.DATASETS


def get_config(arg=None):
  dataset, flags = config_lib.parse_variant(arg, DATASETS, default="digits")
  c = config_lib.base_config(dataset)
  c.method = "mocov3"
  c.mocov3 = dict(
      temperature=1.0,            # appendix (ResNet-50): T = 1.0
      momentum_base=0.996,        # 1000 epochs: m 0.996 -> 1 (cosine); 100/300 epochs: 0.99
      projection_dim=256,         # Sec. 4 / appendix: MLP heads, 4096 hidden, 256 out
      projector_hidden_dim=4096,  # projector: 3 layers, BN on each
      predictor_hidden_dim=4096,  # predictor: 2 layers
  )
  # Appendix and facebookresearch/moco-v3 CONFIG.md (ResNet-50, 1000 epochs,
  # its best result): LARS, lr 0.3 x B/256, weight decay 1.5e-6 (biases and
  # norms excluded), 10 warm-up epochs, cosine decay, batch 4096; BYOL's
  # augmentations (the reference uses crop area 0.2-1, preset 'byol' 0.08-1).
  c.optim.name = "lars"
  c.optim.base_learning_rate = 0.3
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
    # No CIFAR recipe in the paper; as for BYOL/SimCLR: CIFAR stem, ResNet-18,
    # no blur (preset byol_cifar), batch 512; m 0.99 as the reference's
    # shorter (100/300-epoch) runs.
    c.model.stem = "cifar"
    c.model.depth = 18
    c.augment.preset = "byol_cifar"
    c.augment.size = 32
    c.batch_size = 512
    c.eval_batch_size = 512
    c.mocov3.momentum_base = 0.99
  if dataset == "stl10":
    c.augment.size = 96
    c.data.train_split = "train+unlabelled"
  if dataset == "digits":
    # Offline default sized for minutes on two CPU cores (ResNet-18 at 1/8 width).
    config_lib.apply_digits(c)
    c.optim.warmup_epochs = 1.0
  if "runlocal" in flags:
    config_lib.apply_runlocal(c)
  return c
