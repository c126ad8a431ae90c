"""Tests of ssl_jax.augment: determinism, jit, probabilities, crop boxes, and every
colour op against an independent NumPy float64 re-derivation (torchvision's formulas,
``colorsys`` for hue, an explicit reflect-padded convolution for blur).

Compilations are shared through module-level jitted functions; shapes are tiny.
"""

from __future__ import annotations

import collections
import colorsys
import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import augment
from ssl_jax.augment import ViewRecipe

RAW = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # normalisation disabled
OFF = dict(flip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0,
           solarize_prob=0.0)
LUMA = np.array([0.299, 0.587, 0.114])

# Every op on, with strong settings, so that value ranges are stressed; two sizes.
FULL = (
    ViewRecipe(size=16, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.5,
               blur_prob=0.5, solarize_prob=0.5, **RAW),
    ViewRecipe(size=8, crop_scale=(0.05, 0.3), blur_prob=1.0, solarize_prob=0.2, **RAW),
)

views_jit = jax.jit(augment.views, static_argnums=2)
augment_view_jit = jax.jit(augment.augment_view, static_argnames=("recipe", "crop"))


def _uint8_images(seed, shape):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@functools.lru_cache(maxsize=None)
def _full_batch():
  images = _uint8_images(0, (16, 24, 24, 3))
  images[1] = images[0]          # same image, must get a different augmentation
  images[2] = 0                  # black
  images[3] = 255                # white
  images[4] = [255, 0, 0]        # saturated red
  return images


# ------------------------------------------------------------------ whole pipeline


def test_same_key_same_views_different_key_different():
  images = _full_batch()
  a = views_jit(jax.random.key(0), images, FULL)
  b = views_jit(jax.random.key(0), images, FULL)
  c = views_jit(jax.random.key(1), images, FULL)
  assert [v.shape for v in a] == [(16, 16, 16, 3), (16, 8, 8, 3)]
  for va, vb, vc in zip(a, b, c):
    np.testing.assert_array_equal(va, vb)
    assert not np.allclose(va, vc)
  # Per-example keys: the same source image gets two different views.
  assert not np.allclose(a[0][0], a[0][1])


def test_jit_matches_eager_and_view_key_is_fold_in():
  images = _full_batch()
  key = jax.random.key(3)
  jitted = views_jit(key, images, FULL)
  # One view eagerly (op-by-op dispatch is the slow part of this test): the
  # second, so that the key is checked to be fold_in(key, 1).
  eager = augment.augment_view(jax.random.fold_in(key, 1), images, FULL[1])
  np.testing.assert_allclose(jitted[1], eager, atol=1e-5)


def test_values_stay_in_unit_range_before_normalisation():
  images = _full_batch()
  for seed in range(3):
    for view in views_jit(jax.random.key(seed), images, FULL):
      view = np.asarray(view)
      assert view.min() >= 0.0 and view.max() <= 1.0


def test_normalisation_applied_last():
  images = _full_batch()
  raw_recipe = ViewRecipe(size=16, **{**OFF, "flip_prob": 0.5, "solarize_prob": 0.5}, **RAW)
  normalised = dataclasses.replace(raw_recipe, mean=augment.IMAGENET_MEAN,
                                   std=augment.IMAGENET_STD)
  raw = augment.augment_view(jax.random.key(5), images, raw_recipe)
  out = augment.augment_view(jax.random.key(5), images, normalised)
  expected = (np.asarray(raw, np.float64) - augment.IMAGENET_MEAN) / augment.IMAGENET_STD
  np.testing.assert_allclose(out, expected, atol=1e-5)


def _candidates(image01):
  """All 8 (flip, grayscale, solarize) outcomes of a float64 [H, W, 3] image >= 0.6."""
  out = {}
  for flip, gray, sol in itertools.product((False, True), repeat=3):
    x = image01[:, ::-1] if flip else image01
    if gray:
      x = np.repeat((x @ LUMA)[..., None], 3, axis=-1)
    if sol:
      x = 1.0 - x   # every pixel is >= 0.6 > threshold
    out[(flip, gray, sol)] = x
  return out


