"""SwAV: multi-crop loss vs NumPy, queue FIFO, 1 vs 8 devices, prototypes, freezing, smoke run.

Tiny ResNet-10 (base width 4, CIFAR stem), 16 px large crops and 9 px small crops.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from ssl_jax import optim
from ssl_jax import train
from ssl_jax.methods import swav
from ssl_jax.parallel import BATCH_AXIS, make_mesh
import tiny_encoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
import swav as swav_config  # noqa: E402  pylint: disable=g-import-not-at-top


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def tiny_config(data_dir=None, **swav_overrides):
  c = swav_config.get_config("digits")
  if data_dir:
    c.data.data_dir = data_dir
  tiny_encoder.apply(c)
  c.swav.update(dict(projector_hidden_dim=16, projection_dim=8, num_prototypes=10,
                     num_small_crops=2, queue_length=0, queue_start_epoch=0))
  c.swav.update(swav_overrides)
  c.batch_size = 16
  c.eval_batch_size = 64
  c.total_steps = 6
  c.log_every_steps = 1
  c.checkpoint_every_steps = 100
  c.knn.every_epochs = 0.0
  c.optim.warmup_epochs = 0.0
  return c


# ---------------------------------------------------------------- NumPy float64 reference


def np_sinkhorn(scores, epsilon, iters):
  """Caron et al. 2020 appendix A.1 / main_swav.py distributed_sinkhorn, float64."""
  q = np.exp(np.asarray(scores, np.float64) / epsilon).T  # [K, B]
  k, b = q.shape
  q /= q.sum()
  for _ in range(iters):
    q /= q.sum(axis=1, keepdims=True)
    q /= k
    q /= q.sum(axis=0, keepdims=True)
    q /= b
  return (q * b).T


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(axis=1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def np_swav_multicrop(scores, num_code, temperature=0.1, epsilon=0.05, iters=3, queue=None):
  """main_swav.py's loop: for each code crop i, mean over the V-1 other crops, then mean."""
  total, pairs = 0.0, 0
  b = scores[0].shape[0]
  for i in range(num_code):
    code_in = scores[i] if queue is None else np.concatenate([queue[i], scores[i]])
    q = np_sinkhorn(code_in, epsilon, iters)[-b:]
    sub = 0.0
    for v in range(len(scores)):
      if v == i:
        continue
      sub -= np.mean(np.sum(q * np_log_softmax(scores[v] / temperature), axis=1))
      pairs += 1
    total += sub / (len(scores) - 1)
  return total / num_code, pairs


def _random_views(config, seed):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(size=(config.batch_size, r.size, r.size, 3)), jnp.float32)
          for r in swav.view_recipes(config)]


def _reference_scores(config, params, batch_stats, views):
  """z and per-crop scores from one full-batch (1-device) forward pass."""
  model = swav._model(config, None)  # pylint: disable=protected-access
  apply = jax.jit(lambda variables, views: model.apply(
      variables, swav.group_by_resolution(views), train=True, mutable=["batch_stats"])[0])  # pylint: disable=protected-access
  z, scores = apply({"params": params, "batch_stats": batch_stats}, views)
  n = views[0].shape[0]
  return (np.asarray(z, np.float64),
          [np.asarray(scores[v * n:(v + 1) * n], np.float64) for v in range(len(views))])


def test_view_recipes_and_configs():
  config = tiny_config()
  assert [r.size for r in swav.view_recipes(config)] == [16, 16, 9, 9]
  imagenet = swav_config.get_config("imagenet2012")
  assert [r.size for r in swav.view_recipes(imagenet)] == [224] * 2 + [96] * 6
  assert swav.queue_length(imagenet) == 0  # batch 4096: no queue
  cifar = swav_config.get_config("cifar10")
  assert [r.size for r in swav.view_recipes(cifar)] == [32] * 2 + [18] * 4
  assert swav.queue_length(cifar) == 3840  # 15 x 256
  for variant in ("cifar100", "stl10", "imagenette", "image_folder", "digits,runlocal"):
    swav_config.get_config(variant)


def _sharded_loss(config, mesh):
  def per_device(params, batch_stats, state, views, step):
    loss, (_, state, metrics) = swav.loss_fn(params, batch_stats, state, views, None,
                                             config=config, axis_name=BATCH_AXIS, step=step)
    entropies = (metrics["code_entropy"], metrics["prediction_entropy"])
    return loss, state, metrics["queue_in_use"], entropies

  return jax.jit(jax.shard_map(per_device, mesh=mesh,
                               in_specs=(P(), P(), P(), P(BATCH_AXIS), P()),
                               out_specs=(P(), P(), P(), P())))


def np_entropy(probs):
  logs = np.log(np.where(probs > 0, probs, 1.0))
  return float(np.mean(-np.sum(probs * logs, axis=-1)))


