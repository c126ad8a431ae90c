"""RotNet (Gidaris, Singh & Komodakis 2018, "Unsupervised Representation
Learning by Predicting Image Rotations").

Every image of the batch appears in the four rotations g(X | y) of Sec. 2.2,
y in {0, 1, 2, 3} for 0, 90, 180 and 270 degrees (counter-clockwise, exact:
``jnp.rot90``, no resampling), all in the same batch, as the reference code's
data loader does (``FeatureLearningRotNet/dataloader.py``: 4 copies per image,
``batch_size x 4`` rows). A 4-way linear classifier on the encoder's pooled
features predicts the rotation; the loss is the cross-entropy of eq. (1)-(2),
averaged over the 4N rotated images of the global batch.

The paper's classifier sits on NIN/AlexNet conv features; here the encoder is
the library's ResNet and the classifier a linear layer on its pooled features
(what the kNN monitor and ``load_encoder`` use).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ssl_jax import augment
from ssl_jax import diagnostics
from ssl_jax.models import encoder as encoder_lib

NUM_ROTATIONS = 4  # 0, 90, 180, 270 degrees (Sec. 2.2: the 4 rotations work best, Table 2)


class RotNetModel(nn.Module):
  """Encoder + linear rotation classifier: images [B, S, S, 3] -> (features [B, D], logits [B, 4])."""
  encoder: nn.Module

  @nn.compact
  def __call__(self, images, train: bool):
    features = self.encoder(images, train=train)
    logits = nn.Dense(NUM_ROTATIONS, name="classifier")(features)
    return features, logits.astype(jnp.float32)


def _model(config, axis_name) -> RotNetModel:
  return RotNetModel(encoder=encoder_lib.build_encoder(config.model, axis_name))


def rotate_batch(images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """All four rotations of a batch, rotation-major.

  Args:
    images: [n, S, S, C] (square, so every rotation has the same shape).

  Returns:
    (rotated [4n, S, S, C], labels int32 [4n]): rows ``k * n + i`` hold image
    ``i`` rotated by ``90 k`` degrees counter-clockwise (``jnp.rot90(x, k)``,
    the reference's ``rotate_img``: 90 = flipud(transpose)), label ``k``.
  """
  if images.shape[1] != images.shape[2]:
    raise ValueError(f"RotNet needs square views to batch the rotations; got {images.shape}.")
  n = images.shape[0]
  rotated = jnp.concatenate([jnp.rot90(images, k, axes=(1, 2)) for k in range(NUM_ROTATIONS)])
  labels = jnp.repeat(jnp.arange(NUM_ROTATIONS, dtype=jnp.int32), n)
  return rotated, labels


def view_recipes(config) -> tuple[augment.ViewRecipe, ...]:
  """One view: crop + flip only, no colour change (config.rotnet)."""
  cfg = config.rotnet
  return (augment.ViewRecipe(
      size=config.augment.size, crop_scale=tuple(cfg.crop_scale), crop_ratio=tuple(cfg.crop_ratio),
      flip_prob=cfg.flip_prob, jitter_prob=0.0, grayscale_prob=0.0),)


def init(key, config, sample_images):
  """Params {'encoder', 'classifier'}, batch_stats {'encoder'}, no method state."""
  del sample_images
  size = config.augment.size
  variables = _model(config, None).init(key, jnp.zeros((2, size, size, 3)), train=False)
  return variables["params"], variables.get("batch_stats", {}), {}


def loss_fn(params, batch_stats, method_state, views, key, *, config, axis_name):
  """Rotation-prediction cross-entropy (eq. 2) over the 4n rotated images.

  Args:
    params, batch_stats: {'encoder', 'classifier'} / {'encoder'}.
    method_state: unused ({}).
    views: [view], float32 [n, S, S, 3] on this device.
    key: unused.
    config: the run config.
    axis_name: the data-parallel axis (BN statistics and the mean span it).

  Returns:
    (loss, (batch_stats, method_state, metrics)); metrics has
    ``rotation_accuracy`` (global) and the collapse diagnostics of the
    unrotated images' pooled features.
  """
  del key
  (view,) = views
  n = view.shape[0]
  rotated, labels = rotate_batch(view)
  (features, logits), updated = _model(config, axis_name).apply(
      {"params": params, "batch_stats": batch_stats}, rotated, train=True,
      mutable=["batch_stats"])
  loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
  accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
  if axis_name is not None:
    loss, accuracy = jax.lax.pmean((loss, accuracy), axis_name)
  metrics = {"loss": loss, "rotation_accuracy": accuracy,
             **diagnostics.collapse_metrics(features[:n], axis_name=axis_name)}
  return loss, (updated.get("batch_stats", {}), method_state, metrics)


def post_update(params, batch_stats, method_state, step, config, *, total_steps):
  """RotNet has no post-update state."""
  del params, batch_stats, step, config, total_steps
  return method_state
