"""The ``transfer`` protocol: a backbone pre-trained on one dataset, evaluated on another.

The frozen-feature protocols (kNN and linear by default) run on the eval
dataset (``--dataset``, e.g. a CIFAR-10 image folder for an encoder
pre-trained on digits); images are centre-cropped and resized to the
pre-training view size. The record names both datasets.
"""

from __future__ import annotations

from ssl_jax.evaluate import features as features_lib
from ssl_jax.evaluate import knn as knn_lib
from ssl_jax.evaluate import linear as linear_lib
from ssl_jax.evaluate import results as results_lib


def transfer_protocol(workdir: str, eval_config, *, dataset: str | None = None,
                      data_dir: str | None = None, folder: str | None = None,
                      setup=None) -> dict:
  """Runs ``eval_config.transfer.protocols`` on the eval dataset; one combined record."""
  s = setup or features_lib.setup(workdir, dataset=dataset, data_dir=data_dir, folder=folder,
                                  batch_size=eval_config.batch_size)
  metrics, settings = {}, {"from": s.ckpt.config.data.name,
                           "to": s.data_config.name}
  for name in eval_config.transfer.protocols:
    if name == "knn":
      record = knn_lib.knn_protocol(workdir, eval_config, setup=s)
    elif name == "linear":
      record = linear_lib.linear_protocol(workdir, eval_config, setup=s)
    else:
      raise ValueError(f"eval.transfer.protocols has {name!r}; use 'knn' and/or 'linear'.")
    metrics.update({f"{name}_{k}": v for k, v in record["metrics"].items()})
    settings[name] = record["settings"].get("solver", "weighted kNN")
  record = s.record("transfer", metrics, settings, eval_config.seed)
  results_lib.write_result(workdir, record)
  return record
