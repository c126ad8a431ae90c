"""Host-side decoding and cropping, only for datasets whose images vary in size.

Fixed-size datasets are cropped on the device (``ssl_jax.augment``); images whose
sizes vary cannot be batched before they are cropped, so for them the host does
the one geometric step that fixes the size: a random-resized crop per view when
training, a resize + centre crop when evaluating. All pixel work happens inside
PIL (C code that releases the GIL, so decode threads run in parallel); JPEGs are
decoded at the smallest DCT scale (1/1, 1/2, 1/4, 1/8) that still covers the crop
at the output resolution, as ``tf.image.decode_and_crop_jpeg`` saves work in the
reference TF pipelines.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

# Eval resize: shorter side to size / 0.875 (= 256 for 224), then a centre crop, as
# in the ResNet/SimCLR/BYOL ImageNet evaluation protocols.
EVAL_RESIZE_RATIO = 256 / 224
# torchvision.transforms.RandomResizedCrop tries this many crops before falling back.
CROP_ATTEMPTS = 10


def decode(data: bytes) -> np.ndarray:
  """An encoded image (JPEG, PNG, ...) as ``uint8 [H, W, 3]``; any mode becomes RGB."""
  with Image.open(io.BytesIO(data)) as image:
    return _rgb_array(image)


def random_crop_box(height: int, width: int, scale, ratio, rng: np.random.Generator):
  """``(top, left, h, w)`` of an Inception-style random crop (Szegedy et al. 2015).

  Follows ``torchvision.transforms.RandomResizedCrop.get_params``: up to 10 tries
  of an area fraction ``U(scale)`` of the image and an aspect ratio (width /
  height) log-uniform in ``ratio``; if none fits, the whole image clamped to the
  ratio range, centred.
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(CROP_ATTEMPTS):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crops(data: bytes, recipes, rngs) -> list[np.ndarray]:
  """One random-resized crop per recipe of one encoded image, decoded once.

  Args:
    data: the encoded image.
    recipes: objects with ``size`` (output side), ``crop_scale`` and ``crop_ratio``
      (``ssl_jax.augment.ViewRecipe``).
    rngs: one ``np.random.Generator`` per recipe.

  Returns:
    One ``uint8 [r.size, r.size, 3]`` array per recipe.
  """
  with Image.open(io.BytesIO(data)) as image:
    width, height = image.size
    boxes = []
    for recipe, rng in zip(recipes, rngs):
      top, left, h, w = random_crop_box(height, width, recipe.crop_scale, recipe.crop_ratio, rng)
      boxes.append((left, top, left + w, top + h))
    return _crop_resize(image, boxes, [recipe.size for recipe in recipes])


def centre_crop(data: bytes, size: int) -> np.ndarray:
  """Resize the shorter side to ``size * 256 / 224``, centre crop ``uint8 [size, size, 3]``."""
  with Image.open(io.BytesIO(data)) as image:
    width, height = image.size
    side = min(width, height) * size / round(size * EVAL_RESIZE_RATIO)
    left, top = (width - side) / 2, (height - side) / 2
    return _crop_resize(image, [(left, top, left + side, top + side)], [size])[0]


def _crop_resize(image: Image.Image, boxes, sizes) -> list[np.ndarray]:
  """Each box (left, top, right, bottom in original pixels) resized to ``[size, size, 3]``."""
  width, height = image.size
  # JPEG only (a no-op otherwise): decode at the most reduced DCT scale that keeps
  # every crop at least its output size on each side.
  request_w = max(math.ceil(width * s / (b[2] - b[0])) for b, s in zip(boxes, sizes))
  request_h = max(math.ceil(height * s / (b[3] - b[1])) for b, s in zip(boxes, sizes))
  image.draft("RGB", (request_w, request_h))
  sx, sy = image.size[0] / width, image.size[1] / height
  if image.mode in _WIDE_GREY_MODES:
    image = Image.fromarray(_rgb_array(image))
  elif image.mode not in ("RGB", "L"):
    image = image.convert("RGB")
  else:
    image.load()
  return [
      _rgb_array(image.resize(
          (s, s), Image.Resampling.BILINEAR, box=(b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy)))
      for b, s in zip(boxes, sizes)
  ]


# PIL modes of 16/32-bit integer grey images (16-bit PNG/TIFF). PIL's own
# convert('RGB') clips them at 255 instead of scaling.
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _rgb_array(image: Image.Image) -> np.ndarray:
  """``uint8 [H, W, 3]`` of any PIL image: grey, palette, RGBA, CMYK, 16-bit grey."""
  if image.mode in _WIDE_GREY_MODES:
    # 16-bit samples: keep the high byte (x * 255 / 65535, rounded down).
    grey = (np.clip(np.asarray(image, np.int64), 0, 65535) >> 8).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if image.mode != "RGB":
    image = image.convert("RGB")
  return np.asarray(image)


def to_rgb(image: Image.Image) -> np.ndarray:
  """``uint8 [H, W, 3]`` of a PIL image in any mode (see ``_rgb_array``)."""
  return _rgb_array(image)
