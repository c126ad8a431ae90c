"""Throughput of the on-device augmentations: SimCLR's two-view recipe.

For each resolution, a jitted ``augment.views(key, images, preset('simclr', res))``
on a uint8 batch [batch, res, res, 3] (output the same size), one warm-up call
(compilation) and then ``--runs`` timed calls with fresh keys, each waited for
with ``block_until_ready``; the table reports the median. images/s counts
source images (each gives 2 views).

  python benchmarks/augment.py                 # 32 and 224 px, batch 256, 5 runs
  python benchmarks/augment.py --runs=10 --resolutions=32
"""

from __future__ import annotations

import argparse
import statistics
import time

from ssl_jax import cpu_devices

cpu_devices.configure()  # one XLA device per core, as training (before JAX starts)

import jax  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402  pylint: disable=g-import-not-at-top
from jax.sharding import NamedSharding  # noqa: E402  pylint: disable=g-import-not-at-top
from jax.sharding import PartitionSpec as P  # noqa: E402  pylint: disable=g-import-not-at-top

from ssl_jax import augment  # noqa: E402  pylint: disable=g-import-not-at-top
from ssl_jax.parallel import BATCH_AXIS, make_mesh  # noqa: E402  pylint: disable=g-import-not-at-top


def time_views(resolution: int, batch: int, runs: int, preset: str) -> dict:
  """Median seconds per batch of ``views`` for one resolution."""
  recipes = augment.preset(preset, resolution)
  rng = np.random.default_rng(0)
  mesh = make_mesh()
  sharded = NamedSharding(mesh, P(BATCH_AXIS))
  images = jax.device_put(rng.integers(0, 256, (batch, resolution, resolution, 3), np.uint8),
                          sharded)

  # As in the train step: per-example keys folded with the global example index,
  # each device augmenting its share of the batch.
  def per_device(step_key, index, local_images):
    keys = jax.vmap(jax.random.fold_in, (None, 0))(step_key, index)
    return augment.views(keys, local_images, recipes)

  sharded_views = jax.jit(jax.shard_map(per_device, mesh=mesh,
                                        in_specs=(P(), P(BATCH_AXIS), P(BATCH_AXIS)),
                                        out_specs=P(BATCH_AXIS)))
  index = jax.device_put(np.arange(batch, dtype=np.int32), sharded)
  def views(step_key):
    return sharded_views(step_key, index, images)
  key = jax.random.key(0)

  start = time.perf_counter()
  jax.block_until_ready(views(key))
  compile_s = time.perf_counter() - start

  times = []
  for run in range(runs):
    run_key = jax.random.fold_in(key, run + 1)
    start = time.perf_counter()
    jax.block_until_ready(views(run_key))
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  return dict(resolution=resolution, batch=batch, ms=1e3 * median,
              images_per_s=batch / median, compile_s=compile_s, views=len(recipes))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--resolutions", type=lambda s: [int(r) for r in s.split(",")],
                      default=[32, 224], help="comma-separated input/output sides")
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--runs", type=int, default=5, help="timed runs (median reported)")
  parser.add_argument("--preset", default="simclr")
  args = parser.parse_args()
  if args.runs < 1:
    parser.error("--runs must be >= 1")

  device = jax.devices()[0]
  devices = f"{jax.device_count()} x {device.platform} ({device.device_kind})"
  print(f"preset {args.preset!r}; jax {jax.__version__}; median of {args.runs} runs\n")
  print("| resolution | batch | ms/batch | images/s | devices | compile s |")
  print("|---:|---:|---:|---:|---|---:|")
  for resolution in args.resolutions:
    r = time_views(resolution, args.batch, args.runs, args.preset)
    print(f"| {resolution}x{resolution} | {r['batch']} | {r['ms']:.1f} | "
          f"{r['images_per_s']:.0f} | {devices} | {r['compile_s']:.1f} |", flush=True)


if __name__ == "__main__":
  main()
