"""End-to-end trainer tests: smoke run, 1 vs 8 devices, exact resume, CLI, load_encoder.

All runs use a tiny ResNet-10 (base width 4, CIFAR stem) on 16x16 views of the
offline digits dataset, built into a per-session temporary TFDS data_dir.
"""

import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from ssl_jax import config_lib
from ssl_jax import data
from ssl_jax import methods
from ssl_jax import optim
from ssl_jax import train
from ssl_jax.parallel import make_mesh
from ssl_jax.parallel import BATCH_AXIS
import tiny_encoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
import simclr as simclr_config  # noqa: E402  pylint: disable=g-import-not-at-top
import method_testing as mt  # noqa: E402  pylint: disable=g-import-not-at-top


def tiny_config(data_dir, **overrides):
  c = simclr_config.get_config("digits")
  c.data.data_dir = data_dir
  tiny_encoder.apply(c)
  c.simclr.projector_hidden_dim = 16
  c.simclr.projection_dim = 8
  c.batch_size = 32
  c.eval_batch_size = 64
  c.total_steps = 6
  c.log_every_steps = 1
  c.checkpoint_every_steps = 3
  c.knn.every_epochs = 0.0
  c.optim.warmup_epochs = 0.0
  for key, value in overrides.items():
    target = c
    *path, leaf = key.split(".")
    for p in path:
      target = target[p]
    target[leaf] = value
  return c


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_smoke_loss_below_untrained_control_and_checkpoint_written(data_dir, tmp_path, monkeypatch):
  config = tiny_config(data_dir, total_steps=50, log_every_steps=5, checkpoint_every_steps=25,
                       **{"knn.every_epochs": 100.0})
  config.optim.base_learning_rate = 0.5
  # The step is traced (and so compiled) once for the whole run: logging,
  # checkpointing and kNN evaluation in between must not trigger a recompile.
  train_step = train.train_step
  monkeypatch.setattr(train, "train_step", chex.assert_max_traces(train_step, n=1))
  results = train.train_and_evaluate(config, str(tmp_path))
  losses = [r["loss"] for r in read_metrics(str(tmp_path)) if "loss" in r]
  assert len(losses) == 10
  assert np.all(np.isfinite(losses))
  # The control: the same seed with learning rate ~0 (1e-12: the config refuses 0;
  # such a step is below float32's resolution of the weights) sees the same batches and the
  # same augmentations, so its losses are the untrained network's on exactly the
  # views the run was scored on (each logged loss is the mean of its 5 steps). Over
  # the last 15 steps the run is below it: no threshold to tune against the
  # augmentation noise, which the two share (a run that does not learn ties).
  monkeypatch.setattr(train, "train_step", train_step)
  control_dir = str(tmp_path / "lr0")
  control = tiny_config(data_dir, total_steps=50, log_every_steps=5, checkpoint_every_steps=50)
  control.optim.base_learning_rate = 1e-12
  train.train_and_evaluate(control, control_dir)
  control_losses = [r["loss"] for r in read_metrics(control_dir) if "loss" in r]
  assert np.mean(losses[-3:]) < np.mean(control_losses[-3:]), (losses, control_losses)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["25", "50"]
  # The kNN monitor ran at step 0 (random init) and at the end.
  knn = [r for r in read_metrics(str(tmp_path)) if "knn_top1" in r]
  assert [r["step"] for r in knn] == [0, 50]
  assert 0.0 <= results["knn_top1"] <= 1.0
  for key in ("learning_rate", "images_per_sec", "ms_per_step"):
    assert key in read_metrics(str(tmp_path))[-1] or key in read_metrics(str(tmp_path))[-2]
  assert os.path.exists(tmp_path / "curves.png")
  assert os.path.getsize(tmp_path / "feature_map.png") > 0   # PCA map of the test features


def _one_step(config, devices, batch):
  mesh = make_mesh(devices)
  method = methods.get_method(config.method)
  tx, schedule = optim.make_optimizer(config.optim, total_steps=10, steps_per_epoch=10,
                                      batch_size=config.batch_size)
  state = train.create_train_state(config, method, tx, mesh)
  step = train.compile_train_step(mesh, method=method, config=config,
                                  recipes=method.view_recipes(config), tx=tx, schedule=schedule,
                                  total_steps=10)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(BATCH_AXIS))
  state, metrics = step(state, {"image": jax.device_put(batch, sharding)})
  return jax.device_get(state.params), jax.device_get(state.batch_stats), jax.device_get(metrics)


