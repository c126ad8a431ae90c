"""k-means and PCA-whitening: NumPy float64 references, empty clusters, 1 vs 8 devices."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from ssl_jax import kmeans
from ssl_jax.parallel import BATCH_AXIS, make_mesh

EPS = 1.0 / 1024.0  # faiss' split perturbation


def blobs(seed=0, per_blob=24, dim=4, num_blobs=3, spread=0.2):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num_blobs, dim)) * 5.0
  labels = np.repeat(np.arange(num_blobs), per_blob)
  return (centres[labels] + spread * rng.normal(size=(len(labels), dim))).astype(np.float32), labels


def np_split_empty(centroids, counts):
  """The DeepCluster/faiss rule, written from its description, float64."""
  centroids, counts = centroids.copy(), counts.copy()
  sign = np.where(np.arange(centroids.shape[1]) % 2 == 0, 1.0, -1.0)
  for i in range(len(counts)):
    if counts[i] == 0:
      j = int(np.argmax(counts))
      c = centroids[j].copy()
      centroids[i], centroids[j] = c * (1 + EPS * sign), c * (1 - EPS * sign)
      counts[i] = counts[j] // 2
      counts[j] -= counts[i]
  return centroids, counts


def np_kmeans(x, centroids, iters, split_empty=True, spherical=False):
  x, c = np.asarray(x, np.float64), np.asarray(centroids, np.float64)
  k = len(c)

  def nearest(c):
    if spherical:
      return np.argmax(x @ c.T, axis=1)
    return np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)

  for _ in range(iters):
    labels = nearest(c)
    counts = np.bincount(labels, minlength=k)
    new = c.copy()
    for j in range(k):
      if counts[j]:
        new[j] = x[labels == j].mean(0)
    if spherical:
      new /= np.linalg.norm(new, axis=1, keepdims=True)
    if split_empty:
      new, _ = np_split_empty(new, counts)
    c = new
  return c, nearest(c)


def _sharded(fn, devices, n_in):
  return jax.jit(jax.shard_map(fn, mesh=make_mesh(devices),
                               in_specs=(P(),) + (P(BATCH_AXIS),) * n_in + (P(),),
                               out_specs=(P(), P(BATCH_AXIS), P())))


def _run(devices, x, init_centroids, iters=10, **kw):
  fn = functools.partial(kmeans.kmeans, num_clusters=len(init_centroids), num_iters=iters,
                         axis_name=BATCH_AXIS, **kw)
  run = _sharded(lambda key, x, valid, ids, c: fn(key, x, valid, ids, centroids=c), devices, 3)
  ids = np.arange(len(x), dtype=np.int32)
  return jax.device_get(run(jax.random.key(0), x, np.ones(len(x), bool), ids,
                            jnp.asarray(init_centroids)))


def test_split_empty_clusters_matches_numpy():
  rng = np.random.default_rng(0)
  centroids = rng.normal(size=(5, 4)).astype(np.float32)
  counts = np.array([0, 7, 0, 12, 1], np.int32)
  got_c, got_n = jax.jit(kmeans.split_empty_clusters)(centroids, counts)
  want_c, want_n = np_split_empty(centroids.astype(np.float64), counts)
  np.testing.assert_allclose(got_c, want_c, rtol=1e-6)
  np.testing.assert_array_equal(got_n, want_n)
  assert np.all(np.asarray(got_n) > 0) and int(np.sum(got_n)) == 20


def test_kmeans_matches_numpy_and_8_devices_equal_1(devices):
  x, truth = blobs()
  init = x[[0, 1, 30]]  # two seeds in blob 0, one in blob 1: blob 2 must be found
  c8, l8, n8 = _run(devices, x, init)
  c1, l1, n1 = _run(devices[:1], x, init)
  want_c, want_l = np_kmeans(x, init, 10)
  np.testing.assert_array_equal(l8, want_l)
  np.testing.assert_array_equal(l1, want_l)
  np.testing.assert_allclose(c8, want_c, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(c8, c1, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(n8, np.bincount(want_l, minlength=3))
  # Separable blobs: the partition is the true one (up to a relabelling).
  assert len({(a, b) for a, b in zip(truth, l8)}) == 3


def test_empty_cluster_is_split_from_the_largest(devices):
  x, _ = blobs(seed=1)
  init = np.concatenate([x[[0, 30]], [[100.0, 100.0, 100.0, 100.0]]]).astype(np.float32)
  c, labels, counts = _run(devices, x, init, iters=6)
  want_c, want_l = np_kmeans(x, init, 6)
  assert np.all(counts > 0)           # the far centroid was re-seeded inside the data
  np.testing.assert_array_equal(labels, want_l)
  np.testing.assert_allclose(c, want_c, rtol=1e-5, atol=1e-5)
  # Without splitting, the far centroid keeps no point.
  _, _, kept = _run(devices, x, init, iters=6, split_empty=False)
  assert kept[2] == 0


def test_spherical_kmeans_matches_numpy(devices):
  x, _ = blobs(seed=2, dim=6)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  init = x[[0, 1, 2]]
  c, labels, _ = _run(devices, x, init, iters=5, spherical=True, split_empty=False)
  want_c, want_l = np_kmeans(x, init, 5, split_empty=False, spherical=True)
  np.testing.assert_array_equal(labels, want_l)
  np.testing.assert_allclose(c, want_c, rtol=1e-5, atol=1e-5)


def test_init_is_deterministic_and_device_count_invariant(devices):
  x, truth = blobs(seed=3)
  ids = np.arange(len(x), dtype=np.int32)
  valid = np.ones(len(x), bool)
  compiled = {}

  def run(devs, seed, method):
    if (len(devs), method) not in compiled:
      fn = functools.partial(kmeans.init_centroids, num_clusters=3, method=method,
                             axis_name=BATCH_AXIS)
      compiled[len(devs), method] = jax.jit(jax.shard_map(
          fn, mesh=make_mesh(devs), in_specs=(P(), P(BATCH_AXIS), P(BATCH_AXIS), P(BATCH_AXIS)),
          out_specs=P()))
    return np.asarray(compiled[len(devs), method](jax.random.key(seed), x, valid, ids))

  for method in ("random", "kmeans++"):
    a, b = run(devices, 0, method), run(devices[:1], 0, method)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, run(devices, 0, method))
    assert not np.array_equal(a, run(devices, 1, method))
    assert all(any(np.array_equal(c, row) for row in x) for c in a)  # centroids are data rows
  # k-means++ from seed 0 puts one centroid in each separated blob.
  c = run(devices, 0, "kmeans++")
  nearest = np.argmin(((x[:, None] - c[None]) ** 2).sum(-1), axis=1)
  assert len(set(zip(truth, nearest))) == 3


def test_pca_whitening_covariance_is_identity(devices):
  rng = np.random.default_rng(4)
  x = (rng.normal(size=(256, 12)) @ rng.normal(size=(12, 12)) * 3.0 + 1.0).astype(np.float32)
  valid = np.ones(256, bool)
  valid[-8:] = False  # padding rows are ignored
  x[-8:] = 1e3

  def whiten(devs, l2):
    fn = functools.partial(kmeans.pca_whiten, dim=6, l2_normalize=l2, axis_name=BATCH_AXIS)
    return np.asarray(jax.jit(jax.shard_map(fn, mesh=make_mesh(devs),
                                            in_specs=(P(BATCH_AXIS), P(BATCH_AXIS)),
                                            out_specs=P(BATCH_AXIS)))(x, valid))

  y = whiten(devices, False)[:-8].astype(np.float64)
  np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-4)
  np.testing.assert_allclose(np.cov(y.T, bias=True), np.eye(6), atol=1e-3)
  # The top-6 principal subspace of the float64 covariance.
  ref = x[:-8].astype(np.float64) - x[:-8].mean(0)
  vals, vecs = np.linalg.eigh(np.cov(ref.T, bias=True))
  want = ref @ vecs[:, ::-1][:, :6] / np.sqrt(vals[::-1][:6])
  np.testing.assert_allclose(np.abs(y), np.abs(want), rtol=1e-3, atol=1e-3)  # up to signs
  np.testing.assert_allclose(whiten(devices[:1], False)[:-8], y, rtol=1e-3, atol=1e-4)
  z = whiten(devices, True)
  np.testing.assert_allclose(np.linalg.norm(z[:-8], axis=1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(z[-8:], 0.0)
