"""CPC's context network: a masked (PixelCNN-style) convolution stack over a grid.

Contrastive Predictive Coding (van den Oord et al. 2018, Sec. 3.3; Hénaff et
al. 2019, "Data-Efficient Image Recognition with Contrastive Predictive
Coding", Sec. 3) summarises the patch features z [B, R, C, D] above and at row
r into a context c_r: the receptive field of c[:, r] must hold rows <= r only,
so that c_r cannot see the rows it is asked to predict.

A PixelCNN-style kernel of height 2h - 1 masked below its centre row is the
same operator as an h-row kernel whose output row r reads input rows
r - h + 1 .. r; we write it that way (``padding = ((h - 1, 0), (w // 2, w // 2))``),
which is causal by construction and spends no FLOPs on masked-out taps. A stack
of such convolutions (and of 1x1 convolutions) stays causal.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class RowCausalConv(nn.Module):
  """Convolution whose output row r depends only on input rows <= r.

  Attributes:
    features: output channels.
    rows: kernel height h (the rows r - h + 1 .. r are read).
    cols: kernel width w (odd; centred, 'SAME' over columns).
  """

  features: int
  rows: int = 2
  cols: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.cols % 2 != 1:
      raise ValueError(f"RowCausalConv cols={self.cols} must be odd (centred columns).")
    return nn.Conv(self.features, (self.rows, self.cols),
                   padding=((self.rows - 1, 0), (self.cols // 2, self.cols // 2)),
                   dtype=self.dtype, param_dtype=jnp.float32)(x)


class ContextNetwork(nn.Module):
  """Pre-activation residual stack of row-causal bottleneck blocks (CPC v2 Sec. 3).

  ``z: [B, R, C, D] -> c: float32 [B, R, C, output_dim]`` with ``c[:, r]`` a
  function of ``z[:, :r + 1]`` only. Each block is
  ``x + 1x1(relu(causal(relu(1x1(relu(x))))))``, no normalisation (a batch norm
  would mix rows of other images and positions; CPC v2 removes batch statistics
  for the same reason).

  Attributes:
    width: channels of the residual stream (the input is first projected to it
      by a 1x1 conv, itself causal).
    bottleneck: channels inside each block.
    num_blocks: residual blocks.
    rows, cols: the causal kernel (see ``RowCausalConv``).
    output_dim: channels of c.
  """

  width: int
  bottleneck: int
  num_blocks: int
  output_dim: int
  rows: int = 2
  cols: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    if z.ndim != 4:
      raise ValueError(f"ContextNetwork expects z [B, R, C, D], got shape {z.shape}.")
    conv1 = lambda f, name: nn.Conv(f, (1, 1), dtype=self.dtype, param_dtype=jnp.float32,
                                    name=name)
    x = conv1(self.width, "input_proj")(z.astype(self.dtype))
    for i in range(self.num_blocks):
      y = conv1(self.bottleneck, f"block{i}_reduce")(nn.relu(x))
      y = RowCausalConv(self.bottleneck, self.rows, self.cols, dtype=self.dtype,
                        name=f"block{i}_causal")(nn.relu(y))
      x = x + conv1(self.width, f"block{i}_expand")(nn.relu(y))
    return conv1(self.output_dim, "output_proj")(nn.relu(x)).astype(jnp.float32)
