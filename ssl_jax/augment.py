"""On-device image augmentations for self-supervised learning, in pure JAX.

Every op is written for ONE image (``float32 [H, W, 3]`` in ``[0, 1]``) and
``vmap``ped over per-example keys (``jax.random.split(key, B)``), as DeepMind's
BYOL JAX code does, so that the whole augmentation runs inside the compiled
train step: no host-side per-image work, no Python loop over the batch.

A view is described by a ``ViewRecipe`` (hashable, so it can be a static
argument of ``jax.jit``); a method asks for ``views(key, images, recipes)`` and
gets one normalised ``float32 [B, size, size, 3]`` array per recipe. The
recipes of the papers are in ``PRESETS`` (``preset(name, size)``). Inside
``shard_map`` the caller folds the device index into ``key`` first, so that
no two devices draw the same augmentations.

The pipeline of one view, in the order of SimCLR (``data_util.py``) and BYOL
(``augmentations.py``):

  random resized crop -> horizontal flip -> colour jitter (random order)
  -> grayscale -> Gaussian blur -> solarize -> normalise (mean/std)

Semantics follow torchvision (the transforms of MoCo v2 and SwAV are
torchvision's); where we differ from torchvision, or where the TF
implementations of SimCLR/BYOL differ from it, the op's docstring says so.
The main points:

* Crop boxes are continuous (no rounding of the box to whole pixels) and the
  resize is an antialiased bilinear ``jax.image.scale_and_translate``.
* Brightness is multiplicative (torchvision, SimCLR v2); BYOL's JAX code and
  SimCLR v1 add a delta instead.
* Contrast blends with the mean of the grayscale image and saturation blends
  with the grayscale image (torchvision); TF's ``adjust_contrast`` (SimCLR,
  BYOL) uses per-channel means and TF's ``adjust_saturation`` scales HSV
  saturation.
* Grayscale uses the ITU-R 601 luma weights (0.299, 0.587, 0.114), as PIL;
  torchvision's tensor path and TF use 0.2989.
* Gaussian blur pads by reflection (torchvision); SimCLR and BYOL zero-pad
  ('SAME'), which darkens the borders.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ITU-R BT.601 luma, as PIL's ``convert('L')`` (torchvision tensors: 0.2989).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

# torchvision ``RandomResizedCrop.get_params`` tries this many (area, ratio)
# draws before falling back to a centre crop.
CROP_ATTEMPTS = 10

# Kernel side ~ 10% of the image side (SimCLR ``kernel_size=height // 10``,
# BYOL ``blur_divider=10``).
BLUR_DIVIDER = 10


def _is_prob(x) -> bool:
  return 0.0 <= x <= 1.0


@dataclasses.dataclass(frozen=True)
class ViewRecipe:
  """How to make one augmented view; hashable, so a static argument of ``jax.jit``.

  Attributes:
    size: output side in pixels (static: it fixes the output shape).
    crop_scale: range of the crop's area as a fraction of the image area.
    crop_ratio: range of the crop's aspect ratio (width / height), sampled
      log-uniformly as torchvision does.
    flip_prob: probability of a horizontal flip.
    jitter_prob: probability of applying the colour jitter.
    brightness, contrast, saturation: jitter strengths ``s``; factors are drawn
      uniformly from ``[max(0, 1 - s), 1 + s]`` (0 disables the op).
    hue: hue shift range; the shift is uniform in ``[-hue, hue]``, hue <= 0.5.
    grayscale_prob: probability of converting to grayscale (3 equal channels).
    blur_prob: probability of a Gaussian blur.
    blur_sigma: range of the blur's sigma in pixels (uniform).
    solarize_prob: probability of solarizing.
    solarize_threshold: pixels ``x >= threshold`` (on [0, 1]) become ``1 - x``.
    mean, std: per-channel normalisation on [0, 1] pixel values; pass
      ``mean=(0, 0, 0), std=(1, 1, 1)`` to get the [0, 1] image itself.
  """

  size: int
  crop_scale: tuple[float, float] = (0.08, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  flip_prob: float = 0.5
  jitter_prob: float = 0.8
  brightness: float = 0.4
  contrast: float = 0.4
  saturation: float = 0.4
  hue: float = 0.1
  grayscale_prob: float = 0.2
  blur_prob: float = 0.0
  blur_sigma: tuple[float, float] = (0.1, 2.0)
  solarize_prob: float = 0.0
  solarize_threshold: float = 0.5
  mean: tuple[float, float, float] = IMAGENET_MEAN
  std: tuple[float, float, float] = IMAGENET_STD

  def __post_init__(self):
    # Configs may hand us lists (ml_collections, YAML): store tuples of floats
    # so the recipe stays hashable.
    for name, length in (("crop_scale", 2), ("crop_ratio", 2), ("blur_sigma", 2),
                         ("mean", 3), ("std", 3)):
      value = getattr(self, name)
      try:
        value = tuple(float(v) for v in value)
      except TypeError:
        raise ValueError(
            f"ViewRecipe.{name}={value!r} must be a sequence of {length} numbers, "
            f"e.g. {name}={getattr(ViewRecipe, name)!r}.") from None
      if len(value) != length:
        raise ValueError(
            f"ViewRecipe.{name}={value!r} must have {length} entries, "
            f"e.g. {name}={getattr(ViewRecipe, name)!r}.")
      object.__setattr__(self, name, value)

    if (isinstance(self.size, bool) or not isinstance(self.size, numbers.Integral)
        or self.size <= 0):
      raise ValueError(
          f"ViewRecipe.size={self.size!r} must be a positive int (the output side in "
          f"pixels), e.g. size=224.")
    object.__setattr__(self, "size", int(self.size))
    for name in ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob",
                 "solarize_prob", "solarize_threshold"):
      value = getattr(self, name)
      if not _is_prob(value):
        raise ValueError(
            f"ViewRecipe.{name}={value!r} must lie in [0, 1]; e.g. {name}=0.5.")
    lo, hi = self.crop_scale
    if not 0.0 < lo <= hi <= 1.0:
      raise ValueError(
          f"ViewRecipe.crop_scale={self.crop_scale!r} must satisfy 0 < low <= high <= 1 "
          f"(area fractions of the image), e.g. crop_scale=(0.08, 1.0).")
    lo, hi = self.crop_ratio
    if not 0.0 < lo <= hi:
      raise ValueError(
          f"ViewRecipe.crop_ratio={self.crop_ratio!r} must satisfy 0 < low <= high "
          f"(width / height), e.g. crop_ratio=(3 / 4, 4 / 3).")
    for name in ("brightness", "contrast", "saturation"):
      value = getattr(self, name)
      if not value >= 0.0:
        raise ValueError(
            f"ViewRecipe.{name}={value!r} must be >= 0 (0 disables it), e.g. {name}=0.4.")
    if not 0.0 <= self.hue <= 0.5:
      raise ValueError(
          f"ViewRecipe.hue={self.hue!r} must lie in [0, 0.5] (a fraction of the hue "
          f"circle), e.g. hue=0.1.")
    lo, hi = self.blur_sigma
    if not 0.0 < lo <= hi:
      raise ValueError(
          f"ViewRecipe.blur_sigma={self.blur_sigma!r} must satisfy 0 < low <= high "
          f"(pixels), e.g. blur_sigma=(0.1, 2.0).")
    if not all(s > 0.0 for s in self.std):
      raise ValueError(
          f"ViewRecipe.std={self.std!r} must be positive, e.g. std={IMAGENET_STD!r} "
          f"(or (1.0, 1.0, 1.0) for no scaling).")

  @property
  def has_jitter(self) -> bool:
    return self.jitter_prob > 0 and (
        self.brightness > 0 or self.contrast > 0 or self.saturation > 0 or self.hue > 0)


# ----------------------------------------------------------------------------
# Single-image ops: float32 [H, W, 3] in [0, 1] -> same.
# ----------------------------------------------------------------------------


def _to_unit_float(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [0, 1]; float input is taken to be in [0, 1]."""
  images = jnp.asarray(images)
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  if jnp.issubdtype(images.dtype, jnp.floating):
    return images.astype(jnp.float32)
  raise ValueError(
      f"images have dtype {images.dtype}; pass uint8 in [0, 255] or float in [0, 1].")


