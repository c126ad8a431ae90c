"""DeepCluster v2 (Caron et al. 2020, SwAV paper Sec. 4 / appendix B "DeepCluster-v2";
the release's ``facebookresearch/swav`` ``main_deepclusterv2.py``).

DeepCluster revisited with SwAV's parts: multi-crop, the projection head and
L2-normalised embeddings z, and, instead of a re-initialised classifier,
prototypes SET to the k-means centroids. At the start of every epoch, for each
of H heads (3 x 3000 for ImageNet), spherical k-means (10 iterations, random
init from the bank) clusters the memory bank of the previous epoch's
embeddings of one high-resolution crop (head h uses crop h mod C); the
centroids become the head's prototypes and the cluster of each example its
target for the epoch. The loss, for every crop of every example:

  loss = mean_h CE(softmax(z^T C_h / T), assignment_h[example]),  T = 0.1.

Reference details kept: the prototypes are never trained (the default
``--freeze_prototypes_niters 1e10``), so they live in ``method_state``, not in
the params; empty clusters keep their previous centroid (no splitting); the
bank is written after every step with the detached embeddings of the code
crops. Differences: the bank is one global, replicated array (the reference
keeps one shard per GPU and all-gathers it for k-means; ImageNet: 2 x 1.28M x
128 floats = 1.3 GB per device), and the epoch-0 bank comes from centre views
of the training set (the reference uses the first epoch's training crops).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from ssl_jax import augment
from ssl_jax import data
from ssl_jax import diagnostics
from ssl_jax import kmeans
from ssl_jax.methods import swav
from ssl_jax.models import encoder as encoder_lib
from ssl_jax.models import heads
from ssl_jax.models import resnet
from ssl_jax.parallel import BATCH_AXIS, gather_replicated
import flax.linen as nn

USES_EXAMPLE_INDEX = True


class EmbeddingModel(nn.Module):
  """Encoder + projection MLP + L2 norm: the z of SwAV, without trainable prototypes."""
  encoder: nn.Module
  projector: nn.Module

  def __call__(self, groups, train: bool):
    features = jnp.concatenate([self.encoder(g, train=train) for g in groups])
    z = self.projector(features, train=train)
    return z / jnp.linalg.norm(z, axis=-1, keepdims=True).clip(1e-12)


def _model(config, axis_name) -> EmbeddingModel:
  cfg = config.deepclusterv2
  hidden = cfg.projector_hidden_dim or resnet.num_features(
      config.model.depth, config.model.width_multiplier, config.model.base_width)
  projector = heads.MLPHead(hidden_dims=(hidden,), output_dim=cfg.projection_dim, use_bn=True,
                            use_bias=True, output_bias=True, axis_name=axis_name,
                            dtype=encoder_lib.compute_dtype(config.model))
  return EmbeddingModel(encoder=encoder_lib.build_encoder(config.model, axis_name),
                        projector=projector)


def view_recipes(config) -> tuple[augment.ViewRecipe, ...]:
  """SwAV's multi-crop (config.deepclusterv2.num_large_crops / num_small_crops)."""
  return swav.multicrop_recipes(config.augment, config.deepclusterv2)


