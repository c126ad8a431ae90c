"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent: A New Approach to
Self-Supervised Learning"), with its batch-statistics-free variant (Richemond
et al. 2020, "BYOL works even without batch statistics").

The online network (encoder f, projector g, predictor q; ``params``) predicts
the target network's projection (encoder + projector; an EMA of the online
one) of the other view. Loss (Sec. 3.1, eq. 2, symmetrised as in eq. 3):

  L = || q(z_1)/|q(z_1)| - z'_2/|z'_2| ||^2 + || q(z_2)/|q(z_2)| - z'_1/|z'_1| ||^2

averaged over the global batch, with z_v the online and z'_v the target
projection of view v. After each optimizer step the target moves towards the
online weights, ``xi <- tau xi + (1 - tau) theta`` (Sec. 3.1), with tau on the
cosine schedule of Sec. 3.2 (``common.cosine_tau_schedule``).

State layout:
  params:       {'encoder', 'projector', 'predictor'} (online; the optimizer's)
  batch_stats:  the online network's BN statistics ({} with GN+WS)
  method_state: {'target': {'params': {'encoder', 'projector'},
                            'batch_stats': {...}},
                 'tau': float32 [] (the decay rate of the last EMA update)}

The target is never differentiated: it is not in ``params`` (the gradient is
w.r.t. ``params`` only) and its outputs pass through ``stop_gradient``. Its BN
statistics are those of its own forward passes in training mode, as in the
reference code (deepmind-research/byol ``byol_experiment.py`` keeps
``target_state`` from the target's forward); the target only ever runs in
training mode, so they are never used by the loss. Online and target are
initialised from different keys, as there.

BatchNorm: both views go through each network as one batch (2N rows), so BN
normalises over the 2N views of the global batch (cross-replica, as the
reference's TPU BN). The reference code runs the two views separately (BN over
N rows each); one pass halves the traced graph and compile time, and with the
global batch the statistics differ only by the pooling of the two views.

Variant without batch statistics (``config.byol.head_norm='layer'`` with
``config.model.norm='group_ws'``; the ``gn_ws`` config variant): GroupNorm +
Weight Standardisation in the encoder and LayerNorm in the projector and
predictor, so no layer looks across the batch and ``batch_stats`` is empty.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax import augment
from ssl_jax import diagnostics
from ssl_jax import losses
from ssl_jax.methods import common
from ssl_jax.models import encoder as encoder_lib
from ssl_jax.models import heads


class BYOLNetwork(nn.Module):
  """Encoder + projector (+ predictor for the online network).

  Returns (projection, prediction); prediction is None without a predictor.
  """
  encoder: nn.Module
  projector: nn.Module
  predictor: nn.Module | None = None

  def __call__(self, images, train: bool):
    z = self.projector(self.encoder(images, train=train), train=train)
    p = None if self.predictor is None else self.predictor(z, train=train)
    return z, p


def _networks(config: ml_collections.ConfigDict, axis_name):
  """(online, target) modules: the same encoder and projector, online adds the predictor."""
  cfg = config.byol
  dtype = encoder_lib.compute_dtype(config.model)

  def projector():
    return heads.byol_projector(cfg.projector_hidden_dim, cfg.projection_dim,
                                norm=cfg.head_norm, axis_name=axis_name, dtype=dtype)

  predictor = heads.byol_predictor(cfg.predictor_hidden_dim, cfg.projection_dim,
                                   norm=cfg.head_norm, axis_name=axis_name, dtype=dtype)
  online = BYOLNetwork(encoder_lib.build_encoder(config.model, axis_name), projector(),
                       predictor)
  target = BYOLNetwork(encoder_lib.build_encoder(config.model, axis_name), projector())
  return online, target


def view_recipes(config) -> tuple[augment.ViewRecipe, ...]:
  """BYOL's asymmetric pair (Table 6): preset 'byol' or 'byol_cifar'."""
  return common.two_view_recipes(config, "BYOL", "'byol' or 'byol_cifar'")


def tau_schedule(config, total_steps: int):
  """tau_k of Sec. 3.2 as a function of the optimizer step k (0 = first update)."""
  return common.cosine_tau_schedule(config.byol.tau_base, total_steps)


def symmetric_loss(p_1, p_2, z_1, z_2, axis_name=None):
  """BYOL's symmetrised loss (eq. 2 + its symmetric eq. 3), global-batch mean.

    L = mean_i [2 - 2 cos(p_1[i], z_2[i])] + mean_i [2 - 2 cos(p_2[i], z_1[i])]

  Args:
    p_1, p_2: float [n, D] online predictions of view 1 / view 2.
    z_1, z_2: float [n, D] target projections of view 1 / view 2 (stop-gradient'd).
    axis_name: the data-parallel axis; the mean is then over the global batch.

  Returns:
    float32 scalar in [0, 8].
  """
  loss = losses.regression_loss(p_1, z_2) + losses.regression_loss(p_2, z_1)
  return loss if axis_name is None else jax.lax.pmean(loss, axis_name)


def init(key, config, sample_images):
  """Online params/batch_stats from one key, the target from another (reference code)."""
  del sample_images  # shapes come from the view recipes
  online_key, target_key = jax.random.split(key)
  size = config.augment.size
  dummy = jnp.zeros((2, size, size, 3), jnp.float32)
  online, target = _networks(config, axis_name=None)
  online_vars = online.init(online_key, dummy, train=False)
  target_vars = target.init(target_key, dummy, train=False)
  method_state = {
      "target": {"params": target_vars["params"],
                 "batch_stats": target_vars.get("batch_stats", {})},
      "tau": jnp.asarray(config.byol.tau_base, jnp.float32),
  }
  return online_vars["params"], online_vars.get("batch_stats", {}), method_state


def loss_fn(params, batch_stats, method_state, views, key, *, config, axis_name):
  """The symmetrised BYOL loss (eq. 2-3) of this device's views, global-batch mean.

  Args:
    params, batch_stats: the online network's {'encoder', 'projector', 'predictor'}.
    method_state: {'target': {'params', 'batch_stats'}, 'tau'}.
    views: [view_1, view_2], float32 [n, S, S, 3] on this device.
    key: unused (the loss is deterministic given the views).
    config: the run config (``config.byol``).
    axis_name: the data-parallel axis (BN statistics and the mean span it).

  Returns:
    (loss, (batch_stats, method_state, metrics)); the target's batch_stats in
    method_state are those of its forward pass.
  """
  del key
  view_1, view_2 = views
  n = view_1.shape[0]
  images = jnp.concatenate([view_1, view_2])
  online, target = _networks(config, axis_name)
  (z_online, prediction), updated = online.apply(
      {"params": params, "batch_stats": batch_stats}, images, train=True,
      mutable=["batch_stats"])
  target_vars = jax.lax.stop_gradient(method_state["target"])
  (z_target, _), target_updated = target.apply(
      {"params": target_vars["params"], "batch_stats": target_vars["batch_stats"]}, images,
      train=True, mutable=["batch_stats"])
  z_target = jax.lax.stop_gradient(z_target.astype(jnp.float32))
  loss = symmetric_loss(prediction[:n], prediction[n:], z_target[:n], z_target[n:], axis_name)
  z_online = z_online.astype(jnp.float32)
  metrics = {"loss": loss, "tau": method_state["tau"],
             **diagnostics.collapse_metrics(z_online[:n], z_online[n:], axis_name)}
  method_state = dict(method_state, target={
      "params": method_state["target"]["params"],
      "batch_stats": target_updated.get("batch_stats", {})})
  return loss, (updated.get("batch_stats", {}), method_state, metrics)


def post_update(params, batch_stats, method_state, step, config, *, total_steps):
  """target <- tau_k target + (1 - tau_k) online, k = step - 1 (the update just applied)."""
  del batch_stats
  tau = tau_schedule(config, total_steps)(step - 1)
  online = {"encoder": params["encoder"], "projector": params["projector"]}
  target_params = common.ema_update(method_state["target"]["params"], online, tau)
  return dict(method_state, tau=tau,
              target=dict(method_state["target"], params=target_params))
