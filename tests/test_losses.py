"""ssl_jax.losses against NumPy float64 re-derivations of the papers' formulas.

The references below are written straight from the equations (explicit loops over
anchors/queries/crops, SwAV's Algorithm as printed: Q = exp(S/eps)^T, K x B), never by
calling the code under test. Gradients are checked against central finite differences
of those references in float64.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ssl_jax import losses
from ssl_jax.parallel import BATCH_AXIS, make_mesh

VALUE_TOL = dict(rtol=1e-5, atol=1e-6)
GRAD_TOL = dict(rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------
# NumPy float64 references.
# ----------------------------------------------------------------------------


def _unit(v):
  v = np.asarray(v, np.float64)
  return v / np.linalg.norm(v)


def ref_nt_xent(z1, z2, temperature):
  """SimCLR eq. 1, averaged over the 2N anchors: views 2k, 2k+1 are image k's pair."""
  n = len(z1)
  views = []
  for k in range(n):  # interleave as in the paper: (2k-1, 2k) are a positive pair
    views += [_unit(z1[k]), _unit(z2[k])]
  total = 0.0
  for i in range(2 * n):
    j = i + 1 if i % 2 == 0 else i - 1
    numerator = np.exp(views[i] @ views[j] / temperature)
    denominator = sum(np.exp(views[i] @ views[k] / temperature)
                      for k in range(2 * n) if k != i)
    total += -np.log(numerator / denominator)
  return total / (2 * n)


def ref_info_nce(query, positive_key, negative_keys, temperature):
  """MoCo eq. 1 per query, averaged."""
  total = 0.0
  for q, k_pos in zip(np.float64(query), np.float64(positive_key)):
    positive = np.exp(q @ k_pos / temperature)
    negatives = sum(np.exp(q @ k_neg / temperature) for k_neg in np.float64(negative_keys))
    total += -np.log(positive / (positive + negatives))
  return total / len(query)


def ref_regression(p, z):
  """BYOL eq. 2: || p/|p| - z/|z| ||^2, averaged."""
  return np.mean([np.sum((_unit(a) - _unit(b))**2) for a, b in zip(p, z)])


def ref_negative_cosine(p, z):
  """SimSiam eq. 1: -p/|p| . z/|z|, averaged."""
  return -np.mean([_unit(a) @ _unit(b) for a, b in zip(p, z)])


def ref_sinkhorn(scores, epsilon, num_iters, shift="global"):
  """SwAV Algorithm (appendix A.1) in float64 on the K x B matrix Q.

  shift: "global" subtracts the single max of the scores before exp, "row"
  subtracts each sample's own max, None exponentiates the raw scores.
  """
  scores = np.asarray(scores, np.float64)
  if shift == "global":
    scores = scores - scores.max()
  elif shift == "row":
    scores = scores - scores.max(axis=1, keepdims=True)
  q = np.exp(scores / epsilon).T  # [K, B]
  num_prototypes, batch = q.shape
  q /= q.sum()
  for _ in range(num_iters):
    for k in range(num_prototypes):  # each prototype's total mass -> 1/K
      q[k] /= q[k].sum() * num_prototypes
    for b in range(batch):  # each sample's total mass -> 1/B
      q[:, b] /= q[:, b].sum() * batch
  return (q * batch).T  # [B, K], rows sum to 1


def ref_swapped_prediction(codes, all_scores, temperature):
  """SwAV eq. 1-3 / main_swav.py given fixed codes: mean over code crops i of the mean
  over crops j != i of -mean_b sum_k q_i log softmax(s_j / T)."""
  total = 0.0
  for i, q in enumerate(codes):
    sub = 0.0
    others = [j for j in range(len(all_scores)) if j != i]
    for j in others:
      x = np.asarray(all_scores[j], np.float64) / temperature
      log_p = x - np.log(np.sum(np.exp(x), axis=1, keepdims=True))
      sub += -np.mean(np.sum(q * log_p, axis=1))
    total += sub / len(others)
  return total / len(codes)


def ref_swav(code_scores, all_scores, temperature, epsilon, num_iters):
  batch = len(all_scores[0])
  codes = [ref_sinkhorn(s, epsilon, num_iters)[-batch:] for s in code_scores]
  return ref_swapped_prediction(codes, all_scores, temperature)


def numeric_grad(f, x, h=1e-6):
  """Central finite differences of a float64 scalar function of the array x."""
  x = np.array(x, np.float64)
  grad = np.zeros_like(x)
  for index in np.ndindex(x.shape):
    plus, minus = x.copy(), x.copy()
    plus[index] += h
    minus[index] -= h
    grad[index] = (f(plus) - f(minus)) / (2 * h)
  return grad