def test_one_step_8_devices_equals_1_device(data_dir):
  config = tiny_config(data_dir, batch_size=16)
  rng = np.random.default_rng(0)
  batch = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
  p8, bs8, m8 = _one_step(config, jax.devices(), batch)
  p1, bs1, m1 = _one_step(config, jax.devices()[:1], batch)
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), p8, p1)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), bs8, bs1)


def test_bfloat16_step_tracks_float32(data_dir):
  """config.model.dtype='bfloat16': bf16 compute, float32 params/stats/loss, loss close."""
  rng = np.random.default_rng(1)
  batch = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
  before, s32, m32 = mt.one_step(tiny_config(data_dir, batch_size=16), jax.devices(), batch)
  before_16, s16, m16 = mt.one_step(
      tiny_config(data_dir, batch_size=16, **{"model.dtype": "bfloat16"}), jax.devices(), batch)
  p0, p32, p16 = before.params, s32.params, s16.params
  assert all(x.dtype == np.float32 for x in jax.tree.leaves((p16, s16.batch_stats)))
  assert m16["loss"].dtype == np.float32
  # bf16's 8-bit mantissa: the loss agrees to a few parts in a thousand, not exactly.
  rel = abs(float(m16["loss"]) - float(m32["loss"])) / abs(float(m32["loss"]))
  assert 0 < rel < 1e-2, rel
  mt.assert_trees_equal(before_16.params, p0)  # the same float32 init
  # The update (new minus initial params, as one vector) points the same way. It is
  # measured in the update's own units, so it holds for any learning rate or CPU,
  # which an absolute drift bound did not. Rounding in bf16 leaves cos 0.99 here
  # (0.92 at ResNet-18 depth: LARS normalises each layer, so layers with nearly
  # cancelling gradients carry the rounding). Another batch's float32 update has
  # cos -0.14 with it: a gradient that bf16 corrupts (an overflow, a lost cast) is
  # that unrelated.
  flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
  update_32, update_16 = flat(p32) - flat(p0), flat(p16) - flat(p0)
  cosine = update_16 @ update_32 / (np.linalg.norm(update_16) * np.linalg.norm(update_32))
  assert cosine > 0.5, cosine


def test_resume_is_bitwise_equal(data_dir, tmp_path):
  k = 3
  straight = train.train_and_evaluate(tiny_config(data_dir, total_steps=2 * k),
                                      str(tmp_path / "straight"))
  resumed_dir = str(tmp_path / "resumed")
  stopped = train.train_and_evaluate(tiny_config(data_dir, total_steps=2 * k), resumed_dir,
                                     stop_at_step=k)
  assert stopped["step"] == k
  resumed = train.train_and_evaluate(tiny_config(data_dir, total_steps=2 * k), resumed_dir)
  assert straight["step"] == resumed["step"] == 2 * k
  from ssl_jax import checkpoint  # pylint: disable=g-import-not-at-top
  a, _, _ = checkpoint.restore_raw(str(tmp_path / "straight"))
  b, _, _ = checkpoint.restore_raw(resumed_dir)
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)
  # The resumed run logged steps k+1..2k only once each.
  steps = [r["step"] for r in read_metrics(resumed_dir) if "loss" in r]
  assert steps == list(range(1, 2 * k + 1))


def test_resume_with_other_batch_size_is_refused(data_dir, tmp_path):
  train.train_and_evaluate(tiny_config(data_dir, total_steps=3), str(tmp_path))
  with pytest.raises(ValueError, match="global_batch_size"):
    train.train_and_evaluate(tiny_config(data_dir, total_steps=6, batch_size=64), str(tmp_path))


