"""SwAV (Caron, Misra, Mairal, Goyal, Bojanowski & Joulin 2020, "Unsupervised
Learning of Visual Features by Contrasting Cluster Assignments").

Every crop goes through the encoder, a projection MLP and L2 normalisation to z
(Sec. 3.1), then is scored against K prototypes c_k (kept on the unit sphere).
Codes q come from Sinkhorn-Knopp over the GLOBAL batch (eq. 3, appendix A.1) of
the high-resolution crops only; the loss is the swapped prediction (eq. 1-2)
over every (code crop, other crop) pair with multi-crop (Sec. 3.2), as the
reference ``facebookresearch/swav`` ``main_swav.py`` computes it:

  loss = mean_{i in code crops} mean_{v != i} CE(q_i, softmax(z_v^T C / T)).

Details of the reference code reproduced here:

- Prototypes are normalised before every step (``project_params`` puts them back
  on the unit sphere after each update, and ``init`` starts there), so the
  optimizer and the loss always see unit prototypes.
- Prototypes are frozen for the first epoch (``freeze_prototypes_niters``): an
  optimizer wrapper (``optim.freeze_for_steps``) set by ``config.optim.frozen_*``.
- Crops of one resolution go through the encoder together (BatchNorm over each
  resolution group); the projection head sees all crops at once.
- The queue (Sec. 4 "small batches", reference ``queue``): the embeddings of the
  high-resolution crops of the last ``queue_length`` images, global over
  devices, FIFO (newest first). It is filled from ``queue_start_epoch`` on (a
  step, ``round(queue_start_epoch * steps_per_epoch)``, so that a fractional
  epoch -- a paper schedule compressed into a short run -- keeps its share), and
  once full its scores against the current prototypes are prepended to the
  batch's before Sinkhorn (widening the equipartition); their codes are dropped.
  It lives in ``method_state`` (replicated), so checkpoints hold it. As in the
  reference, the queue is pushed after the codes of the step are computed.

Logged besides the loss and ``diagnostics.collapse_metrics``: ``code_entropy``
and ``prediction_entropy`` (``assignment_entropies``), which tell a collapse to
ln K (codes flattening) from a start that learns (codes sharpening).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ssl_jax import augment
from ssl_jax import diagnostics
from ssl_jax import losses
from ssl_jax.models import encoder as encoder_lib
from ssl_jax.models import heads
from ssl_jax.models import resnet
from ssl_jax.parallel import gather_replicated

# Sinkhorn equipartitions the codes over the whole global batch: micro-batches by
# gradient accumulation would change the codes (train.py refuses them).
BATCH_COUPLED_LOSS = True
# loss_fn gets the step (the queue is filled from queue_start_step on).
USES_STEP = True


class SwAVModel(nn.Module):
  """Encoder + projection MLP + L2 norm (z) + prototypes (scores), as ``main_swav.py``."""
  encoder: nn.Module
  projector: nn.Module
  num_prototypes: int

  def setup(self):
    self.prototypes = heads.Prototypes(self.num_prototypes)

  def __call__(self, groups, train: bool):
    """groups: crops grouped by resolution, each float32 [m, S, S, 3].

    Returns (z float32 [M, D] unit rows, scores float32 [M, K]), M = sum of the m.
    """
    features = jnp.concatenate([self.encoder(g, train=train) for g in groups])
    z = self.projector(features, train=train)
    z = z / jnp.linalg.norm(z, axis=-1, keepdims=True).clip(1e-12)
    return z, self.prototypes(z)


def _model(config: ml_collections.ConfigDict, axis_name) -> SwAVModel:
  cfg = config.swav
  hidden = cfg.projector_hidden_dim or resnet.num_features(
      config.model.depth, config.model.width_multiplier, config.model.base_width)
  # main_swav.py / src/resnet50.py projection_head: Linear - BN - ReLU - Linear, with biases.
  projector = heads.MLPHead(hidden_dims=(hidden,), output_dim=cfg.projection_dim, use_bn=True,
                            use_bias=True, output_bias=True, axis_name=axis_name,
                            dtype=encoder_lib.compute_dtype(config.model))
  return SwAVModel(encoder=encoder_lib.build_encoder(config.model, axis_name),
                   projector=projector, num_prototypes=cfg.num_prototypes)


def view_recipes(config) -> tuple[augment.ViewRecipe, ...]:
  """``num_large_crops`` crops at ``augment.size`` then ``num_small_crops`` small crops."""
  return multicrop_recipes(config.augment, config.swav)


def multicrop_recipes(augment_config, crops) -> tuple[augment.ViewRecipe, ...]:
  """Multi-crop views (Sec. 3.2) from a multi-crop preset, shared with DeepCluster v2.

  Args:
    augment_config: ``config.augment`` (preset 'swav' or 'swav_cifar', size).
    crops: a config section with num_large_crops, num_small_crops, num_code_crops.
  """
  recipes = augment.preset(augment_config.preset, augment_config.size)
  large = [r for r in recipes if r.size == augment_config.size]
  small = [r for r in recipes if r.size != augment_config.size]
  if not large or (crops.num_small_crops and not small):
    raise ValueError(
        f"Multi-crop needs a multi-crop preset (large crops at augment.size="
        f"{augment_config.size} and small crops); preset {augment_config.preset!r} gives sizes "
        f"{[r.size for r in recipes]}. Use config.augment.preset='swav' or 'swav_cifar'.")
  if crops.num_large_crops < 2 or crops.num_code_crops > crops.num_large_crops:
    raise ValueError(f"num_large_crops={crops.num_large_crops} must be >= 2 and >= "
                     f"num_code_crops={crops.num_code_crops}.")
  return ((large[0],) * crops.num_large_crops
          + ((small[0],) * crops.num_small_crops if small else ()))


def queue_length(config) -> int:
  """The queue's rows: 0 without a queue; else rounded down to a multiple of the batch.

  The reference subtracts ``queue_length % (batch_size * world_size)`` so that
  whole global batches are pushed. The queue is only used for batches up to
  ``queue_max_batch_size`` (the paper's small-batch setting).
  """
  cfg = config.swav
  if cfg.queue_length <= 0 or config.batch_size > cfg.queue_max_batch_size:
    return 0
  return cfg.queue_length - cfg.queue_length % config.batch_size


def init(key, config, sample_images):
  """Params {'encoder', 'projector', 'prototypes'} (unit prototypes) and the queue state."""
  del sample_images
  size = config.augment.size
  dummy = jnp.zeros((2, size, size, 3), jnp.float32)
  variables = _model(config, axis_name=None).init(key, [dummy], train=False)
  params = project_params(dict(variables["params"]), config)
  method_state = {"queue_start_step": jnp.zeros((), jnp.int32)}
  length = queue_length(config)
  if length:
    method_state["queue"] = jnp.zeros(
        (config.swav.num_code_crops, length, config.swav.projection_dim), jnp.float32)
    method_state["queue_filled"] = jnp.zeros((), jnp.int32)
  return params, variables.get("batch_stats", {}), method_state


def project_params(params, config):
  """Prototypes back to unit L2 norm (main_swav.py normalises them before every step)."""
  del config
  return dict(params, prototypes=heads.normalize_prototypes(params["prototypes"]))


def epoch_start(state, context):
  """Records the step at which the queue starts (``queue_start_epoch`` epochs in)."""
  start = int(round(context.config.swav.queue_start_epoch * context.steps_per_epoch))
  replicated = NamedSharding(context.mesh, P())
  method_state = dict(state.method_state,
                      queue_start_step=jax.device_put(np.int32(start), replicated))
  return state.replace(method_state=method_state)


def group_by_resolution(views):
  """Consecutive views of one resolution concatenated (main_swav.py's ``idx_crops``)."""
  groups, current = [], [views[0]]
  for v in views[1:]:
    if v.shape[1:] == current[-1].shape[1:]:
      current.append(v)
    else:
      groups.append(jnp.concatenate(current))
      current = [v]
  return groups + [jnp.concatenate(current)]


def loss_fn(params, batch_stats, method_state, views, key, *, config, axis_name, step):
  """SwAV's multi-crop swapped prediction (per-device code, global Sinkhorn).

  Args:
    params, batch_stats: {'encoder', 'projector', 'prototypes'} trees.
    method_state: {'queue_start_step', and with a queue
      'queue' float32 [C, Q, D] (global, newest rows first), 'queue_filled' int32 []}.
    views: large crops then small crops, float32 [n, S_v, S_v, 3].
    key: unused.
    config: the run config (``config.swav``).
    axis_name: the data-parallel axis.
    step: int32 [], the optimizer steps taken before this one.

  Returns:
    (loss, (batch_stats, method_state, metrics)).
  """
  del key
  cfg = config.swav
  n = views[0].shape[0]
  (z, scores), updated = _model(config, axis_name).apply(
      {"params": params, "batch_stats": batch_stats}, group_by_resolution(views), train=True,
      mutable=["batch_stats"])
  all_scores = [scores[v * n:(v + 1) * n] for v in range(len(views))]
  code_scores = all_scores[:cfg.num_code_crops]
  sinkhorn = dict(temperature=cfg.temperature, epsilon=cfg.epsilon,
                  sinkhorn_iters=cfg.sinkhorn_iters, axis_name=axis_name)
  metrics = {}
  if "queue" in method_state:
    queue = method_state["queue"]
    num_devices = 1 if axis_name is None else jax.lax.axis_size(axis_name)
    local_rows = queue.shape[1] // num_devices
    offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * local_rows
    # This device's share of the global queue; Sinkhorn's sums span all devices,
    # so the codes are those of the whole queue + global batch (as the reference's
    # per-GPU queues of queue_length / world_size rows).
    local_queue = jax.lax.dynamic_slice_in_dim(queue, offset, local_rows, axis=1)
    prototypes = jax.lax.stop_gradient(params["prototypes"]["kernel"])
    queue_scores = [local_queue[i] @ prototypes for i in range(cfg.num_code_crops)]
    active = step >= method_state["queue_start_step"]
    use_queue = active & (method_state["queue_filled"] >= queue.shape[1])

    def with_queue(all_scores, queue_scores):
      codes_from = [jnp.concatenate([qs, s]) for qs, s in zip(queue_scores, all_scores)]
      return losses.swav_multicrop_loss(codes_from, all_scores, **sinkhorn)

    def without_queue(all_scores, queue_scores):
      del queue_scores
      return losses.swav_multicrop_loss(all_scores[:cfg.num_code_crops], all_scores,
                                        **sinkhorn)

    loss = jax.lax.cond(use_queue, with_queue, without_queue, all_scores, queue_scores)
    # FIFO push of the global batch's embeddings of the code crops, newest first.
    global_batch = [gather_replicated(jax.lax.stop_gradient(z[i * n:(i + 1) * n]), axis_name)
                    for i in range(cfg.num_code_crops)]
    pushed = jnp.concatenate([jnp.stack(global_batch), queue], axis=1)[:, :queue.shape[1]]
    filled = jnp.minimum(method_state["queue_filled"] + global_batch[0].shape[0],
                         queue.shape[1])
    method_state = dict(method_state, queue=jnp.where(active, pushed, queue),
                        queue_filled=jnp.where(active, filled, method_state["queue_filled"]))
    metrics["queue_in_use"] = use_queue.astype(jnp.float32)
  else:
    loss = losses.swav_multicrop_loss(code_scores, all_scores, **sinkhorn)
  metrics.update(loss=loss, **diagnostics.collapse_metrics(z[:n], z[n:2 * n], axis_name),
                 **assignment_entropies(code_scores[0], config, axis_name))
  return loss, (updated.get("batch_stats", {}), method_state, metrics)


def assignment_entropies(scores, config, axis_name) -> dict:
  """Entropies of one crop's codes and predictions, global-batch means (nats).

  ``code_entropy``: of the Sinkhorn codes q of ``scores`` over the global batch
  alone (no queue), eq. 3-5; ``prediction_entropy``: of softmax(scores / T), eq. 2.
  Codes whose entropy climbs to ln K (uniform) mark the start-of-training collapse
  the reference README lists under "Common Issues" (the loss then sits at ln K);
  codes that sharpen mean the prototypes are splitting the data (README, SwAV
  results).

  Args:
    scores: float [n, K] this device's scores of the first code crop.
    config: the run config (``config.swav``).
    axis_name: the data-parallel axis.
  """
  cfg = config.swav
  codes = losses.sinkhorn(scores, cfg.epsilon, cfg.sinkhorn_iters, axis_name)
  predictions = jax.nn.softmax(jax.lax.stop_gradient(scores).astype(jnp.float32)
                               / cfg.temperature)
  out = {name: jnp.mean(jnp.sum(jax.scipy.special.entr(p), axis=-1))
         for name, p in (("code_entropy", codes), ("prediction_entropy", predictions))}
  return out if axis_name is None else jax.lax.pmean(out, axis_name)


def post_update(params, batch_stats, method_state, step, config, *, total_steps):
  """Nothing to do: the queue is pushed in ``loss_fn``, prototypes projected in
  ``project_params``."""
  del params, batch_stats, step, config, total_steps
  return method_state
