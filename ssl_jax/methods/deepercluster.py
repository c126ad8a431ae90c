"""DeeperCluster (Caron, Bojanowski, Mairal & Joulin 2019, "Unsupervised
Pre-Training of Image Features on Non-Curated Data").

RotNet x DeepCluster with a two-level target hierarchy (Sec. 3.2-3.3;
facebookresearch/DeeperCluster ``main.py``, ``src/clustering.py``,
``src/trainer.py``):

- Targets are pairs (rotation, cluster). Every ``reassign_every_epochs``
  epochs, the features of the whole training set (centre views, eval-mode BN)
  are PCA-whitened and L2-normalised, then clustered in two levels: k-means
  into ``num_super_clusters`` super-clusters, and each super-cluster on its own
  into ``num_clusters / num_super_clusters`` sub-clusters.
- Super-classes = 4 rotations x super-clusters (``rotation=False``: the
  super-clusters alone). An image rotated by r whose features fall in
  super-cluster s has super-class ``s * R + r`` (R = 4 or 1) and sub-class its
  sub-cluster c in s.
- Loss (eq. 4, trainer.py): cross-entropy of the super-class classifier plus
  cross-entropy of the sub-classifier that belongs to the example's
  super-class (one linear classifier over the sub-clusters per super-class).
  Both heads are re-initialised after each re-clustering, their optimizer state
  reset (main.py rebuilds them with fresh optimizers).
- Every image appears in all R rotations in the batch, as RotNet's batches
  (``ssl_jax.methods.rotnet.rotate_batch``), so that ``num_super_clusters=1``,
  ``num_clusters=1`` gives RotNet's loss and ``rotation=False``,
  ``num_super_clusters=1`` DeepCluster's (tested).
- The reference samples uniformly over super-classes and over the sub-classes
  within each (``DistUnifTargSampler``, one process group per super-class); here
  the data order is shared by every method, so the same objective is reached by
  per-example weights (as ``ssl_jax.methods.deepcluster``):
  ``w = N / (S' k'_s n_c)``, with S' the non-empty super-clusters, k'_s the
  non-empty sub-clusters of s and n_c the size of sub-cluster c.

Distribution, the paper's Sec. 3.4 in JAX: the mesh is (groups x replicas)
(``ssl_jax.parallel``; ``config.deepercluster.groups``, default the largest
count that divides both the super-classes and the devices). The sub-classifiers
are one stacked param [S, D, k/S'] split over the groups (``P(GROUP_AXIS)``):
group g holds the sub-classifiers of super-classes [g S/G, (g+1) S/G) and only
those. The encoder, the super-class classifier and batch-norm statistics span
the whole batch (both mesh axes). For the sub-class loss, each device
all-gathers the pooled features of its row of the mesh along the group axis and
scores the examples whose super-class it owns; the gradient flows back to the
devices the features came from. The second clustering level runs per group in
parallel: each group clusters the super-clusters it owns (k-means psum'd over its
replicas only). With one group this is ordinary data parallelism.

Options: ``warm_start`` (the previous centroids start the next k-means, the
reference's ``--warm_restart``) and the Sobel input filter of the paper
(``config.model.input_filter='sobel'``, for the encoder everywhere).
Not reproduced: the VGG-16 backbone (the library's ResNet is used) and the
cluster-assignment files of the reference (everything is in the train state).
"""

from __future__ import annotations

import functools
import math
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from ssl_jax import augment
from ssl_jax import data
from ssl_jax import diagnostics
from ssl_jax import epoch_hooks
from ssl_jax import kmeans
from ssl_jax.methods import deepcluster
from ssl_jax.methods import rotnet
from ssl_jax.models import encoder as encoder_lib
from ssl_jax.models import resnet
from ssl_jax.parallel import BATCH_AXIS, GROUP_AXIS, REPLICA_AXIS

USES_EXAMPLE_INDEX = True
# Split over the mesh's groups along their leading (super-class) dimension.
GROUP_SHARDED_PARAMS = ("sub_classifiers",)


class DeeperClusterModel(nn.Module):
  """Encoder + the super-class classifier: images -> (features [B, D], logits [B, S])."""
  encoder: nn.Module
  num_super_classes: int

  @nn.compact
  def __call__(self, images, train: bool):
    features = self.encoder(images, train=train)
    logits = nn.Dense(self.num_super_classes, name="super_classifier")(
        features.astype(jnp.float32))
    return features, logits


def num_rotations(config) -> int:
  return rotnet.NUM_ROTATIONS if config.deepercluster.rotation else 1


