"""ssl_jax.diagnostics against NumPy float64 re-derivations, and 1 vs 8 devices."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ssl_jax import diagnostics
from ssl_jax.parallel import BATCH_AXIS, make_mesh


def _unit_rows(z):
  z = np.asarray(z, np.float64)
  return z / np.linalg.norm(z, axis=1, keepdims=True)


def ref_std(z):
  return np.mean(np.std(_unit_rows(z), axis=0))


def ref_effective_rank(z):
  singular = np.linalg.svd(_unit_rows(z), compute_uv=False)
  p = singular / singular.sum()
  p = p[p > 0]
  return np.exp(-np.sum(p * np.log(p)))


def ref_alignment(z_1, z_2):
  return np.mean([np.sum((a - b) ** 2) for a, b in zip(_unit_rows(z_1), _unit_rows(z_2))])


def ref_uniformity(z, groups):
  """Wang & Isola eq. 5 over pairs i != j inside each group of rows, averaged over groups."""
  values = []
  for zg in np.split(_unit_rows(z), groups):
    pairs = [np.exp(-2 * np.sum((zg[i] - zg[j]) ** 2))
             for i in range(len(zg)) for j in range(len(zg)) if i != j]
    values.append(np.mean(pairs))
  return np.log(np.mean(values))


@pytest.fixture(scope="module")
def embeddings():
  rng = np.random.default_rng(0)
  z_1 = rng.normal(size=(32, 16)).astype(np.float32)
  z_2 = (z_1 + 0.3 * rng.normal(size=z_1.shape)).astype(np.float32)
  return z_1, z_2


def test_metrics_match_numpy_reference(embeddings):
  z_1, z_2 = embeddings
  m = jax.jit(diagnostics.collapse_metrics)(z_1, z_2)
  both = np.concatenate([z_1, z_2])
  np.testing.assert_allclose(m["embedding_std"], ref_std(both), rtol=1e-5)
  np.testing.assert_allclose(m["embedding_std_ratio"], ref_std(both) * 4.0, rtol=1e-5)
  np.testing.assert_allclose(m["embedding_rank"], ref_effective_rank(both), rtol=1e-4)
  np.testing.assert_allclose(m["alignment"], ref_alignment(z_1, z_2), rtol=1e-5)
  np.testing.assert_allclose(m["uniformity"], ref_uniformity(z_1, 1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows,dim", [(32, 16), (16, 48)])  # N = 2 x rows > D, then < D
def test_eight_devices_give_global_statistics(rows, dim):
  rng = np.random.default_rng(rows + dim)
  z_1 = rng.normal(size=(rows, dim)).astype(np.float32)
  z_2 = (z_1 + 0.3 * rng.normal(size=z_1.shape)).astype(np.float32)
  mesh = make_mesh()
  fn = jax.jit(jax.shard_map(
      functools.partial(diagnostics.collapse_metrics, axis_name=BATCH_AXIS), mesh=mesh,
      in_specs=(P(BATCH_AXIS), P(BATCH_AXIS)), out_specs=P()))
  m = fn(z_1, z_2)
  single = diagnostics.collapse_metrics(z_1, z_2)
  for key in ("embedding_std", "embedding_rank", "embedding_rank_fraction", "alignment"):
    np.testing.assert_allclose(m[key], single[key], rtol=1e-4, err_msg=key)
  both = np.concatenate([z_1, z_2])
  np.testing.assert_allclose(m["embedding_rank"], ref_effective_rank(both), rtol=1e-4)
  np.testing.assert_allclose(m["embedding_rank_fraction"],
                             ref_effective_rank(both) / min(2 * rows, dim), rtol=1e-4)
  # Uniformity averages the pairs inside each device's share.
  np.testing.assert_allclose(m["uniformity"], ref_uniformity(z_1, mesh.size), rtol=1e-5,
                             atol=1e-6)


def test_collapsed_embedding_is_flagged(embeddings):
  z_1, _ = embeddings
  healthy = jax.device_get(diagnostics.collapse_metrics(z_1))
  assert diagnostics.collapse_warning(healthy) is None
  assert healthy["embedding_std_ratio"] > 0.5
  collapsed = np.tile(z_1[:1], (32, 1)) + 1e-4 * z_1  # every image at (nearly) one point
  m = jax.device_get(diagnostics.collapse_metrics(collapsed))
  assert m["embedding_rank"] < 1.1
  assert abs(m["uniformity"]) < 1e-3
  message = diagnostics.collapse_warning(m)
  assert message is not None and "collapse" in message


def test_dimensional_collapse_is_flagged_by_rank():
  """Images on 2 of 64 directions: a fair std, but an effective rank of about 2."""
  rng = np.random.default_rng(3)
  z = np.zeros((128, 64), np.float32)
  z[:, :2] = rng.normal(size=(128, 2))
  m = jax.device_get(diagnostics.collapse_metrics(z))
  assert m["embedding_std_ratio"] > diagnostics.COLLAPSE_STD_RATIO  # the std misses it
  np.testing.assert_allclose(m["embedding_rank_fraction"], m["embedding_rank"] / 64, rtol=1e-6)
  assert 1.5 < m["embedding_rank"] < 2.01
  message = diagnostics.collapse_warning(m)
  assert message is not None and message.startswith("Dimensional collapse")
  # Spread over every direction: no warning, fraction near 1 for isotropic Gaussians.
  m = jax.device_get(diagnostics.collapse_metrics(rng.normal(size=(128, 64)).astype(np.float32)))
  assert m["embedding_rank_fraction"] > 0.8 and diagnostics.collapse_warning(m) is None
