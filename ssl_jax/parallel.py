"""The data-parallel axes and the mesh they live on.

Per-device code (losses, cross-replica BatchNorm, the train step) names its
collectives with ``BATCH_AXIS``; ``make_mesh`` builds the mesh over which
``jax.shard_map`` runs that code. This is what ``jax.pmap`` is in JAX >= 0.10.

The mesh is 2-D, ``(GROUP_AXIS, REPLICA_AXIS)`` = (groups, devices per group),
and the batch is split over both: ``BATCH_AXIS`` is the pair, so a collective
over it spans every device and ``P(BATCH_AXIS)`` shards over all of them. Every
method but one runs with a single group, i.e. a plain 1-D data-parallel mesh.
DeeperCluster (Caron et al. 2019) uses the group axis as its paper does: each
group of devices owns some super-classes' sub-classifiers (params sharded
``P(GROUP_AXIS)``) while batch-norm statistics and the encoder's gradients span
the whole batch.
"""

from __future__ import annotations

import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

GROUP_AXIS = "group"
REPLICA_AXIS = "replica"
BATCH_AXIS = (GROUP_AXIS, REPLICA_AXIS)


def make_mesh(devices=None, groups: int = 1) -> Mesh:
  """The (``groups``, devices / ``groups``) mesh over ``devices`` (default: all devices).

  Consecutive devices form a group (on a multi-host job, a host's devices stay
  together when the per-group count is a multiple of the local device count).
  """
  devices = jax.devices() if devices is None else list(devices)
  if groups < 1 or len(devices) % groups:
    raise ValueError(f"{len(devices)} devices cannot form {groups} equal groups; choose a "
                     "group count that divides the device count.")
  return Mesh(np.asarray(devices).reshape(groups, -1), BATCH_AXIS)


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


def varying_axes(x) -> frozenset:
  """The mesh axes along which per-device value ``x`` differs (shard_map's typing)."""
  aval = jax.typeof(x)
  manual = getattr(aval, "manual_axis_type", None)  # jax >= 0.10
  if manual is not None:
    return frozenset(manual.varying)
  return frozenset(getattr(aval, "vma", ()))


def global_norm(tree) -> jax.Array:
  """sqrt(sum of squares) of every leaf; per-device code or plain.

  Leaves split over ``GROUP_AXIS`` (group-sharded params and their gradients)
  hold a different slice on each group: their squares are summed over it, so
  the norm is the global one and the same on every device.
  """
  total = jnp.zeros((), jnp.float32)
  for leaf in jax.tree.leaves(tree):
    square = jnp.sum(jnp.square(leaf.astype(jnp.float32)))
    if GROUP_AXIS in varying_axes(square):
      square = jax.lax.psum(square, GROUP_AXIS)
    total = total + square
  return jnp.sqrt(total)


def _cluster_detected() -> bool:
  """True inside a multi-process job that ``jax.distributed`` can auto-detect."""
  slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
  tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return slurm_tasks > 1 or "," in tpu_hosts or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           *, timeout_seconds: int = 300) -> None:
  """Starts JAX's distributed runtime when this is one process of many.

  On TPU pods and SLURM clusters JAX detects the coordinator and the process
  ids itself; elsewhere (several CPU or GPU hosts) pass them explicitly. A
  single process without a cluster does nothing. CPU processes talk over gloo
  (the CPU collectives backend). A process whose peers never arrive gives up
  after ``timeout_seconds`` with an error instead of waiting forever.

  Must run before any JAX computation (it fixes the set of global devices).
  """
  explicit = coordinator_address is not None
  if not explicit and not _cluster_detected():
    return
  if explicit and (num_processes is None or process_id is None):
    raise ValueError("--coordinator_address needs --num_processes and --process_id too "
                     "(e.g. --num_processes=2 --process_id=0 on the first host).")
  # Only CPU collectives need choosing (GPU uses NCCL, TPU its ICI); harmless
  # elsewhere, and read only when the CPU backend starts, i.e. after this.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             initialization_timeout=timeout_seconds)
  logging.info("Process %d of %d; %d local of %d global devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def shutdown_distributed() -> None:
  """Leaves the distributed runtime (a barrier over all processes), if it was started."""
  if jax.process_count() > 1:
    jax.distributed.shutdown()
