r"""Plans pod runs without a pod: compiles each method's real train step for TPU slices.

For every method x topology: the paper's setting (ResNet-50, batch 4096, the
method's ImageNet config), compiled ahead of time with libtpu on this host
(``ssl_jax.aot``); per-chip HBM from ``memory_analysis()`` against the chip's
capacity; per-chip FLOPs per step from ``cost_analysis()``; and the lower-bound
wall time of the paper's schedule at the chip's peak bf16 FLOP/s (real runs
reach a fraction of peak: this bounds, it does not predict). Needs libtpu:

  pip install --target /tmp/libtpu -r requirements-tpu.txt
  JAX_PLATFORMS=cpu TPU_ACCELERATOR_TYPE=v4-8 TPU_WORKER_HOSTNAMES=localhost \
      PYTHONPATH=/tmp/libtpu python benchmarks/pod_plan.py --methods=simclr \
      --topologies=v4:4x4x4,v5e:8x8,v5p:4x4x4

Compiling a ResNet-50 step for 64 chips takes minutes on a CPU host.
"""

from __future__ import annotations

import os
import time

from absl import app
from absl import flags

from ssl_jax import aot
from ssl_jax import config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGENET_TRAIN = 1_281_167

# Public chip specifications: HBM per chip and peak bf16 FLOP/s.
CHIPS = {"v4": (32 * 2**30, 275e12), "v5e": (16 * 2**30, 197e12), "v5p": (95 * 2**30, 459e12)}
# Published training times of the papers' ImageNet runs, for comparison.
PUBLISHED = {
    "simclr": "100 epochs ~1.5 h on 128 TPU v3 cores (Chen et al. 2020, Sec. B.1)",
    "byol": "300 epochs ~8 h on 512 TPU v3 cores (Grill et al. 2020, Sec. 4)",
}

_METHODS = flags.DEFINE_list("methods", ["simclr"], "Methods (their configs' imagenet2012).")
_TOPOLOGIES = flags.DEFINE_list("topologies", ["v4:4x4x4", "v5e:8x8", "v5p:4x4x4"],
                                "TPU topologies (generation:shape).")
_EPOCHS = flags.DEFINE_float("epochs", 0.0, "Epochs for the time bound (0: the config's).")


def _config(method):
  return config_lib.load_module(os.path.join(REPO, "configs", f"{method}.py")).get_config(
      "imagenet2012")


def plan(method: str, topology: str) -> dict:
  config = _config(method)
  hbm, peak = CHIPS[topology.split(":")[0]]
  devices = aot.topology_devices(topology)
  start = time.perf_counter()
  compiled = aot.compile_train_step(config, devices, image_size=None)
  compile_s = time.perf_counter() - start
  memory, flops = aot.per_device_memory_bytes(compiled), aot.per_device_flops(compiled)
  epochs = _EPOCHS.value or config.total_epochs
  steps = epochs * IMAGENET_TRAIN / config.batch_size
  return {"method": method, "topology": topology, "chips": len(devices),
          "batch": config.batch_size, "depth": config.model.depth,
          "hbm_gib": memory / 2**30, "hbm_capacity_gib": hbm / 2**30,
          "fits": memory <= hbm, "tflop_per_chip_step": flops / 1e12,
          "epochs": epochs, "bound_hours": steps * flops / peak / 3600,
          "compile_s": compile_s, "published": PUBLISHED.get(method, "")}


def main(argv):
  del argv
  rows = [plan(m, t) for m in _METHODS.value for t in _TOPOLOGIES.value]
  cols = ["method", "topology", "chips", "batch", "depth", "hbm_gib", "hbm_capacity_gib", "fits",
          "tflop_per_chip_step", "epochs", "bound_hours", "compile_s", "published"]
  print("| " + " | ".join(cols) + " |")
  print("|" + "---|" * len(cols))
  for r in rows:
    print("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c])
                            for c in cols) + " |")


if __name__ == "__main__":
  app.run(main)
