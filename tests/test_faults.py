"""Fault tolerance: preemption, exact resume after a kill, damaged checkpoints, NaN, bad configs.

Most runs use a stand-in method (a linear map of one small view, with a
method state holding an EMA and a queue and a key-dependent loss), so the real
loop, data order, checkpoints and keys are exercised with a step that compiles
in a second or two; SimCLR's own bitwise resume is in test_train.py. One
subprocess runs the real CLI with SimCLR for SIGTERM. Damaged-checkpoint tests
damage copies of one module-scoped run.
"""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
import pytest

from ssl_jax import augment
from ssl_jax import checkpoint
from ssl_jax import data
from ssl_jax import methods
from ssl_jax import optim
from ssl_jax import train
from ssl_jax.data import builders
from ssl_jax.data import crops
from ssl_jax.evaluate import plots
from ssl_jax.parallel import make_mesh
import tiny_datasets as tiny
import tiny_encoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
import simclr as simclr_config  # noqa: E402  pylint: disable=g-import-not-at-top

STEPS = 8


def make_stand_in(nan_from_step=None):
  """A method module in miniature: linear map of one 8x8 view, EMA + queue state.

  ``nan_from_step``: the loss is NaN for every step counted from it (1-based).
  """

  def view_recipes(config):
    del config
    return (augment.ViewRecipe(size=8, jitter_prob=0.0, grayscale_prob=0.0),)

  def init(key, config, sample_images):
    del config, sample_images
    params = {"w": 0.1 * jax.random.normal(key, (8 * 8 * 3, 4))}
    state = {"ema": jnp.zeros((4,)), "queue": jnp.zeros((3, 4)), "count": jnp.zeros((), jnp.int32)}
    return params, {}, state

  def loss_fn(params, batch_stats, method_state, views, key, *, config, axis_name):
    del config
    x = views[0].reshape(views[0].shape[0], -1)
    z = x @ params["w"] + 0.01 * jax.random.normal(key, (x.shape[0], 4))
    loss = jax.lax.pmean(jnp.mean((z - method_state["ema"]) ** 2)
                         + 0.1 * jnp.mean(z @ method_state["queue"].T), axis_name)
    if nan_from_step is not None:
      loss = loss + jnp.where(method_state["count"] + 1 >= nan_from_step, jnp.nan, 0.0)
    queue = jnp.roll(method_state["queue"], 1, axis=0).at[0].set(
        jax.lax.pmean(jnp.mean(z, 0), axis_name))
    return loss, (batch_stats, dict(method_state, queue=queue), {"loss": loss})

  def post_update(params, batch_stats, method_state, step, config, *, total_steps):
    del batch_stats, config, total_steps
    ema = 0.9 * method_state["ema"] + 0.1 * jnp.mean(params["w"], 0)
    return dict(method_state, ema=ema, count=jnp.asarray(step, jnp.int32))

  return types.SimpleNamespace(view_recipes=view_recipes, init=init, loss_fn=loss_fn,
                               post_update=post_update)


def stand_in_config(data_dir, **overrides):
  c = simclr_config.get_config("digits")
  c.data.data_dir = data_dir
  tiny_encoder.apply(c)
  c.batch_size = 16
  c.eval_batch_size = 64
  c.total_steps = STEPS
  c.log_every_steps = 2
  c.checkpoint_every_steps = 2
  c.checkpoint_max_to_keep = 10
  c.knn.every_epochs = 0.0
  c.optim.warmup_epochs = 0.0
  c.optim = optim.default_optim_config("sgd")
  for key, value in overrides.items():
    target = c
    *path, leaf = key.split(".")
    for p in path:
      target = target[p]
    target[leaf] = value
  return c