def sample_crop_box(key: jax.Array, height: int, width: int,
                    scale: Sequence[float] = (0.08, 1.0),
                    ratio: Sequence[float] = (3 / 4, 4 / 3)) -> jax.Array:
  """Samples one random-resized-crop box, as torchvision ``RandomResizedCrop``.

  torchvision draws (area fraction ~ U(scale), log aspect ~ U(log ratio)) up
  to 10 times and takes the first box that fits in the image, else a centre
  crop of the whole image clipped to the ratio range. Here the 10 candidates
  are drawn at once and the first valid one is picked (same distribution,
  no data-dependent loop). Differences from torchvision: the box is in
  continuous pixel coordinates (no rounding of its size or offset to whole
  pixels), so its area fraction and aspect ratio lie exactly in the ranges;
  the offset is uniform in ``[0, H - h]`` rather than over integers.

  Args:
    key: a PRNG key (one image).
    height, width: the source image size (static).
    scale: area fraction range.
    ratio: aspect ratio (width / height) range.

  Returns:
    float32 [4]: ``(y0, x0, h, w)`` in pixels, the box ``[y0, y0 + h] x [x0, x0 + w]``.
  """
  k_area, k_ratio, k_y, k_x = jax.random.split(key, 4)
  area = float(height * width)
  target_area = area * jax.random.uniform(
      k_area, (CROP_ATTEMPTS,), minval=scale[0], maxval=scale[1])
  log_ratio = jax.random.uniform(
      k_ratio, (CROP_ATTEMPTS,), minval=math.log(ratio[0]), maxval=math.log(ratio[1]))
  aspect = jnp.exp(log_ratio)
  w = jnp.sqrt(target_area * aspect)
  h = jnp.sqrt(target_area / aspect)
  # A relative slack of 1e-6 accepts boxes that fill the image up to float
  # error (torchvision rounds sizes to integers, which has the same effect).
  fits = (w <= width * (1 + 1e-6)) & (h <= height * (1 + 1e-6))
  first = jnp.argmax(fits)
  any_fits = jnp.any(fits)

  # Fallback: the whole image, clipped to the ratio range, centred.
  in_ratio = width / height
  if in_ratio < ratio[0]:
    fallback_w, fallback_h = float(width), width / ratio[0]
  elif in_ratio > ratio[1]:
    fallback_w, fallback_h = height * ratio[1], float(height)
  else:
    fallback_w, fallback_h = float(width), float(height)

  h = jnp.where(any_fits, jnp.minimum(h[first], height), fallback_h)
  w = jnp.where(any_fits, jnp.minimum(w[first], width), fallback_w)
  y0 = jnp.where(any_fits, jax.random.uniform(k_y) * (height - h), (height - fallback_h) / 2)
  x0 = jnp.where(any_fits, jax.random.uniform(k_x) * (width - w), (width - fallback_w) / 2)
  return jnp.stack([y0, x0, h, w]).astype(jnp.float32)


