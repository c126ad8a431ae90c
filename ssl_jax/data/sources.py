"""Opening a dataset: catalog (with up-front offline detection), ``digits``, image folders.

Every dataset ends up as a prepared TFDS dataset in ArrayRecord format, read with
random access through ``builder.as_data_source(split)`` (what ``tfds.data_source``
does). Datasets of ours (``digits``, image folders) are built into ``data_dir`` on
first use. A catalog dataset that is neither prepared nor downloadable fails at
once with the fix, instead of TFDS's minutes of download retries.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import urllib.parse
import urllib.request

import numpy as np
import tensorflow_datasets as tfds

from ssl_jax.data import builders
from ssl_jax.data import crops

# How long the reachability probe of a download host may take, in seconds.
PROBE_TIMEOUT = 2.0
# Probed when a catalog builder lists no download URL of its own.
FALLBACK_PROBE_URL = "https://storage.googleapis.com"
OURS = ("digits", "image_folder")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the trainer needs to know about a dataset before reading it.

  Attributes:
    name: ``data_config.name``.
    num_classes: number of label values (labels are ``0 .. num_classes - 1``;
      STL-10's ``unlabelled`` examples carry ``-1``).
    train_size, eval_train_size, eval_test_size: examples in ``train_split``,
      ``eval_train_split`` and ``eval_test_split``.
    image_shape: ``(H, W, 3)`` of every image, or ``None`` when sizes vary (the
      host then crops: ``train_batches`` yields ``views``).
  """

  name: str
  num_classes: int
  train_size: int
  eval_train_size: int
  eval_test_size: int
  image_shape: tuple[int, int, int] | None


class Dataset:
  """An opened, prepared TFDS dataset and how to turn its records into uint8 RGB."""

  def __init__(self, name: str, builder: tfds.core.DatasetBuilder):
    self.name = name
    self.builder = builder
    features = builder.info.features
    missing = {"image", "label"} - set(features.keys())
    if missing:
      raise ValueError(
          f"dataset {name!r} has no {sorted(missing)} feature (features: "
          f"{sorted(features.keys())}); ssl_jax reads an 'image' and a 'label'")
    image = features["image"]
    shape = tuple(image.shape)
    if len(shape) != 3 or shape[-1] not in (1, 3, None) or image.np_dtype != np.uint8:
      raise ValueError(f"dataset {name!r}: 'image' must be uint8 [H, W, 1 or 3], got "
                       f"{image.np_dtype} {shape}")
    # Encoded images (tfds.features.Image) are decoded by us with PIL (any mode ->
    # RGB); raw uint8 tensors (our builders) need no decoding at all.
    self.encoded = isinstance(image, tfds.features.Image)
    self.stored_channels = shape[-1]
    fixed = shape[0] is not None and shape[1] is not None
    self.image_shape = (shape[0], shape[1], 3) if fixed else None
    self.num_classes = features["label"].num_classes
    self._decoders = {"image": tfds.decode.SkipDecoding()} if self.encoded else None
    self._sources = {}
    self._lock = threading.Lock()

  def source(self, split: str):
    """Random-access ``ArrayRecordDataSource`` of ``split`` (e.g. ``'train+unlabelled'``)."""
    with self._lock:
      if split not in self._sources:
        try:
          self._sources[split] = self.builder.as_data_source(split, decoders=self._decoders)
        except (KeyError, ValueError) as e:
          raise ValueError(
              f"dataset {self.name!r} has no split {split!r} (splits: "
              f"{sorted(self.builder.info.splits.keys())}); set data_config's "
              f"train_split / eval_train_split / eval_test_split: {e}") from e
      return self._sources[split]

  def images(self, records) -> np.ndarray:
    """The records' images as one ``uint8 [n, H, W, 3]`` batch (fixed-size datasets)."""
    if self.encoded:
      images = np.stack([crops.decode(r["image"]) for r in records])
      if images.shape[1:] != self.image_shape:
        raise ValueError(f"dataset {self.name!r}: decoded images are {images.shape[1:]}, "
                         f"its features say {self.image_shape}")
      return images
    images = np.stack([r["image"] for r in records])
    if self.stored_channels == 1:
      images = np.broadcast_to(images, images.shape[:-1] + (3,)).copy()
    return images


_OPENED: dict[tuple, Dataset] = {}
_OPEN_LOCK = threading.Lock()


def resolve_data_dir(data_dir: str | None) -> str:
  """``data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets`` (TFDS's default)."""
  data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  return os.path.abspath(os.path.expanduser(data_dir))


def open_dataset(config) -> Dataset:
  """The prepared dataset ``config.name`` in ``config.data_dir``, built first if ours.

  Opened datasets are cached per process (keyed by name, data_dir, folder,
  manual_dir), so repeated calls cost nothing.
  """
  data_dir = resolve_data_dir(config.data_dir)
  key = (config.name, data_dir, config.folder, config.manual_dir,
         config.get("corrupt_images", "skip"))
  with _OPEN_LOCK:
    if key not in _OPENED:
      if config.name == "digits":
        digits = builders.SslJaxDigits(data_dir=data_dir)
        _prepare(digits)
        dataset = Dataset("digits", tfds.builder_from_directory(digits.data_path))
      elif config.name == "image_folder":
        dataset = Dataset("image_folder", _open_image_folder(
            config.folder, data_dir, config.get("corrupt_images", "skip")))
      else:
        dataset = Dataset(config.name, _open_catalog(config.name, data_dir, config.manual_dir))
      _OPENED[key] = dataset
    return _OPENED[key]


