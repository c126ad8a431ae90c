"""Collapse diagnostics of embeddings, logged by every method during training.

A collapsed embedding (every image mapped to the same point, or to a
low-dimensional subspace) is the failure mode of SSL methods without negatives
(BYOL, SimSiam) and of clustering methods. These metrics catch it early:

- ``embedding_std``: mean over dimensions of the per-dimension standard
  deviation of the L2-normalised embeddings (SimSiam, Chen & He 2021, Sec. 4.1):
  about 1/sqrt(D) for well-spread embeddings, 0 when collapsed.
  ``embedding_std_ratio`` = ``embedding_std * sqrt(D)`` is the same scaled to
  about 1 when healthy, whatever D.
- ``embedding_rank``: the effective rank (Roy & Vetterli 2007; RankMe, Garrido
  et al. 2023): exp of the entropy of the normalised singular values of the
  [N, D] matrix of L2-normalised embeddings of the global batch. Between 1
  (complete collapse) and min(N, D); ``embedding_rank_fraction`` divides it by
  min(N, D). A low fraction with a fair std is *dimensional* collapse: the
  embeddings spread over a few directions only (SwAV's documented failure at
  the start of training, loss stuck at ln K, reaches rank ~3 of 128).
- ``alignment`` and ``uniformity`` (Wang & Isola 2020, eqs. 4-5, alpha = t = 2):
  E ||f(x) - f(y)||^2 over positive pairs (lower: views agree), and
  log E exp(-2 ||f(x) - f(y)||^2) over pairs of different images (lower: more
  uniform on the sphere; 0 when collapsed).

All take per-device embeddings and an ``axis_name``; results are global-batch
statistics, equal on every device. The singular values come from the D x D Gram
matrix summed over devices, or, when the global batch N is smaller than D, from
the N x N Gram matrix of the gathered embeddings. Uniformity is averaged
over the pairs within each device's share of the batch (an unbiased estimate of
the same expectation, without an O(N^2) cross-device term).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ssl_jax import parallel

# A healthy embedding has embedding_std_ratio ~ 1; below this it is collapsing.
COLLAPSE_STD_RATIO = 0.1
# Effective rank below this share of min(N, D): dimensional collapse. Measured at
# ResNet-18 width 8 on CIFAR-10: SimCLR ~0.2, SimSiam >= 0.06, a collapsed SwAV 0.02-0.05.
COLLAPSE_RANK_FRACTION = 0.05


def _normalize(z):
  z = z.astype(jnp.float32)
  return z / jnp.linalg.norm(z, axis=-1, keepdims=True).clip(1e-12)


def _pmean(x, axis_name):
  return x if axis_name is None else jax.lax.pmean(x, axis_name)


def collapse_metrics(z_1: jax.Array, z_2: jax.Array | None = None, axis_name=None) -> dict:
  """Collapse diagnostics of this device's embeddings (see the module docstring).

  Args:
    z_1: float [n, D] embeddings of the first view on this device.
    z_2: optional float [n, D] embeddings of the second view of the same images
      (enables ``alignment``).
    axis_name: the data-parallel axis the global batch spans, or None.

  Returns:
    Scalar float32 metrics, no gradient: embedding_std, embedding_std_ratio,
    embedding_rank, embedding_rank_fraction, uniformity and (with ``z_2``)
    alignment.
  """
  z_1 = jax.lax.stop_gradient(_normalize(z_1))
  z = z_1 if z_2 is None else jnp.concatenate([z_1, jax.lax.stop_gradient(_normalize(z_2))])
  dim = z.shape[-1]
  mean, second = _pmean((jnp.mean(z, axis=0), jnp.mean(jnp.square(z), axis=0)), axis_name)
  std = jnp.mean(jnp.sqrt(jnp.maximum(second - jnp.square(mean), 0.0)))

  # Singular values of the global [N, D] matrix Z = sqrt of the nonzero
  # eigenvalues of Z^T Z [D, D] (a sum over devices) or of Z Z^T [N, N] (of the
  # gathered rows), whichever is smaller: eigvalsh is O(size^3) and runs at a
  # fraction of the matmul rate (SimSiam's 2048-d output at batch 256: 0.66 s a
  # step for D x D on a 2-core CPU against 0.02 s for N x N, N = 512).
  devices = 1 if axis_name is None else jax.lax.axis_size(axis_name)
  max_rank = min(z.shape[0] * devices, dim)
  if z.shape[0] * devices < dim:
    rows = parallel.gather_replicated(z, axis_name)
    gram = rows @ rows.T
  else:
    gram = _pmean(z.T @ z, axis_name)
  singular = jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(gram.astype(jnp.float32)), 0.0))
  p = singular / jnp.sum(singular).clip(1e-12)
  rank = jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))

  n = z_1.shape[0]
  sq_dist = jnp.maximum(2.0 - 2.0 * z_1 @ z_1.T, 0.0)
  off_diagonal = 1.0 - jnp.eye(n, dtype=z_1.dtype)
  gaussian = jnp.sum(jnp.exp(-2.0 * sq_dist) * off_diagonal) / max(n * (n - 1), 1)
  metrics = {"embedding_std": std, "embedding_std_ratio": std * math.sqrt(dim),
             "embedding_rank": rank, "embedding_rank_fraction": rank / max_rank,
             "uniformity": jnp.log(_pmean(gaussian, axis_name).clip(1e-30))}
  if z_2 is not None:
    z_2n = z[n:]
    metrics["alignment"] = _pmean(jnp.mean(jnp.sum(jnp.square(z_1 - z_2n), axis=-1)), axis_name)
  return metrics


def collapse_warning(metrics: dict) -> str | None:
  """A message if logged metrics show a collapsing embedding, else None.

  Two signs: the spread (``embedding_std_ratio`` < COLLAPSE_STD_RATIO: every
  image near one point) or the dimensionality (``embedding_rank_fraction`` <
  COLLAPSE_RANK_FRACTION: the images on a few directions only).
  """
  ratio = metrics.get("embedding_std_ratio")
  fraction = metrics.get("embedding_rank_fraction")
  rank = metrics.get("embedding_rank", float("nan"))
  fix = ("The representation is degenerating; check the learning rate, the predictor/EMA "
         "settings, or the augmentation strength (SwAV: a smaller epsilon, prototypes frozen "
         "longer, the queue later).")
  if ratio is not None and ratio < COLLAPSE_STD_RATIO:
    return (f"Embedding collapse: the std of the normalised embeddings is {ratio:.3f} of a "
            f"healthy spread (effective rank {rank:.2f}). {fix}")
  if fraction is not None and fraction < COLLAPSE_RANK_FRACTION:
    return (f"Dimensional collapse: the effective rank of the embeddings is {rank:.2f}, "
            f"{100 * fraction:.1f}% of the possible (std ratio {ratio:.3f}). {fix}")
  return None
