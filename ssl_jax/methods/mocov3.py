"""MoCo v3 (Chen, Xie & He 2021, "An Empirical Study of Training Self-Supervised
Vision Transformers"), ResNet form.

A query encoder (ResNet + 3-layer projector + 2-layer predictor; ``params``)
and a momentum encoder (ResNet + projector; ``method_state['momentum_encoder']``)
updated after each step by ``theta_k <- m theta_k + (1 - m) theta_q`` with m on
the cosine schedule from ``momentum_base`` to 1 (the reference ``--moco-m-cos``;
``common.cosine_tau_schedule``, the same as BYOL's tau). No queue: the keys are
the momentum encoder's outputs for the global batch (all devices), and the loss
is the symmetrised InfoNCE of Alg. 1:

  ctr(q, k) = 2 T * mean_i CE(q_i . [k_1 ... k_N] / T, label i),
  L = ctr(q_1, k_2) + ctr(q_2, k_1),

q_v the predictions of view v and k_v the momentum encoder's projections, all
L2-normalised, N the global batch; T = 1.0 for ResNet (appendix). The factor 2T
is the reference code's (it makes the gradient scale independent of T).

State layout:
  params:       {'encoder', 'projector', 'predictor'}
  batch_stats:  their BN statistics (cross-replica: the reference uses SyncBN)
  method_state: {'momentum_encoder': {'params': {'encoder', 'projector'},
                                      'batch_stats': {...}},
                 'momentum': float32 [] (m of the last update)}

The momentum encoder starts as a copy of the query encoder (the reference
copies the base encoder's weights) and receives no gradient (``stop_gradient``,
not in ``params``). Both views go through each network as one batch of 2N rows
(BN over both views of the global batch); the reference runs the views
separately.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax import augment
from ssl_jax import diagnostics
from ssl_jax.methods import common
from ssl_jax.models import encoder as encoder_lib
from ssl_jax.models import heads

# The loss contrasts each query with the keys of the whole global batch (in-batch
# negatives): micro-batches by gradient accumulation would change it, so they go by
# gradient caching (embed / loss_from_embeddings; ssl_jax.microbatch).
BATCH_COUPLED_LOSS = True


class MoCoV3Network(nn.Module):
  """Encoder + projector (+ predictor for the query network); returns (z, q or None)."""
  encoder: nn.Module
  projector: nn.Module
  predictor: nn.Module | None = None

  def __call__(self, images, train: bool):
    z = self.projector(self.encoder(images, train=train), train=train)
    return z, (None if self.predictor is None else self.predictor(z, train=train))


def _networks(config: ml_collections.ConfigDict, axis_name):
  cfg = config.mocov3
  dtype = encoder_lib.compute_dtype(config.model)

  def projector():
    return heads.mocov3_projector(cfg.projector_hidden_dim, cfg.projection_dim,
                                  axis_name=axis_name, dtype=dtype)

  predictor = heads.mocov3_predictor(cfg.predictor_hidden_dim, cfg.projection_dim,
                                     axis_name=axis_name, dtype=dtype)
  query = MoCoV3Network(encoder_lib.build_encoder(config.model, axis_name), projector(),
                        predictor)
  momentum = MoCoV3Network(encoder_lib.build_encoder(config.model, axis_name), projector())
  return query, momentum


def view_recipes(config) -> tuple[augment.ViewRecipe, ...]:
  """BYOL's asymmetric pair (MoCo v3 Sec. 4 uses BYOL's augmentations)."""
  return common.two_view_recipes(config, "MoCo v3", "'byol'")


def momentum_schedule(config, total_steps: int):
  """m_k from ``momentum_base`` (k = 0) to 1 (k = total_steps), cosine."""
  return common.cosine_tau_schedule(config.mocov3.momentum_base, total_steps)


def init(key, config, sample_images):
  """Query params/batch_stats; the momentum encoder a copy of its encoder + projector."""
  del sample_images
  size = config.augment.size
  query, _ = _networks(config, axis_name=None)
  variables = query.init(key, jnp.zeros((2, size, size, 3), jnp.float32), train=False)
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  # The momentum encoder is the encoder + projector part (GN+WS encoders have no stats).
  copy = lambda tree: jax.tree.map(
      jnp.copy, {k: tree[k] for k in ("encoder", "projector") if k in tree})
  method_state = {
      "momentum_encoder": {"params": copy(params), "batch_stats": copy(batch_stats)},
      "momentum": jnp.asarray(config.mocov3.momentum_base, jnp.float32),
  }
  return params, batch_stats, method_state


def contrastive_loss(query, key, temperature, axis_name=None):
  """ctr(q, k) of MoCo v3's Alg. 1: InfoNCE of each query against all keys of the
  global batch (its own key is the positive), times 2T.

  Args:
    query: float [n, D] this device's predictions (normalised here).
    key: float [n, D] this device's momentum projections of the other view
      (normalised and stop-gradient'd here); row i is query i's positive.
    temperature: T (1.0 for ResNet).
    axis_name: the data-parallel axis: the keys are then gathered from every
      device (negatives = the N - 1 other keys of the global batch) and the
      mean is over the global batch.

  Returns:
    float32 scalar.
  """
  query = common.l2_normalize(query)
  key = jax.lax.stop_gradient(common.l2_normalize(key))
  n = query.shape[0]
  if axis_name is None:
    all_keys, offset = key, 0
  else:
    all_keys = jax.lax.all_gather(key, axis_name, tiled=True)  # [N, D] in device order
    offset = jax.lax.axis_index(axis_name) * n
  logits = jnp.matmul(query, all_keys.T, precision=jax.lax.Precision.HIGHEST) / temperature
  labels = offset + jnp.arange(n)
  positive = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
  loss = jnp.mean(jax.nn.logsumexp(logits, axis=1) - positive) * 2.0 * temperature
  return loss if axis_name is None else jax.lax.pmean(loss, axis_name)


def embed(params, batch_stats, method_state, views, *, config, axis_name):
  """Per-example half of the loss: the query network's predictions q and projections z
  (with gradient) and the momentum encoder's keys k (without), each [n, D] per view.

  Returns:
    ((q_1, q_2, k_1, k_2, z_1, z_2), batch_stats, method_state with the momentum
    encoder's new batch statistics).
  """
  view_1, view_2 = views
  n = view_1.shape[0]
  images = jnp.concatenate([view_1, view_2])
  query_net, momentum_net = _networks(config, axis_name)
  (z, q), updated = query_net.apply({"params": params, "batch_stats": batch_stats}, images,
                                    train=True, mutable=["batch_stats"])
  momentum_vars = jax.lax.stop_gradient(method_state["momentum_encoder"])
  (k, _), momentum_updated = momentum_net.apply(momentum_vars, images, train=True,
                                                mutable=["batch_stats"])
  k = jax.lax.stop_gradient(k.astype(jnp.float32))
  q, z = q.astype(jnp.float32), z.astype(jnp.float32)
  method_state = dict(method_state, momentum_encoder={
      "params": method_state["momentum_encoder"]["params"],
      "batch_stats": momentum_updated.get("batch_stats", {})})
  embeddings = (q[:n], q[n:], k[:n], k[n:], z[:n], z[n:])
  return embeddings, updated.get("batch_stats", {}), method_state


def loss_from_embeddings(embeddings, method_state, key, *, config, axis_name):
  """The batch-coupled half: ctr(q_1, k_2) + ctr(q_2, k_1) against the global batch's keys."""
  del key
  q_1, q_2, k_1, k_2, z_1, z_2 = embeddings
  t = config.mocov3.temperature
  loss = contrastive_loss(q_1, k_2, t, axis_name) + contrastive_loss(q_2, k_1, t, axis_name)
  metrics = {"loss": loss, "momentum": method_state["momentum"],
             **diagnostics.collapse_metrics(z_1, z_2, axis_name)}
  return loss, (method_state, metrics)


def loss_fn(params, batch_stats, method_state, views, key, *, config, axis_name):
  """The symmetrised loss ctr(q_1, k_2) + ctr(q_2, k_1) of this device's views
  (``embed`` + ``loss_from_embeddings``; the split lets ``config.microbatches`` use
  gradient caching, so the negatives stay those of the whole global batch).

  Args:
    params, batch_stats: the query network's {'encoder', 'projector', 'predictor'}.
    method_state: {'momentum_encoder', 'momentum'}.
    views: [view_1, view_2], float32 [n, S, S, 3].
    key: unused.
    config: the run config (``config.mocov3``).
    axis_name: the data-parallel axis (BN statistics, keys and the mean span it).

  Returns:
    (loss, (batch_stats, method_state, metrics)).
  """
  embeddings, batch_stats, method_state = embed(params, batch_stats, method_state, views,
                                                config=config, axis_name=axis_name)
  loss, (method_state, metrics) = loss_from_embeddings(embeddings, method_state, key,
                                                       config=config, axis_name=axis_name)
  return loss, (batch_stats, method_state, metrics)


def post_update(params, batch_stats, method_state, step, config, *, total_steps):
  """theta_k <- m_k theta_k + (1 - m_k) theta_q, k = step - 1 (the update just applied)."""
  del batch_stats
  m = momentum_schedule(config, total_steps)(step - 1)
  online = {"encoder": params["encoder"], "projector": params["projector"]}
  new = common.ema_update(method_state["momentum_encoder"]["params"], online, m)
  return dict(method_state, momentum=m,
              momentum_encoder=dict(method_state["momentum_encoder"], params=new))
