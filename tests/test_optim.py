"""Tests for ssl_jax.optim: masks, schedules, lr scaling and each optimizer's update.

Every numeric check compares optax's float32 result with an independent NumPy
float64 re-derivation of the paper's update rule, on a parameter tree whose
expected decay mask is written out by hand (not computed with ``decay_mask``).
"""

from __future__ import annotations

import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ssl_jax import optim

import method_testing as mt

RTOL = 2e-5
ATOL = 1e-7


# ----------------------------------------------------------------------------- helpers


class _TinyNet(nn.Module):
  """Conv, Dense, BatchNorm, GroupNorm and LayerNorm under default and custom names."""

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3))(x)  # Conv_0
    x = nn.BatchNorm(use_running_average=False)(x)  # BatchNorm_0
    x = nn.GroupNorm(num_groups=2)(x)  # GroupNorm_0
    x = nn.Conv(4, (1, 1), use_bias=False, name="conv_proj")(x)
    x = nn.BatchNorm(use_running_average=False, name="bn1")(x)
    x = x.mean(axis=(1, 2))
    x = nn.Dense(8, name="linear")(x)
    x = nn.LayerNorm(name="norm")(x)
    x = nn.Dense(3)(x)  # Dense_0
    return nn.LayerNorm()(x)  # LayerNorm_0


# What decay_mask must say for _TinyNet, written by hand.
_TINY_EXPECTED = {
    "Conv_0": {"kernel": True, "bias": False},
    "BatchNorm_0": {"scale": False, "bias": False},
    "GroupNorm_0": {"scale": False, "bias": False},
    "conv_proj": {"kernel": True},
    "bn1": {"scale": False, "bias": False},
    "linear": {"kernel": True, "bias": False},
    "norm": {"scale": False, "bias": False},
    "Dense_0": {"kernel": True, "bias": False},
    "LayerNorm_0": {"scale": False, "bias": False},
}

# A small flax-named tree for the optimizer numerics: (shape, gets decay + LARS adaptation).
_LEAVES = {
    ("Conv_0", "kernel"): ((3, 3, 2, 4), True),
    ("Conv_0", "bias"): ((4,), False),
    ("BatchNorm_0", "scale"): ((4,), False),
    ("BatchNorm_0", "bias"): ((4,), False),
    ("Dense_0", "kernel"): ((4, 3), True),
    ("Dense_0", "bias"): ((3,), False),
    ("LayerNorm_0", "scale"): ((3,), False),
    ("head", "kernel"): ((3, 2), True),  # zero-initialised: ||w|| = 0 -> trust ratio 1.
}


def _random_flat(seed: int, zero_head: bool = False) -> dict[tuple[str, str], np.ndarray]:
  """Float32-representable float64 arrays keyed by flax path."""
  rng = np.random.default_rng(seed)
  flat = {}
  for path, (shape, _) in _LEAVES.items():
    x = rng.normal(size=shape).astype(np.float32).astype(np.float64)
    if zero_head and path == ("head", "kernel"):
      x = np.zeros(shape)
    flat[path] = x
  return flat


def _to_tree(flat):
  return traverse_util.unflatten_dict({k: jnp.asarray(v, jnp.float32) for k, v in flat.items()})


def _to_flat(tree):
  return {k: np.asarray(v, np.float64) for k, v in traverse_util.flatten_dict(tree).items()}


def _assert_flat_close(actual, expected, rtol=RTOL, atol=ATOL):
  assert actual.keys() == expected.keys()
  for k in expected:
    np.testing.assert_allclose(actual[k], expected[k], rtol=rtol, atol=atol, err_msg=str(k))


def _np_schedule(t, peak, total, warmup, end):
  """Closed form of linear warmup + cosine decay (SimCLR / BYOL)."""
  if t < warmup:
    return peak * t / warmup
  t = min(t, total)
  return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * (t - warmup) / (total - warmup)))


def _config(optimizer, **overrides):
  config = optim.default_optim_config(optimizer)
  for k, v in overrides.items():
    setattr(config, k, v)
  return config