def _bank_rows(config) -> tuple[int, int]:
  """(N training examples, N padded to a multiple of the device count)."""
  size = data.dataset_info(config.data).train_size
  n = jax.device_count()
  return size, -(-size // n) * n


def init(key, config, sample_images):
  """Params {'encoder', 'projector'}; method_state: bank, centroids, assignments."""
  del sample_images
  cfg = config.deepclusterv2
  size = config.augment.size
  variables = _model(config, None).init(key, [jnp.zeros((2, size, size, 3))], train=False)
  _, padded = _bank_rows(config)
  method_state = {
      # Embeddings of the code crops of every example, by dataset index.
      "bank": jnp.zeros((cfg.num_code_crops, padded, cfg.projection_dim), jnp.float32),
      # Per head: the prototypes (unit centroids) and every example's cluster (-1: none).
      "centroids": [jnp.zeros((k, cfg.projection_dim), jnp.float32)
                    for k in cfg.num_prototypes],
      "assignments": jnp.full((len(cfg.num_prototypes), padded), -1, jnp.int32),
  }
  return variables["params"], variables.get("batch_stats", {}), method_state


def loss_fn(params, batch_stats, method_state, views, key, *, config, axis_name,
            example_index):
  """Cross-entropy of every crop against its example's cluster, per head, T = 0.1.

  Args:
    params, batch_stats: {'encoder', 'projector'} trees.
    method_state: {'bank' float32 [C, N, D], 'centroids' list of [K_h, D],
      'assignments' int32 [H, N]}.
    views: large crops then small crops, float32 [n, S_v, S_v, 3].
    key: unused.
    config: the run config (``config.deepclusterv2``).
    axis_name: the data-parallel axis.
    example_index: int32 [n] dataset index of each example on this device.

  Returns:
    (loss, (batch_stats, method_state, metrics)).
  """
  del key
  cfg = config.deepclusterv2
  n, num_views = views[0].shape[0], len(views)
  z, updated = _model(config, axis_name).apply(
      {"params": params, "batch_stats": batch_stats}, swav.group_by_resolution(views), train=True,
      mutable=["batch_stats"])
  loss = 0.0
  for h, centroids in enumerate(method_state["centroids"]):
    logits = z @ jax.lax.stop_gradient(centroids).T / cfg.temperature   # [V n, K_h]
    targets = jnp.tile(method_state["assignments"][h][example_index], num_views)
    valid = targets >= 0  # examples never clustered are ignored (ignore_index=-100)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.maximum(targets, 0)[:, None],
                               axis=1)[:, 0]
    total = jnp.sum(jnp.where(valid, nll, 0.0))
    count = jnp.sum(valid.astype(jnp.float32))
    if axis_name is not None:
      total, count = jax.lax.psum((total, count), axis_name)
    loss = loss + total / jnp.maximum(count, 1.0)
  loss = loss / len(method_state["centroids"])

  # Memory bank: the global batch's detached code-crop embeddings, by dataset index.
  index = gather_replicated(example_index, axis_name)
  bank = method_state["bank"]
  for c in range(cfg.num_code_crops):
    rows = gather_replicated(jax.lax.stop_gradient(z[c * n:(c + 1) * n]), axis_name)
    bank = bank.at[c, index].set(rows)
  method_state = dict(method_state, bank=bank)
  metrics = {"loss": loss, **diagnostics.collapse_metrics(z[:n], z[n:2 * n], axis_name)}
  return loss, (updated.get("batch_stats", {}), method_state, metrics)


def post_update(params, batch_stats, method_state, step, config, *, total_steps):
  del params, batch_stats, step, config, total_steps
  return method_state


def _centre_embeddings(config, state, images):
  """Per-device: z of the centre views (BN with batch statistics, as the reference's
  ``init_memory`` in train mode; running averages are not updated)."""
  x = augment.center_view(images, config.augment.size)
  z, _ = _model(config, BATCH_AXIS).apply(
      {"params": state.params, "batch_stats": state.batch_stats}, [x], train=True,
      mutable=["batch_stats"])
  return z


def _cluster_bank(key, bank, valid, row_ids, *, num_prototypes, num_code_crops, num_iters):
  """Per-device: spherical k-means of each head on its bank slice (main_deepclusterv2.py
  ``cluster_memory``). Returns ([K_h, D] per head, int32 [H, rows] local assignments)."""
  centroids, assignments = [], []
  for h, k in enumerate(num_prototypes):
    c, labels, _ = kmeans.kmeans(jax.random.fold_in(key, h), bank[h % num_code_crops], valid,
                                 row_ids, k, num_iters=num_iters, init="random",
                                 spherical=True, split_empty=False, axis_name=BATCH_AXIS)
    centroids.append(c)
    assignments.append(jnp.where(valid, labels, -1))
  return centroids, jnp.stack(assignments)


def epoch_start(state, context):
  """k-means on the memory bank; prototypes := centroids; new targets for the epoch."""
  config, mesh = context.config, context.mesh
  cfg = config.deepclusterv2
  size, padded = _bank_rows(config)
  bank = state.method_state["bank"]
  if context.epoch == 0:
    # No previous epoch: fill the bank with one pass over the training set.
    out = context.map_train_split(functools.partial(_centre_embeddings, config), state,
                                  name="deepclusterv2.embeddings")
    rows = out["outputs"].reshape(-1, cfg.projection_dim)[:size]
    bank = jnp.broadcast_to(jnp.pad(rows, ((0, padded - size), (0, 0)))[None],
                            bank.shape)
  key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(state.rng), 7919),
                           context.epoch)
  cluster = context.compiled("deepclusterv2.cluster", lambda: jax.jit(jax.shard_map(
      functools.partial(_cluster_bank, num_prototypes=tuple(cfg.num_prototypes),
                        num_code_crops=cfg.num_code_crops, num_iters=cfg.kmeans_iters),
      mesh=mesh, in_specs=(P(), P(None, BATCH_AXIS), P(BATCH_AXIS), P(BATCH_AXIS)),
      out_specs=(P(), P(None, BATCH_AXIS)))))
  row_ids = jnp.arange(padded, dtype=jnp.int32)
  centroids, assignments = cluster(key, bank, row_ids < size, row_ids)
  replicated = NamedSharding(mesh, P())
  method_state = dict(state.method_state,
                      bank=jax.device_put(bank, replicated),
                      centroids=jax.device_put(centroids, replicated),
                      assignments=jax.device_put(assignments, replicated))
  return state.replace(method_state=method_state)
