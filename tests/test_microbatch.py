"""config.microbatches: gradient caching (SimCLR) and accumulation equal the full-batch step.

With GroupNorm + WS and BN-free heads no layer sees the batch, so a step in
micro-batches must give the full-batch parameters (float32 reassociation only).
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import losses
from ssl_jax import microbatch
from ssl_jax.methods import simclr
from ssl_jax.models import encoder as encoder_lib
from test_train import _one_step, tiny_config

import method_testing as mt

CLOSE = dict(rtol=2e-4, atol=2e-6)


@pytest.fixture(scope="module")
def batch():
  return np.random.default_rng(3).integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)


def _gn_config(data_dir, microbatches):
  return tiny_config(data_dir, **{"model.norm": "group_ws", "microbatches": microbatches})


def _assert_same_step(a, b):
  (pa, _, ma), (pb, _, mb) = a, b
  np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **CLOSE), pa, pb)


def test_gradient_cache_equals_full_batch_simclr(data_dir, batch):
  assert hasattr(simclr, "loss_from_embeddings")  # so the cache, not accumulation, runs
  full = _one_step(_gn_config(data_dir, 1), jax.devices(), batch)
  cached = _one_step(_gn_config(data_dir, 4), jax.devices(), batch)
  assert not jax.tree.leaves(full[1])  # no batch statistics anywhere
  _assert_same_step(cached, full)
  # The step really moved the params (the comparison is not of two no-ops).
  assert full[2]["grad_norm"] > 1e-3
  np.testing.assert_allclose(cached[2]["grad_norm"], full[2]["grad_norm"], rtol=1e-4)


def _per_example_method():
  """A toy method whose loss is a mean over examples (BYOL-like regression, no target)."""

  def loss_fn(params, batch_stats, method_state, views, key, *, config, axis_name):
    del key
    z_1, z_2 = (encoder_lib.build_encoder(config.model, axis_name).apply(
        {"params": params["encoder"]}, v, train=True) for v in views)
    loss = jax.lax.pmean(losses.regression_loss(z_1, z_2) + losses.regression_loss(z_2, z_1),
                         axis_name)
    return loss, (batch_stats, method_state, {"loss": loss})

  return types.SimpleNamespace(view_recipes=simclr.view_recipes, init=simclr.init,
                               loss_fn=loss_fn, post_update=simclr.post_update)


def test_gradient_accumulation_equals_full_batch(data_dir, batch, monkeypatch):
  method = _per_example_method()
  monkeypatch.setattr("ssl_jax.methods.get_method", lambda name: method)
  full = _one_step(_gn_config(data_dir, 1), jax.devices(), batch)
  accumulated = _one_step(_gn_config(data_dir, 2), jax.devices(), batch)
  _assert_same_step(accumulated, full)


@pytest.mark.parametrize("name", ["swav", "deepcluster"])
def test_microbatches_refused_where_they_would_change_the_loss(name):
  """Sinkhorn over the batch (SwAV, no gradient caching), per-example state (DeepCluster)."""
  from ssl_jax import train  # pylint: disable=g-import-not-at-top
  config = mt.load_config_module(name).get_config("digits")
  config.microbatches = 2
  with pytest.raises(ValueError, match=rf"microbatches=2: config.method='{name}'"):
    train.validate_config(config)
  config.microbatches = 1
  train.validate_config(config)


def test_mocov3_micro_batches_by_gradient_cache(data_dir):
  """MoCo v3's in-batch negatives stay those of the whole batch in micro-batches: the
  cached gradient equals differentiating the loss of the chunk-wise embeddings directly,
  and the momentum encoder's batch statistics are threaded chunk to chunk."""
  from ssl_jax import train  # pylint: disable=g-import-not-at-top
  from ssl_jax.methods import mocov3  # pylint: disable=g-import-not-at-top
  config = mt.tiny_config("mocov3", data_dir, **{
      "mocov3.projector_hidden_dim": 16, "mocov3.predictor_hidden_dim": 16,
      "mocov3.projection_dim": 8, "batch_size": 32, "microbatches": 2})
  train.validate_config(config)  # accepted: MoCo v3 has embed / loss_from_embeddings
  params, batch_stats, method_state = jax.jit(lambda k: mocov3.init(k, config, None))(
      jax.random.key(0))
  rng = np.random.default_rng(5)
  views = [jnp.asarray(rng.uniform(size=(8, 16, 16, 3)), jnp.float32) for _ in range(2)]
  kwargs = dict(config=config, axis_name=None)

  def cached(num_chunks):
    return jax.jit(lambda p, s, st, v: microbatch.value_and_grad(
        mocov3, p, s, st, v, jax.random.key(1), num_chunks=num_chunks, **kwargs))(
            params, batch_stats, method_state, views)

  (loss, (stats, state, _)), grads = cached(2)

  def chunked_loss(p):  # no caching: autodiff through every chunk's forward pass
    s, st, outs = batch_stats, method_state, []
    for c in range(2):
      e, s, st = mocov3.embed(p, s, st, [v[4 * c:4 * (c + 1)] for v in views], **kwargs)
      outs.append(e)
    embeddings = tuple(jnp.concatenate(parts) for parts in zip(*outs))
    value, _ = mocov3.loss_from_embeddings(embeddings, method_state, None, **kwargs)
    return value, (s, st)

  (ref_loss, (ref_stats, ref_state)), ref_grads = jax.jit(jax.value_and_grad(
      chunked_loss, has_aux=True))(params)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  # float32 sums in another order: tolerances relative to each leaf's largest entry.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-4, atol=2e-5 * float(np.max(np.abs(b)))), grads, ref_grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               (stats, state), (ref_stats, ref_state))
  # The momentum encoder's statistics moved (threaded), its params did not.
  moved = jax.tree.leaves(jax.tree.map(
      lambda a, b: float(np.max(np.abs(a - b))), state["momentum_encoder"]["batch_stats"],
      method_state["momentum_encoder"]["batch_stats"]))
  assert max(moved) > 0
  assert all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(state["momentum_encoder"]["params"]),
      jax.tree.leaves(method_state["momentum_encoder"]["params"])))
  assert "momentum_encoder" not in grads  # no gradient can reach the keys' network
  # A micro-batch's BN sees half of the batch, so the loss differs from the
  # full-batch step's, but only by that.
  (full_loss, _), _ = cached(1)
  assert abs(float(full_loss) - float(loss)) < 0.1 * abs(float(full_loss))