def test_flip_grayscale_solarize_frequencies():
  n = 2000
  rng = np.random.default_rng(1)
  image = rng.integers(153, 256, (4, 4, 3), dtype=np.uint8)  # all pixels >= 0.6
  recipe = ViewRecipe(size=4, **{**OFF, "flip_prob": 0.5, "grayscale_prob": 0.3,
                                 "solarize_prob": 0.4}, **RAW)
  out = np.asarray(augment_view_jit(jax.random.key(0), np.broadcast_to(image, (n, 4, 4, 3)),
                                    recipe=recipe, crop=False), np.float64)
  candidates = _candidates(image / 255.0)
  counts = collections.Counter()
  for view in out:
    matches = [k for k, c in candidates.items() if np.allclose(view, c, atol=1e-5)]
    assert len(matches) == 1, matches
    counts.update(name for name, on in zip(("flip", "gray", "sol"), matches[0]) if on)
  for name, p in (("flip", 0.5), ("gray", 0.3), ("sol", 0.4)):
    sigma = np.sqrt(n * p * (1 - p))
    assert abs(counts[name] - n * p) < 4 * sigma, (name, counts[name])


def test_jitter_and_blur_frequencies_on_precropped_input():
  n = 2000
  rng = np.random.default_rng(2)
  image = rng.integers(51, 153, (8, 8, 3), dtype=np.uint8)  # in [0.2, 0.6]: no clipping
  batch = np.broadcast_to(image, (n, 8, 8, 3))
  jitter = ViewRecipe(size=8, **{**OFF, "jitter_prob": 0.7}, brightness=0.5, contrast=0.0,
                      saturation=0.0, hue=0.0, **RAW)
  blur = ViewRecipe(size=8, **{**OFF, "blur_prob": 0.4}, blur_sigma=(1.0, 2.0), **RAW)
  jittered, blurred = views_jit(jax.random.key(0), [batch, batch], (jitter, blur))
  x = image / 255.0

  changed = np.abs(np.asarray(jittered) - x).max(axis=(1, 2, 3)) > 1e-4
  assert abs(changed.sum() - 0.7 * n) < 4 * np.sqrt(n * 0.21)
  # Multiplicative brightness: one factor per image, uniform in [0.5, 1.5].
  factors = (np.asarray(jittered, np.float64) / x)[changed]
  per_image = factors.reshape(len(factors), -1)
  np.testing.assert_allclose(per_image, np.broadcast_to(per_image[:, :1], per_image.shape),
                             rtol=1e-4)
  assert per_image.min() >= 0.5 - 1e-5 and per_image.max() <= 1.5 + 1e-5
  assert abs(per_image.mean() - 1.0) < 4 * (1 / np.sqrt(12)) / np.sqrt(len(per_image))

  changed = np.abs(np.asarray(blurred) - x).max(axis=(1, 2, 3)) > 1e-4
  assert abs(changed.sum() - 0.4 * n) < 4 * np.sqrt(n * 0.24)


def test_views_inside_shard_map_with_device_folded_keys(devices):
  from jax.sharding import PartitionSpec as P
  from ssl_jax.parallel import BATCH_AXIS, make_mesh

  recipes = (ViewRecipe(size=8, **{**OFF, "flip_prob": 0.5, "grayscale_prob": 0.5}),)
  images = _uint8_images(13, (2 * len(devices), 12, 12, 3))
  key = jax.random.key(7)

  def per_device(key, images):
    key = jax.random.fold_in(key, jax.lax.axis_index(BATCH_AXIS))
    return augment.views(key, images, recipes)[0]

  sharded = jax.jit(jax.shard_map(per_device, mesh=make_mesh(), in_specs=(P(), P(BATCH_AXIS)),
                                  out_specs=P(BATCH_AXIS)))(key, images)
  assert sharded.shape == (len(devices) * 2, 8, 8, 3)
  for d in range(len(devices)):
    want = augment.views(jax.random.fold_in(key, d), images[2 * d:2 * d + 2], recipes)[0]
    np.testing.assert_allclose(sharded[2 * d:2 * d + 2], want, atol=1e-5)


