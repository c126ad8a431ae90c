"""Building the backbone from a config, shared by every method.

``config.model.patch_size > 0`` makes the backbone a ``PatchEncoder``: the
ResNet applied to every patch of a grid of overlapping patches, mean-pooled
(CPC, Hénaff et al. 2019: linear evaluation on the mean-pooled patch
features). Everything that builds the backbone from the config (the kNN
monitor, ``load_encoder``) then applies it that way.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax.models.resnet import ResNet

# config.model fields that configure the patch grid, not the ResNet.
_PATCH_FIELDS = ("patch_size", "patch_stride")
INPUT_FILTERS = ("none", "sobel")


def patch_grid(size: int, patch_size: int, stride: int) -> int:
  """Patches per side: ``(size - patch_size) // stride + 1`` (7 for 32/8/4 and 256/64/32)."""
  if not 0 < patch_size <= size or stride <= 0 or (size - patch_size) % stride:
    raise ValueError(
        f"A {size}-px view does not tile into {patch_size}-px patches at stride {stride}: "
        f"(size - patch_size) must be a multiple of the stride, e.g. 32/8/4 or 256/64/32.")
  return (size - patch_size) // stride + 1


def extract_patches(images: jax.Array, patch_size: int, stride: int) -> jax.Array:
  """[B, S, S, C] -> [B, R, R, p, p, C]: patch (i, j) = ``images[:, s i : s i + p, s j : s j + p]``."""
  grid = patch_grid(images.shape[1], patch_size, stride)
  if images.shape[1] != images.shape[2]:
    raise ValueError(f"Patch grids need square images, got {images.shape}.")
  index = (jnp.arange(grid) * stride)[:, None] + jnp.arange(patch_size)[None, :]  # [R, p]
  rows = images[:, index]                       # [B, R, p, S, C]
  patches = rows[:, :, :, index]                # [B, R, p, R, p, C]
  return jnp.transpose(patches, (0, 1, 3, 2, 4, 5))


class PatchEncoder(nn.Module):
  """The ResNet on each patch of a grid: images [B, S, S, 3] -> features.

  The ResNet's parameters sit at this module's own scope (``nn.share_scope``),
  so ``params['encoder']`` has exactly the plain ResNet's tree.

  Attributes:
    resnet: the per-patch encoder (shared weights over patches).
    patch_size, patch_stride: the grid (CPC: 64 / 32 on 256 px; 8 / 4 on 32 px).
  """

  resnet: nn.Module
  patch_size: int
  patch_stride: int

  def setup(self):
    nn.share_scope(self, self.resnet)

  @property
  def num_features(self) -> int:
    return self.resnet.num_features

  def grid(self, images: jax.Array, train: bool) -> jax.Array:
    """float32 [B, R, R, D]: the pooled ResNet features of every patch."""
    patches = extract_patches(images, self.patch_size, self.patch_stride)
    b, r, c = patches.shape[:3]
    features = self.resnet(patches.reshape((b * r * c,) + patches.shape[3:]), train=train)
    return features.reshape(b, r, c, -1)

  def __call__(self, images: jax.Array, train: bool) -> jax.Array:
    """float32 [B, D]: the patch features mean-pooled over the grid."""
    return jnp.mean(self.grid(images, train), axis=(1, 2))


def sobel(images: jax.Array) -> jax.Array:
  """[B, H, W, 3] -> [B, H, W, 2]: the grey level's horizontal and vertical Sobel gradients.

  The fixed input filter of DeepCluster / DeeperCluster (Caron et al. 2018,
  Sec. 4.1 "a fixed linear transformation based on Sobel filters to remove
  color and increase local contrast"): grey = mean of the channels, then the
  3x3 kernels [[1, 0, -1], [2, 0, -2], [1, 0, -1]] and its transpose, zero padding.
  """
  grey = jnp.mean(images, axis=-1, keepdims=True)
  gx = jnp.asarray([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], images.dtype)
  kernel = jnp.stack([gx, gx.T], axis=-1)[:, :, None, :]  # HWIO [3, 3, 1, 2]
  return jax.lax.conv_general_dilated(grey, kernel, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


class SobelInput(nn.Module):
  """The backbone on the Sobel gradients of the input (params at this scope, as PatchEncoder)."""

  backbone: nn.Module

  def setup(self):
    nn.share_scope(self, self.backbone)

  @property
  def num_features(self) -> int:
    return self.backbone.num_features

  def __call__(self, images: jax.Array, train: bool) -> jax.Array:
    return self.backbone(sobel(images), train=train)


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def compute_dtype(model_config: ml_collections.ConfigDict):
  """The jnp dtype named by ``config.model.dtype`` (params stay float32)."""
  name = model_config.get("dtype", "float32")
  if name not in _DTYPES:
    raise ValueError(
        f"config.model.dtype={name!r} is not supported; use one of {sorted(_DTYPES)}.")
  return _DTYPES[name]


def build_encoder(model_config: ml_collections.ConfigDict, axis_name=None) -> nn.Module:
  """``ResNet(**config.model)`` with the compute dtype given by name; a
  ``PatchEncoder`` around it when ``config.model.patch_size > 0``; the Sobel
  input filter first when ``config.model.input_filter == 'sobel'``."""
  kwargs = dict(model_config)
  patch = {k: kwargs.pop(k) for k in _PATCH_FIELDS if k in kwargs}
  input_filter = kwargs.pop("input_filter", "none")
  if input_filter not in INPUT_FILTERS:
    raise ValueError(f"config.model.input_filter={input_filter!r}; use one of {INPUT_FILTERS}.")
  kwargs["dtype"] = compute_dtype(model_config)
  backbone = ResNet(**kwargs, axis_name=axis_name)
  if patch.get("patch_size", 0) > 0:
    backbone = PatchEncoder(backbone, patch["patch_size"], patch["patch_stride"])
  if input_filter == "sobel":
    backbone = SobelInput(backbone)
  return backbone


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