@pytest.fixture
def stand_in(monkeypatch):
  """Installs a stand-in method for config.method='simclr'; returns a setter."""
  real = methods.get_method

  def use(nan_from_step=None):
    fake = make_stand_in(nan_from_step)
    monkeypatch.setattr(methods, "get_method", lambda name: fake if name == "simclr" else real(name))
    # The end-of-run feature map needs a real encoder; it is not under test here.
    monkeypatch.setattr(plots, "write_feature_map", lambda *args, **kwargs: None)
    return fake

  use()
  return use


@pytest.fixture(scope="module")
def reference_run(data_dir, tmp_path_factory):
  """An uninterrupted 8-step stand-in run with checkpoints at 2, 4, 6, 8."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  fake = make_stand_in()
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(methods, "get_method", lambda name: fake)
    patch.setattr(plots, "write_feature_map", lambda *args, **kwargs: None)
    results = train.train_and_evaluate(stand_in_config(data_dir), workdir)
    config = stand_in_config(data_dir)
    tx, _ = optim.make_optimizer(config.optim, total_steps=STEPS, steps_per_epoch=100,
                                 batch_size=config.batch_size)
    state = train.create_train_state(config, fake, tx, make_mesh())
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state)
  assert results["step"] == STEPS
  return types.SimpleNamespace(workdir=workdir, abstract=abstract, results=results)


def copy_run(reference_run, tmp_path) -> str:
  target = str(tmp_path / "run")
  shutil.copytree(reference_run.workdir, target)
  return target


def steps_on_disk(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def assert_same_state(workdir_a, workdir_b):
  a, _, step_a = checkpoint.restore_raw(workdir_a)
  b, _, step_b = checkpoint.restore_raw(workdir_b)
  assert step_a == step_b
  flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
  flat_b = jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  for (path, x), (_, y) in zip(flat_a, flat_b):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


# --- Kill -9 and resume: bitwise equal to the uninterrupted run -----------------------------


def test_killed_during_save_resumes_bitwise_equal(data_dir, reference_run, tmp_path, stand_in):
  """What SIGKILL during the save of step 6 leaves on disk: a half-written temporary dir."""
  workdir = copy_run(reference_run, tmp_path)
  ckpts = os.path.join(workdir, "checkpoints")
  shutil.rmtree(os.path.join(ckpts, "8"))
  # Orbax writes into a temporary directory and renames it when complete.
  os.rename(os.path.join(ckpts, "6"), os.path.join(ckpts, "6.orbax-checkpoint-tmp-1"))
  os.remove(os.path.join(ckpts, "6.orbax-checkpoint-tmp-1", "commit_success.txt"))
  _truncate(os.path.join(ckpts, "6.orbax-checkpoint-tmp-1"))
  # metrics.jsonl still holds records of steps 6 and 8, which the next start runs again.
  results = train.train_and_evaluate(stand_in_config(data_dir), workdir)
  assert results["step"] == STEPS and not results["preempted"]
  assert_same_state(reference_run.workdir, workdir)
  steps = [r["step"] for r in read_metrics(workdir) if "loss" in r]
  assert steps == list(range(2, STEPS + 1, 2)), steps


def test_preemption_notice_then_resume_bitwise_equal(data_dir, reference_run, tmp_path,
                                                     stand_in, monkeypatch):
  """Orbax's multi-host preemption sync point at step 3 (not a checkpoint step), then resume."""
  workdir = copy_run(reference_run, tmp_path)
  for step in (4, 6, 8):
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)))
  seen = []

  def reached_preemption(self, step):
    del self
    seen.append(step)
    return step == 3

  monkeypatch.setattr(checkpoint.ocp.CheckpointManager, "reached_preemption", reached_preemption)
  results = train.train_and_evaluate(stand_in_config(data_dir), workdir)
  assert results["preempted"] and results["step"] == 3 and seen[0] == 3  # orbax asks too
  assert steps_on_disk(workdir) == [2, 3]
  monkeypatch.undo()
  stand_in()
  results = train.train_and_evaluate(stand_in_config(data_dir), workdir)
  assert results["step"] == STEPS and not results["preempted"]
  assert_same_state(reference_run.workdir, workdir)
  steps = [r["step"] for r in read_metrics(workdir) if "loss" in r]
  assert steps == [2, 3, 4, 6, 8], steps