# ------------------------------------------------------------------ crop


def test_crop_boxes_within_scale_and_ratio_ranges():
  height, width, scale, ratio = 24, 40, (0.08, 1.0), (3 / 4, 4 / 3)
  sample = jax.jit(jax.vmap(functools.partial(
      augment.sample_crop_box, height=height, width=width, scale=scale, ratio=ratio)))
  boxes = np.asarray(sample(jax.random.split(jax.random.key(0), 4000)), np.float64)
  y0, x0, h, w = boxes.T
  tol = 1e-5
  assert (y0 >= -tol).all() and (x0 >= -tol).all()
  assert (y0 + h <= height * (1 + tol)).all() and (x0 + w <= width * (1 + tol)).all()
  area = h * w / (height * width)
  assert (area >= scale[0] - tol).all() and (area <= scale[1] + tol).all()
  aspect = w / h
  assert (aspect >= ratio[0] * (1 - tol)).all() and (aspect <= ratio[1] * (1 + tol)).all()
  # The ranges are explored, and offsets are uniform over the free space.
  # (A 24x40 image fits at most a 24x32 box at ratio 4/3: area 0.8.)
  assert area.min() < 0.1 and area.max() > 0.75
  assert aspect.min() < 0.77 and aspect.max() > 1.3
  free = height - h > 1
  assert abs(np.mean(y0[free] / (height - h[free])) - 0.5) < 0.03


@pytest.mark.parametrize("height,width,expected", [
    (32, 32, (8.0, 0.0, 16.0, 32.0)),   # ratio (2, 3) wider than the image: keep width
    (10, 40, (0.0, 10.0, 10.0, 20.0)),  # ratio (1/2, 2) narrower than the image: keep height
])
def test_crop_falls_back_to_centre_crop_clipped_to_ratio(height, width, expected):
  ratio = (2.0, 3.0) if height == width else (0.5, 2.0)
  sample = jax.vmap(functools.partial(augment.sample_crop_box, height=height, width=width,
                                      scale=(0.9, 1.0), ratio=ratio))
  boxes = np.asarray(sample(jax.random.split(jax.random.key(1), 16)))
  np.testing.assert_allclose(boxes, np.broadcast_to(expected, boxes.shape), atol=1e-5)


def test_crop_and_resize_uses_continuous_pixel_coordinates():
  image = np.random.default_rng(3).random((24, 24, 3)).astype(np.float32)
  out = augment.crop_and_resize(image, jnp.array([4.0, 8.0, 16.0, 16.0]), 16)
  np.testing.assert_allclose(out, image[4:20, 8:24], atol=1e-5)
  whole = augment.crop_and_resize(image, jnp.array([0.0, 0.0, 24.0, 24.0]), 24)
  np.testing.assert_allclose(whole, image, atol=1e-5)
  # A 2x upscale of a half-pixel-shifted box of a constant image stays constant.
  flat = np.full((24, 24, 3), 0.25, np.float32)
  up = augment.crop_and_resize(flat, jnp.array([3.5, 2.5, 8.0, 8.0]), 16)
  np.testing.assert_allclose(up, 0.25, atol=1e-6)


# ------------------------------------------------------------------ colour ops vs NumPy


def _random_unit_image(seed, shape=(6, 5, 3)):
  x = np.random.default_rng(seed).random(shape)
  x[0, 0] = 0.0
  x[0, 1] = 1.0
  x[0, 2] = 0.5          # gray pixel
  x[0, 3] = [1, 0, 0]    # primaries
  x[0, 4] = [0, 1, 1]
  return x


def test_grayscale_matches_601_luma_with_equal_channels():
  x = _random_unit_image(0)
  out = np.asarray(augment.to_grayscale(x.astype(np.float32)))
  expected = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
  np.testing.assert_allclose(out, np.repeat(expected[..., None], 3, -1), atol=1e-6)
  assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