def test_split_rejects_uneven_chunks():
  with pytest.raises(ValueError, match="config.microbatches=3"):
    microbatch.split([np.zeros((4, 2))], 3)
  assert microbatch.merge(microbatch.split([np.arange(6)], 3))[0].tolist() == list(range(6))


def _weighted_square_method(cached: bool):
  """A toy linear method whose loss takes the trainer's extra arguments: a scalar
  ``step`` and a per-example ``weight`` [n] (like ``example_index``)."""

  def embed(params, batch_stats, method_state, views, *, config, axis_name):
    del config, axis_name
    return tuple(v.reshape(v.shape[0], -1) @ params for v in views), batch_stats, method_state

  def loss_from_embeddings(embeddings, method_state, key, *, config, axis_name, step, weight):
    del key, config, axis_name
    z = jnp.concatenate(embeddings)  # one embedding per view, each [n, 3]
    w = jnp.concatenate([weight, weight])  # one weight per example, for both views
    loss = (1.0 + step) * jnp.mean(w * jnp.sum(z ** 2, axis=-1))
    return loss, (method_state, {"loss": loss})

  def loss_fn(params, batch_stats, method_state, views, key, *, config, axis_name, step,
              weight):
    embeddings, batch_stats, method_state = embed(params, batch_stats, method_state, views,
                                                  config=config, axis_name=axis_name)
    loss, (method_state, metrics) = loss_from_embeddings(
        embeddings, method_state, key, config=config, axis_name=axis_name, step=step,
        weight=weight)
    return loss, (batch_stats, method_state, metrics)

  parts = dict(loss_fn=loss_fn)
  if cached:
    parts.update(embed=embed, loss_from_embeddings=loss_from_embeddings)
  return types.SimpleNamespace(**parts)


@pytest.mark.parametrize("cached", [True, False], ids=["gradient_cache", "accumulation"])
def test_extra_loss_arguments_reach_the_loss_in_micro_batches(cached):
  rng = np.random.default_rng(0)
  params = jnp.asarray(rng.normal(size=(12, 3)), jnp.float32)
  views = [jnp.asarray(rng.normal(size=(8, 2, 2, 3)), jnp.float32) for _ in range(2)]
  kwargs = dict(step=jnp.asarray(2, jnp.int32),
                weight=jnp.asarray(rng.uniform(0.5, 2.0, size=8), jnp.float32))
  method = _weighted_square_method(cached)

  def run(num_chunks):
    return microbatch.value_and_grad(
        method, params, {}, {}, views, jax.random.key(0), config=None, axis_name=None,
        num_chunks=num_chunks, loss_kwargs=kwargs)

  (loss, _), grads = run(4)
  # float64 reference: L = (1 + step) * mean_i w_i * ||x_i W||^2 over both views.
  x = np.concatenate([np.asarray(v, np.float64).reshape(8, -1) for v in views])
  w = np.concatenate([np.asarray(kwargs["weight"], np.float64)] * 2)
  z = x @ np.asarray(params, np.float64)
  ref_loss = 3.0 * np.mean(w * np.sum(z ** 2, axis=-1))
  ref_grads = 3.0 * 2.0 * x.T @ (w[:, None] * z) / len(w)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  np.testing.assert_allclose(grads, ref_grads, rtol=1e-4, atol=1e-6)
  (full_loss, _), _ = run(1)
  np.testing.assert_allclose(loss, full_loss, rtol=1e-5)
