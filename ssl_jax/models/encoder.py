"""Building the backbone from a config, shared by every method."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from ssl_jax.models.resnet import ResNet

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def compute_dtype(model_config: ml_collections.ConfigDict):
  """The jnp dtype named by ``config.model.dtype`` (params stay float32)."""
  name = model_config.get("dtype", "float32")
  if name not in _DTYPES:
    raise ValueError(
        f"config.model.dtype={name!r} is not supported; use one of {sorted(_DTYPES)}.")
  return _DTYPES[name]


def build_encoder(model_config: ml_collections.ConfigDict, axis_name=None) -> ResNet:
  """``ResNet(**config.model)`` with the compute dtype given by name."""
  kwargs = dict(model_config)
  kwargs["dtype"] = compute_dtype(model_config)
  return ResNet(**kwargs, axis_name=axis_name)


def encoder_variables(params, batch_stats) -> dict:
  """The backbone's flax variables inside a method's params/batch_stats."""
  variables = {"params": params["encoder"]}
  if batch_stats and "encoder" in batch_stats:
    variables["batch_stats"] = batch_stats["encoder"]
  return variables


def encode(model_config, params, batch_stats, images):
  """Frozen-backbone features (eval-mode norm statistics).

  Args:
    model_config: ``config.model``.
    params, batch_stats: a method's params/batch_stats (``['encoder']`` is used).
    images: float32 [B, H, W, 3], already normalised.

  Returns:
    float32 [B, D] pooled features.
  """
  encoder = build_encoder(model_config)
  return encoder.apply(encoder_variables(params, batch_stats), images, train=False)