@pytest.mark.parametrize("factor", [0.0, 0.3, 1.0, 1.7])
def test_brightness_contrast_saturation_match_torchvision_formulas(factor):
  x = _random_unit_image(1)
  x32 = x.astype(np.float32)
  gray = x @ LUMA
  # torchvision _blend(img1, img2, ratio) = clip(ratio * img1 + (1 - ratio) * img2).
  expected = {
      augment.adjust_brightness: np.clip(factor * x, 0, 1),
      augment.adjust_contrast: np.clip(factor * x + (1 - factor) * gray.mean(), 0, 1),
      augment.adjust_saturation: np.clip(factor * x + (1 - factor) * gray[..., None], 0, 1),
  }
  for op, want in expected.items():
    np.testing.assert_allclose(op(x32, factor), want, atol=2e-6, err_msg=op.__name__)


def _hue_reference(x, delta):
  out = np.empty_like(x)
  for idx in np.ndindex(x.shape[:-1]):
    h, s, v = colorsys.rgb_to_hsv(*x[idx])
    out[idx] = colorsys.hsv_to_rgb((h + delta) % 1.0, s, v)
  return out


@pytest.mark.parametrize("delta", [-0.5, -0.13, 0.0, 0.27, 0.5])
def test_hue_matches_colorsys(delta):
  x = _random_unit_image(2)
  np.testing.assert_allclose(augment.adjust_hue(x.astype(np.float32), delta),
                             _hue_reference(x, delta), atol=2e-6)


def test_hsv_round_trip_matches_colorsys():
  x = _random_unit_image(3)
  hsv = np.asarray(augment.rgb_to_hsv(x.astype(np.float32)))
  expected = np.array([colorsys.rgb_to_hsv(*p) for p in x.reshape(-1, 3)]).reshape(x.shape)
  np.testing.assert_allclose(hsv, expected, atol=2e-6)
  np.testing.assert_allclose(augment.hsv_to_rgb(hsv), x, atol=2e-6)


def _jitter_reference(x, order, factors, enabled=(True, True, True, True)):
  for op in order:
    if not enabled[op]:
      continue
    f = factors[op]
    gray = x @ LUMA
    if op == 0:
      x = np.clip(f * x, 0, 1)
    elif op == 1:
      x = np.clip(f * x + (1 - f) * gray.mean(), 0, 1)
    elif op == 2:
      x = np.clip(f * x + (1 - f) * gray[..., None], 0, 1)
    else:
      x = np.clip(_hue_reference(x, f), 0, 1)
  return x


@pytest.mark.parametrize("enabled", [(True, True, True, True), (True, False, True, False)])
def test_color_jitter_random_order_matches_sequential_reference(enabled):
  strengths = (0.8, 0.8, 0.8, 0.2)
  keys = jax.random.split(jax.random.key(4), 2000)
  order, factors = jax.jit(jax.vmap(lambda k: augment.sample_jitter_params(k, *strengths)))(keys)
  order, factors = np.asarray(order), np.asarray(factors, np.float64)
  # Parameters: random permutations (all 24 appear), factors in torchvision's ranges.
  assert sorted(map(sorted, order.tolist())) == [[0, 1, 2, 3]] * len(order)
  assert len(set(map(tuple, order.tolist()))) == 24
  assert (factors[:, :3] >= 0.2 - 1e-6).all() and (factors[:, :3] <= 1.8 + 1e-6).all()
  assert (np.abs(factors[:, 3]) <= 0.2 + 1e-6).all()

  n = 24
  images = np.random.default_rng(5).random((n, 5, 4, 3))
  apply = jax.jit(jax.vmap(functools.partial(augment.apply_jitter, enabled=enabled)))
  out = np.asarray(apply(images.astype(np.float32), order[:n], factors[:n].astype(np.float32)))
  for i in range(n):
    want = _jitter_reference(images[i], order[i], factors[i], enabled)
    np.testing.assert_allclose(out[i], want, atol=5e-5, err_msg=f"order {order[i]}")