# --- SIGTERM: checkpoint at the next step, exit 0 (one real subprocess) ---------------------


def test_sigterm_checkpoints_and_exits_cleanly(data_dir, tmp_path):
  workdir = str(tmp_path / "cli")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(
      [sys.executable, "-m", "ssl_jax.main", "--config=configs/simclr.py:digits,runlocal",
       f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
       "--config.total_steps=100000", *tiny_encoder.CLI_FLAGS,
       "--config.batch_size=16", "--config.log_every_steps=1",
       "--config.checkpoint_every_steps=100000", "--config.simclr.projector_hidden_dim=16",
       "--config.simclr.projection_dim=8"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 400
  try:
    while time.time() < deadline and proc.poll() is None:
      if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 2:
        break
      time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, stderr[-3000:]
  assert "ssl_jax preempted" in stdout
  last_logged = max(r["step"] for r in read_metrics(workdir))
  assert steps_on_disk(workdir) == [last_logged]
  _, meta, step = checkpoint.restore_raw(workdir)  # verifies the checksums
  assert step == last_logged == meta["step"] >= 2


# --- Damaged checkpoints --------------------------------------------------------------------


def _array_files(step_dir):
  """The files holding the arrays' bytes (OCDBT data files under ``d/`` directories)."""
  files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs
           if os.path.basename(d) == "d"]
  assert files
  return files


def _truncate(step_dir):
  for path in _array_files(step_dir):
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)


def _flip_bytes(step_dir):
  for path in _array_files(step_dir):
    with open(path, "r+b") as f:
      data = bytearray(f.read())
      for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0xFF
      f.seek(0)
      f.write(bytes(data))


def _remove_meta(step_dir):
  os.remove(os.path.join(step_dir, "meta", "metadata"))


def _remove_state_metadata(step_dir):
  os.remove(os.path.join(step_dir, "state", "_METADATA"))


def _strip_checksums(step_dir):
  path = os.path.join(step_dir, "meta", "metadata")
  with open(path) as f:
    meta = json.load(f)
  del meta["checksums"]
  with open(path, "w") as f:
    json.dump(meta, f)


def _silently_changed_array(step_dir):
  """Bytes that differ from what was written though every file reads back cleanly."""
  path = os.path.join(step_dir, "meta", "metadata")
  with open(path) as f:
    meta = json.load(f)
  meta["checksums"]["params/w"][0] ^= 1
  with open(path, "w") as f:
    json.dump(meta, f)


def _empty_state(step_dir):
  shutil.rmtree(os.path.join(step_dir, "state"))
  os.makedirs(os.path.join(step_dir, "state"))


DAMAGE = {"truncated_array_file": _truncate, "flipped_bytes": _flip_bytes,
          "missing_meta": _remove_meta, "missing_state_metadata": _remove_state_metadata,
          "meta_without_checksums": _strip_checksums, "half_written_step_dir": _empty_state,
          "silently_changed_array": _silently_changed_array}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_checkpoint_is_quarantined_and_previous_used(reference_run, tmp_path, damage,
                                                             caplog):
  workdir = copy_run(reference_run, tmp_path)
  step_dir = os.path.join(workdir, "checkpoints", "8")
  DAMAGE[damage](step_dir)
  manager = checkpoint.make_manager(workdir, max_to_keep=10)
  state, meta = checkpoint.restore_latest(manager, reference_run.abstract)
  manager.close()
  assert int(state.step) == meta["step"] == 6
  assert steps_on_disk(workdir) == [2, 4, 6]
  quarantined = os.listdir(os.path.join(workdir, "checkpoints_quarantine"))
  assert len(quarantined) == 1 and quarantined[0].startswith("8.")  # moved, not deleted
  assert any(step_dir in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)


