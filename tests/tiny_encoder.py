"""The encoder and view size every CPU test trains, set in one place.

ResNet-10 (one basic block per stage) at base width 4, on 16x16 views: a train
step compiles in seconds and runs in milliseconds on a CPU. Plain Python (no
jax import), so subprocess workers can use it before they configure devices.
"""

from __future__ import annotations

FIELDS = {"model.depth": 10, "model.base_width": 4, "augment.size": 16}

# The same fields as `python -m ssl_jax.main` overrides.
CLI_FLAGS = tuple(f"--config.{key}={value}" for key, value in FIELDS.items())


def apply(config):
  """Sets ``config``'s encoder depth, width and view size to the tiny ones; returns it."""
  for key, value in FIELDS.items():
    section, field = key.split(".")
    config[section][field] = value
  return config
