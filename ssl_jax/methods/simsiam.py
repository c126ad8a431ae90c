"""SimSiam (Chen & He 2021, "Exploring Simple Siamese Representation Learning").

One network (encoder f + projector, then a predictor h; all in ``params``)
sees both views; each view's prediction p regresses the other view's
projection z under stop-gradient (Sec. 3, eq. 1-4):

  L = 1/2 D(p_1, stopgrad(z_2)) + 1/2 D(p_2, stopgrad(z_1)),  D(p, z) = -cos(p, z),

averaged over the global batch. No momentum encoder, no negatives, no queue:
the stop-gradient is what prevents collapse (Sec. 4.1), and the predictor's
learning rate is held constant (Sec. 4.1 / the reference ``--fix-pred-lr``:
``config.optim.fixed_lr_params = ('predictor',)``).

State layout:
  params:       {'encoder', 'projector', 'predictor'}
  batch_stats:  their BN statistics (cross-replica: the reference uses SyncBN)
  method_state: {} (nothing outside the optimizer)

Both views go through the network as one batch of 2N rows (BN over both views
of the global batch); the reference code runs the views separately. One pass
halves the traced graph; with global statistics the difference is only the
pooling of the two views' statistics.

Collapse shows in the std of the L2-normalised projections (Sec. 4.1, Fig. 2):
about 1/sqrt(d) when healthy, 0 when collapsed; logged as ``embedding_std`` /
``embedding_std_ratio`` by ``diagnostics.collapse_metrics`` (the trainer warns
once when the ratio falls below 0.1).
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


class SimSiamModel(nn.Module):
  """Encoder + projector (z) + predictor (p); returns (z, p)."""
  encoder: nn.Module
  projector: nn.Module
  predictor: nn.Module

  def __call__(self, images, train: bool):
    z = self.projector(self.encoder(images, train=train), train=train)
    return z, self.predictor(z, train=train)


def _model(config: ml_collections.ConfigDict, axis_name) -> SimSiamModel:
  cfg = config.simsiam
  dtype = encoder_lib.compute_dtype(config.model)
  hidden = cfg.projector_hidden_dim or resnet.num_features(
      config.model.depth, config.model.width_multiplier, config.model.base_width)
  return SimSiamModel(
      encoder=encoder_lib.build_encoder(config.model, axis_name),
      projector=heads.simsiam_projector(hidden, cfg.projection_dim,
                                        num_layers=cfg.projector_layers,
                                        axis_name=axis_name, dtype=dtype),
      predictor=heads.simsiam_predictor(cfg.predictor_hidden_dim, cfg.projection_dim,
                                        axis_name=axis_name, dtype=dtype))


def view_recipes(config) -> tuple[augment.ViewRecipe, ...]:
  """Two views of MoCo v2's recipe (Sec. 4 "the same as MoCo v2"): preset 'mocov2'
  ('mocov2_cifar' without blur at 32 px)."""
  return common.two_view_recipes(config, "SimSiam", "'mocov2' or 'mocov2_cifar'")


def init(key, config, sample_images):
  """Params/batch_stats {'encoder', 'projector', 'predictor'}; no method state."""
  del sample_images
  size = config.augment.size
  variables = _model(config, axis_name=None).init(
      key, jnp.zeros((2, size, size, 3), jnp.float32), train=False)
  return variables["params"], variables.get("batch_stats", {}), {}


def symmetric_loss(p_1, p_2, z_1, z_2, axis_name=None):
  """SimSiam's symmetrised loss (eq. 4), global-batch mean.

    L = 1/2 D(p_1, sg(z_2)) + 1/2 D(p_2, sg(z_1)),  D(p, z) = -mean_i cos(p_i, z_i).

  Args:
    p_1, p_2: float [n, D] predictions of view 1 / view 2.
    z_1, z_2: float [n, D] projections of view 1 / view 2 (stop-gradient'd).
    axis_name: the data-parallel axis; the mean is then over the global batch.

  Returns:
    float32 scalar in [-1, 1] (-1 at perfect agreement).
  """
  loss = 0.5 * (losses.negative_cosine(p_1, z_2) + losses.negative_cosine(p_2, z_1))
  return loss if axis_name is None else jax.lax.pmean(loss, axis_name)


def loss_fn(params, batch_stats, method_state, views, key, *, config, axis_name):
  """SimSiam's loss of this device's two views (per-device code, global mean).

  Args:
    params, batch_stats: {'encoder', 'projector', 'predictor'} trees.
    method_state: unused ({}).
    views: [view_1, view_2], float32 [n, S, S, 3].
    key: unused.
    config: the run config (``config.simsiam``).
    axis_name: the data-parallel axis (BN statistics and the mean span it).

  Returns:
    (loss, (batch_stats, method_state, metrics)).
  """
  del key
  view_1, view_2 = views
  n = view_1.shape[0]
  (z, p), updated = _model(config, axis_name).apply(
      {"params": params, "batch_stats": batch_stats}, jnp.concatenate([view_1, view_2]),
      train=True, mutable=["batch_stats"])
  z, p = z.astype(jnp.float32), p.astype(jnp.float32)
  loss = symmetric_loss(p[:n], p[n:], z[:n], z[n:], axis_name)
  metrics = {"loss": loss, **diagnostics.collapse_metrics(z[:n], z[n:], axis_name)}
  return loss, (updated.get("batch_stats", {}), method_state, metrics)


def post_update(params, batch_stats, method_state, step, config, *, total_steps):
  """SimSiam has no post-update state."""
  del params, batch_stats, step, config, total_steps
  return method_state
