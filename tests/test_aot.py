"""The real SimCLR train step compiles ahead of time for a TPU pod topology on this CPU host.

libtpu is installed by launch/test.sh into ``$venv/libtpu`` (off the venv's path);
the compile runs in a subprocess that puts it on the path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
LIBTPU = os.path.join(sys.prefix, "libtpu")


def test_simclr_step_compiles_for_a_tpu_topology():
  assert os.path.isdir(os.path.join(LIBTPU, "libtpu")), (
      f"libtpu is not installed in {LIBTPU}; run the tests with launch/test.sh, which "
      "installs requirements-tpu.txt there.")
  env = dict(os.environ, JAX_PLATFORMS="cpu", TPU_ACCELERATOR_TYPE="v5litepod-4",
             TPU_WORKER_HOSTNAMES="localhost",
             PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), LIBTPU]))
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, os.path.join(HERE, "aot_worker.py"), "v5e:2x2"],
                        env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["platform"] == "tpu" and result["devices"] == 4
  # The step exists for the TPU: it has FLOPs, and a per-chip footprint that fits
  # a v5e chip's 16 GiB of HBM (a tiny ResNet-10 at batch 32 needs megabytes).
  assert result["flops"] > 1e6
  assert 1e5 < result["memory_bytes"] < 16 * 2**30
