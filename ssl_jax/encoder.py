"""``load_encoder``: the entry point of every downstream use of a trained backbone."""

from __future__ import annotations

import jax
import ml_collections

from ssl_jax import augment
from ssl_jax import checkpoint
from ssl_jax.models import encoder as encoder_lib


def load_encoder(workdir_or_checkpoint: str):
  """(apply_fn, params) of the backbone of a finished (or running) pre-training.

  Args:
    workdir_or_checkpoint: a training workdir (newest checkpoint), its
      ``checkpoints`` directory, or one step directory inside it.

  Returns:
    ``apply_fn(params, images) -> features``: ``images`` uint8 [B, H, W, 3]
    (resized to the pre-training view size and normalised as in training),
    ``features`` float32 [B, D] pooled backbone features (eval-mode BN).
    ``params`` is {'params': ..., 'batch_stats': ...} of the encoder only.
  """
  raw, meta, _ = checkpoint.restore_raw(workdir_or_checkpoint)
  config = ml_collections.ConfigDict(meta["config"])
  size = config.augment.size
  model = encoder_lib.build_encoder(config.model)
  params = encoder_lib.encoder_variables(raw["params"], raw.get("batch_stats"))

  @jax.jit
  def apply_fn(variables, images):
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be uint8 [B, H, W, 3]; got shape {images.shape}.")
    return model.apply(variables, augment.center_view(images, size), train=False)

  return apply_fn, params
