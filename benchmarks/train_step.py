r"""Throughput, FLOPs, memory and MFU of the compiled train step.

For each method x depth x batch size: images/s, ms/step, compile time, model
FLOPs per step (XLA cost analysis of the compiled step), MFU against a float32
matrix-multiply ceiling measured in the same run on the same devices, and
memory (XLA's memory analysis of the step, host peak RSS). Prints a Markdown
table and writes JSON.

  XLA_FLAGS=--xla_force_host_platform_device_count=2 \
      python benchmarks/train_step.py --methods=simclr --depths=18 --batch_sizes=256

By default it uses one XLA device per CPU core (what ``python -m ssl_jax.main``
does). Images are synthetic uint8 of the config's size; augmentation runs
inside the step, as in training.
"""

from __future__ import annotations

import os

from ssl_jax import cpu_devices  # noqa: E402  (before JAX is imported)

cpu_devices.configure()

import ctypes  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from ssl_jax import config_lib  # noqa: E402
from ssl_jax import methods  # noqa: E402
from ssl_jax import optim  # noqa: E402
from ssl_jax import train  # noqa: E402
from ssl_jax.parallel import BATCH_AXIS, make_mesh  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_METHODS = flags.DEFINE_list("methods", ["simclr"], "Methods to benchmark.")
_DEPTHS = flags.DEFINE_list("depths", ["18"], "ResNet depths.")
_BATCHES = flags.DEFINE_list("batch_sizes", ["256"], "Global batch sizes.")
_WIDTH = flags.DEFINE_integer("base_width", 64, "ResNet base width (64 = the standard model).")
_VARIANT = flags.DEFINE_string("variant", "cifar10", "Config variant (sets stem, view size).")
_MICRO = flags.DEFINE_list("microbatches", ["1"], "config.microbatches values (memory study).")
_REMAT = flags.DEFINE_list("remat", ["false"], "config.model.remat values: true/false.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps after one warm-up step; 0: compile "
                              "only (FLOPs and memory, no timing).")
_DEVICES = flags.DEFINE_list("device_counts", [], "Meshes over the first n XLA devices "
                              "(default: all). With --xla_force_host_platform_device_count=4 "
                              "on 2 cores, '1,2,4' measures devices per core.")
_OUT = flags.DEFINE_string("out", "", "JSON output path (default: print only).")


def _status_mb(field: str) -> float:
  """A memory field of /proc/self/status (VmRSS: now, VmHWM: peak since the last reset), MB."""
  with open("/proc/self/status", encoding="ascii") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024
  return float("nan")


def _reset_peak_rss() -> None:
  """Resets VmHWM to the current RSS (Linux: 5 > /proc/self/clear_refs)."""
  try:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
      f.write("5")
  except OSError:
    pass


def _release_free_memory() -> None:
  """glibc ``malloc_trim(0)``: hands memory malloc holds but nobody uses back to the OS.

  After a compile, RSS still counts the compiler's freed working memory (about
  0.5 GB for ResNet-18); without this the step's peak would be measured against
  a baseline inflated by it, and could even reuse it unseen.
  """
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass


def load_config(method: str, variant: str):
  return config_lib.load_module(os.path.join(REPO, "configs", f"{method}.py")).get_config(variant)