def _open_image_folder(folder: str | None, data_dir: str,
                       corrupt_images: str = "skip") -> tfds.core.DatasetBuilder:
  if not folder:
    raise ValueError(
        "name='image_folder' needs data_config.folder: a directory laid out as "
        "<folder>/<split>/<class>/<image>.jpg (splits such as train/ and test/)")
  files, class_names, fingerprint = builders.scan_image_folder(folder)
  root = os.path.realpath(folder)
  config_name = builders.folder_config_name(root, fingerprint, corrupt_images)
  path = os.path.join(data_dir, builders.SslJaxImageFolder.name, config_name,
                      str(builders.SslJaxImageFolder.VERSION))
  if not os.path.exists(os.path.join(path, "dataset_info.json")):
    config = builders.ImageFolderConfig(
        name=config_name, description=f"Image folder {root}", root=root,
        class_names=tuple(class_names),
        files={split: tuple(entries) for split, entries in files.items()},
        image_shape=builders.common_image_shape(root, files), corrupt_images=corrupt_images)
    _prepare(builders.SslJaxImageFolder(config=config, data_dir=data_dir))
  return tfds.builder_from_directory(path)


def _open_catalog(name: str, data_dir: str, manual_dir: str | None):
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(
        f"unknown dataset {name!r}: data_config.name must be 'digits' (offline default), "
        "'image_folder' (with data_config.folder) or a TFDS catalog name such as cifar10, "
        "cifar100, stl10, imagenet2012, imagenette") from e
  if not builder.is_prepared():
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
      if not manual_dir:
        raise ValueError(
            f"dataset {name!r} is not prepared in data_dir={data_dir} and cannot be "
            "downloaded: set data_config.manual_dir to the directory holding its files "
            f"({builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}), or point data_config.data_dir "
            f"at a directory where {name} is already prepared")
      if not os.path.isdir(os.path.expanduser(manual_dir)):
        raise ValueError(f"data_config.manual_dir={manual_dir!r} of {name!r} is not a directory")
      config = tfds.download.DownloadConfig(manual_dir=os.path.expanduser(manual_dir))
      _prepare(builder, download_config=config)
    else:
      urls = list(builder.url_infos or ()) or [FALLBACK_PROBE_URL]
      if not can_reach(urls):
        host = urllib.parse.urlsplit(urls[0]).hostname
        raise RuntimeError(
            f"dataset {name!r} is not prepared in data_dir={data_dir} and its download host "
            f"{host} cannot be reached (no internet?). Fix: on a machine with internet run "
            f"`tfds build {name} --data_dir=DIR --file_format=array_record`, copy DIR/"
            f"{name.split('/')[0]} into {data_dir} (or set data_config.data_dir / "
            "$TFDS_DATA_DIR to DIR); or use name='image_folder' with data_config.folder="
            "<root>/<split>/<class>/*.jpg; or the offline default name='digits'")
      _prepare(builder)
    builder = tfds.builder(name, data_dir=data_dir)
  formats = builder.info.available_file_formats()
  if not formats & set(tfds.core.FileFormat.with_random_access()):
    raise ValueError(
        f"dataset {name!r} in {builder.data_dir} is stored as {sorted(f.value for f in formats)}"
        ", which has no random access; convert it with `tfds convert_format --dataset_dir="
        f"{builder.data_dir} --out_file_format=array_record`, or rebuild it with "
        f"`tfds build {name} --file_format=array_record`")
  return builder


def _prepare(builder: tfds.core.DatasetBuilder, **kwargs) -> None:
  """Builds ``builder`` as ArrayRecord unless prepared; safe against a concurrent build.

  TFDS writes into ``<dir>.incomplete.<uuid>`` and renames it when done; if another
  process renamed first, our rename fails and its dataset is the one we read (so
  callers re-open the prepared dataset from its directory afterwards).
  """
  if not builder.is_prepared():
    try:
      builder.download_and_prepare(file_format="array_record", **kwargs)
    except Exception:  # pylint: disable=broad-except
      if not builder.is_prepared():
        raise


def can_reach(urls, timeout: float = PROBE_TIMEOUT) -> bool:
  """Whether a TCP connection to one of the ``urls``' hosts (or their proxy) opens in time.

  Runs in a daemon thread joined for at most ``timeout`` seconds: DNS lookups do not
  honour socket timeouts, so a machine without network could otherwise hang here.
  """
  proxies = urllib.request.getproxies()
  targets = []
  for url in urls[:3]:
    parts = urllib.parse.urlsplit(proxies.get(urllib.parse.urlsplit(url).scheme) or url)
    if parts.hostname:
      default_port = 443 if parts.scheme == "https" else 80
      targets.append((parts.hostname, parts.port or default_port))
  reached, done = threading.Event(), threading.Event()

  def probe():
    for target in dict.fromkeys(targets):
      try:
        socket.create_connection(target, timeout=timeout).close()
        reached.set()
        break
      except OSError:
        continue
    done.set()

  threading.Thread(target=probe, daemon=True).start()
  done.wait(timeout)
  return reached.is_set()
