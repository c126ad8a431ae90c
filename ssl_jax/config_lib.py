"""The parts of a run config every method shares; method configs add their own.

Configs are data (STYLE.md): paper defaults live in ``configs/<method>.py``
with a comment citing the paper, code has no magic numbers. A config is
locked by the CLI, so an unknown field is an error that names it.
"""

from __future__ import annotations

from collections.abc import Mapping
import difflib
import importlib.util
import os

import ml_collections

from ssl_jax import data
from ssl_jax import optim


# The dataset variants every method config accepts (after the colon).
DATASETS = ("digits", "cifar10", "cifar100", "stl10", "imagenet2012", "imagenette",
            "image_folder")
# The variants that take each method's CIFAR recipe (the paper's CIFAR appendix where
# it has one): ResNet-18 with the CIFAR stem on small images; stl10 and digits then
# adjust the image size / the budget.
CIFAR_RECIPE_DATASETS = ("cifar10", "cifar100", "digits", "image_folder", "stl10")


def apply_digits(c: ml_collections.ConfigDict, *, batch_size: int | None = 256,
                 total_epochs: float = 20.0, knn_every_epochs: float = 10.0) -> None:
  """Sizes a run on the offline digits default for a few minutes on two CPU cores.

  ResNet-18 at 1/8 width (base width 8), kNN on the 1,000 held-out digits;
  ``batch_size=None`` keeps the method's own batch size.
  """
  c.model.base_width = 8
  if batch_size is not None:
    c.batch_size = batch_size
  c.eval_batch_size = 256
  c.total_epochs = total_epochs
  c.log_every_steps = 15
  c.checkpoint_every_steps = 75
  c.knn.every_epochs = knn_every_epochs


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
  # A step whose loss or gradients are NaN/Inf: False stops the run at the next
  # log interval (naming the step and the last good checkpoint); True skips the
  # update on the device and counts it in TrainState.skipped_updates.
  c.skip_nonfinite_updates = False
  # No step finished for this long (evaluation and epoch hooks excepted): the
  # process is wedged and exits with status 75 to be rerun (ssl_jax/watchdog.py).
  # 0 disables it. It must exceed log_every_steps steps.
  c.stall_timeout_minutes = 30.0

  c.model = ml_collections.ConfigDict(dict(
      depth=50, width_multiplier=1, base_width=64, stem="imagenet", norm="batch",
      zero_init_residual=False, dtype="float32", remat=False,
      input_filter="none"))  # 'sobel': DeepCluster's fixed grey-gradient input filter
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


def load_module(path: str):
  """The config file at ``path`` as a module (``configs/`` is not a package); its
  ``get_config(variant)`` is what ``--config=path:variant`` loads. For scripts and tests."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"No config file at {path}: configs are configs/<method>.py.")
  name = "ssl_jax_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


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


def _field_type(config, key):
  """The declared type of a field (placeholders included), or None if unknown."""
  try:
    return config.get_ref(key).get_type()
  except (ValueError, AttributeError, KeyError):
    value = config[key]
    return None if value is None else type(value)


def _type_problem(value, expected) -> str | None:
  """Why ``value`` does not fit a field of type ``expected`` (None if it does)."""
  if value is None or expected is None:
    return None
  if expected is bool:
    ok = isinstance(value, bool)
  elif expected is int:
    ok = isinstance(value, int) and not isinstance(value, bool)
  elif expected is float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  elif expected in (tuple, list):
    ok = isinstance(value, (tuple, list))
  else:
    ok = isinstance(value, expected)
  return None if ok else f"expected {expected.__name__}, got {type(value).__name__} {value!r}"


def check_fields(config, reference, path: str = "config", *, open_keys=(),
                 open_sections=()) -> list[str]:
  """Unknown fields and wrong types of ``config`` against ``reference``, recursively.

  Args:
    config: the (nested) config to check.
    reference: a config of the same layout whose values give the allowed
      fields and their types (placeholders' declared types count).
    path: the name of ``config`` in the messages.
    open_keys: fields of ``config`` allowed though not in ``reference``, not
      checked further (the method sections).
    open_sections: sections that methods may extend with fields of their own
      (e.g. CPC's ``model.patch_size``): there an unknown field is an error only
      when it looks like a typo of a known one.

  Returns:
    One line per problem, each naming the field and the fix; empty if none.
  """
  errors = []
  for key in config.keys():
    name = f"{path}.{key}"
    if key not in reference:
      if key in open_keys:
        continue
      known = sorted(set(reference.keys()) | set(open_keys))
      close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
      if close:
        errors.append(f"{name}: unknown field; did you mean {path}.{close[0]}?")
      elif path.split(".", 1)[-1] not in open_sections or path == "config":
        errors.append(f"{name}: unknown field; remove it or use one of {known}")
      continue
    value, expected = config[key], reference[key]
    if isinstance(expected, (Mapping, ml_collections.ConfigDict)):
      if not isinstance(value, (Mapping, ml_collections.ConfigDict)):
        errors.append(f"{name}: expected a section (dict) of fields, got "
                      f"{type(value).__name__} {value!r}")
      else:
        errors.extend(check_fields(value, expected, name, open_sections=open_sections))
      continue
    problem = _type_problem(value, _field_type(reference, key))
    if problem:
      errors.append(f"{name}: {problem}; set it to a "
                    f"{_field_type(reference, key).__name__} (default {expected!r})")
  return errors
