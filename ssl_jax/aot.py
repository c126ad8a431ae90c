"""Ahead-of-time compilation of the real train step for a device topology.

A TPU pod slice can be planned without one: with ``libtpu`` installed (the
``jax[tpu]`` extra installs on any Linux host), ``jax.experimental.topologies``
describes e.g. the 1,024 chips of ``v4:8x8x8`` and XLA compiles the same
``jit(shard_map(train_step))`` the trainer runs for them. The compiled
executable reports per-chip memory (``memory_analysis``) and FLOPs
(``cost_analysis``): whether a config fits the chip's HBM, and a lower bound on
its step time, before any TPU time is spent.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from ssl_jax import methods
from ssl_jax import optim
from ssl_jax import train
from ssl_jax.parallel import BATCH_AXIS


def topology_devices(topology: str, platform: str = "tpu"):
  """The devices of a named topology, e.g. ``'v5e:4x4'``, ``'v4:8x8x8'`` (needs libtpu)."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  return topologies.get_topology_desc(topology, platform=platform).devices


def compile_train_step(config, devices, *, image_size: int | None, steps_per_epoch: int = 1000,
                       total_steps: int = 100_000):
  """The compiled train step of ``config`` for ``devices`` (abstract: nothing runs).

  Args:
    config: a run config.
    devices: the devices of the mesh (e.g. ``topology_devices('v5e:2x2')``).
    image_size: side of the stored images of a fixed-size dataset (the step
      then crops on device); None for variable-size datasets (ImageNet), whose
      views arrive cropped by the host at the recipes' sizes.
    steps_per_epoch, total_steps: for the schedules (they do not change the program).

  Returns:
    A ``jax.stages.Compiled``: ``.memory_analysis()`` and ``.cost_analysis()``
    are per device.
  """
  method = methods.get_method(config.method)
  mesh = train.run_mesh(config, method, devices)
  tx, schedule = optim.make_optimizer(config.optim, total_steps=total_steps,
                                      steps_per_epoch=steps_per_epoch,
                                      batch_size=config.batch_size)
  recipes = method.view_recipes(config)
  batch_sharding = NamedSharding(mesh, P(BATCH_AXIS))
  state = jax.eval_shape(functools.partial(train.init_train_state, config, method, tx))
  shardings = train.state_shardings(config, method, tx, mesh)
  if isinstance(shardings, NamedSharding):
    shardings = jax.tree.map(lambda _: shardings, state)
  state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                       state, shardings)

  def images(size):
    return jax.ShapeDtypeStruct((config.batch_size, size, size, 3), jnp.uint8,
                                sharding=batch_sharding)

  batch = ({"image": images(image_size)} if image_size is not None
           else {"views": tuple(images(r.size) for r in recipes)})
  step = train.compile_train_step(mesh, method=method, config=config, recipes=recipes, tx=tx,
                                  schedule=schedule, total_steps=total_steps)
  return step.lower(state, batch).compile()


def per_device_memory_bytes(compiled) -> int:
  """Arguments + outputs + temporaries - donated aliases, per device."""
  m = compiled.memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes -
          m.alias_size_in_bytes)


def per_device_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0))