def _normal(seed, *shape, scale=1.0):
  return (scale * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


# ----------------------------------------------------------------------------
# Values and gradients vs the references.
# ----------------------------------------------------------------------------


def test_nt_xent_matches_reference_value_and_gradient():
  z1, z2 = _normal(0, 6, 5, scale=2.0), _normal(1, 6, 5)
  temperature = 0.3
  loss, (g1, g2) = jax.value_and_grad(losses.nt_xent, argnums=(0, 1))(z1, z2, temperature)
  assert loss.dtype == jnp.float32 and loss.shape == ()
  np.testing.assert_allclose(loss, ref_nt_xent(z1, z2, temperature), **VALUE_TOL)
  np.testing.assert_allclose(
      g1, numeric_grad(lambda a: ref_nt_xent(a, z2, temperature), z1), **GRAD_TOL)
  np.testing.assert_allclose(
      g2, numeric_grad(lambda b: ref_nt_xent(z1, b, temperature), z2), **GRAD_TOL)


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_nt_xent_closed_form_for_orthonormal_identical_views(temperature):
  # z1 = z2 = U with orthonormal rows: each anchor's positive has similarity 1 and its
  # 2N - 2 negatives similarity 0, so every anchor's loss is
  #   -log(e^{1/T} / (e^{1/T} + 2(N-1))) = log(1 + 2(N-1) e^{-1/T}).
  n = 8
  u, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(n, n)))
  expected = np.log1p(2 * (n - 1) * np.exp(-1.0 / temperature))
  np.testing.assert_allclose(losses.nt_xent(u, u, temperature), expected, **VALUE_TOL)
  # The loss normalises its inputs: rescaled rows give the same value.
  scaled = (u * np.arange(1, n + 1)[:, None]).astype(np.float32)
  np.testing.assert_allclose(losses.nt_xent(scaled, 3 * u, temperature), expected,
                             **VALUE_TOL)


def test_info_nce_matches_reference_value_and_gradient():
  query, positive = _normal(3, 5, 4), _normal(4, 5, 4)
  negatives = _normal(5, 7, 4)
  temperature = 0.2
  loss, grads = jax.value_and_grad(losses.info_nce, argnums=(0, 1, 2))(
      query, positive, negatives, temperature)
  np.testing.assert_allclose(loss, ref_info_nce(query, positive, negatives, temperature),
                             **VALUE_TOL)
  references = [
      numeric_grad(lambda q: ref_info_nce(q, positive, negatives, temperature), query),
      numeric_grad(lambda k: ref_info_nce(query, k, negatives, temperature), positive),
      numeric_grad(lambda k: ref_info_nce(query, positive, k, temperature), negatives),
  ]
  for grad, reference in zip(grads, references):
    np.testing.assert_allclose(grad, reference, **GRAD_TOL)


def test_info_nce_uses_inputs_as_given():
  # No normalisation inside: scaling the query by 2 is the same as halving T.
  query, positive, negatives = _normal(6, 4, 3), _normal(7, 4, 3), _normal(8, 5, 3)
  np.testing.assert_allclose(losses.info_nce(2 * query, positive, negatives, 0.5),
                             ref_info_nce(query, positive, negatives, 0.25), **VALUE_TOL)


@pytest.mark.parametrize("loss_fn,reference", [
    (losses.regression_loss, ref_regression),
    (losses.negative_cosine, ref_negative_cosine),
])
def test_cosine_losses_match_reference_and_stop_gradient(loss_fn, reference):
  p, z = _normal(9, 6, 5, scale=3.0), _normal(10, 6, 5)
  loss, (grad_p, grad_z) = jax.value_and_grad(loss_fn, argnums=(0, 1))(p, z)
  np.testing.assert_allclose(loss, reference(p, z), **VALUE_TOL)
  np.testing.assert_allclose(grad_p, numeric_grad(lambda a: reference(a, z), p), **GRAD_TOL)
  # z is the target: not a single bit of gradient reaches it.
  np.testing.assert_array_equal(grad_z, np.zeros_like(z))
  # ...although the loss does depend on z (so the zero above is stop_gradient's doing).
  assert np.abs(numeric_grad(lambda b: reference(p, b), z)).max() > 1e-3


def test_cosine_losses_are_safe_on_zero_vectors():
  p, z = np.zeros((2, 3), np.float32), np.ones((2, 3), np.float32)
  for loss_fn in (losses.regression_loss, losses.negative_cosine):
    loss, grad = jax.value_and_grad(loss_fn)(p, z)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
  loss, grads = jax.value_and_grad(losses.nt_xent, argnums=(0, 1))(p, z, 0.5)
  assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads)