def _run(tx, params_flat, grads_per_step, use_jit=True):
  """Applies tx for len(grads_per_step) steps; returns the final params and each update."""
  params = _to_tree(params_flat)
  state = tx.init(params)
  update = jax.jit(tx.update) if use_jit else tx.update
  updates_seen = []
  for grads_flat in grads_per_step:
    updates, state = update(_to_tree(grads_flat), state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    updates_seen.append(_to_flat(updates))
  return _to_flat(params), updates_seen


@pytest.fixture(scope="module")
def tiny_params():
  """Real flax params of _TinyNet (init compiled once instead of op by op)."""
  return jax.jit(_TinyNet().init)(jax.random.key(0), jnp.zeros((2, 8, 8, 3)))["params"]


# ----------------------------------------------------------------------------- decay_mask


def test_decay_mask_on_flax_module(tiny_params):
  params = tiny_params
  assert optim.decay_mask(params) == _TINY_EXPECTED
  # Frozen params give the same answer (as a FrozenDict).
  frozen = flax.core.freeze(params)
  assert flax.core.unfreeze(optim.decay_mask(frozen)) == _TINY_EXPECTED


def test_decay_mask_names_and_structure_only():
  x = np.ones((2, 2))
  tree = {
      "encoder": {
          "stem": {"conv": {"kernel": x}, "bn": {"gamma": x, "beta": x}},
          "block_1": {"proj_bn": {"scale": x}, "BN_0": {"w": x}, "gn2": {"g": x}},
          "RMSNorm_0": {"weight": x},
          "batch_normalization": {"moving": x},
          "ln_f": {"w": x},
          "linear": {"kernel": x, "bias": x},  # 'ln' inside 'linear' is not a norm token.
          "conv_bnx": {"kernel": x},
      },
      "prototypes": {"kernel": x},
      "embedding": x,
  }
  expected = {
      "encoder": {
          "stem": {"conv": {"kernel": True}, "bn": {"gamma": False, "beta": False}},
          "block_1": {"proj_bn": {"scale": False}, "BN_0": {"w": False}, "gn2": {"g": False}},
          "RMSNorm_0": {"weight": False},
          "batch_normalization": {"moving": False},
          "ln_f": {"w": False},
          "linear": {"kernel": True, "bias": False},
          "conv_bnx": {"kernel": True},
      },
      "prototypes": {"kernel": True},
      "embedding": True,
  }
  assert optim.decay_mask(tree) == expected
  # Depends on names only: a 1-D kernel decays, a 2-D norm scale does not.
  assert optim.decay_mask({"Dense_0": {"kernel": np.ones(3)}}) == {"Dense_0": {"kernel": True}}
  assert optim.decay_mask({"LayerNorm_0": {"scale": x}}) == {"LayerNorm_0": {"scale": False}}


# ----------------------------------------------------------------------------- LARS


def _np_lars(params, grads_per_step, lrs, wd, eta, momentum, *, lr_inside_momentum=True,
             paper_denominator=False, clip=False, adapt_all=False):
  """LARS, You et al. 2017, Algorithm 1, per array ("layer"), in float64.

  Masked (decayed) leaves: g' = g + wd * w, trust = eta * ||w|| / ||g'|| (1 if
  either norm is 0), v = m * v + lr_t * trust * g', w -= v. Other leaves: plain
  momentum SGD, v = m * v + lr_t * g. ``lr_inside_momentum=False`` is BYOL's
  variant (v = m * v + trust * g', w -= lr_t * v); ``paper_denominator`` uses
  eq. (6)'s ||g|| + wd * ||w|| instead of ||g + wd * w||. ``clip``: LARC's
  clipped ratio (apex LARC(clip=True)), trust -> min(trust / lr_t, 1).
  ``adapt_all``: every leaf is decayed and adapted (apex LARC over all params).
  """
  w = {k: v.copy() for k, v in params.items()}
  vel = {k: np.zeros_like(v) for k, v in params.items()}
  updates = []
  for grads, lr in zip(grads_per_step, lrs):
    step_updates = {}
    for k, g in grads.items():
      adapt = _LEAVES[k][1] or adapt_all
      if adapt:
        g_dec = g + wd * w[k]
        w_norm = np.linalg.norm(w[k])
        denom = (np.linalg.norm(g) + wd * w_norm) if paper_denominator else np.linalg.norm(g_dec)
        trust = eta * w_norm / denom if (w_norm > 0 and denom > 0) else 1.0
        if clip:
          trust = min(trust / lr, 1.0)
        direction = trust * g_dec
      else:
        direction = g
      if lr_inside_momentum:
        vel[k] = momentum * vel[k] + lr * direction
        step_updates[k] = -vel[k]
      else:
        vel[k] = momentum * vel[k] + direction
        step_updates[k] = -lr * vel[k]
      w[k] = w[k] + step_updates[k]
    updates.append(step_updates)
  return w, updates


@pytest.mark.parametrize("use_jit", [True, False])
def test_lars_one_step_masks_bias_and_norm(use_jit):
  wd, eta, momentum, batch = 0.05, 1e-3, 0.9, 512
  config = _config("lars", weight_decay=wd, trust_coefficient=eta, momentum=momentum,
                   warmup_epochs=0.0)
  tx, schedule = optim.make_optimizer(config, total_steps=100, steps_per_epoch=10,
                                      batch_size=batch)
  lr = 0.3 * batch / 256  # SimCLR linear scaling; step 0 of a no-warmup cosine is the peak.
  np.testing.assert_allclose(float(schedule(0)), lr, rtol=1e-6)
  params, grads = _random_flat(0, zero_head=True), _random_flat(1)
  _, (got,) = _run(tx, params, [grads], use_jit=use_jit)
  _, (want,) = _np_lars(params, [grads], [lr], wd, eta, momentum)
  _assert_flat_close(got, want)
  # The masks matter: bias / norm leaves are plain SGD steps (no decay, no trust ratio) ...
  for k in [("Conv_0", "bias"), ("BatchNorm_0", "scale"), ("LayerNorm_0", "scale")]:
    np.testing.assert_allclose(got[k], -lr * grads[k], rtol=RTOL)
  # ... kernels are trust-ratio scaled (tiny with eta = 1e-3) and the zero kernel gets trust 1.
  k = ("Dense_0", "kernel")
  assert np.linalg.norm(got[k]) < 0.01 * lr * np.linalg.norm(grads[k])
  np.testing.assert_allclose(got[("head", "kernel")], -lr * grads[("head", "kernel")], rtol=RTOL)


def test_lars_multi_step_follows_algorithm_1():
  """Under a changing lr, optax puts lr inside the momentum (Alg. 1), trust uses ||g + wd w||."""
  wd, eta, momentum, batch = 0.05, 1e-3, 0.9, 256
  config = _config("lars", weight_decay=wd, trust_coefficient=eta, momentum=momentum,
                   warmup_epochs=2.0)
  total, per_epoch = 8, 1
  tx, _ = optim.make_optimizer(config, total_steps=total, steps_per_epoch=per_epoch,
                               batch_size=batch)
  lrs = [_np_schedule(t, 0.3, total, 2, 0.0) for t in range(5)]
  params = _random_flat(2)
  grads = [_random_flat(10 + t) for t in range(5)]
  got_w, got_updates = _run(tx, params, grads)
  want_w, want_updates = _np_lars(params, grads, lrs, wd, eta, momentum)
  for got_u, want_u in zip(got_updates, want_updates):
    _assert_flat_close(got_u, want_u)
  _assert_flat_close(got_w, want_w, rtol=1e-5, atol=1e-6)

  # The test can tell the variants apart: BYOL's lr-outside-momentum form and eq. (6)'s
  # denominator both give visibly different updates for kernels.
  k = ("Conv_0", "kernel")
  _, byol_updates = _np_lars(params, grads, lrs, wd, eta, momentum, lr_inside_momentum=False)
  _, eq6_updates = _np_lars(params, grads, lrs, wd, eta, momentum, paper_denominator=True)
  assert not np.allclose(got_updates[-1][k], byol_updates[-1][k], rtol=1e-3)
  assert not np.allclose(got_updates[-1][k], eq6_updates[-1][k], rtol=1e-3)


def test_lars_clipped_trust_ratio_matches_larc():
  """clip_trust_ratio: a layer's step is capped at the global lr's (LARC, solo-learn clip_lr)."""
  wd, eta, momentum = 1e-5, 0.02, 0.9
  config = _config("lars", weight_decay=wd, trust_coefficient=eta, momentum=momentum,
                   warmup_epochs=2.0, clip_trust_ratio=True)
  total = 8
  tx, _ = optim.make_optimizer(config, total_steps=total, steps_per_epoch=1, batch_size=256)
  lrs = [_np_schedule(t, 0.3, total, 2, 0.0) for t in range(1, 5)]
  params = _random_flat(2)
  grads = [_random_flat(10 + t) for t in range(5)]
  # From step 1 (step 0's lr is 0 in warm-up: no update, no division).
  got_w, got_updates = _run(tx, params, grads)
  want_w, want_updates = _np_lars(params, grads[1:], lrs, wd, eta, momentum, clip=True)
  for got_u, want_u in zip(got_updates[1:], want_updates):
    _assert_flat_close(got_u, want_u)
  # Clipping binds somewhere (the zero-initialised head has trust 1 > lr) and not everywhere.
  _, plain = _np_lars(params, grads[1:], lrs, wd, eta, momentum)
  differs = [not np.allclose(got_updates[1][k], plain[0][k], rtol=1e-3) for k in plain[0]]
  assert any(differs) and not all(differs)


@pytest.mark.parametrize("clip", [False, True])
def test_lars_without_exclusion_adapts_bias_and_norm(clip):
  """exclude_bias_and_norm=False: SwAV's torch SGD + apex LARC over model.parameters()."""
  wd, eta, momentum = 1e-3, 1e-3, 0.9
  config = _config("lars", weight_decay=wd, trust_coefficient=eta, momentum=momentum,
                   warmup_epochs=0.0, clip_trust_ratio=clip, exclude_bias_and_norm=False)
  tx, schedule = optim.make_optimizer(config, total_steps=8, steps_per_epoch=1, batch_size=256)
  lrs = [float(schedule(t)) for t in range(3)]
  params = _random_flat(3)
  grads = [_random_flat(20 + t) for t in range(3)]
  got_w, got_updates = _run(tx, params, grads)
  want_w, want_updates = _np_lars(params, grads, lrs, wd, eta, momentum, clip=clip,
                                  adapt_all=True)
  for got_u, want_u in zip(got_updates, want_updates):
    _assert_flat_close(got_u, want_u)
  _assert_flat_close(got_w, want_w, rtol=1e-5, atol=1e-6)
  # A norm scale is now trust-scaled: far from the plain SGD step the default gives it.
  k = ("BatchNorm_0", "scale")
  assert np.linalg.norm(got_updates[0][k]) < 0.1 * lrs[0] * np.linalg.norm(grads[0][k])


@pytest.mark.parametrize("method", ["simsiam", "mocov2", "deepcluster", "deepercluster",
                                    "rotnet"])
@pytest.mark.parametrize("variant", ["imagenet2012", "cifar10"])
def test_torch_sgd_configs_decay_every_parameter(method, variant):
  """These references build torch.optim.SGD(model.parameters(), weight_decay=wd): a zero
  gradient step shrinks every leaf (biases and norm scales too) by the same factor."""
  config = mt.load_config_module(method).get_config(variant)
  tx, schedule = optim.make_optimizer(config.optim, total_steps=100, steps_per_epoch=10,
                                      batch_size=config.batch_size)
  params = _random_flat(5)
  _, (update,) = _run(tx, params, [{k: np.zeros_like(v) for k, v in params.items()}])
  lr, wd = float(schedule(0)), config.optim.weight_decay
  factor = 1.0 + (config.optim.momentum if config.optim.nesterov else 0.0)
  for k, p in params.items():
    np.testing.assert_allclose(update[k], -lr * wd * factor * p, rtol=1e-4, atol=1e-12,
                               err_msg=str(k))


def test_exclude_bias_and_norm_must_be_bool():
  config = dict(optim.default_optim_config("sgd").to_dict(), exclude_bias_and_norm="no")
  with pytest.raises(ValueError, match="exclude_bias_and_norm must be a bool"):
    optim.make_optimizer(config, total_steps=8, steps_per_epoch=1, batch_size=256)


# ----------------------------------------------------------------------------- schedule & lr


def test_warmup_cosine_schedule_matches_closed_form():
  peak, total, warmup, end = 4.8, 100, 10, 0.1
  schedule = optim.warmup_cosine_schedule(peak, total, warmup, end)
  jitted = jax.jit(schedule)
  for t in [0, 5, 10, 55, 99, 100, 130]:
    want = _np_schedule(t, peak, total, warmup, end)
    np.testing.assert_allclose(float(schedule(t)), want, rtol=1e-6, atol=1e-7, err_msg=str(t))
    np.testing.assert_allclose(float(jitted(jnp.asarray(t))), want, rtol=1e-6, atol=1e-7)
  assert float(schedule(10)) == pytest.approx(peak)
  # No warmup: the cosine starts at the peak on step 0.
  no_warmup = optim.warmup_cosine_schedule(peak, total, 0)
  for t in [0, 50, 100]:
    np.testing.assert_allclose(float(no_warmup(t)), _np_schedule(t, peak, total, 0, 0.0),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kwargs, match", [
    (dict(peak_value=1.0, total_steps=10, warmup_steps=10), "warmup"),
    (dict(peak_value=1.0, total_steps=10, warmup_steps=20), "warmup"),
    (dict(peak_value=1.0, total_steps=10, warmup_steps=-1), "warmup_steps"),
    (dict(peak_value=1.0, total_steps=0, warmup_steps=0), "total_steps"),
    (dict(peak_value=1.0, total_steps=10.5, warmup_steps=0), "total_steps"),
    (dict(peak_value=-1.0, total_steps=10, warmup_steps=0), "peak_value"),
])
def test_warmup_cosine_schedule_validates(kwargs, match):
  with pytest.raises(ValueError, match=match):
    optim.warmup_cosine_schedule(**kwargs)