def crop_and_resize(image: jax.Array, box: jax.Array, size: int) -> jax.Array:
  """Resamples the box ``(y0, x0, h, w)`` of ``image`` [H, W, C] to [size, size, C].

  Bilinear (``jax.image.scale_and_translate``, triangle kernel) with
  antialiasing: when the box is larger than the output the kernel is widened
  by the downscale factor, as PIL's bilinear resize does under torchvision's
  ``RandomResizedCrop``; SimCLR's and BYOL's TF code resize bicubically
  without antialiasing, which aliases on large crops. When the output is at
  least as large as the source image (CIFAR 32 -> 32, SwAV's small crops) every
  box is an upscale and antialiasing changes nothing.

  The box is in continuous pixel coordinates with pixel centres at
  half-integers, so a box on whole pixels of the output's size returns those
  pixels exactly. Near the image border the kernel is renormalised over the
  pixels inside the image (edge-clamped bilinear).
  """
  y0, x0, h, w = box[0], box[1], box[2], box[3]
  scale = jnp.stack([size / h, size / w])
  translation = jnp.stack([-y0 * size / h, -x0 * size / w])
  return jax.image.scale_and_translate(
      image, (size, size, image.shape[-1]), (0, 1), scale, translation,
      method="linear", antialias=True)


def luma(image: jax.Array) -> jax.Array:
  """ITU-R 601 luma of [..., 3] -> [...]: 0.299 R + 0.587 G + 0.114 B."""
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  return LUMA_WEIGHTS[0] * r + LUMA_WEIGHTS[1] * g + LUMA_WEIGHTS[2] * b


def to_grayscale(image: jax.Array) -> jax.Array:
  """Grayscale as 3 equal channels (torchvision ``Grayscale(3)``, 601 luma)."""
  return jnp.repeat(luma(image)[..., None], 3, axis=-1)


def adjust_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
  """torchvision ``adjust_brightness``: ``clip(factor * x)`` (multiplicative).

  SimCLR v2's TF code is also multiplicative; SimCLR v1 and BYOL's JAX code
  add a delta instead. We follow torchvision (the contract of MoCo/SwAV and
  of ``ColorJitter``'s strength values).
  """
  return jnp.clip(image * factor, 0.0, 1.0)


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
  """torchvision ``adjust_contrast``: blend with the mean of the grayscale image.

  ``clip(factor * x + (1 - factor) * mean(luma(x)))``. TF's ``adjust_contrast``
  (SimCLR, BYOL) blends each channel with its own mean instead.
  """
  # mean(luma(x)) == luma(per-channel mean): a [3] reduction, far cheaper
  # under vmap on CPU than reducing the luma plane.
  mean = luma(jnp.mean(image, axis=(0, 1)))
  return jnp.clip(factor * image + (1.0 - factor) * mean, 0.0, 1.0)


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
  """torchvision ``adjust_saturation``: blend with the grayscale image.

  ``clip(factor * x + (1 - factor) * luma(x))``. TF's ``adjust_saturation``
  (SimCLR, BYOL) scales the HSV saturation instead.
  """
  gray = luma(image)[..., None]
  return jnp.clip(factor * image + (1.0 - factor) * gray, 0.0, 1.0)


def rgb_to_hsv(image: jax.Array) -> jax.Array:
  """RGB [..., 3] in [0, 1] -> HSV [..., 3], hue in [0, 1) (as ``colorsys``)."""
  hue, chroma, value = _hue_chroma_value(image)
  sat = jnp.where(value > 0, chroma / jnp.where(value > 0, value, 1.0), 0.0)
  return jnp.stack([jnp.mod(hue, 6.0) / 6.0, sat, value], axis=-1)


