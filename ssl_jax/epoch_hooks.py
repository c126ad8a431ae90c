"""Epoch-start hooks: what offline-clustering methods do between epochs.

A method may define ``epoch_start(state, context) -> state``. The training loop
(``train.train_and_evaluate``) calls it before the first step of every epoch
(``step % steps_per_epoch == 0``, including step 0), logs its cost in seconds
(``epoch_start_seconds`` in metrics.jsonl), and carries on with the state it
returns. Everything the hook computes must live in that state (``params``,
``opt_state``, ``method_state``), so a checkpoint holds it and a resumed run
continues exactly: a resume at a step inside an epoch does not call the hook
again, one at an epoch boundary calls it as the uninterrupted run would.

Uses: DeepCluster v1 (features of the whole training set, PCA-whitening,
k-means, pseudo-labels, a re-initialised head), DeepCluster v2 (k-means on the
memory bank, prototypes set to the centroids), SwAV (the epoch number, to start
its queue).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from ssl_jax import data
from ssl_jax.parallel import BATCH_AXIS


# Compiled hook functions by (name, config JSON, mesh devices); see EpochContext.compiled.
_COMPILED: dict = {}
_MAX_COMPILED = 32


@dataclasses.dataclass(frozen=True)
class EpochContext:
  """What an epoch-start hook may use besides the state.

  Attributes:
    epoch: the epoch about to start (0, 1, ...).
    steps_per_epoch: optimizer steps per epoch.
    config: the run config.
    mesh: the 1-D device mesh (axis ``BATCH_AXIS``).
    tx: the run's optimizer (to re-initialise the optimizer state of a new head).
  """
  epoch: int
  steps_per_epoch: int
  config: ml_collections.ConfigDict
  mesh: Any
  tx: optax.GradientTransformation

  def compiled(self, name: str, build: Callable[[], Callable]) -> Callable:
    """``build()`` (a jitted function) made once per (name, config, mesh) and reused.

    A hook runs every epoch; rebuilding its ``jax.jit`` each time would recompile
    it each time. The cache is keyed by the config's JSON and the mesh's devices,
    so every epoch (and a resumed run in the same process) reuses one compile.
    """
    key = (name, self.config.to_json(), tuple(d.id for d in self.mesh.devices.flat))
    if key not in _COMPILED:
      if len(_COMPILED) >= _MAX_COMPILED:
        _COMPILED.pop(next(iter(_COMPILED)))
      _COMPILED[key] = build()
    return _COMPILED[key]

  def map_train_split(self, fn: Callable, state, *, name: str | None = None) -> dict:
    """Applies per-device ``fn`` to every image of the training split, sharded.

    One pass over ``config.data.train_split`` in its stored order (the index
    the train batches carry as ``'index'``), ``config.eval_batch_size`` images
    per global batch, eval-style (no augmentation; ``fn`` makes its own view).

    Args:
      fn: per-device ``fn(state, images) -> outputs`` with images uint8
        [n, H, W, 3] and outputs [n, ...] (one array), compiled under
        ``jax.shard_map``.
      state: the TrainState, passed to ``fn`` replicated.
      name: if given, the compiled ``fn`` is cached under it (see ``compiled``):
        ``fn`` must then be the same computation at every call.

    Returns:
      {'outputs': [J, G, ...], 'index': int32 [J, G], 'valid': bool [J, G]} with
      J = ceil(N / G) batches of G = eval_batch_size rows, sharded over the
      mesh along G (``P(None, BATCH_AXIS)``): each device holds its slice of
      every batch, so the whole-dataset array never sits on one device. Row
      (j, r) is example j * G + r of the split; ``valid`` is False for padding.
    """
    config, mesh = self.config, self.mesh
    global_batch = config.eval_batch_size
    if global_batch % mesh.size:
      raise ValueError(f"config.eval_batch_size={global_batch} must be divisible by the "
                       f"{mesh.size} devices.")
    per_process = global_batch // jax.process_count()
    batch_sharding = NamedSharding(mesh, P(BATCH_AXIS))
    stacked = NamedSharding(mesh, P(None, BATCH_AXIS))
    def build():
      return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(BATCH_AXIS)),
                                   out_specs=P(BATCH_AXIS)))

    step = self.compiled(name, build) if name else build()
    put = self.compiled("map_train_split.put", lambda: jax.jit(
        lambda buffer, j, x: buffer.at[j].set(x), donate_argnums=0))
    num_batches = -(-data.dataset_info(config.data).train_size // global_batch)
    buffer = None
    for j, batch in enumerate(data.eval_batches(config.data, config.data.train_split,
                                                batch_size=per_process)):
      images = jax.make_array_from_process_local_data(batch_sharding, batch["image"])
      out = step(state, images)
      if buffer is None:
        buffer = jax.jit(lambda: jnp.zeros((num_batches,) + out.shape, out.dtype),
                         out_shardings=stacked)()
      buffer = put(buffer, j, out)
    positions = np.arange(num_batches * global_batch, dtype=np.int32).reshape(num_batches, -1)
    size = data.dataset_info(config.data).train_size
    return {"outputs": buffer,
            "index": jax.device_put(positions, stacked),
            "valid": jax.device_put(positions < size, stacked)}


def run_epoch_start(method, state, *, config, mesh, tx, step: int, steps_per_epoch: int,
                    writer=None):
  """Calls ``method.epoch_start`` for the epoch starting at ``step``; logs its seconds."""
  epoch = step // steps_per_epoch
  # The steps dispatched before the hook are still running: wait for them so
  # the logged time is the hook's own (the loop would wait for them anyway).
  jax.block_until_ready(state)
  start = time.perf_counter()
  context = EpochContext(epoch=epoch, steps_per_epoch=steps_per_epoch, config=config,
                         mesh=mesh, tx=tx)
  state = method.epoch_start(state, context)
  jax.block_until_ready(state)
  seconds = time.perf_counter() - start
  logging.info("Epoch %d starts at step %d: %s.epoch_start took %.2f s.", epoch, step,
               config.method, seconds)
  if writer is not None:
    writer.write(step, {"epoch_start_seconds": seconds})
  return state


def reset_opt_state(tx: optax.GradientTransformation, opt_state, params, key_name: str):
  """``opt_state`` with the entries of params under ``key_name`` freshly initialised.

  DeepCluster v1 builds a new optimizer for its re-initialised head every
  epoch (no momentum carried over); this does the same inside one optax state:
  every opt-state leaf whose tree path has a ``key_name`` entry (momentum
  buffers mirror the params tree) takes its value from ``tx.init(params)``.
  """
  fresh = tx.init(params)

  def pick(path, old, new):
    names = {str(getattr(k, "key", getattr(k, "name", ""))) for k in path}
    return new if key_name in names else old

  return jax.tree_util.tree_map_with_path(pick, opt_state, fresh)
