"""The stall watchdog: fires on a wedged loop (and only then); a wedged run exits 75 and resumes."""

import logging
import os
import subprocess
import sys
import threading
import time

from ssl_jax import checkpoint
from ssl_jax import watchdog

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _watch(timeout, body):
  fired = threading.Event()
  dog = watchdog.StallWatchdog(timeout, poll_seconds=0.02, on_stall=lambda idle: fired.set())
  with dog:
    body(dog)
  return fired.is_set()


def test_fires_when_beats_stop():
  def body(dog):
    dog.beat()
    time.sleep(0.5)
  assert _watch(0.2, body)


def test_silent_while_beating_paused_or_before_the_first_beat():
  def beating(dog):
    for _ in range(25):  # 0.5 s, five timeouts, a beat every 0.02 s
      dog.beat()
      time.sleep(0.02)
  assert not _watch(0.1, beating)

  def paused(dog):
    dog.beat()
    with dog.paused():
      time.sleep(0.5)
  assert not _watch(0.1, paused)

  def compiling(dog):  # not armed yet: the first step's compilation
    time.sleep(0.5)
  assert not _watch(0.1, compiling)


def test_warns_once_on_a_slow_gap_but_not_on_paused_time(caplog):
  def paused_only(dog):
    dog.beat()
    with dog.paused():
      time.sleep(0.5)  # paused: not a gap, even though it exceeds the timeout
    dog.beat()

  def slow(dog):
    for _ in range(3):
      dog.beat()
      time.sleep(0.3)  # over half of the 0.4-s timeout, under the timeout
    dog.beat()

  def slow_warnings():
    return [r for r in caplog.records if "without a step" in r.getMessage()]

  with caplog.at_level(logging.WARNING):
    assert not _watch(0.4, paused_only)
    assert not slow_warnings()
    assert not _watch(0.4, slow)
    assert len(slow_warnings()) == 1


def test_disabled_by_zero():
  dog = watchdog.StallWatchdog(0)
  with dog:
    assert dog._thread is None  # pylint: disable=protected-access


# The real loop in a subprocess: the step call of step 4 never returns (a wedged
# device, seen from the host), the watchdog ends the process with status 75 and
# the Python stacks; the same command then resumes from the last checkpoint.
_RUN = r"""
import sys, time
from absl import logging
logging.set_verbosity(logging.INFO)
from ssl_jax import cpu_devices
cpu_devices.configure(2)
sys.path[:0] = ["configs", "tests"]
import simclr
import tiny_encoder
from ssl_jax import train
wedge_at = int(sys.argv[2])
real_compile = train.compile_train_step
def compile_with_wedge(*args, **kwargs):
  step_fn, calls = real_compile(*args, **kwargs), [0]
  def wrapped(state, batch):
    calls[0] += 1
    if calls[0] == wedge_at:
      time.sleep(3600)
    return step_fn(state, batch)
  return wrapped
train.compile_train_step = compile_with_wedge
c = simclr.get_config("digits,runlocal")
c.data.data_dir = sys.argv[3]
c.total_steps, c.batch_size = 6, 16
tiny_encoder.apply(c)
c.simclr.projector_hidden_dim, c.simclr.projection_dim = 16, 8
c.log_every_steps, c.checkpoint_every_steps, c.knn.every_epochs = 1, 1, 0.0
c.stall_timeout_minutes = 0.1
print("RESULT", train.train_and_evaluate(c, sys.argv[1]))
"""


def test_wedged_run_exits_75_and_resumes(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)

  def run(wedge_at):
    return subprocess.run([sys.executable, "-c", _RUN, workdir, str(wedge_at), data_dir],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)

  wedged = run(wedge_at=4)
  assert wedged.returncode == watchdog.STALL_EXIT_STATUS, wedged.stderr[-3000:]
  assert "looks wedged" in wedged.stderr
  assert "in wrapped" in wedged.stderr  # the Python stack of the wedged loop
  _, meta, step = checkpoint.restore_raw(workdir)  # checksums verified
  # Steps 1-3 ran and were saved: the watchdog let the last save finish.
  assert step == meta["step"] == 3
  assert not os.path.exists(os.path.join(workdir, checkpoint.QUARANTINE_DIR))

  resumed = run(wedge_at=0)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resumed from" in resumed.stderr and f"at step {step}." in resumed.stderr
  assert "'step': 6" in resumed.stdout