def _blur_reference(x, sigma, kernel_size):
  radius = kernel_size // 2
  t = np.arange(-radius, radius + 1, dtype=np.float64)
  taps = np.exp(-t**2 / (2 * sigma**2))
  taps /= taps.sum()
  padded = np.pad(x, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
  out = np.zeros_like(x)
  for i in range(x.shape[0]):
    for j in range(x.shape[1]):
      window = padded[i:i + kernel_size, j:j + kernel_size]
      out[i, j] = np.einsum("a,b,abc->c", taps, taps, window)
  return out


@pytest.mark.parametrize("shape,sigma", [((16, 12, 3), 0.7), ((48, 40, 3), 1.9)])
def test_gaussian_blur_matches_reflect_padded_convolution(shape, sigma):
  x = np.random.default_rng(6).random(shape)
  kernel_size = augment.blur_kernel_size(shape[0])
  out = augment.gaussian_blur(x.astype(np.float32), sigma)
  np.testing.assert_allclose(out, _blur_reference(x, sigma, kernel_size), atol=2e-6)


def test_blur_kernel_is_ten_percent_of_the_side():
  # SimCLR: 224 -> 23 taps; odd; at least 3.
  assert [augment.blur_kernel_size(s) for s in (224, 96, 32, 16, 8)] == [23, 9, 3, 3, 3]


def test_solarize_inverts_exactly_pixels_at_or_above_threshold():
  values = np.array([0, 1, 100, 127, 128, 129, 200, 255], np.uint8)
  image = np.stack([np.roll(values, s) for s in range(8)])[..., None].repeat(3, -1)
  image[..., 1] = image[..., 1][::-1]
  batch = image[None]
  recipe = ViewRecipe(size=8, **{**OFF, "solarize_prob": 1.0}, **RAW)
  out = np.asarray(augment.augment_view(jax.random.key(0), batch, recipe, crop=False))
  x = batch.astype(np.float64) / 255.0
  # 128/255 >= 0.5 becomes 127/255 and 127/255 stays: 1/255 apart, far above atol.
  np.testing.assert_allclose(out, np.where(x >= 0.5, 1.0 - x, x), atol=1e-6)
  direct = augment.solarize(x.astype(np.float32), 0.3)
  np.testing.assert_allclose(direct, np.where(x >= 0.3, 1.0 - x, x), atol=1e-6)
  # A pixel exactly at the threshold is inverted.
  np.testing.assert_array_equal(augment.solarize(jnp.array([0.25, 0.5, 0.75]), 0.5),
                                [0.25, 0.5, 0.25])
  np.testing.assert_array_equal(augment.solarize(jnp.array([0.25, 0.5, 0.75]), 0.25),
                                [0.75, 0.5, 0.25])


def test_each_op_keeps_unit_range():
  x = _random_unit_image(7, (12, 12, 3)).astype(np.float32)
  outs = [augment.adjust_brightness(x, 1.8), augment.adjust_contrast(x, 1.8),
          augment.adjust_contrast(x, 0.1), augment.adjust_saturation(x, 1.8),
          augment.adjust_hue(x, 0.5), augment.adjust_hue(x, -0.31), augment.to_grayscale(x),
          augment.gaussian_blur(x, 2.0), augment.solarize(x, 0.5),
          augment.crop_and_resize(x, jnp.array([1.3, 2.7, 7.1, 5.2]), 9)]
  for i, out in enumerate(outs):
    out = np.asarray(out)
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6, i


# ------------------------------------------------------------------ entry points


def test_normalize_uint8_and_float_agree_with_numpy():
  images = _uint8_images(8, (2, 4, 4, 3))
  expected = (images / 255.0 - np.array(augment.IMAGENET_MEAN)) / np.array(augment.IMAGENET_STD)
  np.testing.assert_allclose(augment.normalize(images), expected, atol=1e-5)
  np.testing.assert_allclose(augment.normalize(images.astype(np.float32) / 255), expected,
                             atol=1e-5)


def test_center_view_crops_the_centre_deterministically():
  images = _uint8_images(9, (3, 32, 32, 3))
  np.testing.assert_allclose(augment.center_view(images, 32), augment.normalize(images),
                             atol=1e-6)
  half = augment.center_view(images, 16, crop_fraction=0.5)
  np.testing.assert_allclose(half, augment.normalize(images[:, 8:24, 8:24]), atol=1e-5)
  wide = _uint8_images(10, (2, 24, 32, 3))
  np.testing.assert_allclose(augment.center_view(wide, 24, (0, 0, 0), (1, 1, 1)),
                             wide[:, :, 4:28] / 255.0, atol=1e-5)


def test_precropped_views_skip_the_crop():
  big, small = _uint8_images(11, (4, 16, 16, 3)), _uint8_images(12, (4, 8, 8, 3))
  recipes = (ViewRecipe(size=16, **OFF), ViewRecipe(size=8, crop_scale=(0.05, 0.1), **OFF))
  out = augment.views(jax.random.key(0), (big, small), recipes)
  assert [v.shape for v in out] == [(4, 16, 16, 3), (4, 8, 8, 3)]
  assert all(v.dtype == jnp.float32 for v in out)
  # No crop, no other op: the normalised input itself.
  np.testing.assert_allclose(out[0], augment.normalize(big), atol=1e-6)
  np.testing.assert_allclose(out[1], augment.normalize(small), atol=1e-6)
  with pytest.raises(ValueError, match="pre-cropped"):
    augment.views(jax.random.key(0), (big, big), recipes)
  with pytest.raises(ValueError, match="one .* array per recipe"):
    augment.views(jax.random.key(0), (big,), recipes)
  with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
    augment.views(jax.random.key(0), big[..., :1], recipes)


@pytest.mark.parametrize("name,size,expected", [
    ("swav", 224, [224] * 2 + [96] * 6),
    ("swav", 32, [32] * 2 + [14] * 6),
    ("swav_cifar", 32, [32] * 2 + [18] * 4),
])
def test_multicrop_preset_shapes(name, size, expected):
  recipes = augment.preset(name, size)
  images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.uint8)
  shapes = jax.eval_shape(lambda k, x: augment.views(k, x, recipes), jax.random.key(0), images)
  assert [s.shape for s in shapes] == [(2, e, e, 3) for e in expected]
  assert all(s.dtype == jnp.float32 for s in shapes)