def test_every_checkpoint_damaged_is_an_error_and_nothing_deleted(reference_run, tmp_path):
  workdir = copy_run(reference_run, tmp_path)
  for step in (2, 4, 6, 8):
    _remove_meta(os.path.join(workdir, "checkpoints", str(step)))
  manager = checkpoint.make_manager(workdir, max_to_keep=10)
  with pytest.raises(RuntimeError, match="Every checkpoint .* is damaged"):
    checkpoint.restore_latest(manager, reference_run.abstract)
  assert len(os.listdir(os.path.join(workdir, "checkpoints_quarantine"))) == 4


def test_restore_raw_skips_damaged_newest(reference_run, tmp_path):
  workdir = copy_run(reference_run, tmp_path)
  _flip_bytes(os.path.join(workdir, "checkpoints", "8"))
  _, meta, step = checkpoint.restore_raw(workdir)
  assert step == meta["step"] == 6
  assert steps_on_disk(workdir) == [2, 4, 6, 8]  # read-only use: nothing moved


def test_restore_raw_reads_checkpoints_older_than_checksums(reference_run, tmp_path, caplog):
  workdir = copy_run(reference_run, tmp_path)
  _strip_checksums(os.path.join(workdir, "checkpoints", "8"))
  _, _, step = checkpoint.restore_raw(workdir)  # load_encoder / init_from of an old run
  assert step == 8
  assert any("has no checksums" in r.getMessage() for r in caplog.records)


def test_other_model_is_refused_not_quarantined(reference_run, tmp_path):
  workdir = copy_run(reference_run, tmp_path)
  abstract = reference_run.abstract.replace(
      params={"w": jax.ShapeDtypeStruct((8 * 8 * 3, 5), jnp.float32)})
  manager = checkpoint.make_manager(workdir, max_to_keep=10)
  with pytest.raises(ValueError, match="different train state.*params/w"):
    checkpoint.restore_latest(manager, abstract)
  assert steps_on_disk(workdir) == [2, 4, 6, 8]
  assert not os.path.exists(os.path.join(workdir, "checkpoints_quarantine"))


def test_failing_save_keeps_older_checkpoints(reference_run, tmp_path):
  """A disk that fills up mid-save (writes beyond 1 kB fail): older checkpoints stay good."""
  import resource  # pylint: disable=g-import-not-at-top
  workdir = copy_run(reference_run, tmp_path)
  manager = checkpoint.make_manager(workdir, max_to_keep=2)
  state, meta = checkpoint.restore(manager, reference_run.abstract)
  previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  limits = resource.getrlimit(resource.RLIMIT_FSIZE)
  resource.setrlimit(resource.RLIMIT_FSIZE, (1024, limits[1]))
  try:
    with pytest.raises(checkpoint.CheckpointSaveError, match="Older checkpoints are untouched"):
      checkpoint.save(manager, 10, state, meta)
      checkpoint.wait_until_finished(manager)
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, limits)
    signal.signal(signal.SIGXFSZ, previous)
  assert steps_on_disk(workdir) == [2, 4, 6, 8]  # retention (max 2) deleted nothing
  for step in (2, 4, 6, 8):
    checkpoint.restore(manager, reference_run.abstract, step)  # still verifies


# --- NaN / Inf ------------------------------------------------------------------------------


def test_nan_stops_naming_step_and_last_good_checkpoint(data_dir, tmp_path, stand_in):
  stand_in(nan_from_step=5)
  workdir = str(tmp_path / "nan")
  config = stand_in_config(data_dir, log_every_steps=4)
  with pytest.raises(FloatingPointError, match=r"step 5 .*last good checkpoint is step 4"):
    train.train_and_evaluate(config, workdir)
  # Step 6's checkpoint (before the log at step 8) was not written: it would hold NaNs.
  assert steps_on_disk(workdir) == [2, 4]