def test_load_encoder_on_finished_run(data_dir, tmp_path):
  import ssl_jax  # pylint: disable=g-import-not-at-top
  config = tiny_config(data_dir, total_steps=3)
  train.train_and_evaluate(config, str(tmp_path))
  apply_fn, params = ssl_jax.load_encoder(str(tmp_path))
  images = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
  features = np.asarray(apply_fn(params, images))
  assert features.shape == (5, 8 * 4)  # basic blocks: 8 x base_width
  assert np.all(np.isfinite(features))
  assert np.std(features) > 0
  # Same params and images -> the same features; different images differ.
  np.testing.assert_array_equal(features, np.asarray(apply_fn(params, images)))
  assert not np.allclose(features[0], features[1])


def test_init_from_takes_params(data_dir, tmp_path):
  config = tiny_config(data_dir, total_steps=3)
  train.train_and_evaluate(config, str(tmp_path / "a"))
  method = methods.get_method(config.method)
  tx, _ = optim.make_optimizer(config.optim, total_steps=3, steps_per_epoch=3,
                               batch_size=config.batch_size)
  fresh = train.create_train_state(tiny_config(data_dir, seed=1), method, tx, make_mesh())
  started = train._init_from(fresh, str(tmp_path / "a"))  # pylint: disable=protected-access
  from ssl_jax import checkpoint  # pylint: disable=g-import-not-at-top
  a, _, _ = checkpoint.restore_raw(str(tmp_path / "a"))
  assert int(started.step) == 0
  jax.tree.map(np.testing.assert_array_equal, a["params"], jax.device_get(started.params))
  jax.tree.map(np.testing.assert_array_equal, a["batch_stats"],
               jax.device_get(started.batch_stats))


def _cli(args, env_extra=None):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu", **(env_extra or {}))
  return subprocess.run([sys.executable, "-m", "ssl_jax.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def test_cli_with_overrides(data_dir, tmp_path):
  workdir = str(tmp_path / "cli")
  proc = _cli([
      "--config=configs/simclr.py:digits,runlocal", f"--workdir={workdir}",
      f"--config.data.data_dir={data_dir}", "--config.total_steps=2",
      *tiny_encoder.CLI_FLAGS,
      "--config.batch_size=16", "--config.log_every_steps=1", "--config.simclr.temperature=0.2",
  ])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "ssl_jax done" in proc.stdout
  records = read_metrics(workdir)
  assert [r["step"] for r in records if "loss" in r] == [1, 2]
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  assert saved["simclr"]["temperature"] == 0.2
  assert saved["model"]["base_width"] == 4 and saved["model"]["depth"] == 10


def test_cli_rejects_unknown_config_key(tmp_path):
  proc = _cli(["--config=configs/simclr.py:digits,runlocal", f"--workdir={tmp_path}",
               "--config.optim.learning_rat=0.1"])
  assert proc.returncode != 0
  assert "learning_rat" in proc.stderr


def test_config_variant_typo_is_rejected():
  with pytest.raises(ValueError, match="cifar11"):
    simclr_config.get_config("cifar11")


def test_bad_batch_size_fails_before_compute(data_dir, tmp_path):
  with pytest.raises(ValueError, match="multiple of the 8 devices"):
    train.train_and_evaluate(tiny_config(data_dir, batch_size=12), str(tmp_path))


@pytest.mark.parametrize("variant,shape,size", [("cifar10", (32, 32, 3), 50_000),
                                                 ("digits", (32, 32, 3), 4_000),
                                                 ("stl10", (96, 96, 3), 105_000)])
def test_every_method_config_fits_its_dataset(variant, shape, size):
  """Each method's dataset variant passes the data checks (view sizes, schedule) before
  anything runs, e.g. no view larger than the stored images (Jigsaw's 36-px CIFAR view did)."""
  for name in methods._METHODS:  # pylint: disable=protected-access
    config = config_lib.load_module(os.path.join(
        os.path.dirname(os.path.dirname(__file__)), "configs", f"{name}.py")).get_config(variant)
    info = data.DatasetInfo(name=config.data.name, num_classes=10, train_size=size,
                            eval_train_size=size, eval_test_size=1000, image_shape=shape)
    per_epoch = size // config.batch_size
    train.validate_config(config)
    train.validate_config_for_data(config, info, methods.get_method(name).view_recipes(config),
                                   int(config.total_epochs * per_epoch), per_epoch)
