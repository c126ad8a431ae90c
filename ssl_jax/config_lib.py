"""The parts of a run config every method shares; method configs add their own.

Configs are data (STYLE.md): paper defaults live in ``configs/<method>.py``
with a comment citing the paper, code has no magic numbers. A config is
locked by the CLI, so an unknown field is an error that names it.
"""

from __future__ import annotations

import ml_collections

from ssl_jax import data
from ssl_jax import optim


def base_config(dataset: str = "digits") -> ml_collections.ConfigDict:
  """Trainer, data, model, optimizer and monitor fields with neutral defaults."""
  c = ml_collections.ConfigDict()
  c.method = ""
  c.seed = 0
  c.batch_size = 256                 # global, over all devices and hosts
  c.total_epochs = 100.0
  c.total_steps = 0                  # > 0 overrides total_epochs
  c.eval_batch_size = 256
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  c.checkpoint_max_to_keep = 3
  # Split each device's batch into this many chunks (less memory, same loss):
  # gradient caching or accumulation, see ssl_jax/microbatch.py.
  c.microbatches = 1
  c.init_from = ""                   # workdir/checkpoint to take params from when starting fresh

  c.model = ml_collections.ConfigDict(dict(
      depth=50, width_multiplier=1, base_width=64, stem="imagenet", norm="batch",
      zero_init_residual=False, dtype="float32", remat=False))
  c.augment = ml_collections.ConfigDict(dict(preset="simclr", size=224))
  c.data = data.default_data_config(dataset)
  c.optim = optim.default_optim_config("lars")
  # Weighted kNN monitor (Wu et al. 2018; DINO's k=200, T=0.07); 0 disables it.
  c.knn = ml_collections.ConfigDict(dict(every_epochs=10.0, k=200, temperature=0.07))
  return c


def parse_variant(arg: str | None, known: tuple[str, ...], default: str) -> tuple[str, set[str]]:
  """'cifar10,runlocal' -> ('cifar10', {'runlocal'}); unknown words are errors."""
  words = [w.strip() for w in (arg or "").split(",") if w.strip()]
  datasets = [w for w in words if w in known]
  flags = {w for w in words if w not in known}
  unknown = flags - {"runlocal"}
  if unknown or len(datasets) > 1:
    raise ValueError(
        f"Unknown config variant {sorted(unknown) or datasets}: use one of {list(known)}, "
        "optionally followed by ',runlocal' (e.g. configs/simclr.py:cifar10,runlocal).")
  return (datasets[0] if datasets else default), flags


def apply_runlocal(c: ml_collections.ConfigDict) -> None:
  """Shrinks a run to a laptop smoke test (big_vision's ``runlocal``)."""
  c.batch_size = 64
  c.eval_batch_size = 64
  c.total_steps = 20
  c.log_every_steps = 5
  c.checkpoint_every_steps = 10
  c.model.depth = 18
  c.model.base_width = 8
  c.knn.every_epochs = 0.0
  c.optim.warmup_epochs = 0.0