def num_super_classes(config) -> int:
  return config.deepercluster.num_super_clusters * num_rotations(config)


def num_sub_classes(config) -> int:
  return config.deepercluster.num_clusters // config.deepercluster.num_super_clusters


def mesh_groups(config, num_devices: int) -> int:
  """Device groups of the mesh: ``config.deepercluster.groups``, or 0 for the
  largest count dividing both the super-classes and the devices."""
  groups = config.deepercluster.groups or math.gcd(num_super_classes(config), num_devices)
  if num_super_classes(config) % groups or num_devices % groups:
    raise ValueError(
        f"config.deepercluster.groups={groups} must divide both the {num_super_classes(config)} "
        f"super-classes and the {num_devices} devices; set it to 0 to choose automatically.")
  return groups


def _check(config) -> None:
  cfg = config.deepercluster
  if cfg.num_super_clusters < 1 or cfg.num_clusters % cfg.num_super_clusters:
    raise ValueError(
        f"config.deepercluster.num_clusters={cfg.num_clusters} must be a positive multiple of "
        f"num_super_clusters={cfg.num_super_clusters} (each super-cluster gets "
        "num_clusters / num_super_clusters sub-clusters).")
  if cfg.reassign_every_epochs < 1:
    raise ValueError("config.deepercluster.reassign_every_epochs must be >= 1.")
  if config.optim.name in ("lars", "lamb") and num_super_classes(config) > 1:
    raise ValueError(
        f"config.optim.name={config.optim.name!r}: layer-wise trust ratios would be computed "
        "per group on the group-sharded sub-classifiers; DeeperCluster uses SGD (the paper's) "
        "or another element-wise optimizer ('sgd', 'adamw').")


def _model(config, axis_name) -> DeeperClusterModel:
  return DeeperClusterModel(encoder=encoder_lib.build_encoder(config.model, axis_name),
                            num_super_classes=num_super_classes(config))


def view_recipes(config) -> tuple[augment.ViewRecipe, ...]:
  """One view: random resized crop + flip (the reference's tr_train), then the rotations."""
  _check(config)
  cfg = config.deepercluster
  return (augment.ViewRecipe(size=config.augment.size, crop_scale=tuple(cfg.crop_scale),
                             jitter_prob=0.0, grayscale_prob=0.0),)


def _num_features(config) -> int:
  return resnet.num_features(config.model.depth, config.model.width_multiplier,
                             config.model.base_width)


def init_sub_classifiers(key, config) -> dict:
  """{'kernel': [S, D, k/S'] ~ N(0, std^2), 'bias': zeros [S, k/S']} (one head per super-class)."""
  shape = (num_super_classes(config), _num_features(config), num_sub_classes(config))
  return {"kernel": config.deepercluster.head_init_std * jax.random.normal(key, shape,
                                                                           jnp.float32),
          "bias": jnp.zeros((shape[0], shape[2]), jnp.float32)}


def init(key, config, sample_images):
  """Params {'encoder', 'super_classifier', 'sub_classifiers'}; labels in method_state.

  method_state: 'super_labels' / 'sub_labels' int32 [N] (-1: not clustered yet),
  'weights' float32 [S', k/S'] per (super-cluster, sub-cluster), and the centroids
  of the last clustering ('super_centroids' [S', d], 'sub_centroids' [S', k/S', d]).
  """
  del sample_images
  _check(config)
  cfg = config.deepercluster
  size = config.augment.size
  model_key, sub_key = jax.random.split(key)
  variables = _model(config, None).init(model_key, jnp.zeros((2, size, size, 3)), train=False)
  params = dict(variables["params"])
  params["sub_classifiers"] = init_sub_classifiers(sub_key, config)
  num_examples = data.dataset_info(config.data).train_size
  dim = _pca_dim(config)
  method_state = {
      "super_labels": jnp.full((num_examples,), -1, jnp.int32),
      "sub_labels": jnp.full((num_examples,), -1, jnp.int32),
      "weights": jnp.zeros((cfg.num_super_clusters, num_sub_classes(config)), jnp.float32),
      "super_centroids": jnp.zeros((cfg.num_super_clusters, dim), jnp.float32),
      "sub_centroids": jnp.zeros((cfg.num_super_clusters, num_sub_classes(config), dim),
                                 jnp.float32),
  }
  return params, variables.get("batch_stats", {}), method_state


def _pca_dim(config) -> int:
  return min(config.deepercluster.pca_dim, _num_features(config))


def _nll(logits, labels):
  return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)[:, 0]


