"""MoCo v2 (Chen, Fan, Girshick & He 2020, "Improved Baselines with Momentum
Contrastive Learning"; MoCo: He et al. 2020, "Momentum Contrast for Unsupervised
Visual Representation Learning").

A query encoder f_q (ResNet + the v2 MLP head; ``params``) and a key encoder
f_k, a momentum copy of it (``method_state['key_encoder']``), updated after
each step by ``theta_k <- m theta_k + (1 - m) theta_q`` (MoCo eq. 2, m = 0.999).
Query q = f_q(view 1), positive key k+ = f_k(view 2), both L2-normalised; the
negatives are a queue of K keys of earlier batches. InfoNCE (MoCo eq. 1):

  L = -log exp(q.k+ / T) / (exp(q.k+ / T) + sum_{k- in queue} exp(q.k- / T)),

averaged over the global batch, T = 0.2 (v2). After the loss the global batch's
keys are enqueued and the oldest dequeued (FIFO; Alg. 1).

State layout:
  params:       {'encoder', 'projector'} (the query encoder)
  batch_stats:  the query encoder's BN statistics
  method_state: {'key_encoder': {'params', 'batch_stats'},
                 'queue': {'keys': [K, D], 'pointer': int32, 'filled': int32}}

The queue is replicated: every device holds the same K keys. Each step the keys
of all devices are written in global order (device 0's first) with a psum-based
gather (``common.gather_replicated``), so the queue does not depend on the
number of devices. The push happens in ``loss_fn`` (where the keys are; the loss
reads the queue before the push), the momentum update in ``post_update``.

Shuffle-BN and why cross-replica BN replaces it. MoCo (Sec. 3.3) found that
per-GPU BN lets the model "cheat": the query and its positive key are computed
in the same small per-device batch, so BN's batch mean and variance carry a
signature of that batch which the query can match against its key, lowering
the loss without learning a good representation. Shuffle-BN breaks this by
computing the keys on a permutation of the batch across GPUs, so a query and
its key are normalised with statistics of DIFFERENT sub-batches. Here every BN
layer (query and key encoder) is cross-replica (``axis_name``): its statistics
are those of the GLOBAL batch, identical for every example in it. No sub-batch
signature exists to leak; the per-batch statistic is shared by the positive
and all N - 1 in-batch queries alike, and the K queue negatives come from
other batches as in MoCo. This is the remedy SimCLR adopts ("global BN", Sec.
2.2 / B.2) and MoCo v3 uses (SyncBN). The test checks that the key encoder's
statistics are those of the global batch (1 device == 8 devices).
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
from ssl_jax.models import resnet


class MoCoEncoder(nn.Module):
  """ResNet + MLP head; the query and the key encoder share this architecture."""
  encoder: nn.Module
  projector: nn.Module

  def __call__(self, images, train: bool):
    return self.projector(self.encoder(images, train=train), train=train)


def _model(config: ml_collections.ConfigDict, axis_name) -> MoCoEncoder:
  cfg = config.mocov2
  hidden = cfg.projector_hidden_dim or resnet.num_features(
      config.model.depth, config.model.width_multiplier, config.model.base_width)
  return MoCoEncoder(
      encoder=encoder_lib.build_encoder(config.model, axis_name),
      projector=heads.mocov2_projector(hidden, cfg.projection_dim,
                                       dtype=encoder_lib.compute_dtype(config.model)))


def view_recipes(config) -> tuple[augment.ViewRecipe, ...]:
  """Two views of the v2 recipe ('mocov2' preset: crop 0.2-1, jitter 0.4, blur)."""
  return common.two_view_recipes(config, "MoCo", "'mocov2'")


def _check_queue(config) -> None:
  size, batch = config.mocov2.queue_size, config.batch_size
  if size < batch or size % batch:
    raise ValueError(f"config.mocov2.queue_size={size} must be a positive multiple of the "
                     f"global batch config.batch_size={batch} (MoCo's FIFO pushes whole "
                     "batches).")


def init(key, config, sample_images):
  """Query params/batch_stats; key encoder = a copy of them; a queue of random unit keys."""
  del sample_images
  _check_queue(config)
  model_key, queue_key = jax.random.split(key)
  size = config.augment.size
  variables = _model(config, axis_name=None).init(
      model_key, jnp.zeros((2, size, size, 3), jnp.float32), train=False)
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  method_state = {
      # MoCo (Alg. 1): "f_k.params = f_q.params # initialize".
      "key_encoder": {"params": jax.tree.map(jnp.copy, params),
                      "batch_stats": jax.tree.map(jnp.copy, batch_stats)},
      "queue": common.init_queue(config.mocov2.queue_size, config.mocov2.projection_dim,
                                 queue_key),
  }
  return params, batch_stats, method_state


def contrastive_loss(query, key, queue_keys, temperature, axis_name=None):
  """MoCo's InfoNCE (eq. 1) of L2-normalised queries against their keys and the queue.

  Args:
    query: float [n, D] query-encoder outputs (normalised here).
    key: float [n, D] key-encoder outputs of the other view (normalised and
      stop-gradient'd here).
    queue_keys: float [K, D] unit negatives (constants).
    temperature: T.
    axis_name: the data-parallel axis; the mean is then over the global batch.

  Returns:
    float32 scalar.
  """
  query = common.l2_normalize(query)
  key = jax.lax.stop_gradient(common.l2_normalize(key))
  return losses.info_nce(query, key, jax.lax.stop_gradient(queue_keys), temperature,
                         axis_name=axis_name)


def loss_fn(params, batch_stats, method_state, views, key, *, config, axis_name):
  """InfoNCE of this device's queries against the queue; pushes the global keys.

  Args:
    params, batch_stats: the query encoder's {'encoder', 'projector'}.
    method_state: {'key_encoder', 'queue'}.
    views: [view_1, view_2] float32 [n, S, S, 3]: queries from view 1, keys from view 2.
    key: unused.
    config: the run config (``config.mocov2``).
    axis_name: the data-parallel axis (BN statistics, the mean and the keys span it).

  Returns:
    (loss, (batch_stats, method_state, metrics)): method_state holds the key
    encoder's new BN statistics and the queue after the push.
  """
  del key
  view_1, view_2 = views
  model = _model(config, axis_name)
  query, updated = model.apply({"params": params, "batch_stats": batch_stats}, view_1,
                               train=True, mutable=["batch_stats"])
  key_vars = jax.lax.stop_gradient(method_state["key_encoder"])
  keys, key_updated = model.apply(key_vars, view_2, train=True, mutable=["batch_stats"])
  keys = jax.lax.stop_gradient(keys.astype(jnp.float32))
  queue = method_state["queue"]
  loss = contrastive_loss(query.astype(jnp.float32), keys, queue["keys"],
                          config.mocov2.temperature, axis_name)
  unit_keys = common.l2_normalize(keys)
  new_queue = common.queue_push(queue, common.gather_replicated(unit_keys, axis_name))
  metrics = {"loss": loss,
             "queue_fill": queue["filled"].astype(jnp.float32) / queue["keys"].shape[0],
             **diagnostics.collapse_metrics(query, keys, axis_name)}
  method_state = {
      "key_encoder": {"params": method_state["key_encoder"]["params"],
                      "batch_stats": key_updated.get("batch_stats", {})},
      "queue": new_queue}
  return loss, (updated.get("batch_stats", {}), method_state, metrics)


def post_update(params, batch_stats, method_state, step, config, *, total_steps):
  """theta_k <- m theta_k + (1 - m) theta_q (MoCo eq. 2), m constant (v2)."""
  del batch_stats, step, total_steps
  key_params = common.ema_update(method_state["key_encoder"]["params"], params,
                                 config.mocov2.momentum)
  return dict(method_state, key_encoder=dict(method_state["key_encoder"], params=key_params))
