"""CLI: ``python -m ssl_jax.evaluate --workdir=DIR --protocol=knn [--dataset=NAME]``.

Protocols: knn, linear, finetune, semisup, transfer (see ``ssl_jax.evaluate``),
and feature_map (the 2-D t-SNE map of the test features, ``DIR/feature_map.png``).
Settings: ``--eval.<section>.<field>=value`` (``ssl_jax/evaluate/config.py``),
e.g. ``--eval.linear.solver=sgd --eval.knn.k=20,200 --eval.seed=1``.
Results: ``DIR/eval/<protocol>_<dataset>.json`` and a row of ``DIR/eval/results.md``.
"""

from __future__ import annotations

import json
from ssl_jax import cpu_devices  # noqa: E402  (before JAX is imported)

cpu_devices.configure()

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ssl_jax.evaluate import config as config_lib  # noqa: E402

_PROTOCOLS = ("knn", "linear", "finetune", "semisup", "transfer", "feature_map")
_WORKDIR = flags.DEFINE_string("workdir", None, "Pre-training workdir (newest checkpoint).")
_PROTOCOL = flags.DEFINE_enum("protocol", "knn", _PROTOCOLS, "Evaluation protocol.")
_DATASET = flags.DEFINE_string(
    "dataset", None, "Eval dataset ('digits', 'cifar10', 'image_folder', a TFDS name); "
    "default: the pre-training dataset. Required for --protocol=transfer.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir of the eval dataset.")
_FOLDER = flags.DEFINE_string("folder", None, "Root of an image_folder eval dataset.")
_EVAL = config_flags.DEFINE_config_dict("eval", config_lib.default_config(), lock_config=True)
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from ssl_jax import evaluate  # pylint: disable=g-import-not-at-top
  from ssl_jax.evaluate import plots  # pylint: disable=g-import-not-at-top
  protocol = _PROTOCOL.value
  if protocol == "transfer" and not (_DATASET.value or _FOLDER.value):
    raise app.UsageError("--protocol=transfer needs --dataset (and --folder for image folders).")
  kwargs = dict(dataset=_DATASET.value, data_dir=_DATA_DIR.value, folder=_FOLDER.value)
  if protocol == "feature_map":
    path = plots.feature_map_from_workdir(_WORKDIR.value, method="tsne", **kwargs)
    print(f"ssl_jax.evaluate feature_map: {path}", flush=True)
    return
  record = evaluate.PROTOCOLS[protocol](_WORKDIR.value, _EVAL.value, **kwargs)
  print("ssl_jax.evaluate " + json.dumps(
      {k: record[k] for k in ("protocol", "dataset", "metrics", "checkpoint", "step", "seed")}),
      flush=True)


if __name__ == "__main__":
  app.run(main)
