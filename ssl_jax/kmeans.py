"""k-means and PCA-whitening in JAX, on device, sharded over the data axis.

Per-device code (run under ``jax.shard_map``; ``axis_name=None`` is the
single-device algorithm): every device holds its rows of the data, assigns
them to the nearest centroid locally, and the centroid sums and counts are
``psum``'d, so centroids are identical on every device and the result does not
depend on how the rows are split over devices.

- ``kmeans``: Lloyd's algorithm (Lloyd 1982) from a random or k-means++
  (Arthur & Vassilvitskii 2007) initialisation drawn from a key. Random draws
  are per ROW, folded with the row's global id, so they do not depend on the
  device count either. Empty clusters are handled as DeepCluster's faiss
  k-means does (Caron et al. 2018, Sec. 3.3 "Avoiding trivial solutions"): the
  empty cluster takes the centroid of the largest cluster with a small
  symmetric perturbation (faiss' EPS = 1/1024) and the two split its points
  (counted half each); or, DeepCluster v2's rule, it keeps its old centroid.
- ``spherical=True`` (DeepCluster v2, facebookresearch/swav main_deepclusterv2.py
  ``cluster_memory``): cosine assignment (max dot product) and unit centroids.
- ``pca_whiten``: PCA to ``dim`` components scaled by eigenvalue^-1/2 (faiss
  ``PCAMatrix(d, dim, eigen_power=-0.5)``, DeepCluster's ``preprocess_features``),
  then optionally L2-normalised rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ssl_jax.parallel import gather_replicated

# faiss Clustering: the relative perturbation of a split centroid.
SPLIT_EPS = 1.0 / 1024.0
# Added to PCA eigenvalues before the -1/2 power (faiss PCAMatrix adds none; a
# floor keeps degenerate directions finite).
_EIG_FLOOR = 1e-8


def _psum(x, axis_name):
  return x if axis_name is None else lax.psum(x, axis_name)


def _pmax(x, axis_name):
  return x if axis_name is None else lax.pmax(x, axis_name)


def _scores(x, centroids, spherical):
  """[M, K]: higher is closer (dot product, or minus the squared distance up to ||x||^2)."""
  dots = jnp.matmul(x, centroids.T, precision=lax.Precision.HIGHEST)
  if spherical:
    return dots
  return 2.0 * dots - jnp.sum(centroids * centroids, axis=-1)[None, :]


def assign(x, centroids, *, spherical=False):
  """int32 [M] index of the nearest centroid of each row (lowest index on ties)."""
  return jnp.argmax(_scores(x, centroids, spherical), axis=-1).astype(jnp.int32)


def _pick_row(x, valid, logits, key_rows, axis_name):
  """One row drawn over all devices with probability softmax(logits) (Gumbel-max).

  ``key_rows`` are per-row keys (folded from global ids), so the draw does not
  depend on the device split. Returns the chosen row [D], identical everywhere.
  """
  gumbel = jax.vmap(lambda k: jax.random.gumbel(k, (), jnp.float32))(key_rows)
  noisy = jnp.where(valid, logits + gumbel, -jnp.inf)
  best = jnp.max(noisy)
  global_best = _pmax(best, axis_name)
  local = jnp.argmax(noisy)
  # The (unique, with probability 1) device holding the winner contributes its row.
  mine = (best == global_best).astype(x.dtype)
  return _psum(x[local] * mine, axis_name) / _psum(mine, axis_name)


def init_centroids(key, x, valid, row_ids, num_clusters: int, *, method="random",
                   axis_name=None):
  """[K, D] initial centroids drawn from the valid rows.

  Args:
    key: PRNG key (same on every device).
    x: float32 [M, D] this device's rows; valid: bool [M]; row_ids: int32 [M] global ids.
    num_clusters: K.
    method: 'random' (K distinct rows uniformly, as DeepCluster v2 and faiss) or
      'kmeans++' (D^2 sampling; K sequential global draws).
  """
  row_keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(row_ids)
  if method == "random":
    # The K rows with the largest uniform priority = K distinct rows uniformly.
    priority = jax.vmap(lambda k: jax.random.uniform(k, ()))(row_keys)
    priority = jnp.where(valid, priority, -1.0)
    local_k = min(num_clusters, x.shape[0])
    top, idx = lax.top_k(priority, local_k)
    rows = x[idx]
    top, rows = gather_replicated(top, axis_name), gather_replicated(rows, axis_name)
    _, best = lax.top_k(top, num_clusters)
    return rows[best]
  if method != "kmeans++":
    raise ValueError(f"method must be 'random' or 'kmeans++', got {method!r}.")
  first = _pick_row(x, valid, jnp.zeros(x.shape[0]), jax.vmap(
      lambda k: jax.random.fold_in(k, 0))(row_keys), axis_name)
  centroids = jnp.zeros((num_clusters, x.shape[1]), x.dtype).at[0].set(first)
  min_sq = jnp.sum(jnp.square(x - first), axis=-1)

  def draw(i, carry):
    centroids, min_sq = carry
    keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(row_keys)
    row = _pick_row(x, valid & (min_sq > 0), jnp.log(jnp.maximum(min_sq, 1e-30)), keys,
                    axis_name)
    return centroids.at[i].set(row), jnp.minimum(min_sq, jnp.sum(jnp.square(x - row), -1))

  centroids, _ = lax.fori_loop(1, num_clusters, draw, (centroids, min_sq))
  return centroids


def split_empty_clusters(centroids, counts):
  """DeepCluster/faiss rule: each empty cluster (in index order) splits the largest one.

  The empty cluster i takes c_j (1 + eps s) and the largest cluster j becomes
  c_j (1 - eps s), with s = +1 on even and -1 on odd coordinates; cluster i is
  counted as half of j's points (``counts[i] = counts[j] // 2``, j keeps the rest).
  faiss picks j at random with probability ~ its size; we take the largest, as the
  DeepCluster paper describes it, which is deterministic.

  Args:
    centroids: float32 [K, D]; counts: int32 [K] points per cluster.

  Returns:
    (centroids, counts) with no empty cluster (if any cluster has >= 2 points).
  """
  sign = jnp.where(jnp.arange(centroids.shape[1]) % 2 == 0, 1.0, -1.0).astype(centroids.dtype)

  def fix(i, carry):
    centroids, counts = carry
    j = jnp.argmax(counts)
    empty = counts[i] == 0
    c_j = centroids[j]
    new_i = jnp.where(empty, c_j * (1 + SPLIT_EPS * sign), centroids[i])
    new_j = jnp.where(empty, c_j * (1 - SPLIT_EPS * sign), c_j)
    half = jnp.where(empty, counts[j] // 2, counts[i])
    counts_j = jnp.where(empty, counts[j] - half, counts[j])
    centroids = centroids.at[i].set(new_i).at[j].set(new_j)
    counts = counts.at[i].set(half).at[j].set(counts_j)
    return centroids, counts

  return lax.fori_loop(0, centroids.shape[0], fix, (centroids, counts))


def kmeans(key, x, valid, row_ids, num_clusters: int, *, num_iters: int, init="random",
           spherical=False, split_empty=True, centroids=None, axis_name=None):
  """Lloyd's k-means over the rows of all devices.

  Each iteration: assign every valid row to its nearest centroid, then each
  centroid = mean of its rows (psum of sums and counts); empty clusters are
  split from the largest (``split_empty``) or keep their centroid; with
  ``spherical`` the centroids are L2-normalised. The returned assignments are
  those of the final centroids (an extra E-step, as the references do).

  Args:
    key: PRNG key for the initialisation (ignored if ``centroids`` is given).
    x: float32 [M, D] this device's rows; valid: bool [M] (False: padding);
      row_ids: int32 [M] global row ids (for device-count-invariant draws).
    num_clusters: K.
    num_iters: Lloyd iterations (DeepCluster v1: faiss' 20; v2: 10).
    init: 'random' or 'kmeans++' (see ``init_centroids``).
    spherical: cosine k-means (rows should be unit vectors).
    split_empty: DeepCluster's empty-cluster rule (else keep the old centroid).
    centroids: optional float32 [K, D] initial centroids (same on every device).
    axis_name: the data axis under ``jax.shard_map``, or None.

  Returns:
    (centroids float32 [K, D] replicated, assignments int32 [M] local (0 for
    invalid rows), counts int32 [K] global rows per cluster).
  """
  x = x.astype(jnp.float32)
  if centroids is None:
    centroids = init_centroids(key, x, valid, row_ids, num_clusters, method=init,
                               axis_name=axis_name)
  weights = valid.astype(jnp.float32)

  def step(_, centroids):
    labels = assign(x, centroids, spherical=spherical)
    sums = _psum(jax.ops.segment_sum(x * weights[:, None], labels, num_clusters), axis_name)
    counts = _psum(jax.ops.segment_sum(valid.astype(jnp.int32), labels, num_clusters),
                   axis_name)
    means = sums / jnp.maximum(counts, 1)[:, None].astype(jnp.float32)
    new = jnp.where((counts > 0)[:, None], means, centroids)
    if spherical:
      new = new / jnp.linalg.norm(new, axis=-1, keepdims=True).clip(1e-12)
    if split_empty:
      new, _ = split_empty_clusters(new, counts)
    return new

  centroids = lax.fori_loop(0, num_iters, step, centroids.astype(jnp.float32))
  labels = jnp.where(valid, assign(x, centroids, spherical=spherical), 0)
  counts = _psum(jax.ops.segment_sum(valid.astype(jnp.int32), labels, num_clusters), axis_name)
  return centroids, labels, counts


def pca_whiten(x, valid, dim: int, *, l2_normalize=True, axis_name=None):
  """PCA to ``dim`` dimensions with whitening, then L2 normalisation (DeepCluster v1).

  y = (x - mean) V diag(lambda)^-1/2 over the top-``dim`` eigenpairs of the global
  covariance (mean and covariance ``psum``'d over devices; padding rows excluded).
  DeepCluster's ``preprocess_features``: faiss ``PCAMatrix(eigen_power=-0.5)``
  then row L2 normalisation.

  Args:
    x: float [M, D] this device's rows; valid: bool [M].
    dim: output dimensions (<= D).
    l2_normalize: normalise the whitened rows to unit length.
    axis_name: the data axis, or None.

  Returns:
    float32 [M, dim] (zeros for invalid rows).
  """
  if dim > x.shape[1]:
    raise ValueError(f"PCA dimension {dim} exceeds the feature dimension {x.shape[1]}.")
  x = x.astype(jnp.float32)
  w = valid.astype(jnp.float32)[:, None]
  n = _psum(jnp.sum(w), axis_name)
  mean = _psum(jnp.sum(x * w, axis=0), axis_name) / n
  centred = (x - mean) * w
  cov = _psum(jnp.matmul(centred.T, centred, precision=lax.Precision.HIGHEST), axis_name) / n
  eigvals, eigvecs = jnp.linalg.eigh(cov)  # ascending
  eigvals, eigvecs = eigvals[::-1][:dim], eigvecs[:, ::-1][:, :dim]
  y = jnp.matmul(centred, eigvecs, precision=lax.Precision.HIGHEST)
  y = y * lax.rsqrt(jnp.maximum(eigvals, _EIG_FLOOR))[None, :]
  if l2_normalize:
    y = y / jnp.linalg.norm(y, axis=-1, keepdims=True).clip(1e-12)
  return y * w