def _hue_chroma_value(image):
  """Hue in sextants in [-1, 5) (0 for grays; ``colorsys`` hue * 6 up to mod 6),
  chroma (max - min) and value (max) of [..., 3].

  The hue sector is chosen by comparing the channels with each other, not
  by ``channel == max``: XLA may recompute a fused producer with different
  rounding for different consumers, and an equality test against a
  recomputed max can then fail for every channel (seen under ``vmap`` on
  CPU). Comparisons only flip at near-ties, where the sectors' formulas agree.
  """
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  red_max = (r >= g) & (r >= b)
  green_max = ~red_max & (g >= b)
  value = jnp.where(red_max, r, jnp.where(green_max, g, b))
  chroma = value - jnp.minimum(jnp.minimum(r, g), b)
  inv_chroma = 1.0 / jnp.where(chroma > 0, chroma, 1.0)
  hue = jnp.where(red_max, (g - b) * inv_chroma,
                  jnp.where(green_max, 2.0 + (b - r) * inv_chroma, 4.0 + (r - g) * inv_chroma))
  return jnp.where(chroma > 0, hue, 0.0), chroma, value


def _hexcone_rgb(hue_sextant, chroma, value):
  """RGB from hue (sextants, any real), chroma = v s and value, branch-free.

  Channel n in (R, G, B) = (5, 3, 1) is ``v - c clip(min(k, 4 - k), 0, 1)``
  with ``k = (n + hue) mod 6``: the piecewise-linear hexcone of HSV. (The mod
  is written with ``floor``, 3x faster on CPU than ``jnp.mod``.)
  """

  def channel(n):
    k = n + hue_sextant
    k = k - 6.0 * jnp.floor(k * (1.0 / 6.0))
    return value - chroma * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)

  return jnp.stack([channel(5.0), channel(3.0), channel(1.0)], axis=-1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
  """HSV [..., 3] (hue in [0, 1)) -> RGB [..., 3] (as ``colorsys``)."""
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  return _hexcone_rgb(6.0 * h, v * s, v)


def adjust_hue(image: jax.Array, delta: jax.Array) -> jax.Array:
  """torchvision ``adjust_hue``: rotate the HSV hue by ``delta`` (in turns).

  Computed without the saturation channel (RGB -> hue, chroma, value ->
  RGB), which is the same map as RGB -> HSV -> shift -> RGB.
  """
  hue, chroma, value = _hue_chroma_value(image)
  return jnp.clip(_hexcone_rgb(hue + 6.0 * delta, chroma, value), 0.0, 1.0)


def sample_jitter_params(key: jax.Array, brightness: float, contrast: float,
                         saturation: float, hue: float) -> tuple[jax.Array, jax.Array]:
  """torchvision ``ColorJitter.get_params`` for one image.

  Returns:
    order: int32 [4], a random permutation of (0 brightness, 1 contrast,
      2 saturation, 3 hue): the order the ops are applied in.
    factors: float32 [4]: brightness, contrast, saturation factors uniform in
      ``[max(0, 1 - s), 1 + s]`` and the hue shift uniform in ``[-hue, hue]``.
  """
  k_perm, k_b, k_c, k_s, k_h = jax.random.split(key, 5)

  def factor(k, s):
    return jax.random.uniform(k, (), minval=max(0.0, 1.0 - s), maxval=1.0 + s)

  factors = jnp.stack([
      factor(k_b, brightness), factor(k_c, contrast), factor(k_s, saturation),
      jax.random.uniform(k_h, (), minval=-hue, maxval=hue)])
  order = jax.random.permutation(k_perm, 4).astype(jnp.int32)
  return order, factors


def _blend_op(image: jax.Array, op: jax.Array, factor: jax.Array) -> jax.Array:
  """Brightness (op 0), contrast (1) or saturation (2) as one blend.

  All three are ``clip(f x + (1 - f) t)`` with target t = 0, the mean luma,
  or the luma image: one fused expression whatever ``op`` is, instead of
  three computed branches under ``vmap``.
  """
  mean_luma = luma(jnp.mean(image, axis=(0, 1)))
  target = jnp.where(op == 2, luma(image)[..., None], jnp.where(op == 1, mean_luma, 0.0))
  return jnp.clip(factor * image + (1.0 - factor) * target, 0.0, 1.0)


def apply_jitter(image: jax.Array, order: jax.Array, factors: jax.Array,
                 enabled: tuple[bool, bool, bool, bool] = (True, True, True, True)
                 ) -> jax.Array:
  """Applies brightness/contrast/saturation/hue in ``order`` (see ``sample_jitter_params``).

  Same result as applying ``adjust_brightness``, ``adjust_contrast``,
  ``adjust_saturation``, ``adjust_hue`` (each clipping to [0, 1]) in the
  permuted order, as torchvision ``ColorJitter``. ``enabled`` (static) makes
  an op the identity, as torchvision skips an op of strength 0.

  Under ``vmap`` a data-dependent order means computing every candidate op
  at every step; hue, the costly op, is therefore computed once: the three
  blend ops (see ``_blend_op``) that precede hue in the permutation run
  before it, masked per image, and the rest after it.
  """
  factors = jnp.where(jnp.asarray(enabled[:3] + (True,)), factors,
                      jnp.array([1.0, 1.0, 1.0, 0.0], factors.dtype))
  hue_position = jnp.argmax(order == 3)
  slots = jnp.arange(3)
  blend_ops = order[slots + (slots >= hue_position)]  # the non-hue ops, in order

  def blends(x, active):
    for j in range(3):
      op = blend_ops[j]
      # An inactive slot blends with factor 1: the identity, without a select.
      x = _blend_op(x, op, jnp.where(active[j], factors[op], 1.0))
    return x

  if not enabled[3]:
    return blends(image, (True, True, True))
  image = blends(image, slots < hue_position)
  image = adjust_hue(image, factors[3])
  return blends(image, slots >= hue_position)


def blur_kernel_size(size: int) -> int:
  """Odd blur kernel side ~ 10% of the image side, at least 3.

  SimCLR: ``radius = (size // 10) // 2`` (224 -> 23 taps, 32 -> 3); BYOL's
  ``int(size / 10 / 2)`` gives the same sizes. We keep at least 3 taps so
  that images smaller than 20 px are still blurred. (SwAV uses a fixed
  23-tap kernel for every crop; MoCo v2 uses PIL's blur with radius sigma.)
  """
  radius = max(1, (size // BLUR_DIVIDER) // 2)
  return 2 * radius + 1


def gaussian_kernel(sigma: jax.Array, kernel_size: int) -> jax.Array:
  """Normalised 1-D Gaussian taps ``exp(-x^2 / 2 sigma^2)`` at integer x."""
  radius = kernel_size // 2
  x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  taps = jnp.exp(-(x**2) / (2.0 * sigma**2))
  return taps / jnp.sum(taps)


def _correlate_1d(padded: jax.Array, taps: jax.Array, axis: int, stride: int,
                  length: int) -> jax.Array:
  """sum_k taps[k] * padded[k * stride : k * stride + length] along ``axis`` (k static)."""
  out = taps[0] * lax.slice_in_dim(padded, 0, length, axis=axis)
  for k in range(1, taps.shape[0]):
    out = out + taps[k] * lax.slice_in_dim(padded, k * stride, k * stride + length, axis=axis)
  return out


def gaussian_blur(image: jax.Array, sigma: jax.Array, kernel_size: int | None = None
                  ) -> jax.Array:
  """Separable depthwise Gaussian blur of [H, W, C] with reflect padding.

  Taps as SimCLR/BYOL/torchvision (sampled, normalised Gaussian); kernel
  side from ``blur_kernel_size`` of the image height by default (static).
  Padding reflects without repeating the edge pixel (torchvision's
  ``gaussian_blur``; SimCLR and BYOL zero-pad, darkening the border).

  The convolution is a sum of shifted slices of the image viewed as
  [H, W * C] (a W shift is a shift by C columns), which XLA fuses into one
  vectorised loop per pass. On a 2-core CPU (batch 64) this measured 15x
  (224 px) to 50x (32 px) faster than ``conv_general_dilated`` with a
  per-example kernel under ``vmap``, and 2x faster than the same sums on
  [H, W, C], whose innermost dimension of 3 defeats vectorisation.
  """
  height, width, channels = image.shape
  if kernel_size is None:
    kernel_size = blur_kernel_size(height)
  radius = kernel_size // 2
  if radius >= min(height, width):
    raise ValueError(
        f"blur kernel of {kernel_size} taps is too large for a {height}x{width} image; "
        f"use kernel_size < {2 * min(height, width)}.")
  taps = gaussian_kernel(sigma, kernel_size)
  padded = jnp.pad(image, ((radius, radius), (0, 0), (0, 0)), mode="reflect")
  image = _correlate_1d(padded.reshape(height + 2 * radius, width * channels), taps,
                        axis=0, stride=1, length=height)
  padded = jnp.pad(image.reshape(height, width, channels), ((0, 0), (radius, radius), (0, 0)),
                   mode="reflect")
  image = _correlate_1d(padded.reshape(height, (width + 2 * radius) * channels), taps,
                        axis=1, stride=channels, length=width * channels)
  return image.reshape(height, width, channels)


def solarize(image: jax.Array, threshold: float = 0.5) -> jax.Array:
  """Inverts exactly the pixels ``x >= threshold`` (torchvision, BYOL)."""
  return jnp.where(image >= threshold, 1.0 - image, image)


def normalize(images: jax.Array, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> jax.Array:
  """``(x - mean) / std`` per channel; uint8 [..., 3] is scaled to [0, 1] first.

  Args:
    images: uint8 [..., 3] in [0, 255] or float [..., 3] in [0, 1].
    mean, std: per-channel statistics of [0, 1] pixel values.

  Returns:
    float32 [..., 3].
  """
  images = _to_unit_float(images)
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (images - mean) / std


# ----------------------------------------------------------------------------
# One image, one recipe; then vmapped over the batch.
# ----------------------------------------------------------------------------


def _augment_one(key: jax.Array, image: jax.Array, recipe: ViewRecipe, crop: bool
                 ) -> jax.Array:
  """The whole view pipeline for one float32 [H, W, 3] image in [0, 1]."""
  (k_crop, k_flip, k_jitter_apply, k_jitter, k_gray, k_blur_apply, k_blur,
   k_solarize) = jax.random.split(key, 8)

  if crop:
    box = sample_crop_box(k_crop, image.shape[0], image.shape[1],
                          recipe.crop_scale, recipe.crop_ratio)
    image = jnp.clip(crop_and_resize(image, box, recipe.size), 0.0, 1.0)

  if recipe.flip_prob > 0:
    flip = jax.random.uniform(k_flip) < recipe.flip_prob
    image = jnp.where(flip, image[:, ::-1], image)

  if recipe.has_jitter:
    order, factors = sample_jitter_params(
        k_jitter, recipe.brightness, recipe.contrast, recipe.saturation, recipe.hue)
    enabled = (recipe.brightness > 0, recipe.contrast > 0, recipe.saturation > 0,
               recipe.hue > 0)
    jittered = apply_jitter(image, order, factors, enabled)
    apply = jax.random.uniform(k_jitter_apply) < recipe.jitter_prob
    image = jnp.where(apply, jittered, image)

  if recipe.grayscale_prob > 0:
    gray = jax.random.uniform(k_gray) < recipe.grayscale_prob
    image = jnp.where(gray, to_grayscale(image), image)

  if recipe.blur_prob > 0:
    sigma = jax.random.uniform(
        k_blur, (), minval=recipe.blur_sigma[0], maxval=recipe.blur_sigma[1])
    blur = jax.random.uniform(k_blur_apply) < recipe.blur_prob
    image = jnp.where(blur, jnp.clip(gaussian_blur(image, sigma), 0.0, 1.0), image)

  if recipe.solarize_prob > 0:
    sol = jax.random.uniform(k_solarize) < recipe.solarize_prob
    image = jnp.where(sol, solarize(image, recipe.solarize_threshold), image)

  return normalize(image, recipe.mean, recipe.std)


def _check_batch(images: jax.Array, what: str) -> None:
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(
        f"{what} must be [B, H, W, 3] (uint8 RGB); got shape {tuple(images.shape)}.")


def augment_view(key: jax.Array, images_uint8: jax.Array, recipe: ViewRecipe, *,
                 crop: bool = True) -> jax.Array:
  """One augmented view of a batch, each image with its own key.

  Args:
    key: PRNG key of this view, split into one key per example; or a key
      array of shape [B] holding each example's own key.
    images_uint8: uint8 [B, H, W, 3] (float in [0, 1] is accepted too).
    recipe: the view's ``ViewRecipe`` (static under jit).
    crop: False when the images were already cropped on the host to
      [B, recipe.size, recipe.size, 3]; the random resized crop is skipped.

  Returns:
    float32 [B, recipe.size, recipe.size, 3], normalised with recipe.mean/std.
  """
  if not isinstance(recipe, ViewRecipe):
    raise ValueError(f"recipe must be a ViewRecipe, got {type(recipe).__name__}.")
  images = jnp.asarray(images_uint8)
  _check_batch(images, "images")
  if not crop and images.shape[1:3] != (recipe.size, recipe.size):
    raise ValueError(
        f"pre-cropped images must be [B, {recipe.size}, {recipe.size}, 3] for a recipe of "
        f"size {recipe.size}; got {tuple(images.shape)}. Crop them to that size on the "
        f"host, or pass the full images with crop=True.")
  keys = _example_keys(key, images.shape[0])
  images = _to_unit_float(images)
  return jax.vmap(lambda k, x: _augment_one(k, x, recipe, crop))(keys, images)


def _example_keys(key: jax.Array, batch: int) -> jax.Array:
  """[B] per-example keys: ``key`` split B ways, or ``key`` itself if already [B]."""
  if key.shape == ():
    return jax.random.split(key, batch)
  if key.shape != (batch,):
    raise ValueError(f"key must be one key or one key per example [{batch}]; "
                     f"got shape {key.shape}.")
  return key


def _fold_view(key: jax.Array, view_index: int) -> jax.Array:
  """``fold_in(key, view_index)`` for one key or elementwise for a [B] key array."""
  if key.shape == ():
    return jax.random.fold_in(key, view_index)
  return jax.vmap(lambda k: jax.random.fold_in(k, view_index))(key)


def views(key: jax.Array, images, recipes: Sequence[ViewRecipe]) -> list[jax.Array]:
  """All views of a batch: one normalised float32 array per recipe.

  View ``i`` uses ``jax.random.fold_in(key, i)``, split per example; or, when
  ``key`` is a [B] array of per-example keys, ``fold_in(key[b], i)`` for
  example ``b``. The trainer passes per-example keys folded with the GLOBAL
  example index, so views do not depend on how the batch is split over devices.

  Args:
    key: PRNG key of this step, or [B] per-example keys.
    images: uint8 [B, H, W, 3], the same source images for every view (the
      crop happens here, on device); OR a sequence of uint8 arrays, one per
      recipe, each already cropped on the host to [B, r.size, r.size, 3]
      (datasets whose images vary in size); then the crop step is skipped.
    recipes: the views' ``ViewRecipe``s (a tuple when passed as a static
      argument of jit). Views may have different sizes (multi-crop).

  Returns:
    list of float32 [B, r.size, r.size, 3], in the order of ``recipes``.
  """
  if isinstance(recipes, ViewRecipe):
    recipes = (recipes,)
  recipes = tuple(recipes)
  if not recipes:
    raise ValueError("recipes is empty; pass at least one ViewRecipe (see preset()).")
  if isinstance(images, (list, tuple)):
    if len(images) != len(recipes):
      raise ValueError(
          f"got {len(images)} pre-cropped image arrays for {len(recipes)} recipes; pass "
          f"one [B, r.size, r.size, 3] array per recipe (or one uncropped batch).")
    return [augment_view(_fold_view(key, i), view_images, recipe, crop=False)
            for i, (view_images, recipe) in enumerate(zip(images, recipes))]
  return [augment_view(_fold_view(key, i), images, recipe)
          for i, recipe in enumerate(recipes)]


def center_view(images_uint8: jax.Array, size: int, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD, *, crop_fraction: float = 1.0
                ) -> jax.Array:
  """Deterministic view for evaluation (kNN, linear probe): centre crop, resize, normalise.

  Takes the central square of side ``crop_fraction * min(H, W)`` and resizes
  it (antialiased bilinear) to ``size``. ``crop_fraction=1`` (default) keeps
  the largest centred square, the identity for CIFAR at its own size; the
  ImageNet protocol (resize to 256, centre crop 224) is ``crop_fraction=0.875``
  (SimCLR ``CROP_PROPORTION``, BYOL ``224 / (224 + 32)``).

  Args:
    images_uint8: uint8 [B, H, W, 3] (float in [0, 1] accepted).
    size: output side (static).
    mean, std: normalisation statistics.
    crop_fraction: side of the centre square relative to the short side.

  Returns:
    float32 [B, size, size, 3].
  """
  images = jnp.asarray(images_uint8)
  _check_batch(images, "images")
  if not 0.0 < crop_fraction <= 1.0:
    raise ValueError(f"crop_fraction={crop_fraction!r} must lie in (0, 1], e.g. 0.875.")
  if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
    raise ValueError(f"size={size!r} must be a positive int, e.g. 224.")
  images = _to_unit_float(images)
  height, width = images.shape[1], images.shape[2]
  side = crop_fraction * min(height, width)
  if side == height == width == size:
    return normalize(images, mean, std)
  y0, x0 = (height - side) / 2, (width - side) / 2
  scale = jnp.array([size / side, size / side], jnp.float32)
  translation = jnp.array([-y0 * size / side, -x0 * size / side], jnp.float32)
  resized = jax.image.scale_and_translate(
      images, (images.shape[0], size, size, 3), (1, 2), scale, translation,
      method="linear", antialias=True)
  return normalize(jnp.clip(resized, 0.0, 1.0), mean, std)


# ----------------------------------------------------------------------------
# The papers' recipes.
# ----------------------------------------------------------------------------


def _color_strength(strength: float) -> dict:
  """SimCLR ``color_jitter(strength)``: 0.8 s brightness/contrast/saturation, 0.2 s hue."""
  return dict(brightness=0.8 * strength, contrast=0.8 * strength,
              saturation=0.8 * strength, hue=0.2 * strength)


def _simclr(size: int) -> tuple[ViewRecipe, ...]:
  # SimCLR (Chen et al. 2020), google-research/simclr data_util.py: crop area
  # (0.08, 1), ratio (3/4, 4/3); flip; colour jitter strength 1.0 with p=0.8;
  # grayscale p=0.2; blur p=0.5 (batch_random_blur), sigma U(0.1, 2.0),
  # kernel size // 10.
  view = ViewRecipe(size=size, jitter_prob=0.8, grayscale_prob=0.2, blur_prob=0.5,
                    **_color_strength(1.0))
  return (view, view)


def _simclr_cifar(size: int) -> tuple[ViewRecipe, ...]:
  # SimCLR appendix B.9 / README: CIFAR-10 uses colour strength 0.5 and no blur.
  view = ViewRecipe(size=size, jitter_prob=0.8, grayscale_prob=0.2, blur_prob=0.0,
                    **_color_strength(0.5))
  return (view, view)


_BYOL_JITTER = dict(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1,
                    jitter_prob=0.8, grayscale_prob=0.2)


def _byol(size: int) -> tuple[ViewRecipe, ...]:
  # BYOL (Grill et al. 2020, Table 6), deepmind-research byol/utils/augmentations.py
  # augment_config: asymmetric blur (1.0 / 0.1) and solarize (0.0 / 0.2),
  # threshold 0.5; the crop (dataset.py) is area U(0.08, 1), log-ratio (3/4, 4/3).
  view_1 = ViewRecipe(size=size, blur_prob=1.0, solarize_prob=0.0, **_BYOL_JITTER)
  view_2 = ViewRecipe(size=size, blur_prob=0.1, solarize_prob=0.2, **_BYOL_JITTER)
  return (view_1, view_2)


def _byol_cifar(size: int) -> tuple[ViewRecipe, ...]:
  # BYOL's paper has no CIFAR recipe. As SimCLR drops blur on CIFAR (appendix
  # B.9), so do the CIFAR BYOL reproductions, e.g. solo-learn
  # scripts/pretrain/cifar/augmentations/asymmetric.yaml: gaussian_blur prob
  # 0.0 on both views, solarization 0.0 / 0.2, the BYOL jitter.
  view_1 = ViewRecipe(size=size, blur_prob=0.0, solarize_prob=0.0, **_BYOL_JITTER)
  view_2 = ViewRecipe(size=size, blur_prob=0.0, solarize_prob=0.2, **_BYOL_JITTER)
  return (view_1, view_2)


def _mocov2(size: int) -> tuple[ViewRecipe, ...]:
  # MoCo v2 (Chen et al. 2020), facebookresearch/moco main_moco.py --aug-plus:
  # RandomResizedCrop(scale=(0.2, 1)), ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8
  # ("not strengthened"), grayscale p=0.2, blur sigma [0.1, 2] p=0.5, flip.
  view = ViewRecipe(size=size, crop_scale=(0.2, 1.0), brightness=0.4, contrast=0.4,
                    saturation=0.4, hue=0.1, jitter_prob=0.8, grayscale_prob=0.2,
                    blur_prob=0.5)
  return (view, view)


def _mocov2_cifar(size: int) -> tuple[ViewRecipe, ...]:
  # MoCo v2's --aug-plus at CIFAR size without blur (as SimCLR drops it on 32 px,
  # appendix B.9): crop area (0.2, 1), jitter 0.4/0.4/0.4/0.1 p=0.8, grayscale
  # p=0.2, flip. SimSiam (Chen & He 2021) uses MoCo v2's augmentations; the
  # CIFAR reproduction that matches its appendix D's 91.8% linear
  # (Reza-Safdari/SimSiam-91.9-top1-acc-on-CIFAR10 main.py) uses exactly these.
  view = dataclasses.replace(_mocov2(size)[0], blur_prob=0.0)
  return (view, view)


def _multi_crop(size: int, small_size: int, num_small: int, small_scale, blur_prob: float
                ) -> tuple[ViewRecipe, ...]:
  common = dict(jitter_prob=0.8, grayscale_prob=0.2, blur_prob=blur_prob,
                **_color_strength(1.0))
  large = ViewRecipe(size=size, crop_scale=(0.14, 1.0), **common)
  small = ViewRecipe(size=small_size, crop_scale=small_scale, **common)
  return (large, large) + (small,) * num_small


def _swav(size: int) -> tuple[ViewRecipe, ...]:
  # SwAV (Caron et al. 2020), facebookresearch/swav main_swav.py + scripts:
  # --nmb_crops 2 6 --size_crops 224 96 --min_scale_crops 0.14 0.05
  # --max_scale_crops 1. 0.14; src/multicropdataset.py: ColorJitter(0.8 s,
  # 0.8 s, 0.8 s, 0.2 s), s=1, p=0.8, grayscale p=0.2, blur p=0.5 with sigma
  # U(0.1, 2.0). (SwAV's code normalises with std 0.228 for red, a typo of
  # 0.229; we keep ImageNet's.)
  return _multi_crop(size, round(size * 96 / 224), 6, (0.05, 0.14), blur_prob=0.5)


def _swav_cifar(size: int) -> tuple[ViewRecipe, ...]:
  # SwAV has no CIFAR recipe. Our choice: 2 crops at `size` (area 0.14-1) + 4
  # small crops at round(size * 18 / 32) (18 px for CIFAR) with SwAV's small
  # area range (0.05, 0.14), so the small crops cover the same image fraction
  # as on ImageNet; 4 rather than 6 small crops (pl_bolts' SwAV defaults use
  # 2 + 4 at 96/36 px) to keep the step cheap; colour strength 1.0 (SwAV and
  # solo-learn's CIFAR SwAV); no blur, as SimCLR on CIFAR (appendix B.9) and
  # pl_bolts' SwAV for CIFAR-10 (gaussian_blur=False).
  return _multi_crop(size, round(size * 18 / 32), 4, (0.05, 0.14), blur_prob=0.0)


PRESETS: types.MappingProxyType[str, Callable[[int], tuple[ViewRecipe, ...]]] = (
    types.MappingProxyType({
        "simclr": _simclr,
        "simclr_cifar": _simclr_cifar,
        "byol": _byol,
        "byol_cifar": _byol_cifar,
        "mocov2": _mocov2,
        "mocov2_cifar": _mocov2_cifar,
        "swav": _swav,
        "swav_cifar": _swav_cifar,
    }))


def preset(name: str, size: int) -> tuple[ViewRecipe, ...]:
  """The view recipes of a paper at output side ``size``; see ``PRESETS``.

  Names: simclr, simclr_cifar, byol, byol_cifar, mocov2, mocov2_cifar, swav, swav_cifar.
  Multi-crop presets (swav*) return views of two sizes, large ones first.
  """
  if name not in PRESETS:
    raise ValueError(
        f"unknown augmentation preset {name!r}; valid names: {', '.join(sorted(PRESETS))}.")
  return PRESETS[name](size)