def test_nan_updates_skipped_and_counted(data_dir, tmp_path, stand_in, reference_run):
  stand_in(nan_from_step=5)
  workdir = str(tmp_path / "skip")
  results = train.train_and_evaluate(
      stand_in_config(data_dir, skip_nonfinite_updates=True), workdir)
  assert results["step"] == STEPS and results["skipped_updates"] == STEPS - 4
  assert read_metrics(workdir)[-1]["skipped_updates"] == STEPS - 4
  manager = checkpoint.make_manager(workdir, max_to_keep=10)
  at_4, _ = checkpoint.restore(manager, reference_run.abstract, 4)
  at_8, _ = checkpoint.restore(manager, reference_run.abstract, 8)
  manager.close()
  # Updates 5..8 were skipped: everything but the step and the count is as after step 4.
  assert int(at_8.step) == STEPS and int(at_8.skipped_updates) == STEPS - 4
  assert int(at_4.skipped_updates) == 0
  for part in ("params", "batch_stats", "opt_state", "method_state", "rng"):
    jax.tree.map(np.testing.assert_array_equal, getattr(at_8, part), getattr(at_4, part))
  assert np.all(np.isfinite(at_8.params["w"]))


# --- Bad configs: one line naming the field, before anything compiles -----------------------


def _set(path, value):
  def apply(c):
    target = c
    *parents, leaf = path.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return apply


def _raw(path, value):
  """A config rebuilt from a dict, as a notebook would: its types are not enforced."""
  def apply(c):
    d = c.to_dict()
    target = d
    *parents, leaf = path.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
    return ml_collections.ConfigDict(d)
  return apply


def _delete(key):
  def apply(c):
    d = c.to_dict()
    del d[key]
    return ml_collections.ConfigDict(d)
  return apply


STATIC_CASES = {
    "unknown_top_level": (_raw("batchsize", 32), "config.batchsize: unknown field"),
    "unknown_optim_field": (_raw("optim.learning_rate", 0.1),
                            "config.optim.learning_rate: unknown field"),
    "unknown_model_field": (_raw("model.detph", 18), "config.model.detph: unknown field"),
    "unknown_data_field": (_raw("data.foldr", "x"), "config.data.foldr: unknown field"),
    "str_for_int": (_raw("batch_size", "32"), "config.batch_size: expected int, got str"),
    "float_for_int": (_raw("model.depth", 18.5), "config.model.depth: expected int"),
    "str_for_bool": (_raw("skip_nonfinite_updates", "yes"),
                     "config.skip_nonfinite_updates: expected bool"),
    "scalar_for_section": (_raw("knn", 5), "config.knn: expected a section"),
    "str_for_float": (_raw("optim.base_learning_rate", "0.1"),
                      "config.optim.base_learning_rate: expected float"),
    "unknown_method": (_set("method", "simclrr"), "config.method='simclrr': unknown method"),
    "missing_method_section": (_delete("simclr"), "config.simclr: missing"),
    "batch_not_divisible": (_set("batch_size", 12), "config.batch_size=12 must be a positive "
                            "multiple of the 8 devices"),
    "batch_zero": (_set("batch_size", 0), "config.batch_size=0"),
    "eval_batch_not_divisible": (_set("eval_batch_size", 20), "config.eval_batch_size=20"),
    "no_length": (_raw("total_steps", 0), "config.total_epochs / config.total_steps",
                  _set("total_epochs", 0.0)),
    "negative_steps": (_set("total_steps", -5), "config.total_epochs / config.total_steps"),
    "log_every_zero": (_set("log_every_steps", 0), "config.log_every_steps=0"),
    "checkpoint_every_zero": (_set("checkpoint_every_steps", 0),
                              "config.checkpoint_every_steps=0"),
    "keep_only_one_checkpoint": (_set("checkpoint_max_to_keep", 1),
                                 "config.checkpoint_max_to_keep=1: must be >= 2"),
    "negative_seed": (_set("seed", -1), "config.seed=-1"),
    "negative_stall_timeout": (_set("stall_timeout_minutes", -1.0),
                               "config.stall_timeout_minutes=-1.0: must be >= 0"),
    "microbatches_not_dividing": (_set("microbatches", 3), "config.microbatches=3 must divide"),
    "unknown_optimizer": (_raw("optim.name", "adam"), "config.optim.name='adam': unknown"),
    "negative_lr": (_set("optim.base_learning_rate", -0.1), "config.optim.base_learning_rate"),
    "zero_view_size": (_set("augment.size", 0), "config.augment.size=0"),
    "unknown_augment_preset": (_set("augment.preset", "simclr_typo"), "config.augment:"),
    "bad_corrupt_policy": (_set("data.corrupt_images", "ignore"),
                           "config.data.corrupt_images='ignore'"),
}