def sub_class_nll_sum(features, super_class, sub_label, weight, sub_classifiers, *,
                      axis_name):
  """sum_n w_n CE(sub-classifier[super_class_n](f_n), sub_label_n) over this mesh row.

  Per-device. ``sub_classifiers`` holds this group's S/G heads. The features of
  the devices along ``GROUP_AXIS`` (same replica index) are all-gathered; each
  example is scored by the one group owning its super-class, so the sum of this
  over all devices counts every example of the global batch once.

  Args:
    features: float32 [m, D]; super_class, sub_label: int32 [m]; weight: float32 [m]
      (0 for unclustered examples).
    sub_classifiers: {'kernel': [S_local, D, k], 'bias': [S_local, k]}.
    axis_name: the batch axes, or None (one device holds every head).
  """
  local = sub_classifiers["kernel"].shape[0]
  if axis_name is not None:
    gather = functools.partial(jax.lax.all_gather, axis_name=GROUP_AXIS, axis=0, tiled=True)
    features, super_class, sub_label, weight = map(
        gather, (features, super_class, sub_label, weight))
    first = jax.lax.axis_index(GROUP_AXIS) * local
  else:
    first = 0
  total = jnp.zeros((), jnp.float32)
  for j in range(local):  # static: the heads of this group, usually one
    logits = features @ sub_classifiers["kernel"][j] + sub_classifiers["bias"][j]
    mine = (super_class == first + j).astype(jnp.float32)
    total = total + jnp.sum(mine * weight * _nll(logits, sub_label))
  return total


def loss_fn(params, batch_stats, method_state, views, key, *, config, axis_name,
            example_index):
  """Super-class + sub-class cross-entropy, weighted for uniform sampling (eq. 4).

  loss = (1 / M) sum_rows w (CE_super + CE_sub) over the M = R n rotated rows of the
  global batch.
  """
  del key
  (view,) = views
  n = view.shape[0]
  rotations = num_rotations(config)
  if rotations > 1:
    images, rotation = rotnet.rotate_batch(view)  # rotation-major, [R n]
  else:
    images, rotation = view, jnp.zeros((n,), jnp.int32)
  (features, super_logits), updated = _model(config, axis_name).apply(
      {"params": params, "batch_stats": batch_stats}, images, train=True,
      mutable=["batch_stats"])
  features = features.astype(jnp.float32)
  super_cluster = jnp.tile(method_state["super_labels"][example_index], rotations)
  sub_label = jnp.tile(method_state["sub_labels"][example_index], rotations)
  clustered = super_cluster >= 0
  super_cluster, sub_label = jnp.maximum(super_cluster, 0), jnp.maximum(sub_label, 0)
  weight = jnp.where(clustered, method_state["weights"][super_cluster, sub_label], 0.0)
  super_class = super_cluster * rotations + rotation
  super_loss = jnp.sum(weight * _nll(super_logits, super_class))
  sub_loss = sub_class_nll_sum(features, super_class, sub_label, weight,
                               params["sub_classifiers"], axis_name=axis_name)
  super_correct = jnp.sum((jnp.argmax(super_logits, -1) == super_class) * clustered)
  rows, counted = jnp.asarray(images.shape[0], jnp.float32), jnp.sum(clustered)
  if axis_name is not None:
    super_loss, sub_loss, super_correct, rows, counted = jax.lax.psum(
        (super_loss, sub_loss, super_correct, rows, counted), axis_name)
  loss = (super_loss + sub_loss) / rows
  metrics = {"loss": loss, "super_class_loss": super_loss / rows,
             "sub_class_loss": sub_loss / rows,
             "super_class_accuracy": super_correct / jnp.maximum(counted, 1),
             **diagnostics.collapse_metrics(features[:n], axis_name=axis_name)}
  return loss, (updated.get("batch_stats", {}), method_state, metrics)


def post_update(params, batch_stats, method_state, step, config, *, total_steps):
  del params, batch_stats, step, config, total_steps
  return method_state


