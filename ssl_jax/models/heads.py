"""Projection / prediction MLPs and SwAV prototypes.

``MLPHead`` covers the heads of the canon; the named constructors below give the
paper configurations:

==========================  =======================  ==========================================
constructor                 layers (hidden -> out)   details (reference implementation)
==========================  =======================  ==========================================
``simclr_v1_projector``     2048 -> 128              Linear (no bias) - BN - ReLU - Linear (no
                                                     bias) - BN (scale, no centre).
                                                     google-research/simclr ``projection_head``
                                                     with ``num_proj_layers=2``.
``simclr_v2_projector``     2048 -> 2048 -> 128      the same with ``num_proj_layers=3`` (SimCLRv2)
``byol_projector``          4096 -> 256              Linear (bias) - BN - ReLU - Linear (no bias);
                                                     deepmind-research/byol ``networks.MLP``
``byol_predictor``          4096 -> 256              same as the projector (BYOL Sec. 3.3);
                                                     ``norm='layer'``: LayerNorm instead of BN
                                                     (the GN+WS variant, Richemond et al. 2020)
``simsiam_projector``       2048 -> 2048 -> 2048     Linear (no bias) - BN - ReLU, twice, then
                                                     Linear - BN (no affine); Chen & He 2021
                                                     Sec. 3 / facebookresearch/simsiam builder
                                                     (the output Linear's bias is frozen there:
                                                     we omit it, BN would remove it anyway)
``simsiam_predictor``       512 -> 2048              Linear (no bias) - BN - ReLU - Linear (bias);
                                                     the 512 bottleneck of Sec. 3
``mocov2_projector``        2048 -> 128              Linear (bias) - ReLU - Linear (bias), no BN;
                                                     MoCo v2 (Chen et al. 2020) ``--mlp``
``mocov3_projector``        4096 -> 4096 -> 256      Linear (no bias) - BN - ReLU, twice, then
                                                     Linear - BN (no affine); facebookresearch/
                                                     moco-v3 ``_build_mlp(3, ..., last_bn=True)``
``mocov3_predictor``        4096 -> 256              Linear (no bias) - BN - ReLU - Linear (no
                                                     bias); ``_build_mlp(2, ..., last_bn=False)``
==========================  =======================  ==========================================

SimCLR sizes the hidden layers of its projector to the encoder's feature width
(2048 for ResNet-50 1x; use ``ssl_jax.models.resnet.num_features`` for others).
Both SimCLR versions' released code puts BN on the output layer too (with a
learned scale and no centre), although the v1 paper writes the head as
``W2 relu(W1 h)``; we follow the code, which produced the published numbers.

Kernels use flax's default LeCun-normal init. SimCLR initialises its head with
N(0, 0.01^2) instead; since every one of its Linear layers is followed by BN, the
scale of that init cancels out.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# Floor on norms before dividing, as torch.nn.functional.normalize (SwAV).
_NORM_EPS = 1e-12
# Normalisation layers of the hidden Linear layers (MLPHead.norm).
HEAD_NORMS = ('batch', 'layer')


class MLPHead(nn.Module):
  """Projector / predictor MLP: ``[Linear - (BN) - ReLU] * len(hidden_dims) - Linear - (BN)``.

  Attributes:
    hidden_dims: widths of the hidden layers, e.g. ``(2048,)`` (SimCLR v1),
      ``(2048, 2048)`` (SimCLR v2), ``(4096,)`` (BYOL). ``()`` is a linear head.
    output_dim: output width: 128 SimCLR, 256 BYOL.
    use_bn: a normalisation layer (learned scale and centre) after each hidden
      Linear, before the ReLU: BatchNorm, or LayerNorm if ``norm == 'layer'``.
    norm: 'batch' (BatchNorm) or 'layer' (LayerNorm: no batch statistics, for
      the GN+WS variant of BYOL; no ``batch_stats`` collection then).
    last_bn: BatchNorm on the output (SimCLR's code). It has no centre: the
      output is compared by cosine, and the offset would be a constant shift of
      every embedding. Its scale is learned iff ``last_bn_scale``.
    last_bn_scale: learned scale in the output BN (SimCLR: yes; SimSiam's
      projector uses an output BN without affine params: set False).
    use_bias: bias in the hidden Linear layers. With ``use_bn`` it is redundant
      (BN removes any per-channel offset) and SimCLR drops it; BYOL's code keeps
      it. The default (True) follows BYOL; the SimCLR constructors set False.
    output_bias: bias in the output Linear layer. Both SimCLR and BYOL omit it
      (default False); SimSiam's predictor has one.
    bn_momentum: flax convention (torch's 0.1 is 0.9 here).
    bn_epsilon: BatchNorm epsilon.
    axis_name: named mesh axis for cross-replica BN statistics; None = local.
    dtype: compute dtype; params float32, output float32.
  """

  hidden_dims: Sequence[int]
  output_dim: int
  use_bn: bool = True
  norm: str = 'batch'
  last_bn: bool = False
  last_bn_scale: bool = True
  use_bias: bool = True
  output_bias: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  axis_name: str | None = None
  dtype: Any = jnp.float32

  def __post_init__(self):
    for dim in (*self.hidden_dims, self.output_dim):
      if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ValueError(f'MLPHead widths must be positive integers, got hidden_dims='
                         f'{self.hidden_dims!r}, output_dim={self.output_dim!r}.')
    if self.norm not in HEAD_NORMS:
      raise ValueError(f'MLPHead norm={self.norm!r} is not supported; use one of {HEAD_NORMS}.')
    if self.norm == 'layer' and self.last_bn:
      raise ValueError("MLPHead last_bn needs norm='batch' (an output LayerNorm is not a "
                       'paper configuration).')
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Projects features.

    Args:
      x: float [B, D] features.
      train: BN uses batch statistics and updates running averages (apply with
        ``mutable=['batch_stats']``) when True, running averages when False.

    Returns:
      float32 [B, output_dim].
    """
    if x.ndim != 2:
      raise ValueError(f'MLPHead expects features [B, D], got shape {x.shape}.')
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                             axis_name=self.axis_name, dtype=self.dtype,
                             param_dtype=jnp.float32)
    x = x.astype(self.dtype)
    for i, width in enumerate(self.hidden_dims):
      x = dense(width, use_bias=self.use_bias, name=f'hidden_{i}')(x)
      if self.use_bn and self.norm == 'layer':
        x = nn.LayerNorm(epsilon=self.bn_epsilon, dtype=self.dtype, param_dtype=jnp.float32,
                         name=f'hidden_ln_{i}')(x)
      elif self.use_bn:
        x = norm(name=f'hidden_bn_{i}')(x)
      x = nn.relu(x)
    x = dense(self.output_dim, use_bias=self.output_bias, name='output')(x)
    if self.last_bn:
      x = norm(use_bias=False, use_scale=self.last_bn_scale, name='output_bn')(x)
    return x.astype(jnp.float32)


def simclr_v1_projector(hidden_dim: int = 2048, output_dim: int = 128, *,
                        axis_name: str | None = None, dtype: Any = jnp.float32) -> MLPHead:
  """SimCLR (Chen et al. 2020a) 2-layer projector; ``hidden_dim`` = encoder feature width."""
  return simclr_v2_projector(hidden_dim, output_dim, num_layers=2, axis_name=axis_name,
                             dtype=dtype)


def simclr_v2_projector(hidden_dim: int = 2048, output_dim: int = 128, num_layers: int = 3, *,
                        axis_name: str | None = None, dtype: Any = jnp.float32) -> MLPHead:
  """SimCLRv2 (Chen et al. 2020b) projector of ``num_layers`` Linear layers, all with BN."""
  if num_layers < 1:
    raise ValueError(f'num_layers={num_layers} must be >= 1 (1 = linear projection).')
  return MLPHead(hidden_dims=(hidden_dim,) * (num_layers - 1), output_dim=output_dim,
                 use_bn=True, last_bn=True, last_bn_scale=True, use_bias=False,
                 output_bias=False, axis_name=axis_name, dtype=dtype)


def byol_projector(hidden_dim: int = 4096, output_dim: int = 256, *, norm: str = 'batch',
                   axis_name: str | None = None, dtype: Any = jnp.float32) -> MLPHead:
  """BYOL (Grill et al. 2020, Sec. 3.3) projector: Linear - BN - ReLU - Linear.

  ``norm='layer'`` puts LayerNorm in place of BN, for BYOL without batch
  statistics (Richemond et al. 2020): with a GN+WS encoder, no layer of the
  network then looks across the batch.
  """
  return MLPHead(hidden_dims=(hidden_dim,), output_dim=output_dim, use_bn=True, norm=norm,
                 last_bn=False, use_bias=True, output_bias=False, axis_name=axis_name,
                 dtype=dtype)


def byol_predictor(hidden_dim: int = 4096, output_dim: int = 256, *, norm: str = 'batch',
                   axis_name: str | None = None, dtype: Any = jnp.float32) -> MLPHead:
  """BYOL predictor: the same architecture as the projector (Grill et al. 2020, Sec. 3.3)."""
  return byol_projector(hidden_dim, output_dim, norm=norm, axis_name=axis_name, dtype=dtype)


def simsiam_projector(hidden_dim: int = 2048, output_dim: int = 2048, num_layers: int = 3, *,
                      axis_name: str | None = None, dtype: Any = jnp.float32) -> MLPHead:
  """SimSiam (Chen & He 2021, Sec. 3 "Baseline settings") projector.

  ``num_layers`` Linear layers (3 on ImageNet, 2 on CIFAR: appendix D), BN on
  every one; the output BN has no affine parameters, the hidden Linear layers
  no bias.
  """
  if num_layers < 1:
    raise ValueError(f'num_layers={num_layers} must be >= 1.')
  return MLPHead(hidden_dims=(hidden_dim,) * (num_layers - 1), output_dim=output_dim,
                 use_bn=True, last_bn=True, last_bn_scale=False, use_bias=False,
                 output_bias=False, axis_name=axis_name, dtype=dtype)


def simsiam_predictor(hidden_dim: int = 512, output_dim: int = 2048, *,
                      axis_name: str | None = None, dtype: Any = jnp.float32) -> MLPHead:
  """SimSiam predictor h: Linear (no bias) - BN - ReLU - Linear (bias), 512 bottleneck.

  Chen & He 2021, Sec. 3: "h's input and output dimension is 2048, its hidden
  layer's dimension is 512"; no BN on the output layer.
  """
  return MLPHead(hidden_dims=(hidden_dim,), output_dim=output_dim, use_bn=True,
                 last_bn=False, use_bias=False, output_bias=True, axis_name=axis_name,
                 dtype=dtype)


def mocov2_projector(hidden_dim: int = 2048, output_dim: int = 128, *,
                     dtype: Any = jnp.float32) -> MLPHead:
  """MoCo v2 (Chen, Fan, Girshick & He 2020, Sec. 2) MLP head: fc - ReLU - fc, no BN."""
  return MLPHead(hidden_dims=(hidden_dim,), output_dim=output_dim, use_bn=False,
                 use_bias=True, output_bias=True, dtype=dtype)


def mocov3_projector(hidden_dim: int = 4096, output_dim: int = 256, *,
                     axis_name: str | None = None, dtype: Any = jnp.float32) -> MLPHead:
  """MoCo v3 (Chen, Xie & He 2021, Sec. 4 / appendix) ResNet projector: 3 layers, BN on all.

  The output BN has no affine parameters; no Linear has a bias (the reference
  ``_build_mlp``).
  """
  return MLPHead(hidden_dims=(hidden_dim, hidden_dim), output_dim=output_dim, use_bn=True,
                 last_bn=True, last_bn_scale=False, use_bias=False, output_bias=False,
                 axis_name=axis_name, dtype=dtype)


def mocov3_predictor(hidden_dim: int = 4096, output_dim: int = 256, *,
                     axis_name: str | None = None, dtype: Any = jnp.float32) -> MLPHead:
  """MoCo v3 predictor: 2 layers, BN on the hidden one only, no biases."""
  return MLPHead(hidden_dims=(hidden_dim,), output_dim=output_dim, use_bn=True,
                 last_bn=False, use_bias=False, output_bias=False, axis_name=axis_name,
                 dtype=dtype)


def _l2_normalize(x: jax.Array, axis: int) -> jax.Array:
  norm = jnp.linalg.norm(x, axis=axis, keepdims=True)
  return x / jnp.maximum(norm, _NORM_EPS)


class Prototypes(nn.Module):
  """SwAV prototypes (Caron et al. 2020): scores of l2-normalised features against K vectors.

  A bias-free Linear layer with kernel ``[D, K]`` (param ``kernel``; column k is
  prototype c_k). The input is l2-normalised here (idempotent if it already
  is), so the scores are ``z^T c_k``: cosine similarities once the prototypes
  are normalised with ``normalize_prototypes`` (SwAV does so before every step).

  Attributes:
    num_prototypes: K (3000 for ImageNet in SwAV).
  """

  num_prototypes: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: float [B, D] embeddings -> float32 [B, K] scores."""
    if x.ndim != 2:
      raise ValueError(f'Prototypes expects embeddings [B, D], got shape {x.shape}.')
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (x.shape[-1], self.num_prototypes), jnp.float32)
    return _l2_normalize(x.astype(jnp.float32), axis=-1) @ kernel


def normalize_prototypes(prototype_params: Any) -> Any:
  """l2-normalises every prototype vector (each column of every ``[D, K]`` kernel).

  Args:
    prototype_params: a ``Prototypes`` module's params (``{'kernel': [D, K]}``),
      or any pytree whose leaves are such kernels.

  Returns:
    The same pytree with each column of each leaf scaled to unit l2 norm. SwAV
    applies this to the prototypes before every training step, so the scores
    are cosines and cannot grow by scaling the prototypes.
  """
  def normalize(kernel):
    if kernel.ndim != 2:
      raise ValueError('normalize_prototypes expects [D, K] prototype kernels, got a leaf of '
                       f'shape {kernel.shape}; pass only the Prototypes params.')
    return _l2_normalize(kernel, axis=0)

  return jax.tree.map(normalize, prototype_params)
