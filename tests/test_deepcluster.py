"""DeepCluster v1 and v2: the epoch-start hook, losses vs NumPy, exact resume, smoke runs.

A tiny image folder (32 train images of 16x16, 4 classes) so that an epoch is
2 steps of 16 and the epoch-start hook runs several times in a few steps.
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ssl_jax import checkpoint
from ssl_jax import train
from ssl_jax.methods import deepclusterv2
from ssl_jax.parallel import BATCH_AXIS, make_mesh

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_datasets  # noqa: E402  pylint: disable=g-import-not-at-top
import tiny_encoder  # noqa: E402  pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
import deepclusterv2 as dcv2_config  # noqa: E402  pylint: disable=g-import-not-at-top


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("folder")
  tiny_datasets.write_image_folder(str(root / "images"), ["a", "b", "c", "d"],
                                   {"train": 8, "test": 4}, size=(16, 16))
  return str(root / "images"), str(root / "tfds")


def _tiny(config, folder):
  images, data_dir = folder
  config.data.name = "image_folder"
  config.data.folder = images
  config.data.data_dir = data_dir
  config.data.image_size = 16
  tiny_encoder.apply(config)
  config.batch_size = 16
  config.eval_batch_size = 16
  config.total_steps = 6
  config.log_every_steps = 1
  config.checkpoint_every_steps = 100
  config.knn.every_epochs = 0.0
  config.optim.warmup_epochs = 0.0
  return config


def dcv2_tiny(folder):
  c = _tiny(dcv2_config.get_config("image_folder"), folder)
  c.deepclusterv2.update(dict(projector_hidden_dim=16, projection_dim=8, num_prototypes=(4, 3),
                              num_small_crops=1))
  return c


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def np_dcv2_loss(z, centroids, assignments, temperature, num_views):
  total = 0.0
  for c, a in zip(centroids, assignments):
    logits = np.asarray(z, np.float64) @ np.asarray(c, np.float64).T / temperature
    logits -= logits.max(1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    targets = np.tile(a, num_views)
    keep = targets >= 0
    total += -np.mean(logp[keep, targets[keep]])
  return total / len(centroids)


def test_dcv2_loss_and_bank_vs_numpy_8_devices(folder, devices):
  config = dcv2_tiny(folder)
  params, batch_stats, state = deepclusterv2.init(jax.random.key(0), config, None)
  rng = np.random.default_rng(0)
  n_rows = state["bank"].shape[1]
  state["centroids"] = [jnp.asarray(rng.normal(size=(k, 8)), jnp.float32) for k in (4, 3)]
  assignments = rng.integers(-1, 3, size=(2, n_rows)).astype(np.int32)
  state["assignments"] = jnp.asarray(assignments)
  views = [jnp.asarray(rng.normal(size=(16, r.size, r.size, 3)), jnp.float32)
           for r in deepclusterv2.view_recipes(config)]
  index = rng.permutation(n_rows)[:16].astype(np.int32)

  def per_device(params, batch_stats, state, views, index):
    loss, (_, state, _) = deepclusterv2.loss_fn(params, batch_stats, state, views, None,
                                                config=config, axis_name=BATCH_AXIS,
                                                example_index=index)
    return loss, state["bank"]

  loss, bank = jax.jit(jax.shard_map(
      per_device, mesh=make_mesh(devices),
      in_specs=(P(), P(), P(), P(BATCH_AXIS), P(BATCH_AXIS)), out_specs=(P(), P())))(
          params, batch_stats, state, views, index)
  model = deepclusterv2._model(config, None)  # pylint: disable=protected-access
  z = np.asarray(jax.jit(lambda v: model.apply(
      {"params": params, "batch_stats": batch_stats}, [jnp.concatenate(v[:2]), v[2]],
      train=True, mutable=["batch_stats"])[0])(views))
  want = np_dcv2_loss(z, state["centroids"], [a[index] for a in assignments], 0.1, 3)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  want_bank = np.zeros((2, n_rows, 8))
  want_bank[0, index], want_bank[1, index] = z[:16], z[16:32]
  np.testing.assert_allclose(bank, want_bank, atol=2e-5)


def test_dcv2_smoke_hook_and_exact_resume(folder, tmp_path):
  config = dcv2_tiny(folder)
  straight = str(tmp_path / "straight")
  results = train.train_and_evaluate(config, straight)
  records = _records(straight)
  losses = [r["loss"] for r in records if "loss" in r]
  assert len(losses) == 6 and np.all(np.isfinite(losses))
  assert [r["step"] for r in records if "epoch_start_seconds" in r] == [0, 2, 4]
  assert results["step"] == 6
  final, _, _ = checkpoint.restore_raw(straight)
  state = final["method_state"]
  for centroids, k in zip(state["centroids"], (4, 3)):
    assert centroids.shape == (k, 8)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-5)
  assignments = state["assignments"][:, :32]
  assert np.all((assignments >= 0) & (assignments < np.array([[4], [3]])))
  assert len(np.unique(assignments[0])) > 1  # not a trivial single cluster

  resumed = str(tmp_path / "resumed")
  train.train_and_evaluate(config, resumed, stop_at_step=3)
  train.train_and_evaluate(config, resumed)
  again, _, _ = checkpoint.restore_raw(resumed)
  for x, y in zip(jax.tree.leaves(final), jax.tree.leaves(again)):
    np.testing.assert_array_equal(x, y)


# ----------------------------------------------------------------------------- v1

import deepcluster as dc_config  # noqa: E402  pylint: disable=g-import-not-at-top
from ssl_jax import epoch_hooks  # noqa: E402  pylint: disable=g-import-not-at-top
from ssl_jax import optim  # noqa: E402  pylint: disable=g-import-not-at-top
from ssl_jax.methods import deepcluster  # noqa: E402  pylint: disable=g-import-not-at-top


def dc_tiny(folder):
  c = _tiny(dc_config.get_config("image_folder"), folder)
  c.deepcluster.num_clusters = 6
  c.deepcluster.pca_dim = 8
  return c


def test_dc_hook_pseudo_labels_weights_and_head(folder, devices):
  config = dc_tiny(folder)
  mesh = make_mesh(devices)
  tx, _ = optim.make_optimizer(config.optim, total_steps=6, steps_per_epoch=2,
                               batch_size=config.batch_size)
  state = train.create_train_state(config, deepcluster, tx, mesh)
  # Pretend the head has trained: non-zero momentum must be reset with it.
  state = state.replace(opt_state=jax.tree.map(lambda x: x + 1.0 if x.dtype == jnp.float32
                                               else x, state.opt_state))
  context = epoch_hooks.EpochContext(epoch=0, steps_per_epoch=2, config=config, mesh=mesh, tx=tx)
  new = deepcluster.epoch_start(state, context)
  labels = np.asarray(new.method_state["pseudo_labels"])
  assert labels.shape == (32,) and labels.min() >= 0 and labels.max() < 6
  counts = np.bincount(labels, minlength=6)
  assert np.all(counts > 0)  # k-means with splitting leaves no cluster empty
  np.testing.assert_allclose(new.method_state["cluster_weights"], 32 / (6 * counts), rtol=1e-6)
  head = new.params["head"]
  assert 0.003 < float(np.std(head["kernel"])) < 0.03
  np.testing.assert_array_equal(head["bias"], 0.0)
  for x, y in zip(jax.tree.leaves(new.params["encoder"]), jax.tree.leaves(state.params["encoder"])):
    np.testing.assert_array_equal(x, y)  # the encoder is untouched
  # The head's momentum is fresh (zero), the encoder's is kept.
  trace = [x for x in jax.tree.leaves(new.opt_state) if x.ndim == 2]
  assert any(np.all(np.asarray(x) == 0) for x in trace)
  assert any(np.all(np.asarray(x) == 1) for x in jax.tree.leaves(new.opt_state) if x.ndim == 4)
  # Deterministic: the same state and epoch give the same pseudo-labels.
  again = deepcluster.epoch_start(state, context)
  np.testing.assert_array_equal(again.method_state["pseudo_labels"], labels)


def test_dc_smoke_and_exact_resume(folder, tmp_path):
  config = dc_tiny(folder)
  straight = str(tmp_path / "straight")
  results = train.train_and_evaluate(config, straight)
  records = _records(straight)
  losses = [r["loss"] for r in records if "loss" in r]
  assert len(losses) == 6 and np.all(np.isfinite(losses))
  assert [r["step"] for r in records if "epoch_start_seconds" in r] == [0, 2, 4]
  assert results["step"] == 6
  resumed = str(tmp_path / "resumed")
  train.train_and_evaluate(config, resumed, stop_at_step=4)  # stops at an epoch boundary
  train.train_and_evaluate(config, resumed)
  a, _, _ = checkpoint.restore_raw(straight)
  b, _, _ = checkpoint.restore_raw(resumed)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
