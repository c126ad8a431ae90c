"""Multi-host: 2 processes x 4 CPU devices (gloo on 127.0.0.1) == 1 process x 8 devices.

MoCo v3 has both things a second host can get wrong: its InfoNCE takes the keys of
every device of every host as negatives (an all_gather across processes, as
SimCLR's), and its momentum encoder is an EMA pytree in the train state (as
BYOL's target), saved and restored by both processes.

Each worker is a subprocess with a timeout; the two workers' checkpoint is
compared leaf by leaf with the checkpoint of the same run in this process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import multihost_config
from ssl_jax import checkpoint
from ssl_jax import data
from ssl_jax import train

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "multihost_worker.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_workers(args_of, timeout):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [multihost_config.REPO, os.environ.get("PYTHONPATH", "")]))
  env.pop("XLA_FLAGS", None)
  procs = [subprocess.Popen([sys.executable, WORKER, *args_of(i)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outputs = []
  for p in procs:
    try:
      outputs.append(p.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  return [p.returncode for p in procs], outputs


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["loss"] for line in f if '"loss"' in line]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds_multihost"))
  # Built once here, so the two workers do not race to write it.
  data.dataset_info(multihost_config.config("mocov3", path).data)
  return path


@pytest.mark.parametrize("method", ["mocov3"])
def test_two_processes_match_one_process(method, data_dir, tmp_path):
  multi, single = str(tmp_path / "multi"), str(tmp_path / "single")
  port = _free_port()
  codes, outputs = _run_workers(
      lambda i: [str(i), "2", str(port), multi, data_dir, method], timeout=600)
  assert codes == [0, 0], "\n\n".join(o[-3000:] for o in outputs)

  train.train_and_evaluate(multihost_config.config(method, data_dir), single)
  got, _, step = checkpoint.restore_raw(multi)
  want, _, _ = checkpoint.restore_raw(single)
  assert step == multihost_config.STEPS
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    # The stem BN's scale and bias end 1e-5 apart after 4 steps: their gradients
    # are sums over every pixel of the batch that nearly cancel, so float32 sums in
    # another order move them by ~0.3%. A gradient not reduced across hosts moves
    # an update (1.5e-3 per step for that bias) by a large fraction of itself.
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=5e-5, err_msg=jax.tree_util.keystr(path))
  # Only process 0 writes the metrics (one line per step); the losses agree.
  multi_losses, single_losses = _losses(multi), _losses(single)
  assert len(multi_losses) == multihost_config.STEPS
  np.testing.assert_allclose(multi_losses, single_losses, rtol=1e-5)


def test_worker_without_peer_aborts(tmp_path):
  port = _free_port()
  env = dict(os.environ, PYTHONPATH=multihost_config.REPO)
  env.pop("XLA_FLAGS", None)
  code = ("import sys; from ssl_jax import parallel; "
          f"parallel.initialize_distributed('127.0.0.1:{port}', 2, 1, timeout_seconds=5)")
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode != 0
