"""One process of a multi-process CPU run (tests/test_multihost.py starts two).

Usage: python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR DATA_DIR METHOD
Each process simulates ``8 // NUM_PROCESSES`` CPU devices; together they train the
tiny config of tests/test_train.py with ``ssl_jax.train.train_and_evaluate``.
"""

from __future__ import annotations

import os
import sys


def main(argv):
  process_id, num_processes, port = int(argv[1]), int(argv[2]), argv[3]
  workdir, data_dir, method = argv[4], argv[5], argv[6]
  os.environ["XLA_FLAGS"] = ""
  from ssl_jax import cpu_devices  # pylint: disable=g-import-not-at-top
  cpu_devices.configure(8 // num_processes)
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from ssl_jax import parallel  # pylint: disable=g-import-not-at-top
  # A peer that never starts makes initialize() fail after the timeout: the
  # worker exits non-zero instead of hanging the test.
  parallel.initialize_distributed(f"127.0.0.1:{port}", num_processes, process_id,
                                  timeout_seconds=90)
  import multihost_config  # pylint: disable=g-import-not-at-top
  from ssl_jax import train  # pylint: disable=g-import-not-at-top
  train.train_and_evaluate(multihost_config.config(method, data_dir), workdir)
  parallel.shutdown_distributed()


if __name__ == "__main__":
  main(sys.argv)