def test_scaled_learning_rate():
  assert optim.scaled_learning_rate(0.3, 4096, "linear") == pytest.approx(4.8)
  assert optim.scaled_learning_rate(0.075, 4096, "sqrt") == pytest.approx(4.8)
  assert optim.scaled_learning_rate(0.3, 512, "linear") == pytest.approx(0.6)
  assert optim.scaled_learning_rate(0.075, 100, "sqrt") == pytest.approx(0.75)
  assert optim.scaled_learning_rate(0.1, 4096, "none") == pytest.approx(0.1)
  with pytest.raises(ValueError, match="linear.*sqrt.*none"):
    optim.scaled_learning_rate(0.3, 256, "quadratic")
  with pytest.raises(ValueError, match="batch_size"):
    optim.scaled_learning_rate(0.3, 0, "linear")


# ----------------------------------------------------------------------------- SGD / AdamW / LAMB


def _decay_flags():
  return {k: float(adapt) for k, (_, adapt) in _LEAVES.items()}


def test_sgd_coupled_l2_matches_torch_rule_and_skips_bias():
  wd, momentum, batch, total = 0.1, 0.9, 256, 4
  config = _config("sgd", weight_decay=wd, momentum=momentum)
  tx, _ = optim.make_optimizer(config, total_steps=total, steps_per_epoch=2, batch_size=batch)
  lrs = [_np_schedule(t, 0.05, total, 0, 0.0) for t in range(3)]
  params = _random_flat(3)
  grads = [_random_flat(20 + t) for t in range(3)]
  _, got = _run(tx, params, grads)
  # torch.optim.SGD (dampening 0): buf = m * buf + (g + wd * w); w -= lr * buf.
  flags, w = _decay_flags(), dict(params)
  buf = {k: np.zeros_like(v) for k, v in params.items()}
  for step, (g_step, lr) in enumerate(zip(grads, lrs)):
    want = {}
    for k, g in g_step.items():
      buf[k] = momentum * buf[k] + g + flags[k] * wd * w[k]
      want[k] = -lr * buf[k]
      w[k] = w[k] + want[k]
    _assert_flat_close(got[step], want)
  # Bias / norm updates equal those of the same optimizer without weight decay.
  tx0, _ = optim.make_optimizer(_config("sgd", weight_decay=0.0, momentum=momentum),
                                total_steps=total, steps_per_epoch=2, batch_size=batch)
  _, got0 = _run(tx0, params, grads)
  for k, (_, decayed) in _LEAVES.items():
    same = np.allclose(got[-1][k], got0[-1][k], rtol=1e-6, atol=0)
    assert same != decayed, k


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_adamw_lamb_one_step_and_decay_mask(name):
  wd, eps, batch = 0.1, 1e-6, 256
  config = _config(name, weight_decay=wd, eps=eps, warmup_epochs=0.0, end_learning_rate=0.0)
  tx, _ = optim.make_optimizer(config, total_steps=10, steps_per_epoch=5, batch_size=batch)
  lr = config.base_learning_rate  # linear scaling at B = 256.
  params, grads = _random_flat(4, zero_head=True), _random_flat(5)
  _, (got,) = _run(tx, params, [grads])
  # First Adam step: bias-corrected m = g, v = g^2 -> r = g / (|g| + eps).
  want, flags = {}, _decay_flags()
  for k, g in grads.items():
    r = g / (np.abs(g) + eps) + flags[k] * wd * params[k]
    if name == "adamw":  # Loshchilov & Hutter (decay scaled by the full lr, as torch/optax).
      want[k] = -lr * r
    else:  # LAMB Alg. 2, trust ratio ||w|| / ||r|| on every leaf (1 if a norm is 0).
      w_norm, r_norm = np.linalg.norm(params[k]), np.linalg.norm(r)
      trust = w_norm / r_norm if (w_norm > 0 and r_norm > 0) else 1.0
      want[k] = -lr * trust * r
  _assert_flat_close(got, want, rtol=1e-5, atol=1e-7)
  tx0, _ = optim.make_optimizer(_config(name, weight_decay=0.0, eps=eps, warmup_epochs=0.0),
                                total_steps=10, steps_per_epoch=5, batch_size=batch)
  _, (got0,) = _run(tx0, params, [grads])
  for k, (_, decayed) in _LEAVES.items():
    if k == ("head", "kernel"):
      continue  # w = 0: decay adds nothing.
    assert np.allclose(got[k], got0[k], rtol=1e-6, atol=0) != decayed, k


