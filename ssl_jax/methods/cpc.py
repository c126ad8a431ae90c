"""Contrastive Predictive Coding v2 (Hénaff et al. 2019, "Data-Efficient Image
Recognition with Contrastive Predictive Coding"; after van den Oord, Li &
Vinyals 2018, "Representation Learning with Contrastive Predictive Coding").

The view is cut into a grid of overlapping patches (``config.model.patch_size``
/ ``patch_stride``: 64 / 32 on 256 px, a 7x7 grid with 50% overlap; 8 / 4 on
32 px, also 7x7). Each patch gets its own augmentation (Sec. 3, "patch-based
augmentation": random flips and colour dropping, i.e. two of the three
channels removed) and goes through the shared ResNet: z [B, R, C, D] (the
pooled feature of every patch; CPC v2 replaces batch norm by layer norm,
``config.model.norm='layer'``, so that no statistic mixes patches).

A context network that is autoregressive over rows (``models.context``: c at
row r sees rows <= r) summarises z. Following the pseudocode of Hénaff et al.
(Appendix A.2, ``CPC(latents, target_dim=64, emb_scale=0.1, steps_to_ignore=2,
steps_to_predict=3)``), the targets are a learned 1x1 projection of z to
``target_dim`` channels, t = W_t z, and for every offset k in
``config.cpc.prediction_offsets`` (the paper: only k = 3, the first row that
shares no pixel with the context's rows when patches overlap by half) a
linear W_k predicts t_{r+k} from c_r, scaled by ``embedding_scale`` (eq. 1).
InfoNCE (eq. 2) scores the true target against every other target of the
global batch (other positions of the same image and all positions of the
other images, across devices):

  L = mean_k mean_{b, r, col} -log softmax_{all (b', r', col')}(s W_k c_{b,r,col} . t_{b',r',col'})
      at the target (b, r + k, col).

The scale s = 0.1 and the 64-d targets keep the initial logits small; without
them the loss starts above log N and the fastest descent is to make every
patch feature equal (loss = log N, a collapse we measured on CIFAR-10).

Linear evaluation and the kNN monitor use the mean-pooled patch features
(Sec. 4): ``config.model.patch_size > 0`` makes ``models.encoder.build_encoder``
return a ``PatchEncoder``, and ``params['encoder']`` is the per-patch ResNet.

Experimental, off by default (``config.cpc.bidirectional``): a second
autoregressor run from the bottom (c_up at row r sees rows >= r); the
prediction of z_{r+k} then uses the concatenated contexts
``[c_down[r], c_up[r + k + 1]]`` (zeros past the bottom), so the rows it sees
are those above r and below r + k: the target rows stay hidden.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ssl_jax import augment
from ssl_jax import diagnostics
from ssl_jax.models import context as context_lib
from ssl_jax.models import encoder as encoder_lib


def cpc_info_nce(predictions, z, offsets=None, axis_name=None):
  """CPC's InfoNCE over a grid (Hénaff et al. 2019, eq. 2), with its accuracy.

  Args:
    predictions: sequence over the offsets k of float [n, R - k, C, D]: the
      prediction of ``z[:, r + k, col]`` made at row r.
    z: float [n, R, C, D] target features on this device (targets and negatives).
    offsets: the row offset k of each prediction; default 1, 2, ..., K.
    axis_name: the batch axis under ``jax.shard_map``: negatives then come
      from every device (``all_gather``), and the result is the global mean.

  Returns:
    (loss, accuracy): float32 scalars; loss = mean over k of the mean over
    queries of the cross-entropy against all N R C patch features of the
    global batch (the positive included); accuracy = how often the positive
    scores highest.
  """
  n, rows, cols, dim = z.shape
  z = z.astype(jnp.float32)
  keys = z.reshape(-1, dim)
  offset = 0
  if axis_name is not None:
    keys = lax.all_gather(keys, axis_name, tiled=True)  # [N R C, D], device order
    offset = lax.axis_index(axis_name) * n
  if offsets is None:
    offsets = range(1, len(predictions) + 1)
  if len(offsets) != len(predictions):
    raise ValueError(f"{len(predictions)} predictions for {len(offsets)} offsets {offsets}.")
  losses, accuracies = [], []
  for k, pred in zip(offsets, predictions):
    if pred.shape != (n, rows - k, cols, dim):
      raise ValueError(f"prediction {k} has shape {pred.shape}; expected "
                       f"{(n, rows - k, cols, dim)}.")
    query = pred.astype(jnp.float32).reshape(-1, dim)
    logits = jnp.matmul(query, keys.T, precision=lax.Precision.HIGHEST)
    b, r, c = jnp.meshgrid(jnp.arange(n), jnp.arange(rows - k), jnp.arange(cols),
                           indexing="ij")
    target = (((offset + b) * rows + r + k) * cols + c).reshape(-1)
    positive = jnp.take_along_axis(logits, target[:, None], axis=1)[:, 0]
    losses.append(jnp.mean(jax.nn.logsumexp(logits, axis=1) - positive))
    accuracies.append(jnp.mean((jnp.argmax(logits, axis=1) == target).astype(jnp.float32)))
  loss, accuracy = jnp.mean(jnp.stack(losses)), jnp.mean(jnp.stack(accuracies))
  if axis_name is not None:
    loss, accuracy = lax.pmean((loss, accuracy), axis_name)
  return loss, accuracy


class CPCModel(nn.Module):
  """Patch encoder -> z; W_t z -> targets; context network(s) -> c; s W_k c -> predictions."""
  encoder: nn.Module            # the per-patch ResNet (params['encoder'])
  context_down: nn.Module
  context_up: nn.Module | None
  prediction_offsets: tuple[int, ...]
  target_dim: int               # width of the targets W_t z and of the predictions
  embedding_scale: float        # s, multiplies the predictions (Appendix A.2: 0.1)

  def setup(self):
    self.target_projection = nn.Dense(self.target_dim, name="target_projection")
    self.predictors = [nn.Dense(self.target_dim, name=f"predictor_{k}")
                       for k in self.prediction_offsets]

  def __call__(self, patches, train: bool):
    """patches [n, R, C, p, p, 3] -> (z [n, R, C, D], targets [n, R, C, T], predictions).

    ``predictions[i]`` is [n, R - k, C, T] for k = ``prediction_offsets[i]``.
    """
    n, rows, cols = patches.shape[:3]
    z = self.encoder(patches.reshape((-1,) + patches.shape[3:]), train=train)
    z = z.reshape(n, rows, cols, -1)
    return z, self.target_projection(z), self.predict(z)

  def predict(self, z):
    """z [n, R, C, D] -> [s W_k c for each offset k], each [n, R - k, C, T]."""
    rows = z.shape[1]
    context = self.context_down(z)                                  # rows <= r
    if self.context_up is not None:
      up = self.context_up(z[:, ::-1])[:, ::-1]                     # rows >= r
      up = jnp.concatenate([up, jnp.zeros_like(up[:, :1])], axis=1)  # row R: nothing below
    predictions = []
    for k, predictor in zip(self.prediction_offsets, self.predictors):
      c = context[:, :rows - k]
      if self.context_up is not None:
        c = jnp.concatenate([c, up[:, k + 1:rows + 1]], axis=-1)
      predictions.append(self.embedding_scale * predictor(c))
    return predictions


def _resnet(config, axis_name):
  encoder = encoder_lib.build_encoder(config.model, axis_name)
  if not isinstance(encoder, encoder_lib.PatchEncoder):
    raise ValueError("CPC needs config.model.patch_size > 0 (and patch_stride): the encoder "
                     "is applied to a grid of patches.")
  return encoder.resnet


def _model(config, axis_name) -> CPCModel:
  cfg = config.cpc
  dtype = encoder_lib.compute_dtype(config.model)

  def context():
    return context_lib.ContextNetwork(
        width=cfg.context_width, bottleneck=cfg.context_bottleneck,
        num_blocks=cfg.context_blocks, output_dim=cfg.context_dim, rows=cfg.context_rows,
        cols=cfg.context_cols, dtype=dtype)

  rows = _grid(config)
  offsets = tuple(cfg.prediction_offsets)
  if not offsets or len(set(offsets)) != len(offsets) or not all(
      isinstance(k, int) and 1 <= k < rows for k in offsets):
    raise ValueError(f"config.cpc.prediction_offsets={cfg.prediction_offsets} must be distinct "
                     f"row offsets in [1, {rows - 1}] for a {rows}-row grid, e.g. "
                     f"({min(3, rows - 1)},) (the paper: (3,) on a 7-row grid).")
  if cfg.target_dim < 1 or not cfg.embedding_scale > 0:
    raise ValueError(f"config.cpc.target_dim={cfg.target_dim} must be >= 1 and "
                     f"config.cpc.embedding_scale={cfg.embedding_scale} > 0 (paper: 64, 0.1).")
  return CPCModel(encoder=_resnet(config, axis_name), context_down=context(),
                  context_up=context() if cfg.bidirectional else None,
                  prediction_offsets=offsets, target_dim=cfg.target_dim,
                  embedding_scale=cfg.embedding_scale)


def _grid(config) -> int:
  return encoder_lib.patch_grid(config.augment.size, config.model.patch_size,
                                config.model.patch_stride)


def view_recipes(config) -> tuple[augment.ViewRecipe, ...]:
  """The crop the grid is cut from, as [0, 1] pixels (the rest is per patch)."""
  cfg = config.cpc
  return (augment.ViewRecipe(
      size=config.augment.size, crop_scale=tuple(cfg.crop_scale), flip_prob=cfg.flip_prob,
      jitter_prob=0.0, grayscale_prob=0.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),)


def _augment_patch(key, patch, cfg):
  """One patch [p, p, 3] in [0, 1]: flip, normalise, colour dropping (Sec. 3)."""
  k_flip, k_drop, k_channel = jax.random.split(key, 3)
  if cfg.patch_flip_prob > 0:
    patch = jnp.where(jax.random.uniform(k_flip) < cfg.patch_flip_prob, patch[:, ::-1], patch)
  patch = augment.normalize(patch)
  if cfg.color_drop_prob > 0:
    # Keep one random channel; the dropped ones are set to 0 = the dataset mean.
    keep = jax.nn.one_hot(jax.random.randint(k_channel, (), 0, 3), 3, dtype=patch.dtype)
    drop = jax.random.uniform(k_drop) < cfg.color_drop_prob
    patch = jnp.where(drop, patch * keep, patch)
  return patch


def make_views(example_keys, images, recipes, *, config):
  """float32 [n, R, C, p, p, 3]: the augmented, normalised patches of every image."""
  (crops,) = augment.views(example_keys, images, recipes)
  patches = encoder_lib.extract_patches(crops, config.model.patch_size,
                                        config.model.patch_stride)
  rows, cols = patches.shape[1:3]

  def one_image(key, image_patches):
    keys = jax.random.split(jax.random.fold_in(key, 1), rows * cols)
    flat = image_patches.reshape((rows * cols,) + image_patches.shape[2:])
    out = jax.vmap(lambda k, p: _augment_patch(k, p, config.cpc))(keys, flat)
    return out.reshape(image_patches.shape)

  return jax.vmap(one_image)(example_keys, patches)


def init(key, config, sample_images):
  """Params {'encoder', 'target_projection', 'context_down', ('context_up'), 'predictor_k'}."""
  del sample_images
  rows, p = _grid(config), config.model.patch_size
  dummy = jnp.zeros((1, rows, rows, p, p, 3), jnp.float32)
  variables = _model(config, None).init(key, dummy, train=False)
  return variables["params"], variables.get("batch_stats", {}), {}


def embed(params, batch_stats, method_state, views, *, config, axis_name):
  """(z, targets, predictions) of this device's patches (``CPCModel``), batch_stats and
  the method state (unchanged).

  Everything before the batch-coupled InfoNCE; per image (layer norm, and the
  context network sees one image's grid), so ``config.microbatches`` can use
  gradient caching (``ssl_jax.microbatch``) with the full-batch result.
  """
  embeddings, updated = _model(config, axis_name).apply(
      {"params": params, "batch_stats": batch_stats}, views, train=True,
      mutable=["batch_stats"])
  return embeddings, updated.get("batch_stats", {}), method_state


def loss_from_embeddings(embeddings, method_state, key, *, config, axis_name):
  """CPC InfoNCE (``cpc_info_nce``): this device's predictions vs the global batch's targets."""
  del key
  z, targets, predictions = embeddings
  loss, accuracy = cpc_info_nce(predictions, targets, tuple(config.cpc.prediction_offsets),
                                axis_name)
  metrics = {"loss": loss, "cpc_accuracy": accuracy,
             **diagnostics.collapse_metrics(jnp.mean(z, axis=(1, 2)), axis_name=axis_name)}
  return loss, (method_state, metrics)


def loss_fn(params, batch_stats, method_state, views, key, *, config, axis_name):
  """CPC InfoNCE over the patch grid of the global batch (``embed`` + ``loss_from_embeddings``).

  Args:
    views: float32 [n, R, C, p, p, 3] patches from ``make_views``.

  Returns:
    (loss, (batch_stats, method_state, metrics)); metrics has ``cpc_accuracy``
    and the collapse diagnostics of the mean-pooled patch features.
  """
  embeddings, batch_stats, method_state = embed(params, batch_stats, method_state, views,
                                                config=config, axis_name=axis_name)
  loss, (method_state, metrics) = loss_from_embeddings(embeddings, method_state, key,
                                                       config=config, axis_name=axis_name)
  return loss, (batch_stats, method_state, metrics)


def post_update(params, batch_stats, method_state, step, config, *, total_steps):
  """CPC has no post-update state."""
  del params, batch_stats, step, config, total_steps
  return method_state
