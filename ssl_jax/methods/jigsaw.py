"""Jigsaw puzzles (Noroozi & Favaro 2016, "Unsupervised Learning of Visual
Representations by Solving Jigsaw Puzzles").

The view (side ``grid * cell``) is cut into a ``grid x grid`` grid of cells;
from every cell a ``tile x tile`` tile is taken at a random offset inside the
cell (Sec. 3: 64-px tiles in 75-px cells of a 225-px crop, "so that the
network cannot use the continuity of edges"). The tiles are shuffled by one
permutation drawn from a fixed set of ``num_permutations`` (Sec. 3.2: chosen
so that they are far apart in Hamming distance; 1,000 in the paper), and the
network predicts which one (a ``num_permutations``-way cross-entropy).

Against the chromatic shortcuts of Sec. 3.3 each tile gets, independently:
a spatial jitter of each colour channel (0-2 px in the paper), a colour
jitter, grayscale with some probability, and its own per-channel
normalisation (zero mean, unit std: the released PyTorch/Caffe code).

The network is the siamese "context-free network" of Fig. 3: the library's
ResNet encoder applied to every tile with shared weights, the tiles' pooled
features concatenated in the (shuffled) tile order, then an MLP classifier
over the permutation index. ``params['encoder']`` is that shared ResNet; the kNN
monitor and ``load_encoder`` apply it to the whole (centre-cropped) image, the
paper's transfer protocol (conv weights on full images).

The permutation set is computed once on the host in NumPy
(``permutation_set``, deterministic from ``config.jigsaw.permutation_seed``) and
enters the compiled step as a constant; all per-pixel work (tiles, jitter,
normalisation) runs on device in ``make_views``, from the step's per-example keys.
"""

from __future__ import annotations

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssl_jax import augment
from ssl_jax import diagnostics
from ssl_jax.models import encoder as encoder_lib
from ssl_jax.models import heads

# Floor of a tile's per-channel std before dividing (a flat tile is only centred;
# the reference code sets std 0 to 1).
_STD_FLOOR = 1e-3


@functools.lru_cache(maxsize=8)
def permutation_set(num_tiles: int, num_permutations: int, seed: int) -> np.ndarray:
  """Greedy max-min-Hamming permutation set, int32 [num_permutations, num_tiles].

  Farthest-point selection over all ``num_tiles!`` permutations: the first is
  drawn at random; each next one maximises its MINIMUM Hamming distance to the
  ones already chosen, ties broken by the largest SUM of distances (the
  criterion of the paper's Algorithm 1, which maximises the average), then at
  random. All draws come from ``np.random.default_rng(seed)``, so the set is a
  pure function of its arguments. Cached: computed once per process (~1 s for
  100 of 9! permutations, ~10 s for 1,000 on a busy CPU).
  """
  if num_tiles > 9:
    raise ValueError(f"num_tiles={num_tiles} > 9: the {num_tiles}! candidates do not fit.")
  candidates = np.asarray(list(itertools.permutations(range(num_tiles))), np.int8)
  if not 1 <= num_permutations <= len(candidates):
    raise ValueError(f"num_permutations={num_permutations} must be in [1, {len(candidates)}].")
  rng = np.random.default_rng(seed)
  # equal[i, v]: which candidates hold tile v at position i (uint8 [T, T, N]), so
  # a Hamming distance to one permutation is T - sum of T rows of this table.
  equal = (candidates.T[:, None, :] == np.arange(num_tiles, dtype=np.int8)[None, :, None]
           ).astype(np.uint8)
  min_dist = np.full(len(candidates), num_tiles + 1, np.int32)
  sum_dist = np.zeros(len(candidates), np.int64)
  chosen = [int(rng.integers(len(candidates)))]
  positions = np.arange(num_tiles)
  for _ in range(num_permutations - 1):
    matches = np.sum(equal[positions, candidates[chosen[-1]]], axis=0, dtype=np.int32)
    dist = num_tiles - matches
    np.minimum(min_dist, dist, out=min_dist)
    sum_dist += dist
    min_dist[chosen[-1]] = -1  # never pick a chosen one again
    best = min_dist == min_dist.max()
    best &= sum_dist == np.max(np.where(best, sum_dist, -1))
    chosen.append(int(rng.choice(np.flatnonzero(best))))
  return candidates[chosen].astype(np.int32)


