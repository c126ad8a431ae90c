"""DeeperCluster: two-level k-means on planted blobs, the reductions to DeepCluster and
RotNet, group-sharded sub-classifiers (8 devices in 4 groups == 1 device), the Sobel
filter against NumPy, and a smoke run with re-clustering."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import method_testing as mt
from ssl_jax import checkpoint
from ssl_jax import methods
from ssl_jax import optim
from ssl_jax import train
from ssl_jax.methods import deepcluster
from ssl_jax.methods import deepercluster
from ssl_jax.methods import rotnet
from ssl_jax.models import encoder as encoder_lib
from ssl_jax.parallel import BATCH_AXIS, GROUP_AXIS, make_mesh


def _config(data_dir, **overrides):
  c = mt.tiny_config("deepercluster", data_dir, **overrides)
  c.deepercluster.pca_dim = 8
  return c


def planted_blobs(seed=0, supers=4, subs=3, per=16, dim=6):
  """Rows around supers x subs centres: super-centres 20 apart, sub-centres 2 apart."""
  rng = np.random.default_rng(seed)
  super_centres = 20.0 * rng.normal(size=(supers, dim))
  sub_offsets = 2.0 * rng.normal(size=(supers, subs, dim))
  x, super_id, sub_id = [], [], []
  for s in range(supers):
    for c in range(subs):
      x.append(super_centres[s] + sub_offsets[s, c] + 0.02 * rng.normal(size=(per, dim)))
      super_id += [s] * per
      sub_id += [s * subs + c] * per
  order = rng.permutation(len(super_id))
  return (np.concatenate(x)[order].astype(np.float32), np.asarray(super_id)[order],
          np.asarray(sub_id)[order])


def _same_partition(labels, truth):
  """Every true group maps to one label and different groups to different labels."""
  pairs = set(zip(truth.tolist(), labels.tolist()))
  return len(pairs) == len(set(truth.tolist())) == len(set(labels.tolist()))


def _hierarchical(config, x, devices, groups):
  n = x.shape[0]
  valid, ids = np.ones(n, bool), np.arange(n, dtype=np.int32)
  key = jax.random.key(3)
  if devices is None:
    out = jax.jit(functools.partial(deepercluster.hierarchical_kmeans, config=config, groups=1))(
        key, x, valid, ids)
    return jax.device_get(out)
  fn = functools.partial(deepercluster.hierarchical_kmeans, config=config, groups=groups,
                         axis_name=BATCH_AXIS)
  out = jax.jit(jax.shard_map(
      fn, mesh=make_mesh(devices, groups=groups),
      in_specs=(P(), P(BATCH_AXIS), P(BATCH_AXIS), P(BATCH_AXIS)),
      out_specs=(P(BATCH_AXIS), P(BATCH_AXIS), P(), P(), P())))(key, x, valid, ids)
  return jax.device_get(out)


@pytest.mark.parametrize("rotation,groups", [(False, 4), (True, 8)])
def test_hierarchical_kmeans_recovers_planted_levels(data_dir, devices, rotation, groups):
  # rotation=True, 8 groups: 16 super-classes, each super-cluster's sub-classes are
  # clustered by two groups and recorded by one.
  config = _config(data_dir, **{"deepercluster.num_super_clusters": 4,
                                "deepercluster.num_clusters": 12,
                                "deepercluster.rotation": rotation,
                                "deepercluster.kmeans_init": "kmeans++",
                                "deepercluster.kmeans_iters": 10})
  x, super_id, sub_id = planted_blobs()
  single = _hierarchical(config, x, None, 1)
  sharded = _hierarchical(config, x, devices, groups)
  for super_labels, sub_labels, counts, super_c, sub_c in (single, sharded):
    assert _same_partition(super_labels, super_id)
    assert _same_partition(super_labels * 3 + sub_labels, sub_id)
    assert counts.shape == (4, 3) and np.all(counts == 16)
    assert super_c.shape == (4, 6) and sub_c.shape == (4, 3, 6)
    # Each sub-centroid is the mean of its rows.
    for s, c in [(0, 0), (3, 2)]:
      rows = x[(super_labels == s) & (sub_labels == c)]
      np.testing.assert_allclose(sub_c[s, c], rows.mean(0), rtol=1e-4, atol=1e-3)
  for a, b in zip(single[:3], sharded[:3]):
    np.testing.assert_array_equal(a, b)  # the device split changes nothing


def test_uniform_sampling_weights_against_formula():
  counts = np.array([[5, 0, 15], [0, 0, 0], [10, 10, 0]])
  got = np.asarray(deepercluster.uniform_sampling_weights(jnp.asarray(counts), 40))
  # 2 non-empty super-clusters; 2 non-empty sub-clusters in each.
  want = np.where(counts > 0, 40 / (2 * 2 * np.maximum(counts, 1)), 0.0)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Expected weight under the data distribution = 1 per example.
  np.testing.assert_allclose(np.sum(got * counts) / counts.sum(), 1.0, rtol=1e-6)


def _random_params(config):
  """DeeperCluster params with non-zero heads and biases (so the reductions are not trivial)."""
  params, batch_stats, _ = deepercluster.init(jax.random.key(0), config, None)
  params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape),
                        params)
  return params, batch_stats


def _views(config, n=8):
  rng = np.random.default_rng(0)
  return [jnp.asarray(rng.normal(size=(n, config.augment.size, config.augment.size, 3)),
                      jnp.float32)]


def test_reduces_to_deepcluster(data_dir):
  config = _config(data_dir, **{"deepercluster.rotation": False,
                                "deepercluster.num_super_clusters": 1,
                                "deepercluster.num_clusters": 5})
  dc = mt.tiny_config("deepcluster", data_dir, **{"deepcluster.num_clusters": 5})
  params, batch_stats = _random_params(config)
  n_examples = 40
  labels = np.random.default_rng(1).integers(0, 5, n_examples).astype(np.int32)
  counts = np.bincount(labels, minlength=5)
  state = {"super_labels": jnp.zeros(n_examples, jnp.int32), "sub_labels": jnp.asarray(labels),
           "weights": deepercluster.uniform_sampling_weights(jnp.asarray(counts[None]), n_examples),
           "super_centroids": jnp.zeros((1, 8)), "sub_centroids": jnp.zeros((1, 5, 8))}
  dc_params = {"encoder": params["encoder"],
               "head": {"kernel": params["sub_classifiers"]["kernel"][0],
                        "bias": params["sub_classifiers"]["bias"][0]}}
  dc_state = {"pseudo_labels": jnp.asarray(labels),
              "cluster_weights": deepcluster.cluster_weights(jnp.asarray(counts), n_examples)}
  np.testing.assert_allclose(state["weights"][0], dc_state["cluster_weights"], rtol=1e-6)
  index = jnp.asarray([3, 7, 11, 0, 39, 21, 22, 5], jnp.int32)
  views = _views(config)
  ours = jax.jit(lambda p: deepercluster.loss_fn(p, batch_stats, state, views, None,
                                                 config=config, axis_name=None,
                                                 example_index=index)[0])(params)
  theirs = jax.jit(lambda p: deepcluster.loss_fn(p, batch_stats, dc_state, views, None,
                                                 config=dc, axis_name=None,
                                                 example_index=index)[0])(dc_params)
  assert float(theirs) > 0.1
  np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-5)


def test_reduces_to_rotnet(data_dir):
  config = _config(data_dir, **{"deepercluster.rotation": True,
                                "deepercluster.num_super_clusters": 1,
                                "deepercluster.num_clusters": 1})
  rn = mt.tiny_config("rotnet", data_dir)
  params, batch_stats = _random_params(config)
  n_examples = 40
  state = {"super_labels": jnp.zeros(n_examples, jnp.int32),
           "sub_labels": jnp.zeros(n_examples, jnp.int32),
           "weights": deepercluster.uniform_sampling_weights(jnp.asarray([[n_examples]]),
                                                             n_examples),
           "super_centroids": jnp.zeros((1, 8)), "sub_centroids": jnp.zeros((1, 1, 8))}
  np.testing.assert_allclose(state["weights"], 1.0)
  rn_params = {"encoder": params["encoder"], "classifier": params["super_classifier"]}
  index = jnp.arange(8, dtype=jnp.int32)
  views = _views(config)
  ours, (_, _, metrics) = jax.jit(lambda p: deepercluster.loss_fn(
      p, batch_stats, state, views, None, config=config, axis_name=None,
      example_index=index))(params)
  theirs = jax.jit(lambda p: rotnet.loss_fn(p, batch_stats, {}, views, None, config=rn,
                                            axis_name=None)[0])(rn_params)
  assert float(metrics["sub_class_loss"]) == 0.0  # one sub-class: nothing to predict
  np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-5)


def _labelled_step(config, devices):
  """One train step on ``devices`` with every example in super-cluster 0 (sub-label i % k)."""
  method = methods.get_method("deepercluster")
  mesh = train.run_mesh(config, method, devices)
  tx, schedule = optim.make_optimizer(config.optim, total_steps=4, steps_per_epoch=4,
                                      batch_size=config.batch_size)
  state = train.create_train_state(config, method, tx, mesh)
  n = state.method_state["super_labels"].shape[0]
  k = deepercluster.num_sub_classes(config)
  counts = np.zeros((config.deepercluster.num_super_clusters, k), np.int64)
  counts[0] = np.bincount(np.arange(n) % k, minlength=k)
  method_state = dict(state.method_state,
                      super_labels=jnp.zeros(n, jnp.int32),
                      sub_labels=jnp.asarray(np.arange(n) % k, jnp.int32),
                      weights=deepercluster.uniform_sampling_weights(jnp.asarray(counts), n))
  state = state.replace(method_state=jax.device_put(method_state, NamedSharding(mesh, P())))
  before = jax.device_get(state.params)
  step = train.compile_train_step(mesh, method=method, config=config,
                                  recipes=method.view_recipes(config), tx=tx,
                                  schedule=schedule, total_steps=4)
  batch = mt.random_batch(config.batch_size)
  state, metrics = step(state, {"image": jax.device_put(batch, NamedSharding(
      mesh, P(BATCH_AXIS))), "index": jax.device_put(
          np.arange(config.batch_size, dtype=np.int32) * 3, NamedSharding(mesh, P(BATCH_AXIS)))})
  return before, state, jax.device_get(metrics)


def test_sub_classifiers_sharded_by_group_and_updated_by_their_examples(data_dir, devices):
  config = _config(data_dir, **{"optim.weight_decay": 0.0, "deepercluster.num_clusters": 8,
                                "deepercluster.groups": 4})
  before, state8, m8 = _labelled_step(config, devices)
  kernel = state8.params["sub_classifiers"]["kernel"]
  assert kernel.shape[0] == 16 and kernel.sharding.spec == P(GROUP_AXIS)
  assert {s.data.shape[0] for s in kernel.addressable_shards} == {4}  # 16 heads / 4 groups
  after = jax.device_get(state8.params)
  changed = [not np.array_equal(after["sub_classifiers"]["kernel"][j],
                                before["sub_classifiers"]["kernel"][j]) for j in range(16)]
  # Super-cluster 0 in 4 rotations = super-classes 0-3, all on group 0.
  assert changed == [True] * 4 + [False] * 12
  config1 = _config(data_dir, **{"optim.weight_decay": 0.0, "deepercluster.num_clusters": 8,
                                 "deepercluster.groups": 1})
  _, state1, m1 = _labelled_step(config1, devices[:1])
  assert m8["sub_class_loss"] > 0.1 and m8["super_class_loss"] > 0.1
  for key in ("loss", "super_class_loss", "sub_class_loss", "grad_norm"):
    np.testing.assert_allclose(m8[key], m1[key], rtol=2e-5, err_msg=key)
  mt.assert_trees_close(after, jax.device_get(state1.params), rtol=2e-4, atol=2e-6)


def test_sobel_against_numpy():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 7, 9, 3))
  got = np.asarray(encoder_lib.sobel(jnp.asarray(images, jnp.float32)))
  grey = np.pad(images.mean(-1), ((0, 0), (1, 1), (1, 1)))
  gx = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float64)
  want = np.zeros((2, 7, 9, 2))
  for i in range(7):
    for j in range(9):
      patch = grey[:, i:i + 3, j:j + 3]
      want[:, i, j, 0] = np.sum(patch * gx, axis=(1, 2))
      want[:, i, j, 1] = np.sum(patch * gx.T, axis=(1, 2))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_smoke_reclusters_trains_and_resumes_exactly(data_dir, tmp_path):
  config = _config(data_dir, **{"deepercluster.num_clusters": 8, "total_steps": 4,
                                "model.input_filter": "sobel"})
  config.data.train_split = "train[:32]"  # 2 steps per epoch: re-clustering at steps 0 and 2
  workdir = str(tmp_path / "run")
  results = train.train_and_evaluate(config, workdir)
  assert results["step"] == 4
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  losses = [r for r in records if "loss" in r]
  assert [r["step"] for r in losses] == [1, 2, 3, 4]
  for key in ("loss", "super_class_loss", "sub_class_loss", "embedding_std"):
    assert np.all(np.isfinite([r[key] for r in losses])), key
  assert losses[0]["sub_class_loss"] > 0  # the labels of the first clustering are in use
  assert [r["step"] for r in records if "epoch_start_seconds" in r] == [0, 2]
  final, _, _ = checkpoint.restore_raw(workdir)
  state = final["method_state"]
  assert np.all((state["super_labels"] >= 0) & (state["super_labels"] < 4))
  assert np.all((state["sub_labels"] >= 0) & (state["sub_labels"] < 2))
  assert final["params"]["sub_classifiers"]["kernel"].shape[::2] == (16, 2)
  # Preempted at step 3 and resumed: the group-sharded state restores exactly.
  resumed = str(tmp_path / "resumed")
  train.train_and_evaluate(config, resumed, stop_at_step=3)
  train.train_and_evaluate(config, resumed)
  again, _, _ = checkpoint.restore_raw(resumed)
  mt.assert_trees_equal(final, again)
