"""DeepCluster (Caron, Bojanowski, Joulin & Douze 2018, "Deep Clustering for
Unsupervised Learning of Visual Features"), v1.

Alternates, every epoch (Sec. 3.2, eq. 2-3; facebookresearch/deepcluster main.py):

  (a) features f(x_n) of the whole training set with the current encoder
      (centre views, eval-mode BN), computed sharded over devices and hosts;
      PCA-whitened to 256 dimensions and L2-normalised (Sec. 3.3 / ``preprocess_features``);
      k-means with k clusters (faiss, 20 iterations) whose assignments are the
      pseudo-labels y_n; empty clusters are re-seeded by splitting (Sec. 3.3
      "Avoiding trivial solutions": ``ssl_jax.kmeans``);
  (b) classification training of encoder + a linear head on (x_n, y_n), the head
      re-initialised (N(0, 0.01^2), zero bias) and its optimizer state reset
      (main.py builds a new SGD for ``top_layer`` each epoch).

Both run from ``epoch_start`` (``ssl_jax.epoch_hooks``), so all of it is in the
train state and a resume is exact.

Uniform sampling over clusters (Sec. 3.3, ``UnifLabelSampler``) is implemented
as per-example loss WEIGHTS, not a sampler: the data order is a fixed function
of (seed, step) shared by every method, so instead each example's cross-entropy
is weighted by w_c = N / (k' n_c) (n_c the size of its cluster c, k' the number
of non-empty clusters). The expected loss then equals that of drawing a cluster
uniformly and an image uniformly within it, the sampler's objective; the
gradient variance differs (large clusters are seen more often with small weights).

Not reproduced: the fixed Sobel filter on grey input the paper applies for
AlexNet/VGG (``--sobel``), and the AlexNet/VGG classifier MLP; the ResNet
encoder's pooled features are clustered and classified directly.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from ssl_jax import augment
from ssl_jax import data
from ssl_jax import diagnostics
from ssl_jax import epoch_hooks
from ssl_jax import kmeans
from ssl_jax.models import encoder as encoder_lib
from ssl_jax.models import resnet
from ssl_jax.parallel import BATCH_AXIS

USES_EXAMPLE_INDEX = True


class DeepClusterModel(nn.Module):
  """Encoder + linear classifier over the k clusters (``top_layer``)."""
  encoder: nn.Module
  num_clusters: int

  @nn.compact
  def __call__(self, images, train: bool):
    features = self.encoder(images, train=train)
    return features, nn.Dense(self.num_clusters, name="head")(features.astype(jnp.float32))


def _model(config, axis_name) -> DeepClusterModel:
  return DeepClusterModel(encoder=encoder_lib.build_encoder(config.model, axis_name),
                          num_clusters=config.deepcluster.num_clusters)


def view_recipes(config) -> tuple[augment.ViewRecipe, ...]:
  """One view: random resized crop + flip (main.py: RandomResizedCrop, RandomHorizontalFlip)."""
  cfg = config.deepcluster
  return (augment.ViewRecipe(size=config.augment.size, crop_scale=tuple(cfg.crop_scale),
                             jitter_prob=0.0, grayscale_prob=0.0),)


def _num_features(config) -> int:
  return resnet.num_features(config.model.depth, config.model.width_multiplier,
                             config.model.base_width)


def init(key, config, sample_images):
  """Params {'encoder', 'head'}; method_state: pseudo-labels [N] and cluster weights [k]."""
  del sample_images
  size = config.augment.size
  variables = _model(config, None).init(key, jnp.zeros((2, size, size, 3)), train=False)
  num_examples = data.dataset_info(config.data).train_size
  method_state = {
      "pseudo_labels": jnp.full((num_examples,), -1, jnp.int32),  # -1: not yet clustered
      "cluster_weights": jnp.zeros((config.deepcluster.num_clusters,), jnp.float32),
  }
  return variables["params"], variables.get("batch_stats", {}), method_state


def loss_fn(params, batch_stats, method_state, views, key, *, config, axis_name,
            example_index):
  """Cluster-balanced cross-entropy of the head's logits against the pseudo-labels.

  loss = (1 / N_batch) sum_n w_{y_n} CE(head(f(x_n)), y_n), global over devices.

  Args:
    views: [view] float32 [n, S, S, 3].
    example_index: int32 [n] dataset index of each example (for its pseudo-label).
    (the rest as every method's ``loss_fn``).
  """
  del key
  (features, logits), updated = _model(config, axis_name).apply(
      {"params": params, "batch_stats": batch_stats}, views[0], train=True,
      mutable=["batch_stats"])
  labels = method_state["pseudo_labels"][example_index]
  weights = jnp.where(labels >= 0, method_state["cluster_weights"][jnp.maximum(labels, 0)], 0.0)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.maximum(labels, 0)[:, None],
                             axis=1)[:, 0]
  loss = jnp.mean(weights * nll)
  accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
  if axis_name is not None:
    loss, accuracy = jax.lax.pmean((loss, accuracy), axis_name)
  metrics = {"loss": loss, "pseudo_label_accuracy": accuracy,
             **diagnostics.collapse_metrics(features, None, axis_name)}
  return loss, (updated.get("batch_stats", {}), method_state, metrics)


def post_update(params, batch_stats, method_state, step, config, *, total_steps):
  del params, batch_stats, step, config, total_steps
  return method_state


def centre_features(config, state, images):
  """Per-device pooled encoder features of the centre views (eval-mode BN)."""
  x = augment.center_view(images, config.augment.size)
  return encoder_lib.encode(config.model, state.params, state.batch_stats, x).astype(
      jnp.float32)


def _cluster(key, features, valid, row_ids, *, config):
  """Per-device: PCA-whiten + L2 (Sec. 3.3), k-means with splitting; labels and sizes."""
  cfg = config.deepcluster
  dim = features.shape[-1]
  x = features.reshape(-1, dim)
  valid, row_ids = valid.reshape(-1), row_ids.reshape(-1)
  x = kmeans.pca_whiten(x, valid, min(cfg.pca_dim, dim), l2_normalize=True,
                        axis_name=BATCH_AXIS)
  _, labels, counts = kmeans.kmeans(key, x, valid, row_ids, cfg.num_clusters,
                                    num_iters=cfg.kmeans_iters, init=cfg.kmeans_init,
                                    split_empty=True, axis_name=BATCH_AXIS)
  return jnp.where(valid, labels, -1).reshape(features.shape[:2]), counts


def cluster_weights(counts: jax.Array, num_examples: int) -> jax.Array:
  """w_c = N / (k' n_c) for non-empty clusters (k' of them), 0 for empty ones."""
  nonempty = counts > 0
  k = jnp.maximum(jnp.sum(nonempty), 1)
  return jnp.where(nonempty, num_examples / (k * jnp.maximum(counts, 1)), 0.0).astype(
      jnp.float32)


def epoch_start(state, context):
  """Re-clusters the training set; new pseudo-labels, weights and a re-initialised head."""
  config, mesh = context.config, context.mesh
  cfg = config.deepcluster
  num_examples = state.method_state["pseudo_labels"].shape[0]
  out = context.map_train_split(functools.partial(centre_features, config), state,
                                name="deepcluster.features")
  rng = jax.random.wrap_key_data(state.rng)
  key = jax.random.fold_in(jax.random.fold_in(rng, 104729), context.epoch)
  cluster = context.compiled("deepcluster.cluster", lambda: jax.jit(jax.shard_map(
      functools.partial(_cluster, config=config), mesh=mesh,
      in_specs=(P(), P(None, BATCH_AXIS), P(None, BATCH_AXIS), P(None, BATCH_AXIS)),
      out_specs=(P(None, BATCH_AXIS), P()))))
  labels, counts = cluster(key, out["outputs"], out["valid"], out["index"])
  replicated = NamedSharding(mesh, P())

  def new_state(state, labels, counts, key):
    head_key = jax.random.fold_in(key, 1)
    params = dict(state.params)
    # main.py: top_layer.weight ~ N(0, 0.01^2), bias 0.
    params["head"] = {
        "kernel": cfg.head_init_std * jax.random.normal(
            head_key, params["head"]["kernel"].shape, jnp.float32),
        "bias": jnp.zeros_like(params["head"]["bias"])}
    method_state = {"pseudo_labels": labels.reshape(-1)[:num_examples],
                    "cluster_weights": cluster_weights(counts, num_examples)}
    opt_state = epoch_hooks.reset_opt_state(context.tx, state.opt_state, params, "head")
    return state.replace(params=params, opt_state=opt_state, method_state=method_state)

  compiled = context.compiled("deepcluster.new_state",
                              lambda: jax.jit(new_state, out_shardings=replicated))
  return compiled(state, labels, counts, key)
