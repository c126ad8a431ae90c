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

import jax
import numpy as np

from ssl_jax import augment


def time_views(resolution: int, batch: int, runs: int, preset: str) -> dict:
  """Median seconds per batch of ``views`` for one resolution."""
  recipes = augment.preset(preset, resolution)
  rng = np.random.default_rng(0)
  images = jax.device_put(rng.integers(0, 256, (batch, resolution, resolution, 3), np.uint8))
  views = jax.jit(augment.views, static_argnums=2)
  key = jax.random.key(0)

  start = time.perf_counter()
  jax.block_until_ready(views(key, images, recipes))
  compile_s = time.perf_counter() - start

  times = []
  for run in range(runs):
    run_key = jax.random.fold_in(key, run + 1)
    start = time.perf_counter()
    jax.block_until_ready(views(run_key, images, recipes))
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
  devices = f"1 x {device.platform} ({device.device_kind})"
  print(f"preset {args.preset!r}; jax {jax.__version__}; median of {args.runs} runs\n")
  print("| resolution | batch | ms/batch | images/s | devices | compile s |")
  print("|---:|---:|---:|---:|---|---:|")
  for resolution in args.resolutions:
    r = time_views(resolution, args.batch, args.runs, args.preset)
    print(f"| {resolution}x{resolution} | {r['batch']} | {r['ms']:.1f} | "
          f"{r['images_per_s']:.0f} | {devices} | {r['compile_s']:.1f} |", flush=True)


if __name__ == "__main__":
  main()
