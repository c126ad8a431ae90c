"""ResNet v1 encoders (He et al. 2016) for self-supervised pre-training.

The backbone every method in ssl_jax shares: ``ResNet(depth, width_multiplier, ...)``
maps float images ``[B, H, W, C]`` to global-average-pooled features
``float32 [B, num_features]``. There is no classifier; heads live in
``ssl_jax.models.heads``.

Architecture decisions (each matches torchvision's ``resnet*`` and the SimCLR and
BYOL reference implementations unless noted):

* **ResNet v1.5.** In the bottleneck block the stride sits on the 3x3 conv, not
  on the first 1x1 conv as in the original paper. This is what torchvision,
  google-research/simclr and deepmind-research/byol use.
* **Padding** is symmetric ``k // 2`` on every conv (and 1 on the 3x3/2 max-pool),
  as in torchvision and SimCLR's ``fixed_padding``, so weights port from torch
  one-to-one. (XLA's ``'SAME'`` would pad stride-2 convs asymmetrically.)
* **Projection shortcut** (1x1 conv with the block's stride + norm) whenever
  the channel count or the resolution changes; identity otherwise.
* **Width multiplier** (SimCLR's 1x/2x/4x scaling study) multiplies every conv's
  channels, the stem's included. ``base_width`` is the first stage's width at 1x
  (64 in the papers; tiny values such as 4-8 make CPU tests fast).
* **Stems.** ``'imagenet'``: 7x7/2 conv, norm, ReLU, 3x3/2 max-pool (stride 4).
  ``'cifar'``: 3x3/1 conv, norm, ReLU, no max-pool (SimCLR's CIFAR-10 variant).
* **Norms.** ``'batch'``: BatchNorm (``momentum`` is flax's: the weight of the
  old running average, so torch's 0.1 is 0.9 here), batch statistics in
  training, running averages in evaluation, kept in the ``batch_stats``
  collection; with ``axis_name`` set the statistics are averaged over that
  named mesh axis (cross-replica BN, as SimCLR/BYOL use on TPU pods).
  ``'layer'``: LayerNorm over (H, W, C) of each example (GroupNorm with one
  group), as CPC v2 (Hénaff et al. 2019, Sec. 3) uses so that no statistic is
  shared between the patches of a batch; no ``batch_stats`` either.
  ``'group_ws'``: GroupNorm + Weight Standardization (Qiao et al. 2019), as in
  "BYOL works even without batch statistics" (Richemond et al. 2020). No
  ``batch_stats`` collection exists at all, so train and eval are the same
  function of the params and ``axis_name`` is unused.
* **Init.** Convs use flax's default LeCun-normal (fan-in, truncated normal:
  the variance-scaling init of SimCLR's TF and BYOL's Haiku code; torchvision
  uses He-normal fan-out instead, which BN makes immaterial); norm scales
  start at 1 and offsets at 0, except the last norm of each block when
  ``zero_init_residual`` (Goyal et al. 2017), which starts each residual
  branch at zero so every block begins as (ReLU of) its shortcut.
* **Mixed precision.** ``dtype`` is the compute dtype (e.g. bfloat16); params
  are always float32, norm statistics are reduced in float32, and the pooled
  features are returned in float32.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Callable[..., nn.Module]

# Blocks per stage for each depth (He et al. 2016, Table 1; 200 from He et al.
# 2016b "Identity mappings", the depth used by BYOL's largest model). 10 is the
# smallest basic-block ResNet, one block per stage (not in the paper): a quick
# Colab run, and the tests' model, whose compile time it cuts by a fifth.
STAGE_SIZES = {
    10: (1, 1, 1, 1),
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}
BOTTLENECK_EXPANSION = 4  # a bottleneck block outputs 4x its inner width
STEMS = ('imagenet', 'cifar')
NORMS = ('batch', 'group_ws', 'layer')

# GroupNorm uses 32 groups (Wu & He 2018's default; Richemond et al. 2020 and BiT
# follow it). See `group_norm_groups` for narrow layers.
GN_MAX_GROUPS = 32
# Epsilon inside the weight-standardisation sqrt. BiT (google-research/big_transfer)
# uses 1e-10: the fan-in variance of an ImageNet-width kernel is ~1/fan_in ~ 1e-4..1e-5,
# so a BatchNorm-sized eps (1e-5) would visibly shrink the standardised kernel.
WS_EPSILON = 1e-10


def uses_bottleneck(depth: int) -> bool:
  """Basic (two 3x3 convs) blocks for ResNet-18/34, bottleneck blocks otherwise."""
  return depth >= 50


def num_features(depth: int = 50, width_multiplier: int = 1, base_width: int = 64) -> int:
  """Dimension of the pooled features of ``ResNet(depth, width_multiplier, base_width)``.

  E.g. 2048 for ResNet-50 1x, 512 for ResNet-18, 4096 for ResNet-50 2x. Needs no
  forward pass, so heads can be sized before the encoder runs.
  """
  _check_architecture(depth, width_multiplier, base_width)
  last_stage_width = base_width * width_multiplier * 8
  return last_stage_width * (BOTTLENECK_EXPANSION if uses_bottleneck(depth) else 1)


def _check_architecture(depth: int, width_multiplier: int, base_width: int) -> None:
  if depth not in STAGE_SIZES:
    raise ValueError(f'ResNet depth={depth!r} is not supported; valid depths are '
                     f'{sorted(STAGE_SIZES)}.')
  for name, value in (('width_multiplier', width_multiplier), ('base_width', base_width)):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f'ResNet {name}={value!r} must be a positive integer.')


def standardize_weight(kernel: jax.Array, eps: float = WS_EPSILON) -> jax.Array:
  """Weight Standardization (Qiao et al. 2019, Eq. 5) of a conv kernel.

  Args:
    kernel: float [..., out]; for a 2-D conv ``[kh, kw, in, out]``.
    eps: added to the variance inside the square root.

  Returns:
    ``(kernel - mean) / sqrt(var + eps)`` where mean and (biased) variance are
    taken over the fan-in, i.e. every axis but the last: each output filter has
    zero mean and unit variance. Same shape and dtype as ``kernel``.
  """
  fan_in_axes = tuple(range(kernel.ndim - 1))
  mean = jnp.mean(kernel, axis=fan_in_axes, keepdims=True)
  centred = kernel - mean
  var = jnp.mean(jnp.square(centred), axis=fan_in_axes, keepdims=True)
  return centred * jax.lax.rsqrt(var + eps)


class StandardizedConv(nn.Conv):
  """``nn.Conv`` whose kernel is weight-standardised before every use.

  The stored ``kernel`` param is the raw one (same tree as ``nn.Conv``); the
  standardisation runs in float32 on the param, before the cast to the compute
  dtype, and gradients flow through it.
  """

  def param(self, name: str, *args, **kwargs):
    value = super().param(name, *args, **kwargs)
    if name == 'kernel':
      value = standardize_weight(value)
    return value


def group_norm_groups(channels: int, max_groups: int = GN_MAX_GROUPS) -> int:
  """Number of GroupNorm groups for a layer with ``channels`` channels.

  ``max_groups`` (32) when it divides ``channels`` -- every layer of the standard
  widths (64 * 2^k * multiplier). Otherwise the largest divisor of ``channels``
  not above ``max_groups``; in particular a layer narrower than 32 channels (the
  tiny test models) gets one group per channel.
  """
  return max(g for g in range(1, min(channels, max_groups) + 1) if channels % g == 0)


class GroupNorm(nn.Module):
  """``nn.GroupNorm`` with the group count picked from the input's channels.

  Has the same parameter tree as ``nn.GroupNorm`` (``scale``, ``bias``), so
  weight-decay masks and checkpoints do not see the wrapper.
  """

  max_groups: int = GN_MAX_GROUPS
  epsilon: float = 1e-5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  scale_init: Callable = nn.initializers.ones

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    norm = nn.GroupNorm(
        num_groups=group_norm_groups(x.shape[-1], self.max_groups),
        epsilon=self.epsilon,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        scale_init=self.scale_init)
    nn.share_scope(norm, self)
    return norm(x)


class BasicBlock(nn.Module):
  """ResNet-18/34 block: 3x3 conv (stride) - norm - ReLU - 3x3 conv - norm, + shortcut, ReLU.

  ``x: [B, H, W, C] -> [B, H/s, W/s, filters]``.
  """

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  zero_init_last: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    last_scale_init = nn.initializers.zeros if self.zero_init_last else nn.initializers.ones
    y = self.conv(self.filters, (3, 3), strides=self.strides, padding=1, name='conv1')(x)
    y = nn.relu(self.norm(name='norm1')(y))
    y = self.conv(self.filters, (3, 3), padding=1, name='conv2')(y)
    y = self.norm(scale_init=last_scale_init, name='norm2')(y)
    return nn.relu(_shortcut(x, self.filters, self.strides, self.conv, self.norm) + y)


class BottleneckBlock(nn.Module):
  """ResNet-50+ block, v1.5: 1x1 - 3x3 (stride) - 1x1 (4x wider), each conv + norm, + shortcut.

  ``x: [B, H, W, C] -> [B, H/s, W/s, 4 * filters]``. The stride is on the 3x3
  conv (torchvision / SimCLR / BYOL), not on the first 1x1 as in He et al. 2016.
  """

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  zero_init_last: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    last_scale_init = nn.initializers.zeros if self.zero_init_last else nn.initializers.ones
    out_channels = self.filters * BOTTLENECK_EXPANSION
    y = self.conv(self.filters, (1, 1), name='conv1')(x)
    y = nn.relu(self.norm(name='norm1')(y))
    y = self.conv(self.filters, (3, 3), strides=self.strides, padding=1, name='conv2')(y)
    y = nn.relu(self.norm(name='norm2')(y))
    y = self.conv(out_channels, (1, 1), name='conv3')(y)
    y = self.norm(scale_init=last_scale_init, name='norm3')(y)
    return nn.relu(_shortcut(x, out_channels, self.strides, self.conv, self.norm) + y)


def _shortcut(x: jax.Array, out_channels: int, strides: int, conv: ModuleDef,
              norm: ModuleDef) -> jax.Array:
  """Identity, or a 1x1 strided conv + norm projection when the shape changes.

  Called inside the block's compact ``__call__``, so its layers are the block's
  children ``proj_conv`` / ``proj_norm``.
  """
  if x.shape[-1] == out_channels and strides == 1:
    return x
  x = conv(out_channels, (1, 1), strides=strides, name='proj_conv')(x)
  return norm(name='proj_norm')(x)


class ResNet(nn.Module):
  """ResNet v1(.5) encoder: images -> global-average-pooled features (no classifier).

  Attributes:
    depth: 10, 18, 34 (basic blocks), 50, 101, 152 or 200 (bottleneck blocks).
    width_multiplier: 1, 2, 4, ... multiplies every conv's channels (SimCLR's
      scaling study).
    base_width: first-stage width at 1x (64 in the papers).
    stem: ``'imagenet'`` (7x7/2 conv + max-pool) or ``'cifar'`` (3x3/1 conv).
    norm: ``'batch'`` (BatchNorm, cross-replica when ``axis_name`` is set) or
      ``'group_ws'`` (GroupNorm with 32 groups -- fewer for narrow layers, see
      ``group_norm_groups`` -- after weight-standardised convs).
    zero_init_residual: start the last norm scale of every block at zero.
    bn_momentum: flax convention, weight of the old running average (torch 0.1).
    bn_epsilon: epsilon of BatchNorm, and of GroupNorm for ``'group_ws'``.
    axis_name: named mesh axis to average BatchNorm statistics over (use
      ``ssl_jax.parallel.BATCH_AXIS`` under ``jax.shard_map``); None = local.
    dtype: compute dtype; params stay float32.
    remat: recompute each block's activations in the backward pass instead of
      storing them (``flax.linen.remat``, i.e. ``jax.checkpoint`` per block):
      less activation memory for about one extra forward pass. Same params,
      same outputs and gradients.

  ``ResNet(...).num_features`` gives the output width without running it.
  """

  depth: int = 50
  width_multiplier: int = 1
  base_width: int = 64
  stem: str = 'imagenet'
  norm: str = 'batch'
  zero_init_residual: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  axis_name: str | None = None
  dtype: Any = jnp.float32
  remat: bool = False

  def __post_init__(self):
    _check_architecture(self.depth, self.width_multiplier, self.base_width)
    if self.stem not in STEMS:
      raise ValueError(f'ResNet stem={self.stem!r} is not supported; valid stems are {STEMS}.')
    if self.norm not in NORMS:
      raise ValueError(f'ResNet norm={self.norm!r} is not supported; valid norms are {NORMS}.')
    super().__post_init__()

  @property
  def num_features(self) -> int:
    """Width of the pooled features this encoder returns."""
    return num_features(self.depth, self.width_multiplier, self.base_width)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Encodes a batch of images.

    Args:
      x: float [B, H, W, C] images (already normalised; C is usually 3).
      train: BatchNorm uses batch statistics and updates the running averages
        (pass ``mutable=['batch_stats']`` to ``apply``) when True, the running
        averages when False. No effect for ``norm='group_ws'`` or ``'layer'``.

    Returns:
      float32 [B, num_features] global-average-pooled features of the last stage.
    """
    if x.ndim != 4:
      raise ValueError(f'ResNet expects images [B, H, W, C], got shape {x.shape}.')
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f'ResNet expects float images, got {x.dtype}; convert and '
                       'normalise uint8 images first (e.g. with ssl_jax.augment).')

    if self.norm == 'batch':
      conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                               param_dtype=jnp.float32)
      norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                               momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                               axis_name=self.axis_name, dtype=self.dtype,
                               param_dtype=jnp.float32)
    elif self.norm == 'group_ws':
      conv = functools.partial(StandardizedConv, use_bias=False, dtype=self.dtype,
                               param_dtype=jnp.float32)
      norm = functools.partial(GroupNorm, epsilon=self.bn_epsilon, dtype=self.dtype,
                               param_dtype=jnp.float32)
    else:  # 'layer': one group = LayerNorm over (H, W, C) of each example (CPC v2)
      conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                               param_dtype=jnp.float32)
      norm = functools.partial(GroupNorm, max_groups=1, epsilon=self.bn_epsilon,
                               dtype=self.dtype, param_dtype=jnp.float32)

    width = self.base_width * self.width_multiplier
    x = x.astype(self.dtype)
    if self.stem == 'imagenet':
      x = conv(width, (7, 7), strides=2, padding=3, name='stem_conv')(x)
      x = nn.relu(norm(name='stem_norm')(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      x = conv(width, (3, 3), padding=1, name='stem_conv')(x)
      x = nn.relu(norm(name='stem_norm')(x))

    block = BottleneckBlock if uses_bottleneck(self.depth) else BasicBlock
    if self.remat:
      block = nn.remat(block)
    for stage, num_blocks in enumerate(STAGE_SIZES[self.depth]):
      for index in range(num_blocks):
        x = block(
            filters=width * 2**stage,
            conv=conv,
            norm=norm,
            strides=2 if stage > 0 and index == 0 else 1,
            zero_init_last=self.zero_init_residual,
            name=f'stage{stage + 1}_block{index + 1}')(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
