"""Tiny datasets written locally for the data tests (no download, no shared data).

Every image carries its identity in its pixels, so a test can tell which example
it got: the first three pixels of row 0 are grey tags ``CLASS_STEP * label``,
``id % 256`` and ``id // 256`` (grey, so they survive a conversion to grey), and the
rest of channel 0 is ``CLASS_STEP * label`` too (so a crop still shows its label).
PNG and the CIFAR binary format are lossless, so these values come back exactly.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
from PIL import Image

CLASS_STEP = 25
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck"]


def tagged_image(label: int, example_id: int, height: int, width: int) -> np.ndarray:
  """``uint8 [height, width, 3]`` whose pixels encode ``label`` and ``example_id``."""
  image = np.empty((height, width, 3), np.uint8)
  image[..., 0] = CLASS_STEP * label
  image[..., 1] = 128
  image[..., 2] = (37 * example_id) % 256
  image[0, :3] = np.asarray([CLASS_STEP * label, example_id % 256, example_id // 256])[:, None]
  return image


def identify(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """``(labels, example ids)`` read back from tagged ``uint8 [B, H, W, 3]`` images."""
  tags = images[:, 0, :3, 0].astype(np.int64)
  return tags[:, 0] // CLASS_STEP, tags[:, 1] + 256 * tags[:, 2]


def write_image_folder(root: str, classes, per_class: dict[str, int], *, size=(8, 8),
                       sizes=None, fmt: str = "png", grey_every: int = 0,
                       seed: int = 0) -> dict[str, list[tuple[int, int]]]:
  """Writes ``root/<split>/<class>/<id>.<fmt>`` with tagged images.

  Args:
    root: the folder to create.
    classes: class-folder names (written in this order; labels are their sorted ranks).
    per_class: split -> images per class.
    size: ``(height, width)`` of every image, unless ``sizes`` is given.
    sizes: list of ``(height, width)`` to draw from at random (a variable-size folder).
    fmt: 'png' (lossless, for exact checks) or 'jpeg'.
    grey_every: every n-th image is saved as a grey ('L') image (0: none).
    seed: for the sizes.

  Returns:
    split -> list of ``(label, example_id)`` written; ids are unique per folder.
  """
  rng = np.random.default_rng(seed)
  labels = {name: rank for rank, name in enumerate(sorted(classes))}
  written: dict[str, list[tuple[int, int]]] = {}
  example_id = 0
  for split, count in per_class.items():
    written[split] = []
    for name in classes:
      os.makedirs(os.path.join(root, split, name), exist_ok=True)
      for _ in range(count):
        h, w = sizes[rng.integers(len(sizes))] if sizes else size
        image = Image.fromarray(tagged_image(labels[name], example_id, h, w))
        if grey_every and example_id % grey_every == 0:
          image = image.convert("L")
        ext = "jpg" if fmt == "jpeg" else fmt
        image.save(os.path.join(root, split, name, f"{example_id:05d}.{ext}"))
        written[split].append((labels[name], example_id))
        example_id += 1
  return written


def write_cifar10_binary(directory: str, train: int, test: int) -> None:
  """Files in the layout of ``cifar-10-binary.tar.gz``, extracted, with tagged images.

  Each record is 1 label byte and 3,072 pixel bytes (R, G, B planes of 32x32).
  Example ids run over train then test; labels cycle through the 10 classes.
  """
  base = os.path.join(directory, "cifar-10-batches-bin")
  os.makedirs(base, exist_ok=True)
  with open(os.path.join(base, "batches.meta.txt"), "w") as f:
    f.write("\n".join(CIFAR_CLASSES) + "\n")
  ids = {"train": range(train), "test": range(train, train + test)}
  shards = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
  for split, files in shards.items():
    parts = np.array_split(np.asarray(ids[split]), len(files))
    for filename, part in zip(files, parts):
      with open(os.path.join(base, filename), "wb") as f:
        for example_id in part:
          label = int(example_id) % 10
          image = tagged_image(label, int(example_id), 32, 32)
          f.write(bytes([label]) + image.transpose(2, 0, 1).tobytes())


def build_catalog_cifar10(data_dir: str, source_dir: str, train: int = 60, test: int = 20,
                          file_format: str = "array_record"):
  """Prepares the REAL TFDS catalog builder ``cifar10`` in ``data_dir``, offline.

  Writes tagged files in CIFAR-10's binary layout and hands them to the builder in
  place of its download (``DownloadManager.download_and_extract`` patched for the
  duration), so ``tfds.builder('cifar10', data_dir=data_dir)`` then finds a prepared
  dataset (ArrayRecord by default) exactly as after a real download.
  """
  import pytest  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  write_cifar10_binary(source_dir, train, test)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(tfds.download.DownloadManager, "download_and_extract",
                  lambda self, url: source_dir)
    builder = tfds.builder("cifar10", data_dir=data_dir)
    builder.download_and_prepare(file_format=file_format)
  return builder


@contextlib.contextmanager
def no_network():
  """Every socket connection fails at once (the reachability probe sees no internet)."""
  import pytest  # pylint: disable=g-import-not-at-top
  import socket  # pylint: disable=g-import-not-at-top

  def refuse(*args, **kwargs):
    raise OSError("network disabled by the test")

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(socket, "create_connection", refuse)
    patch.setattr(socket, "getaddrinfo", refuse)
    yield