@pytest.mark.parametrize("case", sorted(STATIC_CASES))
def test_bad_config_is_one_line_naming_the_field(case):
  change, expected, *more = STATIC_CASES[case]
  config = simclr_config.get_config("digits")
  for step in (*more, change):
    config = step(config) or config
  with pytest.raises(ValueError) as error:
    train.validate_config(config)
  lines = str(error.value).splitlines()
  assert lines[0] == "Invalid config:"
  assert any(line.strip().startswith(expected) for line in lines[1:]), (expected, lines)


@pytest.fixture
def no_compile(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("the train step was compiled before the bad input was reported")
  monkeypatch.setattr(train, "compile_train_step", refuse)


DATA_CASES = {
    "view_larger_than_images": ({"augment.size": 64}, ValueError,
                                "config.augment.size: views of [64] px are larger than the 32x32"),
    "warmup_longer_than_run": ({"optim.warmup_epochs": 100.0}, ValueError,
                               "config.optim.warmup_epochs=100.0 is"),
    "batch_larger_than_split": ({"batch_size": 8192}, ValueError, "config.batch_size=8192 is "
                                "larger than the 4000 examples"),
    "split_does_not_exist": ({"data.train_split": "validation"}, ValueError,
                             "dataset 'digits' has no split 'validation'"),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_config_for_the_data_fails_before_compile(data_dir, reference_run, tmp_path, case,
                                                      no_compile):
  overrides, error, expected = DATA_CASES[case]
  workdir = copy_run(reference_run, tmp_path)
  before = steps_on_disk(workdir)
  with pytest.raises(error, match=expected.replace("[", r"\[").replace("]", r"\]")):
    train.train_and_evaluate(stand_in_config(data_dir, **overrides), workdir)
  assert steps_on_disk(workdir) == before


def test_missing_init_from_fails_before_compile(data_dir, tmp_path, no_compile, stand_in):
  with pytest.raises(ValueError, match="config.init_from='/nonexistent/run': no such path"):
    train.train_and_evaluate(stand_in_config(data_dir, init_from="/nonexistent/run"),
                             str(tmp_path / "fresh"))


def test_unwritable_workdir_fails_before_compile(data_dir, tmp_path, no_compile):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  with pytest.raises(ValueError, match="is not writable"):
    train.train_and_evaluate(stand_in_config(data_dir), str(blocker / "run"))


def test_full_disk_fails_before_compile(data_dir, reference_run, tmp_path, no_compile, stand_in,
                                        monkeypatch):
  workdir = copy_run(reference_run, tmp_path)
  usage = shutil.disk_usage(workdir)
  monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
  with pytest.raises(ValueError, match="only 0.0 MiB free"):
    train.train_and_evaluate(stand_in_config(data_dir), workdir)
  assert steps_on_disk(workdir) == [2, 4, 6, 8]


# --- Bad data: corrupt images, 16-bit images, empty folders, missing splits -----------------

def _folder_with_corrupt_jpegs(root, variable_size):
  """2 classes x 4 train JPEGs (+ 1 test each); two train files damaged."""
  sizes = [(12, 10), (9, 14)] if variable_size else None
  tiny.write_image_folder(str(root), ["a", "b"], {"train": 4, "test": 1}, fmt="jpeg",
                          sizes=sizes)
  truncated = root / "train" / "a" / "00001.jpg"
  truncated.write_bytes(truncated.read_bytes()[:len(truncated.read_bytes()) // 2])
  garbage = root / "train" / "b" / "00006.jpg"
  garbage.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all" * 4)
  return [str(truncated), str(garbage)]


def _folder_config(root, data_dir, **fields):
  config = data.default_data_config("image_folder")
  config.folder = str(root)
  config.data_dir = str(data_dir)
  for key, value in fields.items():
    config[key] = value
  return config


@pytest.mark.parametrize("variable_size", [False, True], ids=["fixed_size", "variable_size"])
def test_corrupt_jpegs_skipped_with_warning_and_count(tmp_path, caplog, variable_size):
  bad = _folder_with_corrupt_jpegs(tmp_path / "photos", variable_size)
  with caplog.at_level(logging.WARNING):
    info = data.dataset_info(_folder_config(tmp_path / "photos", tmp_path / "tfds"))
  assert info.train_size == 8 - 2 and info.eval_test_size == 2
  messages = [r.getMessage() for r in caplog.records]
  for path in bad:
    assert any(path in m and "cannot be decoded" in m for m in messages), messages
  assert any("skipped 2 undecodable image(s) of 8 in split 'train'" in m for m in messages)


def test_corrupt_jpeg_is_an_error_by_config(tmp_path):
  bad = _folder_with_corrupt_jpegs(tmp_path / "photos", variable_size=False)
  config = _folder_config(tmp_path / "photos", tmp_path / "tfds", corrupt_images="error")
  with pytest.raises(ValueError, match="cannot be decoded") as error:
    data.dataset_info(config)
  assert bad[0] in str(error.value) or bad[1] in str(error.value)
  assert "corrupt_images='skip'" in str(error.value)


def test_16_bit_and_rgba_images_are_converted(tmp_path):
  grey16 = tmp_path / "grey16.png"
  Image.fromarray(np.full((4, 5), 40000, np.uint16)).save(grey16)
  rgba = tmp_path / "rgba.png"
  Image.fromarray(np.full((4, 5, 4), [10, 20, 30, 0], np.uint8), "RGBA").save(rgba)
  image = builders.load_rgb(str(grey16))
  assert image.dtype == np.uint8 and image.shape == (4, 5, 3)
  np.testing.assert_array_equal(image, 40000 // 256)  # scaled, not clipped at 255
  np.testing.assert_array_equal(builders.load_rgb(str(rgba)), np.full((4, 5, 3), [10, 20, 30]))
  np.testing.assert_array_equal(crops.decode(grey16.read_bytes()), 40000 // 256)


def test_empty_class_folder_warns_and_empty_split_is_missing(tmp_path, caplog):
  root = tmp_path / "photos"
  tiny.write_image_folder(str(root), ["a", "b"], {"train": 2, "test": 1})
  os.makedirs(root / "train" / "empty_class")
  os.makedirs(root / "val" / "a")  # a split folder with only an empty class folder
  with caplog.at_level(logging.WARNING):
    info = data.dataset_info(_folder_config(root, tmp_path / "tfds"))
  assert info.num_classes == 3 and info.train_size == 4
  messages = " ".join(r.getMessage() for r in caplog.records)
  assert str(root / "train" / "empty_class") in messages and "has no images" in messages
  with pytest.raises(ValueError, match=r"has no split 'val' \(splits: \['test', 'train'\]\)"):
    data.dataset_info(_folder_config(root, tmp_path / "tfds", eval_test_split="val"))


def test_offline_dataset_fails_before_compile(tmp_path, no_compile):
  config = stand_in_config(str(tmp_path / "empty_tfds"))
  config.data = data.default_data_config("cifar10")
  config.data.data_dir = str(tmp_path / "empty_tfds")
  with tiny.no_network(), pytest.raises(RuntimeError, match="cannot be reached"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