def test_queue_fifo_and_loss_1_vs_8_devices_vs_numpy(devices):
  config = tiny_config(queue_length=32, queue_start_epoch=1)  # 2 global batches of 16
  params, batch_stats, state0 = swav.init(jax.random.key(0), config, None)
  state0["queue_start_step"] = jnp.ones((), jnp.int32)  # what epoch_start sets at 1 step/epoch
  assert state0["queue"].shape == (2, 32, 8)
  runs = {}
  for name, devs in (("8", devices), ("1", devices[:1])):
    step = _sharded_loss(config, make_mesh(devs))
    state, out = dict(state0), []
    for t in range(4):
      loss, state, in_use, entropies = step(params, batch_stats, state,
                                            _random_views(config, 10 + t),
                                            jnp.asarray(t, jnp.int32))
      out.append((float(loss), float(in_use), jax.device_get(state)))
      if t == 0:
        runs[name + " entropies"] = np.asarray(entropies, np.float64)
    runs[name] = out

  temperature = config.swav.temperature
  _, scores = _reference_scores(config, params, batch_stats, _random_views(config, 10))
  assert np_swav_multicrop(scores, num_code=2)[1] == 2 * 3  # (code crop, other crop) pairs
  # The logged entropies of crop 0's global-batch codes and predictions.
  codes = np_sinkhorn(scores[0], config.swav.epsilon, config.swav.sinkhorn_iters)
  expected = [np_entropy(codes), np_entropy(np.exp(np_log_softmax(scores[0] / temperature)))]
  assert 0 < expected[0] < np.log(10) and abs(expected[0] - expected[1]) > 1e-3
  for name in ("8", "1"):
    np.testing.assert_allclose(runs[name + " entropies"], expected, rtol=1e-4, err_msg=name)
  fifo = np.zeros((2, 32, 8))
  for t in range(4):
    z, scores = _reference_scores(config, params, batch_stats, _random_views(config, 10 + t))
    use = t == 3  # filled at t = 1, 2; full from t = 3 on
    prototypes = np.asarray(params["prototypes"]["kernel"], np.float64)
    expected, _ = np_swav_multicrop(
        scores, 2, temperature, queue=[fifo[i] @ prototypes for i in range(2)] if use else None)
    if t >= 1:  # push newest first
      new = np.stack([z[:16], z[16:32]])
      fifo = np.concatenate([new, fifo], axis=1)[:, :32]
    for name in ("8", "1"):
      loss, in_use, state = runs[name][t]
      assert in_use == float(use), (name, t)
      np.testing.assert_allclose(loss, expected, rtol=2e-5, err_msg=f"{name} devices, step {t}")
      np.testing.assert_allclose(state["queue"], fifo, rtol=1e-4, atol=1e-5)
      assert int(state["queue_filled"]) == min(32, 16 * max(0, t))
  # The queue changes the codes: the loss at t = 3 differs from the no-queue loss.
  z, scores = _reference_scores(config, params, batch_stats, _random_views(config, 13))
  assert abs(np_swav_multicrop(scores, 2, temperature)[0] - runs["8"][3][0]) > 1e-4


def test_freeze_for_steps_skips_leaves_exactly():
  """Frozen leaves stay fixed for N steps, then move as if their optimizer started then."""
  target = {"encoder": jnp.array([1.0, -2.0, 3.0]), "prototypes": jnp.array([[0.5, -1.5]])}
  params = {"encoder": jnp.zeros(3), "prototypes": jnp.array([[2.0, 1.0]])}
  inner = optax.lars(0.1, weight_decay=1e-2, momentum=0.9)
  tx = optim.freeze_for_steps(inner, "prototypes", 2)
  grad = lambda p: jax.tree.map(lambda a, b: a - b, p, target)
  state, history = tx.init(params), [params]
  for _ in range(5):
    updates, state = tx.update(grad(history[-1]), state, history[-1])
    history.append(optax.apply_updates(history[-1], updates))
  for t in (1, 2):
    np.testing.assert_array_equal(history[t]["prototypes"], params["prototypes"])
    assert not np.allclose(history[t]["encoder"], history[t - 1]["encoder"])
  # From step 2 on: the same as a fresh LARS on the prototypes alone.
  p, s = {"prototypes": params["prototypes"]}, inner.init({"prototypes": params["prototypes"]})
  for t in range(3, 6):
    u, s = inner.update({"prototypes": p["prototypes"] - target["prototypes"]}, s, p)
    p = optax.apply_updates(p, u)
    np.testing.assert_allclose(history[t]["prototypes"], p["prototypes"], rtol=1e-6)


def test_smoke_train_and_evaluate_queue_and_freezing(data_dir, tmp_path):
  """The real loop: queue from step 1 (a fractional epoch), prototypes frozen for 2 steps."""
  import json  # pylint: disable=g-import-not-at-top
  from ssl_jax import checkpoint  # pylint: disable=g-import-not-at-top
  # digits: 4,000 / 16 = 250 steps per epoch, so 1/250 epoch is step 1.
  config = tiny_config(data_dir, queue_length=32, queue_start_epoch=1 / 250)
  config.total_steps = 5
  config.optim.frozen_epochs = 2 / 250  # digits: 4,000 / 16 = 250 steps per epoch -> 2 steps
  tx, _ = optim.make_optimizer(config.optim, total_steps=5, steps_per_epoch=250,
                               batch_size=config.batch_size)
  initial = np.asarray(train.create_train_state(config, swav, tx, make_mesh()).params[
      "prototypes"]["kernel"])
  config.checkpoint_every_steps = 1
  config.checkpoint_max_to_keep = 10
  results = train.train_and_evaluate(config, str(tmp_path))
  kernel = {t: checkpoint.restore_raw(str(tmp_path / "checkpoints" / str(t)))[0]["params"][
      "prototypes"]["kernel"] for t in (2, 5)}
  at_2, at_5 = kernel[2], kernel[5]
  # Frozen for 2 steps (up to the re-normalisation's rounding), then trained; always unit.
  np.testing.assert_allclose(at_2, initial, atol=1e-6)
  assert np.abs(at_5 - at_2).max() > 1e-5
  for kernel in (initial, at_2, at_5):
    np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-5)
  with open(tmp_path / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  losses = [r["loss"] for r in records if "loss" in r]
  assert len(losses) == 5 and np.all(np.isfinite(losses))
  in_use = [r["queue_in_use"] for r in records if "queue_in_use" in r]
  assert in_use == [0.0, 0.0, 0.0, 1.0, 1.0]  # steps 1 and 2 fill the 32 rows
  assert [r["step"] for r in records if "epoch_start_seconds" in r] == [0]
  assert results["step"] == 5
