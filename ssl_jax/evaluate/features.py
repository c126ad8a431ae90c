"""Frozen-backbone features, whole splits in memory, and the checkpoint under evaluation.

Every protocol starts here: ``load_checkpoint`` restores a pre-training run
(whatever device topology wrote it), ``eval_data_config`` names the dataset the
protocol runs on (the pre-training one, or another for transfer), and
``extract_features`` / ``load_split`` read a split once in its stored order.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

from ssl_jax import augment
from ssl_jax import checkpoint
from ssl_jax import data
from ssl_jax.models import encoder as encoder_lib
from ssl_jax.parallel import BATCH_AXIS


def make_feature_fn(config, mesh, *, normalize: bool = True):
  """jit(shard_map) of uint8 [B, H, W, 3] -> float32 [B, D] centre-crop features.

  Eval-mode BatchNorm; ``normalize`` l2-normalises the features (the kNN
  monitor); the linear probe takes them raw and standardises them itself.
  """
  size = config.augment.size

  def features(params, batch_stats, images):
    x = augment.center_view(images, size)
    f = encoder_lib.encode(config.model, params, batch_stats, x).astype(jnp.float32)
    if normalize:
      f = f / jnp.linalg.norm(f, axis=-1, keepdims=True).clip(1e-12)
    return f

  return jax.jit(jax.shard_map(features, mesh=mesh, in_specs=(P(), P(), P(BATCH_AXIS)),
                               out_specs=P(BATCH_AXIS)))


def _single_process(what: str) -> None:
  if jax.process_count() > 1:
    # Each host would hold only its shard of the split; gathering it is the
    # scale-out issue's work. Fail loudly rather than report a wrong number.
    raise NotImplementedError(f"{what} runs on one process for now; on multi-host runs set "
                              "config.knn.every_epochs=0 and evaluate afterwards on one host.")


def _eval_batch_size(batch_size: int, mesh) -> int:
  if batch_size % mesh.size:
    raise ValueError(f"eval batch size {batch_size} must be divisible by the "
                     f"{mesh.size} devices.")
  return batch_size


def extract_features(feature_fn, params, batch_stats, config, split, mesh, *,
                     data_config=None, max_examples: int | None = None):
  """(features float32 [N, D], labels int32 [N]) of one split, on this host.

  Args:
    feature_fn: from ``make_feature_fn``.
    params, batch_stats: the method's trees (replicated, or host arrays).
    config: the run config (``eval_batch_size``; ``data`` unless ``data_config``).
    split: a split name of the dataset.
    mesh: the 1-D mesh the features are computed on.
    data_config: the dataset to read (default ``config.data``).
    max_examples: stop after the batch that reaches this many examples.
  """
  _single_process("Feature extraction")
  batch_size = _eval_batch_size(config.eval_batch_size, mesh)
  sharding = jax.sharding.NamedSharding(mesh, P(BATCH_AXIS))
  feats, labels, count = [], [], 0
  for batch in data.eval_batches(data_config or config.data, split, batch_size=batch_size):
    images = jax.make_array_from_process_local_data(sharding, batch["image"])
    f = feature_fn(params, batch_stats, images)
    mask = np.asarray(batch["mask"], bool)
    feats.append(np.asarray(f)[mask])
    labels.append(np.asarray(batch["label"])[mask])
    count += int(mask.sum())
    if max_examples is not None and count >= max_examples:
      break
  feats, labels = np.concatenate(feats), np.concatenate(labels).astype(np.int32)
  if max_examples is not None:
    feats, labels = feats[:max_examples], labels[:max_examples]
  return feats, labels


def load_split(data_config, split: str, *, batch_size: int = 256):
  """(images uint8 [N, H, W, 3], labels int32 [N]): one split in host memory.

  For the protocols that train on augmented images (SGD linear probe,
  fine-tuning): the random-resized crops are then drawn on the device from
  these images. Variable-size datasets come centre-cropped to
  ``data_config.image_size`` (see ``data.eval_batches``).
  """
  _single_process("Loading a split")
  images, labels = [], []
  for batch in data.eval_batches(data_config, split, batch_size=batch_size):
    mask = np.asarray(batch["mask"], bool)
    images.append(batch["image"][mask])
    labels.append(np.asarray(batch["label"])[mask])
  return np.concatenate(images), np.concatenate(labels).astype(np.int32)


@dataclasses.dataclass
class Checkpoint:
  """A pre-training checkpoint under evaluation.

  Attributes:
    path: the checkpoint's step directory.
    step: its training step.
    config: the pre-training run config.
    params, batch_stats: the method's trees as host arrays ({'encoder': ...}).
  """
  path: str
  step: int
  config: ml_collections.ConfigDict
  params: Any
  batch_stats: Any


def load_checkpoint(workdir_or_checkpoint: str) -> Checkpoint:
  """The newest checkpoint of a workdir (or the given one), on any device topology."""
  raw, meta, step = checkpoint.restore_raw(workdir_or_checkpoint)
  directory, _ = checkpoint._resolve(workdir_or_checkpoint)  # pylint: disable=protected-access
  return Checkpoint(path=os.path.join(directory, str(step)), step=int(step),
                    config=ml_collections.ConfigDict(meta["config"]),
                    params={"encoder": raw["params"]["encoder"]},
                    batch_stats={"encoder": (raw.get("batch_stats") or {}).get("encoder", {})})


def eval_data_config(pretrain_config, dataset: str | None = None, *,
                     data_dir: str | None = None, folder: str | None = None
                     ) -> ml_collections.ConfigDict:
  """The data config a protocol runs on.

  ``dataset=None`` (or the pre-training dataset's name): the pre-training
  data config; another name: that dataset's defaults (transfer), with the
  pre-training ``data_dir`` unless ``data_dir`` is given.
  """
  base = pretrain_config.data
  if dataset in (None, "", base.name) and not folder:
    config = ml_collections.ConfigDict(base.to_dict())
  else:
    config = data.default_data_config(dataset or base.name)
    config.data_dir = base.get("data_dir")
  if data_dir:
    config.data_dir = data_dir
  if folder:
    config.folder = folder
  return config


def replicate(tree, mesh):
  """Host arrays -> arrays replicated on every device of ``mesh``."""
  sharding = jax.sharding.NamedSharding(mesh, P())
  return jax.tree.map(lambda x: jax.device_put(np.asarray(x), sharding), tree)


@dataclasses.dataclass
class Setup:
  """What every protocol needs: the checkpoint, the mesh and the eval dataset."""
  ckpt: Checkpoint
  mesh: Any
  config: ml_collections.ConfigDict     # pre-training config, eval_batch_size and data set
  data_config: ml_collections.ConfigDict
  info: data.DatasetInfo
  params: Any                           # replicated on the mesh
  batch_stats: Any

  def record(self, protocol: str, metrics: dict, settings: dict, seed: int) -> dict:
    """The result record of ``results.write_result``."""
    return {"protocol": protocol, "dataset": self.data_config.name, "metrics": metrics,
            "settings": settings, "checkpoint": self.ckpt.path, "step": self.ckpt.step,
            "seed": int(seed), "method": self.config.get("method", ""),
            "pretrain_dataset": self.config.data.name,
            "devices": int(self.mesh.size)}


def setup(workdir: str, *, dataset: str | None = None, data_dir: str | None = None,
          folder: str | None = None, batch_size: int = 256, mesh=None) -> Setup:
  """Restores ``workdir``'s newest checkpoint and opens the eval dataset."""
  from ssl_jax.parallel import make_mesh  # pylint: disable=g-import-not-at-top
  mesh = make_mesh() if mesh is None else mesh
  ckpt = load_checkpoint(workdir)
  config = ml_collections.ConfigDict(ckpt.config.to_dict())
  data_config = eval_data_config(config, dataset, data_dir=data_dir, folder=folder)
  config.data = data_config
  # A multiple of the device count, whatever count wrote the checkpoint.
  config.eval_batch_size = max(mesh.size, batch_size - batch_size % mesh.size)
  info = data.dataset_info(data_config)
  return Setup(ckpt=ckpt, mesh=mesh, config=config, data_config=data_config, info=info,
               params=replicate(ckpt.params, mesh),
               batch_stats=replicate(ckpt.batch_stats, mesh))