def owned_super_clusters(config, groups: int) -> list[range]:
  """For each group, the super-clusters whose sub-classes it clusters (static).

  Group g owns super-classes [g S/G, (g+1) S/G); super-class s R + r belongs to
  super-cluster s. A super-cluster shared by several groups (several rotations
  of it on different groups) is clustered by each of them (same key, same
  rows: same result) and recorded by the first.
  """
  per_group, r = num_super_classes(config) // groups, num_rotations(config)
  return [range(g * per_group // r, ((g + 1) * per_group - 1) // r + 1) for g in range(groups)]


def hierarchical_kmeans(key, x, valid, row_ids, config, *, groups: int, super_centroids=None,
                        sub_centroids=None, axis_name=None):
  """Two-level k-means: super-clusters over all rows, then sub-clusters per super-cluster.

  Per-device (under ``jax.shard_map`` over the (group, replica) mesh, rows split
  over both axes) or single-device (``axis_name=None``, ``groups=1``). The first
  level is one k-means over every row. For the second, each device all-gathers
  the rows of its mesh row along the group axis, then runs, for each
  super-cluster its group owns, a k-means of the rows of that super-cluster
  psum'd over the group's replicas only; the groups run in parallel.

  Args:
    key: PRNG key; x: float32 [m, d] whitened features; valid: bool [m];
    row_ids: int32 [m] global row ids.
    config: the run config (``config.deepercluster``).
    groups: the mesh's group count (1 without a mesh).
    super_centroids, sub_centroids: optional warm starts [S', d] / [S', k, d].
    axis_name: ``BATCH_AXIS`` under shard_map, else None.

  Returns:
    (super_labels int32 [m], sub_labels int32 [m] (-1 for invalid rows),
     counts int32 [S', k] rows per (super-cluster, sub-cluster), super_centroids
     [S', d], sub_centroids [S', k, d]), all but the labels the same on every device.
  """
  cfg = config.deepercluster
  num_sub = num_sub_classes(config)
  super_c, super_labels, _ = kmeans.kmeans(
      key, x, valid, row_ids, cfg.num_super_clusters, num_iters=cfg.kmeans_iters,
      init=cfg.kmeans_init, split_empty=True, centroids=super_centroids, axis_name=axis_name)
  super_labels = jnp.where(valid, super_labels, -1)
  m = x.shape[0]
  if axis_name is not None:
    gather = functools.partial(jax.lax.all_gather, axis_name=GROUP_AXIS, axis=0, tiled=True)
    xg, validg, idg, superg = map(gather, (x, valid, row_ids, super_labels))
    group = jax.lax.axis_index(GROUP_AXIS)
    level2_axis = REPLICA_AXIS
  else:
    xg, validg, idg, superg, group, level2_axis = x, valid, row_ids, super_labels, 0, None
  owned = owned_super_clusters(config, groups)
  sub_labels = jnp.full(xg.shape[:1], -1, jnp.int32)
  counts = jnp.zeros((cfg.num_super_clusters, num_sub), jnp.int32)
  centroids = jnp.zeros((cfg.num_super_clusters, num_sub, x.shape[1]), jnp.float32)
  first = jnp.asarray([r.start for r in owned], jnp.int32)[group]
  last = jnp.asarray([r.stop for r in owned], jnp.int32)[group]
  per_group = num_super_classes(config) // groups
  for j in range(max(len(r) for r in owned)):
    s = first + j
    # Recorded by the first group owning s (others, if any, computed the same).
    record = (s < last) & ((s * num_rotations(config)) // per_group == group)
    members = validg & (superg == s)
    init_c = None if sub_centroids is None else sub_centroids[jnp.minimum(
        s, cfg.num_super_clusters - 1)]
    c, labels, n = kmeans.kmeans(
        jax.random.fold_in(key, 1 + s), xg, members, idg, num_sub,
        num_iters=cfg.kmeans_iters, init=cfg.kmeans_init, split_empty=True,
        centroids=init_c, axis_name=level2_axis)
    sub_labels = jnp.where(members & record, labels, sub_labels)
    s_index = jnp.minimum(s, cfg.num_super_clusters - 1)
    counts = counts.at[s_index].add(jnp.where(record, n, 0))
    centroids = centroids.at[s_index].add(jnp.where(record, c, 0.0))
  if axis_name is not None:
    # Each row's sub-label was recorded by exactly one group: sum over groups,
    # then keep this device's own rows.
    sub_labels = jax.lax.psum(jnp.where(sub_labels >= 0, sub_labels + 1, 0), GROUP_AXIS) - 1
    sub_labels = jax.lax.dynamic_slice_in_dim(sub_labels, group * m, m)
    counts, centroids = jax.lax.psum((counts, centroids), GROUP_AXIS)
  return super_labels, sub_labels, counts, super_c, centroids


def uniform_sampling_weights(counts: jax.Array, num_examples) -> jax.Array:
  """w[s, c] = N / (S' k'_s n_{s,c}) for non-empty sub-clusters, 0 for empty ones.

  The expected weighted loss over the data equals the loss under the reference's
  sampling: a super-cluster uniformly, a sub-cluster of it uniformly, an image of
  that uniformly.
  """
  nonempty = counts > 0
  supers = jnp.maximum(jnp.sum(jnp.any(nonempty, axis=1)), 1)
  subs = jnp.maximum(jnp.sum(nonempty, axis=1, keepdims=True), 1)
  return jnp.where(nonempty, num_examples / (supers * subs * jnp.maximum(counts, 1)),
                   0.0).astype(jnp.float32)


def _cluster(key, features, valid, row_ids, super_c, sub_c, *, config, groups, warm):
  """Per-device: PCA-whiten + L2 (as DeepCluster), then the two-level k-means."""
  dim = features.shape[-1]
  x = features.reshape(-1, dim)
  valid, row_ids = valid.reshape(-1), row_ids.reshape(-1)
  x = kmeans.pca_whiten(x, valid, _pca_dim(config), l2_normalize=True, axis_name=BATCH_AXIS)
  super_labels, sub_labels, counts, super_c, sub_c = hierarchical_kmeans(
      key, x, valid, row_ids, config, groups=groups,
      super_centroids=super_c if warm else None, sub_centroids=sub_c if warm else None,
      axis_name=BATCH_AXIS)
  shape = features.shape[:2]
  return super_labels.reshape(shape), sub_labels.reshape(shape), counts, super_c, sub_c


def epoch_start(state, context):
  """Every ``reassign_every_epochs`` epochs: re-cluster, new labels and weights, fresh heads."""
  config, mesh = context.config, context.mesh
  cfg = config.deepercluster
  if context.epoch % cfg.reassign_every_epochs:
    return state
  num_examples = state.method_state["super_labels"].shape[0]
  groups = mesh.shape[GROUP_AXIS]
  out = context.map_train_split(functools.partial(deepcluster.centre_features, config), state,
                                name="deepercluster.features")
  rng = jax.random.wrap_key_data(state.rng)
  key = jax.random.fold_in(jax.random.fold_in(rng, 130363), context.epoch)
  # Warm start only from an earlier clustering (the first has no centroids).
  warm = bool(cfg.warm_start and context.epoch > 0)
  cluster = context.compiled(f"deepercluster.cluster.{warm}", lambda: jax.jit(jax.shard_map(
      functools.partial(_cluster, config=config, groups=groups, warm=warm), mesh=mesh,
      in_specs=(P(), P(None, BATCH_AXIS), P(None, BATCH_AXIS), P(None, BATCH_AXIS), P(), P()),
      out_specs=(P(None, BATCH_AXIS), P(None, BATCH_AXIS), P(), P(), P()))))
  super_labels, sub_labels, counts, super_c, sub_c = cluster(
      key, out["outputs"], out["valid"], out["index"], state.method_state["super_centroids"],
      state.method_state["sub_centroids"])
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s),
                           _state_specs(context), is_leaf=lambda x: isinstance(x, P))

  def new_state(state, super_labels, sub_labels, counts, super_c, sub_c, key):
    head_key, sub_key = jax.random.split(jax.random.fold_in(key, 1))
    params = dict(state.params)
    # main.py rebuilds both prediction layers after each clustering.
    params["super_classifier"] = {
        "kernel": cfg.head_init_std * jax.random.normal(
            head_key, params["super_classifier"]["kernel"].shape, jnp.float32),
        "bias": jnp.zeros_like(params["super_classifier"]["bias"])}
    params["sub_classifiers"] = init_sub_classifiers(sub_key, config)
    method_state = {"super_labels": super_labels.reshape(-1)[:num_examples],
                    "sub_labels": sub_labels.reshape(-1)[:num_examples],
                    "weights": uniform_sampling_weights(counts, num_examples),
                    "super_centroids": super_c, "sub_centroids": sub_c}
    opt_state = epoch_hooks.reset_opt_state(context.tx, state.opt_state, params,
                                            "super_classifier")
    opt_state = epoch_hooks.reset_opt_state(context.tx, opt_state, params, "sub_classifiers")
    return state.replace(params=params, opt_state=opt_state, method_state=method_state)

  compiled = context.compiled("deepercluster.new_state",
                              lambda: jax.jit(new_state, out_shardings=shardings))
  return compiled(state, super_labels, sub_labels, counts, super_c, sub_c, key)


def _state_specs(context):
  from ssl_jax import train  # pylint: disable=g-import-not-at-top  (train imports methods)
  return train.state_specs(context.config, sys.modules[__name__], context.tx)
