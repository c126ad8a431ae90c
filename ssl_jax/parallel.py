"""The one data-parallel axis and the mesh it lives on.

Per-device code (losses, cross-replica BatchNorm, the train step) names its
collectives with ``BATCH_AXIS``; ``make_mesh`` builds the 1-D mesh over which
``jax.shard_map`` runs that code. This is what ``jax.pmap`` is in JAX >= 0.10.
"""

from __future__ import annotations

import jax
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