def test_preset_values():
  simclr = augment.preset("simclr", 224)
  assert len(simclr) == 2 and simclr[0] == simclr[1]
  s = 1.0
  assert (simclr[0].brightness, simclr[0].contrast, simclr[0].saturation, simclr[0].hue) == \
      pytest.approx((0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s))
  assert (simclr[0].jitter_prob, simclr[0].grayscale_prob, simclr[0].blur_prob) == (0.8, 0.2, 0.5)
  assert simclr[0].crop_scale == (0.08, 1.0) and simclr[0].crop_ratio == (3 / 4, 4 / 3)

  cifar = augment.preset("simclr_cifar", 32)[0]
  s = 0.5
  assert (cifar.brightness, cifar.contrast, cifar.saturation, cifar.hue) == \
      pytest.approx((0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s))
  assert cifar.blur_prob == 0.0 and cifar.crop_scale == (0.08, 1.0)

  v1, v2 = augment.preset("byol", 224)
  assert (v1.blur_prob, v1.solarize_prob, v2.blur_prob, v2.solarize_prob) == (1.0, 0.0, 0.1, 0.2)
  for v in (v1, v2):
    assert (v.brightness, v.contrast, v.saturation, v.hue) == (0.4, 0.4, 0.2, 0.1)
    assert (v.jitter_prob, v.grayscale_prob, v.solarize_threshold) == (0.8, 0.2, 0.5)
  c1, c2 = augment.preset("byol_cifar", 32)
  assert c1.blur_prob == c2.blur_prob == 0.0 and (c1.solarize_prob, c2.solarize_prob) == (0, 0.2)

  moco = augment.preset("mocov2", 224)[0]
  assert moco.crop_scale == (0.2, 1.0) and moco.blur_prob == 0.5
  assert (moco.brightness, moco.contrast, moco.saturation, moco.hue) == (0.4, 0.4, 0.4, 0.1)
  v1, v2 = augment.preset("mocov2_cifar", 32)
  assert v1 == v2 and v1.size == 32 and v1.blur_prob == 0.0
  assert v1.crop_scale == (0.2, 1.0) and v1.crop_ratio == (3 / 4, 4 / 3)
  assert (v1.brightness, v1.contrast, v1.saturation, v1.hue) == (0.4, 0.4, 0.4, 0.1)
  assert (v1.jitter_prob, v1.grayscale_prob, v1.flip_prob) == (0.8, 0.2, 0.5)

  swav = augment.preset("swav", 224)
  assert [r.crop_scale for r in swav] == [(0.14, 1.0)] * 2 + [(0.05, 0.14)] * 6
  assert all(r.blur_prob == 0.5 and r.brightness == pytest.approx(0.8) for r in swav)

  for name in augment.PRESETS:
    recipes = augment.preset(name, 32)
    assert all(isinstance(r, ViewRecipe) for r in recipes)
    hash(recipes)  # usable as a static jit argument
  with pytest.raises(ValueError, match="simclr_cifar"):
    augment.preset("simclr_imagenet", 224)


