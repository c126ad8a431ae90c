"""Pieces shared by the protocols that train on labels: splits, batches, views, top-k."""

from __future__ import annotations

from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from ssl_jax import augment
from ssl_jax.parallel import BATCH_AXIS


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int
                       ) -> tuple[np.ndarray, np.ndarray]:
  """(fit indices, held-out indices): ``fraction`` of each class held out, by ``seed``.

  Every class with at least two examples keeps one in each part.
  """
  rng = np.random.default_rng((seed, 1))
  fit, held = [], []
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    n_held = int(round(fraction * len(idx)))
    if len(idx) >= 2:
      n_held = min(max(n_held, 1), len(idx) - 1)
    held.append(idx[:n_held])
    fit.append(idx[n_held:])
  return np.sort(np.concatenate(fit)), np.sort(np.concatenate(held))


def class_balanced_subset(labels: np.ndarray, fraction: float, seed: int,
                          num_classes: int | None = None) -> np.ndarray:
  """Sorted indices of a class-balanced labelled subset (SimCLR Sec. 6 / B.5).

  ``fraction`` of the split, the same number ``m = max(1, round(fraction * N / C))``
  of examples from every class (capped by the class size), drawn with
  ``np.random.default_rng(seed)``: the same seed always gives the same subset,
  and the 1% subset of a seed is not required to lie inside its 10% subset.
  """
  num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
  per_class = max(1, int(round(fraction * len(labels) / num_classes)))
  rng = np.random.default_rng((seed, 2, int(round(fraction * 1e6))))
  chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(num_classes)]
  return np.sort(np.concatenate(chosen))


def epoch_batches(indices: np.ndarray, batch_size: int, seed: int, epochs: int
                  ) -> Iterator[np.ndarray]:
  """Index batches: each epoch a permutation of ``indices`` by (seed, epoch), full batches."""
  steps = len(indices) // batch_size
  for epoch in range(epochs):
    order = np.random.default_rng((seed, 3, epoch)).permutation(indices)
    for s in range(steps):
      yield order[s * batch_size:(s + 1) * batch_size]


def fit_batch_size(requested: int, available: int, num_devices: int) -> int:
  """The largest multiple of the device count <= min(requested, available)."""
  size = min(requested, available)
  size -= size % num_devices
  if size <= 0:
    raise ValueError(f"{available} training examples cannot fill a batch over "
                     f"{num_devices} devices.")
  return size


def train_recipe(size: int, crop_scale) -> augment.ViewRecipe:
  """The supervised protocols' training view: random-resized crop + flip only."""
  return augment.ViewRecipe(size=size, crop_scale=tuple(crop_scale), flip_prob=0.5,
                            jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0,
                            solarize_prob=0.0)


def augmented_views(key, images, recipe, axis_name=BATCH_AXIS):
  """Per-device: views with per-example keys folded with the GLOBAL example index."""
  n = images.shape[0]
  index = jax.lax.axis_index(axis_name) * n + jnp.arange(n)
  keys = jax.vmap(jax.random.fold_in, (None, 0))(key, index)
  return augment.augment_view(keys, images, recipe)


def put(mesh, *arrays):
  """Host arrays -> global arrays split over the mesh's batch axis."""
  sharding = jax.sharding.NamedSharding(mesh, P(BATCH_AXIS))
  return tuple(jax.make_array_from_process_local_data(sharding, np.asarray(a))
               for a in arrays)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
  """Fraction of rows whose label is among the ``k`` highest scores ([N, C], [N])."""
  k = min(k, scores.shape[-1])
  top = np.argsort(-scores, axis=-1, kind="stable")[:, :k]
  return float(np.mean(np.any(top == labels[:, None], axis=-1)))


def predict_in_batches(fn, mesh, images: np.ndarray, batch_size: int) -> np.ndarray:
  """``fn(images_batch) -> [B, ...]`` over ``images`` in padded, device-split batches."""
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
    (x,) = put(mesh, chunk)
    out.append(np.asarray(fn(x))[:batch_size - pad])
  return np.concatenate(out)