def test_grad_clip_norm_and_defaults_build_on_flax_params(tiny_params):
  params = tiny_params
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  g_norm = math.sqrt(sum(0.25 * p.size for p in jax.tree.leaves(params)))
  for name in optim.OPTIMIZERS:
    tx, schedule = optim.make_optimizer(optim.default_optim_config(name), total_steps=50,
                                        steps_per_epoch=2, batch_size=64)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    assert all(np.isfinite(np.asarray(u)).all() for u in jax.tree.leaves(updates)), name
    assert float(schedule(0)) >= 0.0
  # Global-norm clipping happens on the raw gradients: SGD without momentum or decay.
  clip = 0.5
  config = _config("sgd", momentum=0.0, weight_decay=0.0, grad_clip_norm=clip)
  tx, schedule = optim.make_optimizer(config, total_steps=50, steps_per_epoch=2, batch_size=256)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  lr = 0.05
  for u in jax.tree.leaves(updates):
    np.testing.assert_allclose(np.asarray(u), -lr * 0.5 * clip / g_norm, rtol=1e-5)


# ----------------------------------------------------------------------------- validation


def _without(config, field):
  del config[field]
  return config


@pytest.mark.parametrize("make_config, match", [
    (lambda: _config("lars", name="adam"), r"'adam'.*lars.*sgd.*adamw.*lamb"),
    (lambda: _without(optim.default_optim_config("lars"), "base_learning_rate"),
     "missing.*base_learning_rate"),
    (lambda: _without(optim.default_optim_config("sgd"), "nesterov"), "missing.*nesterov"),
    (lambda: _config("lars", nesterov=True), r"nesterov.*does not use"),
    (lambda: _config("adamw", momentum=0.9), r"momentum.*does not use"),
    (lambda: _config("lars", lr_scaling="quadratic"), r"lr_scaling.*linear.*sqrt.*none"),
    (lambda: _config("lars", momentum=1.5), "momentum"),
    (lambda: _config("lars", base_learning_rate=0.0), "base_learning_rate"),
    (lambda: _config("adamw", b2=1.0), "b2"),
    (lambda: _config("lars", grad_clip_norm=-1.0), "grad_clip_norm"),
    (lambda: _config("lars", warmup_epochs=40.0), r"warmup.*warmup_epochs=40"),
])
def test_make_optimizer_rejects_bad_configs(make_config, match):
  with pytest.raises(ValueError, match=match):
    optim.make_optimizer(make_config(), total_steps=100, steps_per_epoch=3, batch_size=256)


