"""Compiles the tiny SimCLR step for a TPU topology; prints JSON (run by test_aot.py)."""

from __future__ import annotations

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(topology: str):
  sys.path.insert(0, os.path.join(REPO, "configs"))
  import simclr  # pylint: disable=g-import-not-at-top
  import tiny_encoder  # pylint: disable=g-import-not-at-top
  from ssl_jax import aot  # pylint: disable=g-import-not-at-top
  config = simclr.get_config("cifar10")
  tiny_encoder.apply(config)
  config.batch_size = 32
  devices = aot.topology_devices(topology)
  compiled = aot.compile_train_step(config, devices, image_size=32)
  print(json.dumps({"platform": devices[0].platform, "devices": len(devices),
                    "memory_bytes": aot.per_device_memory_bytes(compiled),
                    "flops": aot.per_device_flops(compiled)}))


if __name__ == "__main__":
  main(sys.argv[1])