def min_hamming_distance(perms: np.ndarray) -> int:
  """Smallest pairwise Hamming distance of a permutation set [P, T]."""
  dist = np.sum(perms[:, None, :] != perms[None, :, :], axis=-1)
  dist[np.diag_indices(len(perms))] = perms.shape[1] + 1
  return int(dist.min())


def extract_tiles(image: jax.Array, offsets: jax.Array, channel_offsets: jax.Array, *,
                  grid: int, cell: int, tile: int) -> jax.Array:
  """The grid's tiles of one image, in row-major cell order.

  Args:
    image: float [S, S, C], S >= grid * cell.
    offsets: int32 [grid * grid, 2]: (dy, dx) of each tile inside its cell,
      in ``[0, cell - tile]``.
    channel_offsets: int32 [grid * grid, C, 2]: an extra shift of each colour
      channel of each tile (Sec. 3.3's chromatic jitter; zeros for none). The
      window is clamped to the image.
    grid, cell, tile: static geometry.

  Returns:
    float [grid * grid, tile, tile, C]: tile ``i`` (cell row ``i // grid``,
    column ``i % grid``), channel ``c`` is
    ``image[y:y + tile, x:x + tile, c]`` with
    ``y = clip(row * cell + dy + cdy_c, 0, S - tile)`` (same for x).
  """
  cells = jnp.arange(grid * grid)
  origin = jnp.stack([cells // grid, cells % grid], axis=-1) * cell + offsets  # [T, 2]

  def one_channel(plane, start):  # plane [S, S], start [2]
    return jax.lax.dynamic_slice(plane, (start[0], start[1]), (tile, tile))

  def one_tile(start, chan_offsets):  # [2], [C, 2]
    # Clamped explicitly: dynamic_slice would wrap a negative start around.
    starts = jnp.clip(start[None, :] + chan_offsets, 0, image.shape[0] - tile)  # [C, 2]
    planes = jnp.moveaxis(image, -1, 0)  # [C, S, S]
    return jnp.moveaxis(jax.vmap(one_channel)(planes, starts), 0, -1)

  return jax.vmap(one_tile)(origin, channel_offsets)


def standardize_tiles(tiles: jax.Array) -> jax.Array:
  """Per-tile, per-channel zero mean / unit std: [..., t, t, C] -> same."""
  mean = jnp.mean(tiles, axis=(-3, -2), keepdims=True)
  std = jnp.std(tiles, axis=(-3, -2), keepdims=True)
  return (tiles - mean) / jnp.maximum(std, _STD_FLOOR)


def _geometry(config) -> tuple[int, int, int]:
  cfg = config.jigsaw
  grid, tile = cfg.grid, cfg.tile_size
  cell = config.augment.size // grid
  if cell * grid != config.augment.size or not 0 < tile <= cell:
    raise ValueError(
        f"Jigsaw needs config.augment.size ({config.augment.size}) = grid ({grid}) x cell, "
        f"and 0 < tile_size ({tile}) <= cell; e.g. size 225, grid 3, tile 64 (the paper).")
  return grid, cell, tile


def _permutations(config) -> np.ndarray:
  cfg = config.jigsaw
  return permutation_set(cfg.grid * cfg.grid, cfg.num_permutations, cfg.permutation_seed)


def view_recipes(config) -> tuple[augment.ViewRecipe, ...]:
  """The crop the puzzle is cut from, as [0, 1] pixels (colour work is per tile)."""
  cfg = config.jigsaw
  return (augment.ViewRecipe(
      size=config.augment.size, crop_scale=tuple(cfg.crop_scale), flip_prob=cfg.flip_prob,
      jitter_prob=0.0, grayscale_prob=0.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),)


def _one_puzzle(key, image, perms, config, geometry):
  """One image [S, S, 3] in [0, 1] -> (shuffled tiles [T, t, t, 3], permutation index)."""
  cfg = config.jigsaw
  grid, cell, tile = geometry
  num_tiles = grid * grid
  k_perm, k_offset, k_chan, k_jitter, k_jitter_apply, k_gray = jax.random.split(key, 6)
  offsets = jax.random.randint(k_offset, (num_tiles, 2), 0, cell - tile + 1)
  j = cfg.channel_jitter
  channel_offsets = jax.random.randint(k_chan, (num_tiles, 3, 2), -j, j + 1)
  tiles = extract_tiles(image, offsets, channel_offsets, grid=grid, cell=cell, tile=tile)

  jitter_enabled = (cfg.brightness > 0, cfg.contrast > 0, cfg.saturation > 0, cfg.hue > 0)
  if cfg.jitter_prob > 0 and any(jitter_enabled):
    def jitter(k, t):
      order, factors = augment.sample_jitter_params(
          k, cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
      return augment.apply_jitter(t, order, factors, jitter_enabled)
    jittered = jax.vmap(jitter)(jax.random.split(k_jitter, num_tiles), tiles)
    apply = jax.random.uniform(k_jitter_apply, (num_tiles, 1, 1, 1)) < cfg.jitter_prob
    tiles = jnp.where(apply, jittered, tiles)
  if cfg.grayscale_prob > 0:
    gray = jax.random.uniform(k_gray, (num_tiles, 1, 1, 1)) < cfg.grayscale_prob
    tiles = jnp.where(gray, augment.to_grayscale(tiles), tiles)

  label = jax.random.randint(k_perm, (), 0, perms.shape[0])
  shuffled = tiles[jnp.asarray(perms)[label]]  # position i holds tile perms[label, i]
  return standardize_tiles(shuffled), label.astype(jnp.int32)


def make_views(example_keys, images, recipes, *, config):
  """(tiles float32 [n, T, t, t, 3] shuffled and normalised, labels int32 [n]).

  The crop comes from ``augment.views`` (the same per-example keys); tiles,
  their offsets, colour jitter and the permutation from ``fold_in(key, 1)``.
  """
  (crops,) = augment.views(example_keys, images, recipes)
  perms = _permutations(config)
  geometry = _geometry(config)
  puzzle_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(example_keys)
  return jax.vmap(lambda k, x: _one_puzzle(k, x, perms, config, geometry))(puzzle_keys, crops)


class JigsawModel(nn.Module):
  """Context-free network (Fig. 3): shared encoder per tile, concat, MLP -> permutation logits."""
  encoder: nn.Module
  classifier: nn.Module

  def __call__(self, tiles, train: bool):
    n, num_tiles = tiles.shape[:2]
    features = self.encoder(tiles.reshape((n * num_tiles,) + tiles.shape[2:]), train=train)
    logits = self.classifier(features.reshape(n, -1), train=train)
    return features.reshape(n, num_tiles, -1), logits


def _model(config, axis_name) -> JigsawModel:
  cfg = config.jigsaw
  classifier = heads.MLPHead(
      hidden_dims=(cfg.hidden_dim,), output_dim=cfg.num_permutations, use_bn=cfg.head_bn,
      output_bias=True, axis_name=axis_name, dtype=encoder_lib.compute_dtype(config.model))
  return JigsawModel(encoder=encoder_lib.build_encoder(config.model, axis_name),
                     classifier=classifier)


def init(key, config, sample_images):
  """Params {'encoder', 'classifier'}, their batch_stats, no method state."""
  del sample_images
  grid, _, tile = _geometry(config)
  dummy = jnp.zeros((2, grid * grid, tile, tile, 3), jnp.float32)
  variables = _model(config, None).init(key, dummy, train=False)
  return variables["params"], variables.get("batch_stats", {}), {}


def loss_fn(params, batch_stats, method_state, views, key, *, config, axis_name):
  """Cross-entropy over the permutation index (Sec. 3.2), global-batch mean.

  Args:
    views: (tiles float32 [n, T, t, t, 3], labels int32 [n]) from ``make_views``.

  Returns:
    (loss, (batch_stats, method_state, metrics)); metrics has
    ``permutation_accuracy`` and the collapse diagnostics of the tile features.
  """
  del key
  tiles, labels = views
  (features, logits), updated = _model(config, axis_name).apply(
      {"params": params, "batch_stats": batch_stats}, tiles, train=True,
      mutable=["batch_stats"])
  loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
  accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
  if axis_name is not None:
    loss, accuracy = jax.lax.pmean((loss, accuracy), axis_name)
  # Diagnostics on the first tile position's features (one tile per image).
  metrics = {"loss": loss, "permutation_accuracy": accuracy,
             **diagnostics.collapse_metrics(features[:, 0], axis_name=axis_name)}
  return loss, (updated.get("batch_stats", {}), method_state, metrics)


def post_update(params, batch_stats, method_state, step, config, *, total_steps):
  """Jigsaw has no post-update state."""
  del params, batch_stats, step, config, total_steps
  return method_state
