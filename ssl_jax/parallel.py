"""The one data-parallel axis and the mesh it lives on.

Per-device code (losses, cross-replica BatchNorm, the train step) names its
collectives with ``BATCH_AXIS``; ``make_mesh`` builds the 1-D mesh over which
``jax.shard_map`` runs that code. This is what ``jax.pmap`` is in JAX >= 0.10.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXIS = "batch"


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh named ``BATCH_AXIS`` over ``devices`` (default: all devices)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (BATCH_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading dimension split over the batch axis."""
  return NamedSharding(mesh, P(BATCH_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def gather_replicated(x, axis_name):
  """All devices' rows ``x`` [n, ...] -> the global [num_devices * n, ...], in device order.

  Per-device code. Unlike ``lax.all_gather`` (whose result shard_map types as
  device-varying), the result is a ``psum`` and therefore device-invariant: it
  can be stored in replicated state (SwAV's queue, DeepCluster's memory bank).
  Each device writes its rows at its ``axis_index`` offset of a zero buffer and
  the buffers are summed. ``axis_name=None`` returns ``x``.
  """
  if axis_name is None:
    return x
  n = x.shape[0]
  buffer = jnp.zeros((jax.lax.axis_size(axis_name) * n,) + x.shape[1:], x.dtype)
  buffer = jax.lax.dynamic_update_slice_in_dim(buffer, x, jax.lax.axis_index(axis_name) * n,
                                               axis=0)
  return jax.lax.psum(buffer, axis_name)