def test_default_optim_config_rejects_unknown_name():
  with pytest.raises(ValueError, match="lars"):
    optim.default_optim_config("adagrad")


# ----------------------------------------------------------------------------- fixed-lr params


@pytest.mark.parametrize("name", ["sgd", "lars"])
def test_fixed_lr_params_hold_the_peak_rate(name):
  """SimSiam's fixed predictor lr: leaves under the prefixes see a constant peak lr.

  References: the same optimizer with the full schedule (scheduled leaves) and
  with end_learning_rate = peak, i.e. a constant schedule (fixed leaves).
  """
  total, batch = 4, 512
  base = dict(weight_decay=0.1, warmup_epochs=0.0)
  peak = optim.scaled_learning_rate(optim.default_optim_config(name).base_learning_rate,
                                    batch, "linear")
  make = lambda **kw: optim.make_optimizer(_config(name, **base, **kw), total_steps=total,
                                           steps_per_epoch=2, batch_size=batch)[0]
  tx = make(fixed_lr_params=("Dense_0", "head"))
  scheduled, constant = make(), make(end_learning_rate=peak)
  params = _random_flat(6)
  grads = [_random_flat(30 + t) for t in range(3)]
  _, got = _run(tx, params, grads)
  _, want_scheduled = _run(scheduled, params, grads)
  _, want_constant = _run(constant, params, grads)
  for step in range(3):
    for k in _LEAVES:
      want = want_constant if k[0] in ("Dense_0", "head") else want_scheduled
      np.testing.assert_allclose(got[step][k], want[step][k], rtol=1e-5, atol=1e-8)
  # The schedule really decays, so the two references differ after step 0.
  assert not np.allclose(want_scheduled[2][("Conv_0", "kernel")],
                         want_constant[2][("Conv_0", "kernel")])
  assert optim.fixed_lr_labels({"predictor": {"w": 0}, "predictor2": {"w": 0}},
                               ("predictor",)) == {"predictor": {"w": "fixed"},
                                                   "predictor2": {"w": "scheduled"}}
  with pytest.raises(ValueError, match="fixed_lr_params"):
    optim.make_optimizer(dict(_config(name, **base).to_dict(), fixed_lr_params="predictor"),
                         total_steps=total, steps_per_epoch=2, batch_size=batch)