def matmul_ceiling(mesh, n: int = 2048, repeats: int = 5) -> float:
  """Measured float32 FLOP/s of a data-parallel [n, n] x [n, n] matmul on every device."""
  sharding = NamedSharding(mesh, P(BATCH_AXIS))
  a = jax.device_put(jnp.ones((mesh.size * n, n), jnp.float32), sharding)
  b = jnp.ones((n, n), jnp.float32)
  f = jax.jit(jax.shard_map(lambda x, y: x @ y, mesh=mesh, in_specs=(P(BATCH_AXIS), P()),
                            out_specs=P(BATCH_AXIS)))
  f(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * mesh.size * n ** 3 / min(times)


def bench_one(method_name, depth, batch_size, microbatches, remat, mesh, ceiling):
  config = load_config(method_name, _VARIANT.value)
  config.microbatches = microbatches
  config.model.remat = remat
  config.model.depth = depth
  config.model.base_width = _WIDTH.value
  config.batch_size = batch_size
  method = methods.get_method(method_name)
  config.optim.warmup_epochs = 0.0
  train.validate_config(config)  # e.g. micro-batches a method cannot take: one clear line
  tx, schedule = optim.make_optimizer(config.optim, total_steps=1000, steps_per_epoch=100,
                                      batch_size=batch_size)
  state = train.create_train_state(config, method, tx, mesh)
  recipes = method.view_recipes(config)
  step = train.compile_train_step(mesh, method=method, config=config, recipes=recipes, tx=tx,
                                  schedule=schedule, total_steps=1000)
  size = config.data.image_size
  sharding = NamedSharding(mesh, P(BATCH_AXIS))
  images = jax.device_put(
      np.random.default_rng(0).integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
      sharding)
  batch = {"image": images}

  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  # The compiler's own (transient) memory is not the step's: freed memory goes back
  # to the OS and the peak counts from here, where the state and the batch (the
  # step's arguments) are already resident.
  _release_free_memory()
  rss_before = _status_mb("VmRSS")
  _reset_peak_rss()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # cost_analysis of a shard_map program is per device: scale to all devices.
  flops = float(cost.get("flops", 0.0)) * mesh.size
  mem = compiled.memory_analysis()
  xla_bytes = temp_bytes = None
  arg_bytes = float("nan")
  if mem is not None:
    arg_bytes = mem.argument_size_in_bytes * mesh.size
    temp_bytes = mem.temp_size_in_bytes * mesh.size
    xla_bytes = (mem.argument_size_in_bytes + mem.output_size_in_bytes +
                 mem.temp_size_in_bytes - mem.alias_size_in_bytes) * mesh.size

  times = [float("nan")]
  if _STEPS.value:
    state, metrics = compiled(state, batch)           # warm-up
    jax.block_until_ready(metrics)
    times = []
  for _ in range(_STEPS.value):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  # NT-Xent's similarity matrix: (2B)^2 dot products of width D, forward and
  # backward (3 matmuls of 2 (2B)^2 D FLOPs): the only O(B^2) term of the step.
  similarity_flops = 0.0
  if "simclr" in config:
    similarity_flops = 3 * 2 * (2 * batch_size) ** 2 * config.simclr.projection_dim
  row = {
      "similarity_share": similarity_flops / flops if flops else float("nan"),
      "method": method_name, "depth": depth, "base_width": _WIDTH.value,
      "batch": batch_size, "microbatches": microbatches, "remat": remat, "image": size,
      "devices": mesh.size,
      "ms_per_step": 1e3 * step_s, "images_per_sec": batch_size / step_s,
      "compile_s": compile_s, "gflops_per_step": flops / 1e9,
      "mfu": flops / step_s / ceiling if flops else float("nan"),
      "xla_memory_mb": xla_bytes / 2 ** 20 if xla_bytes is not None else float("nan"),
      "xla_temp_mb": temp_bytes / 2 ** 20 if temp_bytes is not None else float("nan"),
      # Host memory of the step at its peak (on a CPU, device memory is host
      # memory): its resident arguments (state, batch) plus what running it
      # added over the post-compile RSS, to set against XLA's accounting
      # (arguments + outputs + temporaries - aliased).
      "peak_rss_mb": _status_mb("VmHWM") - rss_before + arg_bytes / 2 ** 20,
  }
  row["rss_over_xla"] = row["peak_rss_mb"] / row["xla_memory_mb"]
  return row


def main(argv):
  del argv
  # The ceiling is the whole machine's (every device): MFU at any device count
  # is the share of the same hardware's matmul throughput.
  ceiling = matmul_ceiling(make_mesh())
  counts = [int(n) for n in _DEVICES.value] or [jax.device_count()]
  rows = [bench_one(m, int(d), int(b), int(mb), r.lower() in ("true", "1"),
                    make_mesh(jax.devices()[:n]), ceiling)
          for n in counts for m in _METHODS.value for d in _DEPTHS.value
          for b in _BATCHES.value for mb in _MICRO.value for r in _REMAT.value]
  print(f"\n{jax.device_count()} x {jax.devices()[0].platform} devices on {os.cpu_count()} "
        f"cores; matmul ceiling {ceiling / 1e9:.1f} GFLOP/s (float32, all devices, measured "
        "in this run)\n")
  cols = ["method", "devices", "depth", "base_width", "batch", "microbatches", "remat", "image",
          "images_per_sec", "ms_per_step", "compile_s", "gflops_per_step", "similarity_share", "mfu", "xla_memory_mb",
          "xla_temp_mb", "peak_rss_mb", "rss_over_xla"]
  print("| " + " | ".join(cols) + " |")
  print("|" + "---|" * len(cols))
  for r in rows:
    print("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c])
                            for c in cols) + " |")
  if _OUT.value:
    with open(_OUT.value, "w", encoding="utf-8") as f:
      json.dump({"ceiling_flops": ceiling, "rows": rows}, f, indent=2)
  sys.stdout.flush()


if __name__ == "__main__":
  app.run(main)
