"""Jigsaw: permutation set (max-min Hamming, determinism), tiles vs NumPy, puzzles, smoke run."""

import itertools

import jax
import numpy as np

from ssl_jax import train
from ssl_jax.methods import jigsaw

import method_testing


def _hamming(a, b):
  return sum(x != y for x, y in zip(a, b))


def test_permutation_set_min_hamming_and_determinism():
  perms = jigsaw.permutation_set(9, 100, 0)
  assert perms.shape == (100, 9)
  assert all(sorted(p) == list(range(9)) for p in perms.tolist())
  assert len({tuple(p) for p in perms.tolist()}) == 100
  brute = min(_hamming(a, b) for a, b in itertools.combinations(perms.tolist(), 2))
  assert brute == jigsaw.min_hamming_distance(perms)
  assert brute >= 6  # a random set of 100 has pairs at distance 2
  # Deterministic from the seed (recomputed, not the cache), different across seeds.
  np.testing.assert_array_equal(jigsaw.permutation_set.__wrapped__(9, 100, 0), perms)
  assert not np.array_equal(jigsaw.permutation_set(9, 100, 1), perms)


def test_permutation_set_is_greedy_max_min():
  """Each choice maximises the min distance to the earlier ones (brute force, 5 tiles)."""
  perms = jigsaw.permutation_set(5, 12, 3).tolist()
  everything = list(itertools.permutations(range(5)))
  for k in range(1, len(perms)):
    def min_to_chosen(p):
      return min(_hamming(p, q) for q in perms[:k])
    best = max(min_to_chosen(p) for p in everything if list(p) not in perms[:k])
    assert min_to_chosen(perms[k]) == best, k


def _reference_tiles(image, offsets, channel_offsets, grid, cell, tile):
  size = image.shape[0]
  out = np.zeros((grid * grid, tile, tile, image.shape[-1]), image.dtype)
  for i in range(grid * grid):
    row, col = divmod(i, grid)
    for c in range(image.shape[-1]):
      y = min(max(row * cell + offsets[i, 0] + channel_offsets[i, c, 0], 0), size - tile)
      x = min(max(col * cell + offsets[i, 1] + channel_offsets[i, c, 1], 0), size - tile)
      out[i, :, :, c] = image[y:y + tile, x:x + tile, c]
  return out


def test_extract_tiles_matches_numpy():
  rng = np.random.default_rng(0)
  grid, cell, tile = 3, 7, 5
  image = rng.normal(size=(21, 21, 3)).astype(np.float32)
  offsets = rng.integers(0, cell - tile + 1, (9, 2)).astype(np.int32)
  channel_offsets = rng.integers(-2, 3, (9, 3, 2)).astype(np.int32)
  tiles = jigsaw.extract_tiles(image, offsets, channel_offsets, grid=grid, cell=cell, tile=tile)
  np.testing.assert_array_equal(
      np.asarray(tiles), _reference_tiles(image, offsets, channel_offsets, grid, cell, tile))


def test_puzzles_reassemble_to_the_image(data_dir):
  """With full-cell tiles and no colour ops, inverse-permuted tiles stitch back the view."""
  config = method_testing.method_config("jigsaw", data_dir, batch_size=4)
  cfg = config.jigsaw
  cfg.tile_size, cfg.channel_jitter, cfg.jitter_prob, cfg.grayscale_prob = 5, 0, 0.0, 0.0
  cfg.crop_scale, cfg.num_permutations = (1.0, 1.0), 10
  config.augment.size = 15
  images = np.random.default_rng(1).integers(0, 256, (4, 15, 15, 3), dtype=np.uint8)
  keys = jax.random.split(jax.random.key(0), 4)
  recipes = jigsaw.view_recipes(config)
  recipes = (recipes[0].__class__(**{**recipes[0].__dict__, "crop_ratio": (1.0, 1.0)}),)
  tiles, labels = jax.jit(lambda k, x: jigsaw.make_views(k, x, recipes, config=config))(
      keys, images)
  tiles, labels = np.asarray(tiles), np.asarray(labels)
  perms = jigsaw.permutation_set(9, 10, cfg.permutation_seed)
  assert tiles.shape == (4, 9, 5, 5, 3) and labels.dtype == np.int32
  for b in range(4):
    unshuffled = tiles[b][np.argsort(perms[labels[b]])]
    stitched = unshuffled.reshape(3, 3, 5, 5, 3).transpose(0, 2, 1, 3, 4).reshape(15, 15, 3)
    view = images[b].astype(np.float64) / 255.0
    for i in range(9):  # each tile is its cell, standardised per channel
      r, c = divmod(i, 3)
      cell = view[5 * r:5 * r + 5, 5 * c:5 * c + 5]
      expected = (cell - cell.mean((0, 1))) / np.maximum(cell.std((0, 1)), 1e-3)
      np.testing.assert_allclose(stitched[5 * r:5 * r + 5, 5 * c:5 * c + 5], expected,
                                 atol=1e-4)
  assert len(set(labels.tolist())) > 1


def test_loss_8_devices_equals_1_device(data_dir):
  config = method_testing.method_config("jigsaw", data_dir, **{"augment.size": 18,
                                                               "jigsaw.tile_size": 5})
  loss, metrics = method_testing.assert_loss_device_invariant(config)
  assert abs(float(loss) - np.log(config.jigsaw.num_permutations)) < 1.0
  assert 0.0 <= metrics["permutation_accuracy"] <= 1.0


def test_smoke_run(data_dir, tmp_path):
  config = method_testing.method_config(
      "jigsaw", data_dir, total_steps=12, log_every_steps=4, batch_size=32,
      **{"augment.size": 18, "jigsaw.tile_size": 5, "jigsaw.num_permutations": 10,
})
  config.optim.base_learning_rate = 0.4
  results = train.train_and_evaluate(config, str(tmp_path))
  records = [r for r in method_testing.read_metrics(str(tmp_path)) if "loss" in r]
  losses = [r["loss"] for r in records]
  assert np.all(np.isfinite(losses))
  assert losses[-1] < losses[0], losses
  assert "permutation_accuracy" in records[-1]
  assert results["step"] == 12
