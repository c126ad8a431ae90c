r"""Host input pipeline alone: TFDS ArrayRecord -> decode (-> host crops) -> device, images/s.

Compare with benchmarks/train_step.py's images/s: if the pipeline is not well
above the step's rate, training is input-bound.

  python benchmarks/input_pipeline.py --dataset=digits
  python benchmarks/input_pipeline.py --dataset=image_folder --folder=/tmp/cifar10 \
      --data_dir=/tmp/tfds --threads=1,2,4,8
"""

from __future__ import annotations

import time

from absl import app
from absl import flags
import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from ssl_jax import augment
from ssl_jax import data
from ssl_jax.parallel import BATCH_AXIS, make_mesh

_DATASET = flags.DEFINE_string("dataset", "digits", "data.name (digits, cifar10, image_folder, ...).")
_FOLDER = flags.DEFINE_string("folder", None, "Root of an image_folder dataset.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 50, "Timed batches (after 5 warm-up batches).")
_THREADS = flags.DEFINE_list("threads", ["8"], "data.num_threads values to compare.")
_PRESET = flags.DEFINE_string("preset", "simclr", "View preset for variable-size datasets.")
_SIZE = flags.DEFINE_integer("size", 224, "View size for variable-size datasets.")


def measure(threads: int, mesh) -> dict:
  config = data.default_data_config(_DATASET.value)
  config.folder = _FOLDER.value
  config.data_dir = _DATA_DIR.value
  config.num_threads = threads
  info = data.dataset_info(config)
  recipes = augment.preset(_PRESET.value, _SIZE.value) if info.image_shape is None else None
  batches = data.train_batches(config, global_batch_size=_BATCH.value, seed=0,
                               crop_recipes=recipes)
  sharding = NamedSharding(mesh, P(BATCH_AXIS))

  def put(batch):
    arrays = {k: v for k, v in batch.items() if k in ("image", "views")}
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), arrays)

  for _ in range(5):
    jax.block_until_ready(put(next(batches)))
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    jax.block_until_ready(put(next(batches)))
  seconds = time.perf_counter() - start
  return {"dataset": info.name, "threads": threads, "batch": _BATCH.value,
          "images_per_sec": _STEPS.value * _BATCH.value / seconds,
          "ms_per_batch": 1e3 * seconds / _STEPS.value}


def main(argv):
  del argv
  mesh = make_mesh()
  rows = [measure(int(t), mesh) for t in _THREADS.value]
  print(f"\nhost -> {mesh.size} {jax.devices()[0].platform} devices\n")
  print("| dataset | threads | batch | images/s | ms/batch |")
  print("|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['dataset']} | {r['threads']} | {r['batch']} | {r['images_per_sec']:.0f} | "
          f"{r['ms_per_batch']:.1f} |")


if __name__ == "__main__":
  app.run(main)