@pytest.mark.parametrize("kwargs,field", [
    (dict(size=0), "size"),
    (dict(size=3.0), "size"),
    (dict(flip_prob=1.5), "flip_prob"),
    (dict(grayscale_prob=-0.1), "grayscale_prob"),
    (dict(jitter_prob=2), "jitter_prob"),
    (dict(crop_scale=(0.5, 0.2)), "crop_scale"),
    (dict(crop_scale=(0.0, 1.0)), "crop_scale"),
    (dict(crop_scale=(0.5, 1.5)), "crop_scale"),
    (dict(crop_ratio=(4 / 3, 3 / 4)), "crop_ratio"),
    (dict(brightness=-0.1), "brightness"),
    (dict(hue=0.6), "hue"),
    (dict(blur_sigma=(0.0, 2.0)), "blur_sigma"),
    (dict(solarize_threshold=1.5), "solarize_threshold"),
    (dict(std=(0.2, 0.0, 0.2)), "std"),
    (dict(mean=(0.5, 0.5)), "mean"),
])
def test_invalid_recipe_raises_naming_the_field(kwargs, field):
  with pytest.raises(ValueError, match=field):
    ViewRecipe(**{"size": 8, **kwargs})


def test_recipe_accepts_lists_and_stays_hashable():
  recipe = ViewRecipe(size=8, crop_scale=[0.2, 1], mean=[0.5, 0.5, 0.5])
  assert recipe.crop_scale == (0.2, 1.0) and recipe.mean == (0.5, 0.5, 0.5)
  assert hash(recipe) == hash(ViewRecipe(size=8, crop_scale=(0.2, 1.0), mean=(0.5,) * 3))


def test_per_example_keys_make_views_independent_of_batch_split():
  """With one key per example, a view depends only on its own key and image."""
  recipes = augment.preset("simclr_cifar", 16)
  images = np.random.default_rng(3).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
  keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(5), jnp.arange(8))
  whole = augment.views(keys, images, recipes)
  halves = [augment.views(keys[i:i + 4], images[i:i + 4], recipes) for i in (0, 4)]
  for v, view in enumerate(whole):
    np.testing.assert_allclose(np.asarray(view),
                               np.concatenate([np.asarray(h[v]) for h in halves]), atol=1e-5)
  assert not np.allclose(np.asarray(whole[0]), np.asarray(whole[1]))
  with pytest.raises(ValueError, match="one key per example"):
    augment.views(keys[:3], images, recipes)
