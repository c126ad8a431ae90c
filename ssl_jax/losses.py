"""Self-supervised losses as pure JAX functions.

Every function works on per-device arrays. Losses whose value couples examples
across the batch (contrastive negatives, Sinkhorn's equipartition) take
``axis_name=None``: with ``None`` they are exactly the single-device loss; with
the mesh's batch axis (``ssl_jax.parallel.BATCH_AXIS``) inside ``jax.shard_map``
they gather/sum over devices and return the loss of the concatenated global
batch (already pmean'd, so callers must not average again). Their gradients
w.r.t. the per-device inputs are then the per-device slices of the global
gradient: the transposes of ``all_gather``/``psum`` carry the cross-device terms.

All arithmetic is float32 whatever the input dtype (bfloat16 activations are
upcast here), and every loss returns a float32 scalar.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real

import jax
import jax.numpy as jnp
from jax import lax

# Floor on a vector's L2 norm before dividing by it (as torch.nn.functional.normalize):
# a zero vector maps to zero instead of NaN, in the value and in the gradient.
_NORM_EPS = 1e-12


def _check_rank2(x: jax.Array, name: str) -> None:
  if jnp.ndim(x) != 2:
    raise ValueError(f"{name} must be a 2-D array [batch, dim], got shape {jnp.shape(x)}.")


def _check_positive(value, name: str) -> None:
  # Traced values (e.g. a temperature schedule evaluated on the step) cannot be checked.
  if isinstance(value, Real) and not value > 0:
    raise ValueError(f"{name} must be > 0, got {value}.")


def _l2_normalize(x: jax.Array) -> jax.Array:
  """x / max(||x||, eps) along the last axis, in float32."""
  x = x.astype(jnp.float32)
  sq_norm = jnp.sum(x * x, axis=-1, keepdims=True)
  return x * lax.rsqrt(jnp.maximum(sq_norm, _NORM_EPS**2))


def _cosine(p: jax.Array, z: jax.Array) -> jax.Array:
  """Row-wise cosine similarity [N] of p, z: [N, D]."""
  return jnp.sum(_l2_normalize(p) * _l2_normalize(z), axis=-1)


def _similarity(a: jax.Array, b: jax.Array) -> jax.Array:
  """a @ b.T [N, M] at full float32 precision.

  TPUs default to one bfloat16 pass for float32 matmuls; divided by a temperature
  of ~0.1 that is a visible error in the logits, while this matmul costs nothing
  next to the encoder.
  """
  return jnp.matmul(a, b.T, precision=lax.Precision.HIGHEST)


def nt_xent(
    z1: jax.Array, z2: jax.Array, temperature: float, axis_name: str | None = None
) -> jax.Array:
  """SimCLR's NT-Xent loss (Chen et al. 2020, "A Simple Framework for
  Contrastive Learning of Visual Representations", eq. 1), averaged over all 2N anchors.

  The 2N views are z1 and z2 after L2 normalisation (done here, eps-safe: inputs
  need not be normalised). Each view is an anchor whose positive is the other view
  of the same image and whose negatives are the other 2N - 2 views:
    l(i, j) = -log( exp(sim(i, j)/T) / sum_{k != i} exp(sim(i, k)/T) ).
  Nothing is stop-gradient'd: gradients flow into both views, through the anchors,
  positives and negatives alike.

  Args:
    z1: [n, D] embeddings of the first view (per-device n when ``axis_name`` is given).
    z2: [n, D] embeddings of the second view; row i is the same image as z1's row i.
    temperature: T > 0.
    axis_name: the batch axis under ``jax.shard_map``. Negatives then come from every
      device (``all_gather`` of z1 and z2), so N = n * num_devices, and the return
      value is the mean over all 2N global anchors: it equals the single-device loss
      on the concatenated batch, as do its gradients.

  Returns:
    float32 scalar.
  """
  _check_rank2(z1, "z1")
  _check_rank2(z2, "z2")
  if z1.shape != z2.shape:
    raise ValueError(f"z1 and z2 must have the same shape, got {z1.shape} and {z2.shape}.")
  _check_positive(temperature, "temperature")
  n = z1.shape[0]
  z1, z2 = _l2_normalize(z1), _l2_normalize(z2)
  if axis_name is None:
    all_z1, all_z2, offset = z1, z2, 0
  else:
    all_z1 = lax.all_gather(z1, axis_name, tiled=True)  # [N, D], in device order
    all_z2 = lax.all_gather(z2, axis_name, tiled=True)
    offset = lax.axis_index(axis_name) * n  # this device's first global row
  num_global = all_z1.shape[0]

  anchors = jnp.concatenate([z1, z2], axis=0)  # [2n, D]: local z1 rows, then local z2 rows
  keys = jnp.concatenate([all_z1, all_z2], axis=0)  # [2N, D]: global z1 rows, then z2 rows
  logits = _similarity(anchors, keys) / temperature  # [2n, 2N]

  local = jnp.arange(n)
  # Global column of each anchor itself, and of its positive (the other view).
  self_col = jnp.concatenate([offset + local, num_global + offset + local])
  positive_col = jnp.concatenate([num_global + offset + local, offset + local])
  columns = jnp.arange(2 * num_global)
  logits = jnp.where(columns[None, :] == self_col[:, None], -jnp.inf, logits)
  positive_logit = jnp.take_along_axis(logits, positive_col[:, None], axis=1)[:, 0]
  loss = jnp.mean(jax.nn.logsumexp(logits, axis=1) - positive_logit)
  if axis_name is not None:
    loss = lax.pmean(loss, axis_name)  # equal n per device: mean of means = global mean
  return loss


def info_nce(
    query: jax.Array,
    positive_key: jax.Array,
    negative_keys: jax.Array,
    temperature: float,
    axis_name: str | None = None,
) -> jax.Array:
  """InfoNCE in the MoCo form (He et al. 2020, "Momentum Contrast for Unsupervised
  Visual Representation Learning", eq. 1; van den Oord et al. 2018, "Representation
  Learning with Contrastive Predictive Coding", eq. 4).

    l_n = -log( exp(q_n . k+_n / T) / (exp(q_n . k+_n / T) + sum_k exp(q_n . k-_k / T)) ),

  i.e. cross-entropy with label 0 over logits [q.k+, q.k-_1, ..., q.k-_K] / T (the
  positive at logit index 0), averaged over the N queries.

  Inputs are used AS GIVEN: nothing is normalised here, because CPC scores raw
  (bilinear) products. MoCo callers L2-normalise query and keys themselves. Nothing
  is stop-gradient'd here either: MoCo's keys come from the momentum encoder, so the
  caller passes them through ``jax.lax.stop_gradient`` (and the queue holds constants).

  Args:
    query: [N, D] (per-device N when ``axis_name`` is given).
    positive_key: [N, D]; row n is query n's positive.
    negative_keys: [K, D] negatives shared by every query (e.g. MoCo's queue).
    temperature: T > 0.
    axis_name: the batch axis under ``jax.shard_map``; the result is then the mean over
      the global batch (pmean). Negatives stay as given on each device.

  Returns:
    float32 scalar.
  """
  _check_rank2(query, "query")
  _check_rank2(positive_key, "positive_key")
  _check_rank2(negative_keys, "negative_keys")
  if query.shape != positive_key.shape:
    raise ValueError(
        f"query and positive_key must have the same shape, got {query.shape} and "
        f"{positive_key.shape}.")
  if negative_keys.shape[1] != query.shape[1]:
    raise ValueError(
        f"negative_keys must be [K, {query.shape[1]}] to match query's dimension, got "
        f"{negative_keys.shape}.")
  _check_positive(temperature, "temperature")
  query = query.astype(jnp.float32)
  positive_key = positive_key.astype(jnp.float32)
  negative_keys = negative_keys.astype(jnp.float32)
  positive_logit = jnp.sum(query * positive_key, axis=-1, keepdims=True)  # [N, 1]
  negative_logits = _similarity(query, negative_keys)  # [N, K]
  logits = jnp.concatenate([positive_logit, negative_logits], axis=1) / temperature
  loss = jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[:, 0])
  if axis_name is not None:
    loss = lax.pmean(loss, axis_name)
  return loss


def regression_loss(p: jax.Array, z: jax.Array) -> jax.Array:
  """BYOL's normalised regression loss (Grill et al. 2020, "Bootstrap Your Own
  Latent", eq. 2): mean over the batch of ||p/|p| - z/|z| ||^2 = 2 - 2 cos(p, z).

  ``z`` (the target network's projection) is stop-gradient'd here: gradients reach
  only ``p`` (the online prediction). BYOL symmetrises by calling this twice with the
  views swapped. The mean is over this device's batch; under ``jax.shard_map`` the
  caller pmeans it (cosines are per-example, so no collective is needed inside).

  Args:
    p: [N, D] online predictions.
    z: [N, D] target projections.

  Returns:
    float32 scalar.
  """
  _check_rank2(p, "p")
  if jnp.shape(p) != jnp.shape(z):
    raise ValueError(f"p and z must have the same shape, got {jnp.shape(p)} and "
                     f"{jnp.shape(z)}.")
  return jnp.mean(2.0 - 2.0 * _cosine(p, lax.stop_gradient(z)))


def negative_cosine(p: jax.Array, z: jax.Array) -> jax.Array:
  """SimSiam's loss D(p, z) (Chen & He 2021, "Exploring Simple Siamese Representation
  Learning", eq. 1): -mean over the batch of cos(p, z).

  ``z`` is stop-gradient'd here (eq. 3's stopgrad, the paper's key ingredient):
  gradients reach only ``p``. SimSiam symmetrises by calling this twice with the views
  swapped and halving. Per-device mean; under ``jax.shard_map`` the caller pmeans it.

  Args:
    p: [N, D] predictor outputs.
    z: [N, D] projections of the other view.

  Returns:
    float32 scalar.
  """
  _check_rank2(p, "p")
  if jnp.shape(p) != jnp.shape(z):
    raise ValueError(f"p and z must have the same shape, got {jnp.shape(p)} and "
                     f"{jnp.shape(z)}.")
  return -jnp.mean(_cosine(p, lax.stop_gradient(z)))


def sinkhorn(
    scores: jax.Array, epsilon: float, num_iters: int, axis_name: str | None = None
) -> jax.Array:
  """SwAV's equipartitioned soft codes by Sinkhorn-Knopp (Caron et al. 2020,
  "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments",
  Sec. 3.1 eq. 3-5 and appendix A.1; the reference code's ``distributed_sinkhorn``).

  With B the global batch and K the number of prototypes, Q = exp(scores / eps)^T
  [K, B] is scaled to total mass 1, then ``num_iters`` times: each prototype's row
  to mass 1/K, then each sample's column to mass 1/B. Finally Q * B, so each
  sample's code sums to 1. (Here the matrix is kept as [B, K]; the sums are the same.)

  Numerical stability: exp(scores / eps) overflows float32 once scores/eps > ~88.
  We subtract ONE scalar, the max over the whole global scores matrix (a pmax over
  devices), before exp. A global factor exp(-max/eps) is removed exactly by the first
  normalisation to total mass 1, so the codes are unchanged. A per-sample shift (the
  usual logsumexp trick, max over each row) would NOT be harmless here: it rescales
  each sample's column by a different factor, which changes the prototypes' masses in
  the first row normalisation, and after a finite number of iterations (SwAV uses 3)
  the codes differ from the paper's. Limit of the global shift: a sample whose scores
  lie more than ~80 * eps below the global max underflows to an all-zero column
  (NaN codes); with SwAV's cosine scores in [-1, 1] that needs eps < ~0.025.

  The computation is wrapped in ``stop_gradient`` (codes are targets) and runs in
  float32 whatever the input dtype.

  Args:
    scores: [B, K] sample-prototype scores (per-device B when ``axis_name`` is given).
    epsilon: entropic regularisation eps > 0 (SwAV: 0.05).
    num_iters: Sinkhorn iterations, a Python int >= 1 (SwAV: 3).
    axis_name: the batch axis under ``jax.shard_map``. Every sum over samples (the
      total mass, each prototype's mass) and the max are then taken over all devices,
      and B is the global batch, so the codes equal the single-device codes on the
      concatenated batch.

  Returns:
    float32 codes [B, K] (this device's rows), each row summing to 1.
  """
  _check_rank2(scores, "scores")
  _check_positive(epsilon, "epsilon")
  if not isinstance(num_iters, int) or num_iters < 1:
    raise ValueError(f"num_iters must be a Python int >= 1, got {num_iters!r}.")

  def global_sum(x):
    return x if axis_name is None else lax.psum(x, axis_name)

  scores = lax.stop_gradient(scores).astype(jnp.float32)
  num_local, num_prototypes = scores.shape
  num_global = num_local if axis_name is None else num_local * lax.axis_size(axis_name)
  shift = jnp.max(scores)
  if axis_name is not None:
    shift = lax.pmax(shift, axis_name)
  q = jnp.exp((scores - shift) / epsilon)  # [B, K]
  q = q / global_sum(jnp.sum(q))

  def iteration(_, q):
    prototype_mass = global_sum(jnp.sum(q, axis=0, keepdims=True))  # [1, K]
    q = q / (prototype_mass * num_prototypes)
    sample_mass = jnp.sum(q, axis=1, keepdims=True)  # [B, 1]
    return q / (sample_mass * num_global)

  q = lax.fori_loop(0, num_iters, iteration, q)
  return lax.stop_gradient(q * num_global)


def swav_multicrop_loss(
    code_scores: Sequence[jax.Array],
    all_scores: Sequence[jax.Array],
    temperature: float,
    epsilon: float,
    sinkhorn_iters: int,
    axis_name: str | None = None,
) -> jax.Array:
  """SwAV's swapped prediction over multiple crops (Caron et al. 2020, eq. 1-3 and
  Sec. 3.2 "multi-crop"; the reference ``main_swav.py`` loss).

  For each code crop i, codes q_i = sinkhorn(stop_gradient(scores_i)); its loss is
  the mean over every other crop j != i of the cross-entropy
    l(z_j, q_i) = -mean_b sum_k q_i[b, k] log softmax(scores_j[b] / T)_k.
  The result is the mean over code crops. Gradients flow only through the softmax
  side (the codes are stop-gradient'd inside ``sinkhorn``).

  Args:
    code_scores: C >= 1 arrays [B_c, K], B_c >= B, the scores codes are computed from:
      code crop i is crop i of ``all_scores`` (e.g. the 2 high-resolution crops), and
      the LAST B rows of ``code_scores[i]`` must be ``all_scores[i]``'s samples. Extra
      leading rows (SwAV's queue of earlier batches' scores, reference code
      ``torch.cat((queue @ prototypes.T, out))``) only widen the batch Sinkhorn
      equipartitions over; their codes are dropped.
    all_scores: V >= max(C, 2) arrays [B, K], the scores of every crop, code crops first.
    temperature: softmax temperature T > 0 (SwAV: 0.1).
    epsilon: Sinkhorn eps (SwAV: 0.05).
    sinkhorn_iters: Sinkhorn iterations (SwAV: 3).
    axis_name: the batch axis under ``jax.shard_map``; codes are then global (see
      ``sinkhorn``) and the result is the mean over the global batch (pmean).

  Returns:
    float32 scalar.
  """
  code_scores, all_scores = list(code_scores), list(all_scores)
  if not 1 <= len(code_scores) <= len(all_scores) or len(all_scores) < 2:
    raise ValueError(
        f"Need 1 <= len(code_scores) <= len(all_scores) and len(all_scores) >= 2 (code "
        f"crops are the first crops of all_scores, and each needs another crop), got "
        f"{len(code_scores)} and {len(all_scores)}.")
  batch_shape = jnp.shape(all_scores[0])
  for i, s in enumerate(all_scores):
    _check_rank2(s, f"all_scores[{i}]")
    if s.shape != batch_shape:
      raise ValueError(f"Every crop's scores must have the same shape [B, K]; all_scores[{i}] "
                       f"has {s.shape}, all_scores[0] has {batch_shape}.")
  for i, s in enumerate(code_scores):
    _check_rank2(s, f"code_scores[{i}]")
    if s.shape[0] < batch_shape[0] or s.shape[1] != batch_shape[1]:
      raise ValueError(f"code_scores[{i}] must be [B_c >= {batch_shape[0]}, {batch_shape[1]}] "
                       f"(its last B rows are crop {i}'s samples), got {s.shape}.")
  _check_positive(temperature, "temperature")

  log_probs = [jax.nn.log_softmax(s.astype(jnp.float32) / temperature, axis=-1)
               for s in all_scores]
  loss = 0.0
  for i, scores_i in enumerate(code_scores):
    # The crop's own samples are the last B rows (any queue rows come first).
    codes = sinkhorn(scores_i, epsilon, sinkhorn_iters, axis_name)[-batch_shape[0]:]
    cross_entropies = [-jnp.mean(jnp.sum(codes * log_probs[j], axis=-1))
                       for j in range(len(all_scores)) if j != i]
    loss = loss + sum(cross_entropies) / len(cross_entropies)
  loss = loss / len(code_scores)
  if axis_name is not None:
    loss = lax.pmean(loss, axis_name)
  return loss


def swav_loss(
    scores_1: jax.Array,
    scores_2: jax.Array,
    temperature: float,
    epsilon: float,
    sinkhorn_iters: int,
    axis_name: str | None = None,
) -> jax.Array:
  """SwAV's swapped prediction for two crops (Caron et al. 2020, eq. 1-3):

    0.5 * ( l(z_2, q_1) + l(z_1, q_2) ),  q_v = sinkhorn(stop_gradient(scores_v)),
    l(z_t, q_s) = -mean_b sum_k q_s[b, k] log softmax(scores_t[b] / T)_k.

  The two-crop case of ``swav_multicrop_loss``; gradients flow only through the
  softmax side.

  Args:
    scores_1: [B, K] scores of crop 1 against the prototypes (per-device B under
      ``axis_name``).
    scores_2: [B, K] scores of crop 2.
    temperature: softmax temperature T > 0 (SwAV: 0.1).
    epsilon: Sinkhorn eps (SwAV: 0.05).
    sinkhorn_iters: Sinkhorn iterations (SwAV: 3).
    axis_name: the batch axis under ``jax.shard_map``: global codes, global-batch mean.

  Returns:
    float32 scalar.
  """
  return swav_multicrop_loss(
      [scores_1, scores_2], [scores_1, scores_2], temperature, epsilon, sinkhorn_iters,
      axis_name)