# ----------------------------------------------------------------------------
# Sinkhorn.
# ----------------------------------------------------------------------------


def test_sinkhorn_matches_reference_algorithm():
  scores = _normal(11, 12, 5, scale=0.5)
  codes = losses.sinkhorn(scores, 0.05, 3)
  assert codes.shape == (12, 5) and codes.dtype == jnp.float32
  # The raw algorithm (no shift at all) is fine in float64 at these magnitudes.
  np.testing.assert_allclose(codes, ref_sinkhorn(scores, 0.05, 3, shift=None),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(codes.sum(axis=1), np.ones(12), rtol=1e-5)


def test_sinkhorn_equipartition_after_many_iterations():
  batch, num_prototypes = 30, 6
  scores = _normal(12, batch, num_prototypes, scale=0.3)
  few = np.asarray(losses.sinkhorn(scores, 0.1, 1))
  many = np.asarray(losses.sinkhorn(scores, 0.1, 50))
  np.testing.assert_allclose(many.sum(axis=1), np.ones(batch), rtol=1e-5)
  # Every prototype receives B/K of the batch's mass...
  np.testing.assert_allclose(many.sum(axis=0), np.full(num_prototypes, batch / num_prototypes),
                             rtol=1e-3)
  # ...which one iteration does not achieve yet (so the check above has teeth).
  assert np.abs(few.sum(axis=0) - batch / num_prototypes).max() > 1e-2


def test_sinkhorn_is_stable_for_large_scores():
  # scores / eps ~ 1e3: exp overflows float32 (and float64) without a shift.
  epsilon = 0.05
  scores = (epsilon * (1000.0 + 5.0 * np.random.default_rng(13).normal(size=(16, 6))))
  scores = scores.astype(np.float32)
  with np.errstate(over="ignore", invalid="ignore"):
    assert not np.all(np.isfinite(ref_sinkhorn(scores, epsilon, 3, shift=None)))
  codes = np.asarray(losses.sinkhorn(scores, epsilon, 3))
  assert np.all(np.isfinite(codes))
  np.testing.assert_allclose(codes, ref_sinkhorn(scores, epsilon, 3, shift="global"),
                             rtol=1e-4, atol=1e-6)


def test_sinkhorn_global_shift_is_harmless_but_per_row_shift_is_not():
  # Why the implementation subtracts ONE global max: exp(-c/eps) of a global shift
  # cancels in the first normalisation to total mass 1, whereas a per-sample shift
  # rescales each sample's column differently, which changes the first prototype
  # masses and so the codes after a finite number of iterations.
  epsilon, iters = 0.1, 3
  scores = _normal(14, 16, 6, scale=0.5)
  row_offsets = _normal(15, 16, 1)
  base = np.asarray(losses.sinkhorn(scores, epsilon, iters))
  np.testing.assert_allclose(losses.sinkhorn(scores + 0.7, epsilon, iters), base,
                             rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(losses.sinkhorn(scores + row_offsets, epsilon, iters))
                - base).max() > 1e-2
  # The same holds for the float64 reference: subtracting each row's max != the paper.
  reference = ref_sinkhorn(scores, epsilon, iters, shift=None)
  np.testing.assert_allclose(ref_sinkhorn(scores, epsilon, iters, shift="global"), reference,
                             rtol=1e-12)
  assert np.abs(ref_sinkhorn(scores, epsilon, iters, shift="row") - reference).max() > 1e-2


def test_sinkhorn_runs_in_float32_and_blocks_gradients():
  scores = _normal(16, 8, 4, scale=0.5)
  codes = losses.sinkhorn(jnp.asarray(scores, jnp.bfloat16), 0.05, 3)
  assert codes.dtype == jnp.float32
  as_bf16 = np.asarray(jnp.asarray(scores, jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_allclose(codes, ref_sinkhorn(as_bf16, 0.05, 3), rtol=1e-5, atol=1e-6)
  grad = jax.grad(lambda s: jnp.sum(losses.sinkhorn(s, 0.05, 3) * s))(scores)
  np.testing.assert_allclose(grad, losses.sinkhorn(scores, 0.05, 3), rtol=1e-6)


# ----------------------------------------------------------------------------
# SwAV.
# ----------------------------------------------------------------------------

SWAV = dict(temperature=0.1, epsilon=0.05, sinkhorn_iters=3)


def test_swav_loss_value_and_gradient_only_through_softmax():
  s1, s2 = _normal(17, 8, 5, scale=0.5), _normal(18, 8, 5, scale=0.5)
  t, eps, iters = SWAV["temperature"], SWAV["epsilon"], SWAV["sinkhorn_iters"]
  loss, (g1, g2) = jax.value_and_grad(losses.swav_loss, argnums=(0, 1))(s1, s2, **SWAV)
  np.testing.assert_allclose(loss, ref_swav([s1, s2], [s1, s2], t, eps, iters), **VALUE_TOL)

  # The gradient is that of the cross-entropies with the codes held fixed.
  fixed = [ref_sinkhorn(s1, eps, iters), ref_sinkhorn(s2, eps, iters)]
  ref_g1 = numeric_grad(lambda a: ref_swapped_prediction(fixed, [a, s2], t), s1)
  ref_g2 = numeric_grad(lambda b: ref_swapped_prediction(fixed, [s1, b], t), s2)
  np.testing.assert_allclose(g1, ref_g1, **GRAD_TOL)
  np.testing.assert_allclose(g2, ref_g2, **GRAD_TOL)
  # Differentiating through the codes too gives something else (the check has teeth).
  through_codes = numeric_grad(lambda a: ref_swav([a, s2], [a, s2], t, eps, iters), s1)
  assert np.abs(through_codes - ref_g1).max() > 1e-2


def test_swav_multicrop_loss_with_small_crops_and_queue():
  batch, k = 6, 5
  high = [_normal(19, batch, k, scale=0.5), _normal(20, batch, k, scale=0.5)]
  low = [_normal(21, batch, k, scale=0.5) for _ in range(3)]
  queue_scores = [_normal(22, 10, k, scale=0.5), _normal(23, 10, k, scale=0.5)]
  all_scores = high + low
  # Without a queue: codes from the two high-resolution crops, predicted by all 4 others.
  np.testing.assert_allclose(
      losses.swav_multicrop_loss(high, all_scores, **SWAV),
      ref_swav(high, all_scores, 0.1, 0.05, 3), **VALUE_TOL)
  # With a queue: Sinkhorn runs on [queue; crop] and the crop's codes are the last rows.
  code_scores = [np.concatenate([q, h]) for q, h in zip(queue_scores, high)]
  with_queue = losses.swav_multicrop_loss(code_scores, all_scores, **SWAV)
  np.testing.assert_allclose(with_queue, ref_swav(code_scores, all_scores, 0.1, 0.05, 3),
                             **VALUE_TOL)
  assert abs(float(with_queue) - ref_swav(high, all_scores, 0.1, 0.05, 3)) > 1e-4
  # swav_loss is the two-crop case.
  np.testing.assert_allclose(losses.swav_loss(high[0], high[1], **SWAV),
                             losses.swav_multicrop_loss(high, high, **SWAV), rtol=1e-6)


def test_bad_inputs_raise_clear_errors():
  x = np.zeros((4, 3), np.float32)
  with pytest.raises(ValueError, match="same shape"):
    losses.nt_xent(x, np.zeros((5, 3), np.float32), 0.1)
  with pytest.raises(ValueError, match="temperature"):
    losses.nt_xent(x, x, 0.0)
  with pytest.raises(ValueError, match="2-D"):
    losses.regression_loss(np.zeros(3), np.zeros(3))
  with pytest.raises(ValueError, match="negative_keys"):
    losses.info_nce(x, x, np.zeros((5, 2), np.float32), 0.1)
  with pytest.raises(ValueError, match="num_iters"):
    losses.sinkhorn(x, 0.05, 0)
  with pytest.raises(ValueError, match="len"):
    losses.swav_multicrop_loss([x], [x], **SWAV)
  with pytest.raises(ValueError, match="len"):
    losses.swav_multicrop_loss([x, x, x], [x, x], **SWAV)
  with pytest.raises(ValueError, match="code_scores"):
    losses.swav_multicrop_loss([x[:2]], [x, x], **SWAV)


# ----------------------------------------------------------------------------
# jit == no jit.
# ----------------------------------------------------------------------------

_A, _B, _C = _normal(24, 8, 6, scale=0.5), _normal(25, 8, 6, scale=0.5), _normal(26, 5, 6)
JIT_CASES = {
    "nt_xent": (functools.partial(losses.nt_xent, temperature=0.2), (_A, _B)),
    "info_nce": (functools.partial(losses.info_nce, temperature=0.2), (_A, _B, _C)),
    "regression_loss": (losses.regression_loss, (_A, _B)),
    "negative_cosine": (losses.negative_cosine, (_A, _B)),
    "sinkhorn": (functools.partial(losses.sinkhorn, epsilon=0.05, num_iters=3), (_A,)),
    "swav_loss": (functools.partial(losses.swav_loss, **SWAV), (_A, _B)),
    "swav_multicrop_loss": (
        lambda a, b, c: losses.swav_multicrop_loss([a], [a, b, c], **SWAV),
        (_A, _B, _A[::-1])),
}


@pytest.mark.parametrize("name", sorted(JIT_CASES))
def test_jit_equals_no_jit(name):
  fn, args = JIT_CASES[name]
  np.testing.assert_allclose(jax.jit(fn)(*args), fn(*args), rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------
# 8 devices (shard_map over the batch axis) == 1 device on the whole batch.
# ----------------------------------------------------------------------------


def _sharded_value_and_grad(loss_fn, num_sharded, num_replicated=0):
  """jit(shard_map) of value_and_grad of a per-device loss: loss replicated, gradients
  w.r.t. the sharded inputs sharded, w.r.t. replicated inputs replicated."""
  argnums = tuple(range(num_sharded + num_replicated))

  def per_device(*args):
    return jax.value_and_grad(loss_fn, argnums=argnums)(*args)

  specs = (P(BATCH_AXIS),) * num_sharded + (P(),) * num_replicated
  return jax.jit(jax.shard_map(per_device, mesh=make_mesh(), in_specs=specs,
                               out_specs=(P(), specs)))


def _assert_same_value_and_grads(sharded, single):
  np.testing.assert_allclose(sharded[0], single[0], rtol=1e-5, atol=1e-6)
  for g_sharded, g_single in zip(sharded[1], single[1]):
    np.testing.assert_allclose(g_sharded, g_single, rtol=1e-4, atol=1e-6)


def test_nt_xent_8_devices_equals_1_device(devices):
  z1, z2 = _normal(27, 16, 8), _normal(28, 16, 8)
  sharded = _sharded_value_and_grad(
      functools.partial(losses.nt_xent, temperature=0.2, axis_name=BATCH_AXIS), 2)(z1, z2)
  single = jax.value_and_grad(losses.nt_xent, argnums=(0, 1))(z1, z2, 0.2)
  _assert_same_value_and_grads(sharded, single)
  # Cross-device negatives really are used: the per-device loss without them differs.
  per_device = jax.jit(functools.partial(losses.nt_xent, temperature=0.2))
  local_only = np.mean([per_device(z1[i:i + 2], z2[i:i + 2]) for i in range(0, 16, 2)])
  assert abs(float(sharded[0]) - local_only) > 1e-2


def test_info_nce_8_devices_equals_1_device(devices):
  query, positive, negatives = _normal(29, 16, 8), _normal(30, 16, 8), _normal(31, 10, 8)
  sharded = _sharded_value_and_grad(
      functools.partial(losses.info_nce, temperature=0.2, axis_name=BATCH_AXIS), 2, 1)(
          query, positive, negatives)
  single = jax.value_and_grad(losses.info_nce, argnums=(0, 1, 2))(
      query, positive, negatives, 0.2)
  _assert_same_value_and_grads(sharded, single)


def test_sinkhorn_8_devices_equals_1_device(devices):
  scores = _normal(32, 32, 10, scale=0.5)
  sharded = jax.jit(jax.shard_map(
      functools.partial(losses.sinkhorn, epsilon=0.05, num_iters=3, axis_name=BATCH_AXIS),
      mesh=make_mesh(), in_specs=P(BATCH_AXIS), out_specs=P(BATCH_AXIS)))
  codes = sharded(scores)
  np.testing.assert_allclose(codes, losses.sinkhorn(scores, 0.05, 3), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(codes, ref_sinkhorn(scores, 0.05, 3), rtol=1e-5, atol=1e-7)


def test_swav_losses_8_devices_equal_1_device(devices):
  s1, s2, s3 = (_normal(seed, 32, 10, scale=0.5) for seed in (33, 34, 35))
  sharded = _sharded_value_and_grad(
      functools.partial(losses.swav_loss, **SWAV, axis_name=BATCH_AXIS), 2)(s1, s2)
  single = jax.value_and_grad(losses.swav_loss, argnums=(0, 1))(s1, s2, **SWAV)
  _assert_same_value_and_grads(sharded, single)

  def multicrop(a, b, c, axis_name=None):
    return losses.swav_multicrop_loss([a, b], [a, b, c], **SWAV, axis_name=axis_name)

  sharded = _sharded_value_and_grad(functools.partial(multicrop, axis_name=BATCH_AXIS), 3)(
      s1, s2, s3)
  single = jax.value_and_grad(multicrop, argnums=(0, 1, 2))(s1, s2, s3)
  _assert_same_value_and_grads(sharded, single)
