"""Parts shared by the momentum-target and queue methods (BYOL, MoCo v2/v3, SimSiam).

- ``ema_update``: the target network's exponential moving average (BYOL eq. 1
  below Sec. 3.1, MoCo eq. 2): ``target <- tau * target + (1 - tau) * online``.
- ``cosine_tau_schedule``: BYOL's (Grill et al. 2020, Sec. 3.2) and MoCo v3's
  momentum schedule, ``tau_k = 1 - (1 - tau_base) * (cos(pi k / K) + 1) / 2``,
  from ``tau_base`` at step 0 to 1 at step K, as an optax-style schedule.
- ``gather_replicated``: every device's rows of a per-device array in global
  (device) order, as a value that is the same on every device, so it can be
  stored in the replicated train state (a MoCo queue).
- ``queue_push``: MoCo's FIFO queue of keys (He et al. 2020, Sec. 3.1, Alg. 1's
  ``enqueue``/``dequeue``) as a ring buffer with a pointer.

Everything here is a pure function of explicit pytrees.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ssl_jax import augment


# Floor on a vector's L2 norm before dividing (as torch.nn.functional.normalize).
_NORM_EPS = 1e-12


def l2_normalize(x: jax.Array) -> jax.Array:
  """x / max(||x||, eps) along the last axis, in float32."""
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), _NORM_EPS)


def ema_update(target: Any, online: Any, tau) -> Any:
  """``tau * target + (1 - tau) * online`` leaf by leaf, in the target's dtype.

  Args:
    target: the target pytree (BYOL's target params, MoCo's key encoder).
    online: a pytree with the same structure (the online params after the step).
    tau: float scalar (Python or traced) in [0, 1]; 1 keeps the target.

  Returns:
    The new target pytree. No gradient flows through it (``stop_gradient``):
    the target is a constant of the loss by construction.
  """
  return jax.tree.map(
      lambda t, o: jax.lax.stop_gradient(
          (tau * t + (1.0 - tau) * o.astype(t.dtype)).astype(t.dtype)),
      target, online)


def cosine_tau_schedule(tau_base: float, total_steps: int) -> Callable[[Any], jax.Array]:
  """BYOL's target decay rate (Grill et al. 2020, Sec. 3.2) as a schedule of the step.

    tau_k = 1 - (1 - tau_base) * (cos(pi * k / K) + 1) / 2,

  k the optimizer step (0 for the first update) and K = ``total_steps``: tau_0 =
  tau_base, tau_K = 1; held at 1 after K. MoCo v3 uses the same schedule for its
  momentum (``--moco-m-cos``). A constant tau (MoCo v2) is ``tau_base`` with the
  schedule turned off by the caller.

  Args:
    tau_base: the initial value in [0, 1] (BYOL 0.996, MoCo v3 0.99).
    total_steps: K >= 1.

  Returns:
    ``schedule(step) -> float32 scalar`` (step a Python int or a traced int).
  """
  if not 0.0 <= tau_base <= 1.0:
    raise ValueError(f"tau_base must be in [0, 1], got {tau_base}.")
  if total_steps < 1:
    raise ValueError(f"total_steps must be >= 1, got {total_steps}.")

  def schedule(step):
    k = jnp.minimum(jnp.asarray(step, jnp.float32), float(total_steps))
    return 1.0 - (1.0 - tau_base) * (jnp.cos(math.pi * k / total_steps) + 1.0) / 2.0

  return schedule


def gather_replicated(x: jax.Array, axis_name: str | None) -> jax.Array:
  """All devices' rows of ``x`` in device order, replicated (device-invariant).

  ``jax.lax.all_gather`` gives the same values but, under ``jax.shard_map``, a
  device-VARYING result, which cannot be written into replicated state (the
  replication check rejects it). Here each device writes its rows into a zero
  buffer at offset ``axis_index * n`` and the buffers are ``psum``'d: the sum of
  exact zeros and one copy of each row is exact, and ``psum``'s output is
  device-invariant.

  Args:
    x: [n, ...] this device's rows.
    axis_name: the data-parallel axis, or None (single device: ``x`` itself).

  Returns:
    [n * num_devices, ...], rows of device d at ``d * n : (d + 1) * n``.
  """
  if axis_name is None:
    return x
  n = x.shape[0]
  num_devices = jax.lax.axis_size(axis_name)
  buffer = jnp.zeros((n * num_devices,) + x.shape[1:], x.dtype)
  offset = jax.lax.axis_index(axis_name) * n
  buffer = jax.lax.dynamic_update_slice_in_dim(buffer, x, offset, axis=0)
  return jax.lax.psum(buffer, axis_name)


def init_queue(size: int, dim: int, key: jax.Array) -> dict:
  """A MoCo queue of ``size`` random unit vectors and a pointer at 0.

  MoCo initialises its queue with ``normalize(randn(dim, K))`` (moco/builder.py):
  random negatives until real keys have replaced them after ``size / B`` steps.

  Returns:
    {'keys': float32 [size, dim], 'pointer': int32 [], 'filled': int32 []}:
    ``filled`` counts real keys written (capped at ``size``), for the logs.
  """
  keys = jax.random.normal(key, (size, dim), jnp.float32)
  keys = keys / jnp.linalg.norm(keys, axis=-1, keepdims=True)
  return {"keys": keys, "pointer": jnp.zeros((), jnp.int32),
          "filled": jnp.zeros((), jnp.int32)}


def queue_push(queue: dict, new_keys: jax.Array) -> dict:
  """MoCo's enqueue/dequeue (He et al. 2020, Alg. 1): FIFO over a ring buffer.

  ``new_keys`` overwrite the oldest rows, starting at ``pointer``, and the pointer
  advances by their count modulo the queue size. The queue size must be a
  multiple of the number of new keys (MoCo: "K % batch_size == 0"), so a push
  never wraps mid-batch.

  Args:
    queue: {'keys': [K, D], 'pointer': int32 [], 'filled': int32 []}.
    new_keys: [B, D] keys of the global batch in global order (see
      ``gather_replicated``); B divides K.

  Returns:
    The new queue dict; keys are stop-gradient'd (the queue holds constants).
  """
  size, batch = queue["keys"].shape[0], new_keys.shape[0]
  if size % batch:
    raise ValueError(f"The queue size {size} must be a multiple of the global batch {batch} "
                     "(MoCo's assumption): change the queue size or the batch size.")
  new_keys = jax.lax.stop_gradient(new_keys).astype(queue["keys"].dtype)
  keys = jax.lax.dynamic_update_slice_in_dim(queue["keys"], new_keys, queue["pointer"], axis=0)
  return {"keys": keys, "pointer": (queue["pointer"] + batch) % size,
          "filled": jnp.minimum(queue["filled"] + batch, size)}


def two_view_recipes(config, method: str, presets: str) -> tuple:
  """The two views of ``config.augment`` for a two-view method, or an error naming the fix.

  Args:
    config: the run config (``config.augment.preset`` and ``size``).
    method: the method's name, for the message.
    presets: the presets to suggest, e.g. "'byol' or 'byol_cifar'".
  """
  recipes = augment.preset(config.augment.preset, config.augment.size)
  if len(recipes) != 2:
    raise ValueError(f"{method} needs exactly two views; preset {config.augment.preset!r} gives "
                     f"{len(recipes)}. Use config.augment.preset={presets}.")
  return recipes
