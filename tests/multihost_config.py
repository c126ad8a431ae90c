"""The tiny run config shared by the multi-process test and its workers."""

from __future__ import annotations

import importlib
import os
import sys

import tiny_encoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4


def config(method: str, data_dir: str):
  """``configs/<method>.py:digits`` shrunk to a ResNet-10 at width 4 on 16 px views."""
  sys.path.insert(0, os.path.join(REPO, "configs"))
  c = importlib.import_module(method).get_config("digits")
  c.data.data_dir = data_dir
  tiny_encoder.apply(c)
  c.batch_size = 32
  c.eval_batch_size = 64
  c.total_steps = STEPS
  c.log_every_steps = 1
  # A small learning rate: the comparison is of the distributed arithmetic, and
  # float reductions in another order must not be amplified by large steps.
  c.optim.base_learning_rate = 0.01
  c.checkpoint_every_steps = STEPS
  c.knn.every_epochs = 0.0
  c.optim.warmup_epochs = 0.0
  if method == "mocov3":
    c.mocov3.projector_hidden_dim = c.mocov3.predictor_hidden_dim = 16
    c.mocov3.projection_dim = 8
  return c
