"""SimCLR (Chen, Kornblith, Norouzi & Hinton 2020, "A Simple Framework for
Contrastive Learning of Visual Representations").

Two augmented views of every image go through the encoder and a non-linear
projection head; NT-Xent (eq. 1) over the 2N views of the global batch (all
devices' negatives: the paper's Sec. 2.2 "Global BN" and large-batch setup).
Both views are concatenated into one batch, so BatchNorm normalises over all 2N
views of all devices, as in the reference TF implementation.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from ssl_jax import augment
from ssl_jax import diagnostics
from ssl_jax import losses
from ssl_jax.methods import common
from ssl_jax.models import encoder as encoder_lib
from ssl_jax.models import heads
from ssl_jax.models import resnet


class SimCLRModel(nn.Module):
  """Encoder f(.) + projection head g(.) of the paper's Figure 2."""
  encoder: nn.Module
  projector: nn.Module

  def __call__(self, images, train: bool):
    features = self.encoder(images, train=train)
    return features, self.projector(features, train=train)


def _model(config: ml_collections.ConfigDict, axis_name) -> SimCLRModel:
  cfg = config.simclr
  hidden = cfg.projector_hidden_dim or resnet.num_features(
      config.model.depth, config.model.width_multiplier, config.model.base_width)
  # v1 (projector_layers=2) and v2 (3) heads of the reference code: BN on every
  # layer, the output BN without centre.
  dtype = encoder_lib.compute_dtype(config.model)
  if config.model.norm == "batch":
    projector = heads.simclr_v2_projector(
        hidden, cfg.projection_dim, num_layers=cfg.projector_layers, axis_name=axis_name,
        dtype=dtype)
  else:
    # No batch statistics anywhere with a GroupNorm+WS encoder: the head as
    # the paper writes it, W2 relu(W1 h), without the code's BN layers.
    projector = heads.MLPHead((hidden,) * (cfg.projector_layers - 1), cfg.projection_dim,
                              use_bn=False, dtype=dtype)
  return SimCLRModel(encoder=encoder_lib.build_encoder(config.model, axis_name),
                     projector=projector)


def view_recipes(config) -> tuple[augment.ViewRecipe, ...]:
  """The two views of Sec. 3 / appendix A (preset and size from config.augment)."""
  return common.two_view_recipes(config, "SimCLR", "'simclr' or 'simclr_cifar'")


def init(key, config, sample_images):
  """Params {'encoder', 'projector'}, their batch_stats, and no method state."""
  del sample_images  # shapes come from the view recipes
  size = config.augment.size
  dummy = jnp.zeros((2, size, size, 3), jnp.float32)
  variables = _model(config, axis_name=None).init(key, dummy, train=False)
  return variables["params"], variables.get("batch_stats", {}), {}


def embed(params, batch_stats, method_state, views, *, config, axis_name):
  """Projections (z_1, z_2), float32 [n, projection_dim] each, the new batch_stats and
  the method state (unchanged).

  Both views go through the network as one batch, so BatchNorm normalises over
  all 2n views (of all devices when ``axis_name`` is set), as the reference code.
  """
  view_1, view_2 = views
  n = view_1.shape[0]
  (_, z), updated = _model(config, axis_name).apply(
      {"params": params, "batch_stats": batch_stats},
      jnp.concatenate([view_1, view_2]), train=True, mutable=["batch_stats"])
  z = z.astype(jnp.float32)
  return (z[:n], z[n:]), updated.get("batch_stats", {}), method_state


def loss_from_embeddings(embeddings, method_state, key, *, config, axis_name):
  """NT-Xent (eq. 1) of this device's projections against the global batch."""
  del key
  z_1, z_2 = embeddings
  loss = losses.nt_xent(z_1, z_2, config.simclr.temperature, axis_name=axis_name)
  metrics = {"loss": loss, **diagnostics.collapse_metrics(z_1, z_2, axis_name)}
  return loss, (method_state, metrics)


def loss_fn(params, batch_stats, method_state, views, key, *, config, axis_name):
  """NT-Xent of the two projected views (per-device code, global negatives).

  Args:
    params, batch_stats: {'encoder', 'projector'} trees.
    method_state: unused ({}).
    views: [view_1, view_2], float32 [n, S, S, 3] on this device.
    key: unused (SimCLR's loss is deterministic given the views).
    config: the run config (``config.simclr.temperature``).
    axis_name: the data-parallel axis (negatives and BN statistics span it).

  Returns:
    (loss, (batch_stats, method_state, metrics)); loss = global mean NT-Xent.
    ``embed`` + ``loss_from_embeddings`` are the same split in two, which lets
    ``config.microbatches`` use gradient caching (``ssl_jax.microbatch``).
  """
  embeddings, batch_stats, method_state = embed(params, batch_stats, method_state, views,
                                                config=config, axis_name=axis_name)
  loss, (method_state, metrics) = loss_from_embeddings(embeddings, method_state, key,
                                                       config=config, axis_name=axis_name)
  return loss, (batch_stats, method_state, metrics)


def post_update(params, batch_stats, method_state, step, config, *, total_steps):
  """SimCLR has no post-update state."""
  del params, batch_stats, step, config, total_steps
  return method_state
