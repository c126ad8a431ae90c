"""Train and eval batches: a deterministic, resumable order over a random-access source.

The host reads records (``ArrayRecordDataSource.__getitems__``), decodes them and,
only for datasets whose image sizes vary, crops them to fixed-size views; all
other per-pixel work (augmentation) runs on the device. Each element of a
``grain.MapDataset`` is one whole batch, computed from its step number alone, so
resuming at step ``s`` is indexing the dataset at ``s``; grain computes the next
``prefetch`` batches in background threads.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from typing import Iterator

import grain
import ml_collections
from ml_collections import config_dict
import numpy as np

from ssl_jax.data import crops
from ssl_jax.data import sources
from ssl_jax.data.sources import DatasetInfo

# Steps of the infinite train dataset (grain needs a length; this is ~10^18).
_FOREVER = 2**60

# Per-dataset defaults: (train_split, eval_test_split, image_size). image_size is the
# eval centre-crop size of variable-size datasets (224 for ImageNet, as the papers).
_DEFAULTS = {
    "digits": ("train", "test", 32),
    "cifar10": ("train", "test", 32),
    "cifar100": ("train", "test", 32),
    # STL-10 pre-training uses the 100k unlabelled images plus the 5k labelled train.
    "stl10": ("train+unlabelled", "test", 96),
    "imagenet2012": ("train", "validation", 224),
    "imagenette": ("train", "validation", 224),
    "image_folder": ("train", "test", 224),
}


def default_data_config(name: str = "digits") -> ml_collections.ConfigDict:
  """The data section of a config, with the defaults of dataset ``name``.

  Fields: ``name`` ('digits' | 'image_folder' | a TFDS catalog name, optionally
  with config/version such as 'imagenette/320px-v2'), ``data_dir`` (None:
  $TFDS_DATA_DIR or ~/tensorflow_datasets), ``folder`` (root of an image_folder),
  ``train_split``, ``eval_train_split``, ``eval_test_split``, ``image_size``
  (eval centre crop of variable-size datasets), ``manual_dir`` (imagenet2012's
  tar files), ``num_threads`` (host decode threads), ``prefetch`` (batches
  computed ahead), ``corrupt_images`` (image folders: 'skip' an undecodable
  file with a warning naming it and a count, or 'error').
  """
  train_split, eval_test_split, image_size = _DEFAULTS.get(
      name.split("/")[0].split(":")[0], ("train", "test", 224))
  config = ml_collections.ConfigDict()
  config.name = name
  config.data_dir = config_dict.placeholder(str)
  config.folder = config_dict.placeholder(str)
  config.train_split = train_split
  config.eval_train_split = "train"
  config.eval_test_split = eval_test_split
  config.image_size = image_size
  config.manual_dir = config_dict.placeholder(str)
  config.num_threads = 8
  config.prefetch = 2
  config.corrupt_images = "skip"
  return config


def dataset_info(data_config) -> DatasetInfo:
  """Sizes, classes and image shape of the dataset; builds it first if it is ours."""
  config = _checked(data_config)
  dataset = sources.open_dataset(config)
  return DatasetInfo(
      name=config.name,
      num_classes=dataset.num_classes,
      train_size=len(dataset.source(config.train_split)),
      eval_train_size=len(dataset.source(config.eval_train_split)),
      eval_test_size=len(dataset.source(config.eval_test_split)),
      image_shape=dataset.image_shape,
  )


def steps_per_epoch(info: DatasetInfo, global_batch_size: int) -> int:
  """Full global batches per pass over the train split: ``train_size // global_batch_size``.

  The unit of epoch-based schedules. ``train_batches`` drops nothing: when the
  batch does not divide the split, a batch straddles two epochs (see there).
  """
  if global_batch_size <= 0 or global_batch_size > info.train_size:
    raise ValueError(f"global_batch_size={global_batch_size} must be in [1, train_size="
                     f"{info.train_size}] of {info.name!r}")
  return info.train_size // global_batch_size


def train_batches(data_config, *, global_batch_size: int, seed: int, start_step: int = 0,
                  crop_recipes=None, process_index: int | None = None,
                  process_count: int | None = None) -> Iterator[dict]:
  """This process's share of every global train batch, forever, from ``start_step`` on.

  The order is a pure function of ``seed``: epoch ``e`` visits the train split in
  the permutation ``np.random.default_rng((seed, e)).permutation(N)``; step ``s``
  covers positions ``[s*G, (s+1)*G)`` of the concatenation of all epochs, so every
  batch is full and nothing is dropped (with ``G`` not dividing ``N``, one batch
  per epoch holds the end of epoch ``e`` and the start of ``e + 1``; every example
  is still seen exactly once per epoch). Process ``p`` of ``P`` takes the ``p``-th
  contiguous ``G/P`` slice of each global batch. Resuming at step ``s`` therefore
  yields exactly what an uninterrupted run yields from step ``s`` on.

  Args:
    data_config: see ``default_data_config``.
    global_batch_size: ``G``, examples per step over all processes.
    seed: non-negative int; the order and the host crops depend on it only.
    start_step: the first step to yield.
    crop_recipes: variable-size datasets only: one view per recipe, each with
      ``size``, ``crop_scale``, ``crop_ratio`` (``ssl_jax.augment.ViewRecipe``).
      Ignored for fixed-size datasets, whose crops happen on the device.
    process_index, process_count: default ``jax.process_index()`` /
      ``jax.process_count()``.

  Yields:
    Fixed-size datasets: ``{'image': uint8 [G/P, H, W, 3], 'label': int32 [G/P],
    'index': int32 [G/P]}`` (``index``: the example's position in the split, as in
    ``eval_batches``' order). Variable-size datasets: ``{'views': (uint8 [G/P, r.size,
    r.size, 3] per recipe), 'label': int32 [G/P], 'index': int32 [G/P]}``, the crop of view ``v`` of global batch row ``i`` at step
    ``s`` drawn from ``np.random.default_rng((seed, s, i, v))``.
  """
  config = _checked(data_config)
  process_index, process_count = _process(process_index, process_count)
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple of "
                     f"process_count={process_count}")
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative int, got {seed!r}")
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  dataset = sources.open_dataset(config)
  source = dataset.source(config.train_split)
  if len(source) == 0:
    raise ValueError(f"split {config.train_split!r} of {config.name!r} is empty")
  if dataset.image_shape is None:
    crop_recipes = _checked_recipes(crop_recipes, config.name)
  order = _EpochOrder(int(seed), len(source))
  batch = global_batch_size // process_count
  first_row = process_index * batch
  pool = _pool(config) if dataset.image_shape is None else None

  def load(step: int) -> dict:
    positions = step * global_batch_size + first_row + np.arange(batch)
    indices = order.indices(positions)
    records = source.__getitems__(indices.tolist())
    labels = np.asarray([r["label"] for r in records], np.int32)
    index = indices.astype(np.int32)
    if pool is None:
      return {"image": dataset.images(records), "label": labels, "index": index}

    def crop(row):
      rngs = [np.random.default_rng((seed, step, first_row + row, v))
              for v in range(len(crop_recipes))]
      return crops.random_resized_crops(records[row]["image"], crop_recipes, rngs)

    views = list(zip(*pool.map(crop, range(batch))))
    return {"views": tuple(np.stack(v) for v in views), "label": labels, "index": index}

  steps = grain.MapDataset.range(start_step, _FOREVER).map(load)
  return _iterate(steps, config)


def eval_batches(data_config, split: str, *, batch_size: int, process_index: int | None = None,
                 process_count: int | None = None) -> Iterator[dict]:
  """One pass over ``split`` in its stored order, this process's share, in full batches.

  Global batch ``j`` holds positions ``[j*B, (j+1)*B)`` with ``B = batch_size *
  process_count``; process ``p`` takes its ``p``-th slice of ``batch_size``. Every
  process yields the same number of batches, ``ceil(N / B)``; positions past the end
  are padding (zero image, label 0, ``mask`` False), so every example appears
  exactly once over all processes and the result does not depend on the process
  count. Variable-size images are resized (shorter side ``image_size * 256/224``)
  and centre-cropped to ``image_size``.

  Args:
    data_config: see ``default_data_config``.
    split: a split name, e.g. ``data_config.eval_test_split``.
    batch_size: examples per batch on THIS process (``b``).
    process_index, process_count: default ``jax.process_index()`` /
      ``jax.process_count()``.

  Yields:
    ``{'image': uint8 [b, H, W, 3], 'label': int32 [b], 'mask': bool [b]}``.
  """
  config = _checked(data_config)
  process_index, process_count = _process(process_index, process_count)
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  dataset = sources.open_dataset(config)
  source = dataset.source(split)
  size = len(source)
  global_batch = batch_size * process_count
  shape = dataset.image_shape or (config.image_size, config.image_size, 3)
  pool = _pool(config) if dataset.image_shape is None else None

  def load(step: int) -> dict:
    positions = step * global_batch + process_index * batch_size + np.arange(batch_size)
    mask = positions < size
    images = np.zeros((batch_size,) + shape, np.uint8)
    labels = np.zeros((batch_size,), np.int32)
    records = source.__getitems__(positions[mask].tolist())
    if records:
      labels[: len(records)] = [r["label"] for r in records]
      if pool is None:
        images[: len(records)] = dataset.images(records)
      else:
        images[: len(records)] = list(
            pool.map(lambda r: crops.centre_crop(r["image"], config.image_size), records))
    return {"image": images, "label": labels, "mask": mask}

  steps = grain.MapDataset.range(0, -(-size // global_batch)).map(load)
  return _iterate(steps, config)


class _EpochOrder:
  """Record index at each global position: ``permutation(seed, epoch)[position % N]``."""

  def __init__(self, seed: int, size: int):
    self._seed, self._size = seed, size
    self._cache = collections.OrderedDict()
    self._lock = threading.Lock()

  def permutation(self, epoch: int) -> np.ndarray:
    with self._lock:
      if epoch not in self._cache:
        self._cache[epoch] = np.random.default_rng((self._seed, epoch)).permutation(self._size)
        while len(self._cache) > 4:  # Batches in flight span at most a few epochs.
          self._cache.popitem(last=False)
      return self._cache[epoch]

  def indices(self, positions: np.ndarray) -> np.ndarray:
    epochs, offsets = np.divmod(positions, self._size)
    out = np.empty_like(positions)
    for epoch in np.unique(epochs):
      at = epochs == epoch
      out[at] = self.permutation(int(epoch))[offsets[at]]
    return out


def _iterate(steps: grain.MapDataset, config) -> Iterator[dict]:
  """Iterates ``steps`` with ``config.prefetch`` batches computed ahead in threads."""
  prefetch = max(0, config.prefetch)
  threads = min(config.num_threads, prefetch) if prefetch else 0
  return iter(steps.to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)))


def _pool(config) -> concurrent.futures.ThreadPoolExecutor:
  """Threads decoding and cropping the examples of a batch (PIL releases the GIL).

  Its threads exit when the iterator using it is garbage collected.
  """
  return concurrent.futures.ThreadPoolExecutor(max(1, config.num_threads),
                                               thread_name_prefix="ssl_jax-decode")


def _process(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if process_count <= 0 or not 0 <= process_index < process_count:
    raise ValueError(f"need 0 <= process_index < process_count, got {process_index} of "
                     f"{process_count}")
  return process_index, process_count


def _checked(data_config) -> ml_collections.ConfigDict:
  """``data_config`` over the defaults of its dataset; unknown fields are an error."""
  if "name" not in data_config or not data_config["name"]:
    raise ValueError("data_config.name is required: 'digits', 'image_folder' or a TFDS name")
  config = default_data_config(data_config["name"])
  unknown = set(data_config.keys()) - set(config.keys())
  if unknown:
    raise ValueError(f"unknown data_config fields {sorted(unknown)}; known: {sorted(config)}")
  for key in data_config.keys():
    config[key] = data_config[key]
  if config.num_threads < 1 or config.prefetch < 0:
    raise ValueError(f"need num_threads >= 1 and prefetch >= 0, got {config.num_threads}, "
                     f"{config.prefetch}")
  return config


def _checked_recipes(crop_recipes, name: str):
  if not crop_recipes:
    raise ValueError(
        f"images of {name!r} vary in size, so the host crops them: pass crop_recipes "
        "(e.g. ssl_jax.augment.ViewRecipe objects with size, crop_scale, crop_ratio)")
  for recipe in crop_recipes:
    for field in ("size", "crop_scale", "crop_ratio"):
      if not hasattr(recipe, field):
        raise ValueError(f"crop recipe {recipe!r} has no {field!r}")
  return tuple(crop_recipes)
