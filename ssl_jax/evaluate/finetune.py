"""Fine-tuning the whole network, on all labels (``finetune``) or on few (``semisup``).

The pre-trained backbone plus a new linear head (zero-initialised) are trained
end to end with their own schedule: SGD with Nesterov momentum, learning rate
``lr x B/256`` with cosine decay, random-resized crop + flip, BatchNorm in
train mode with statistics over the global batch (cross-replica), as SimCLR's
appendix B.5. Test: centre crop, eval-mode BN with statistics recomputed on
train batches with the final weights (precise BN, Wu & Johnson 2021);
top-1 and top-5.

``semisup`` is SimCLR's semi-supervised protocol (Sec. 6): fine-tune on 1% and
10% class-balanced subsets of the labelled train split, chosen
deterministically from the seed (``common.class_balanced_subset``).
"""

from __future__ import annotations

import functools
import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from ssl_jax import augment
from ssl_jax.evaluate import common
from ssl_jax.evaluate import features as features_lib
from ssl_jax.evaluate import results as results_lib
from ssl_jax.models import encoder as encoder_lib
from ssl_jax.parallel import BATCH_AXIS


class Classifier(nn.Module):
  """Backbone + linear head: images float32 [B, S, S, 3] -> logits float32 [B, C]."""
  encoder: nn.Module
  num_classes: int

  @nn.compact
  def __call__(self, images, train: bool):
    features = self.encoder(images, train=train).astype(jnp.float32)
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="head")(features)


@functools.lru_cache(maxsize=8)
def _compiled(model_json: str, num_classes: int, mesh, recipe, momentum: float,
              weight_decay: float):
  """(train step, test logits) compiled once per model/mesh/recipe/optimizer.

  The learning rate is an argument (the host evaluates the schedule), so runs
  with other rates or lengths (the semisup fractions) reuse the compilation.
  """
  model_config = ml_collections.ConfigDict(json.loads(model_json))
  size = recipe.size
  train_model = Classifier(encoder_lib.build_encoder(model_config, BATCH_AXIS), num_classes)
  eval_model = Classifier(encoder_lib.build_encoder(model_config), num_classes)
  parts = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
  # SGD with Nesterov momentum is trace(momentum) then -lr: optax.sgd's own chain.
  tx = optax.chain(*parts, optax.trace(decay=momentum, nesterov=True))

  def step(params, batch_stats, opt_state, images, labels, key, learning_rate):
    views = common.augmented_views(key, images, recipe)

    def loss_fn(params):
      logits, updated = train_model.apply({"params": params, "batch_stats": batch_stats}, views,
                                          train=True, mutable=["batch_stats"])
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return jax.lax.pmean(ce, BATCH_AXIS), updated["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    updates = jax.tree.map(lambda u: -learning_rate * u, updates)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  step_fn = jax.jit(jax.shard_map(
      step, mesh=mesh, in_specs=(P(), P(), P(), P(BATCH_AXIS), P(BATCH_AXIS), P(), P()),
      out_specs=(P(), P(), P(), P())), donate_argnums=(0, 1, 2))

  def logits(params, batch_stats, images):
    return eval_model.apply({"params": params, "batch_stats": batch_stats},
                            augment.center_view(images, size), train=False)

  logits_fn = jax.jit(jax.shard_map(logits, mesh=mesh, in_specs=(P(), P(), P(BATCH_AXIS)),
                                    out_specs=P(BATCH_AXIS)))

  # Precise BN: with momentum 0 the "running" statistics are those of one
  # global batch; the host averages them over several batches.
  stats_model = Classifier(encoder_lib.build_encoder(
      ml_collections.ConfigDict(dict(model_config.to_dict(), bn_momentum=0.0)), BATCH_AXIS),
                           num_classes)

  def batch_stats_of(params, batch_stats, images):
    _, updated = stats_model.apply({"params": params, "batch_stats": batch_stats},
                                   augment.center_view(images, size), train=True,
                                   mutable=["batch_stats"])
    return updated["batch_stats"]

  stats_fn = jax.jit(jax.shard_map(batch_stats_of, mesh=mesh,
                                   in_specs=(P(), P(), P(BATCH_AXIS)), out_specs=P()))
  return tx, step_fn, logits_fn, stats_fn


def precise_batch_stats(stats_fn, params, batch_stats, mesh, images: np.ndarray,
                        batch_size: int, num_batches: int, seed: int):
  """BN statistics recomputed with the final weights (Wu & Johnson 2021, "precise BN").

  The EMA of the running statistics lags the weights when a short, high-lr
  fine-tune moves them fast; averaging the statistics of ``num_batches``
  global batches of (centre-cropped) train images with the final weights
  removes that lag. Returns replicated batch_stats.
  """
  if num_batches <= 0 or len(images) < batch_size:
    return batch_stats
  order = np.random.default_rng((seed, 4)).permutation(len(images))
  total, count = None, 0
  for b in range(min(num_batches, len(images) // batch_size)):
    (x,) = common.put(mesh, images[order[b * batch_size:(b + 1) * batch_size]])
    stats = jax.device_get(stats_fn(params, batch_stats, x))
    total = stats if total is None else jax.tree.map(np.add, total, stats)
    count += 1
  return features_lib.replicate(jax.tree.map(lambda t: t / count, total), mesh)


def finetune(s: features_lib.Setup, eval_config, train_images, train_y, test_images, test_y, *,
             epochs: int) -> tuple[dict, dict]:
  """(metrics, settings): fine-tunes on (train_images, train_y), tests on the test split."""
  cfg = eval_config.finetune
  seed = int(eval_config.seed)
  num_classes = s.info.num_classes
  batch = common.fit_batch_size(eval_config.batch_size, len(train_y), s.mesh.size)
  steps = epochs * (len(train_y) // batch)
  lr = float(cfg.learning_rate) * batch / 256
  schedule = optax.cosine_decay_schedule(lr, max(1, steps))
  recipe = common.train_recipe(s.config.augment.size, cfg.crop_scale)
  tx, step_fn, logits_fn, stats_fn = _compiled(
      json.dumps(s.config.model.to_dict(), sort_keys=True), num_classes, s.mesh, recipe,
      float(cfg.momentum), float(cfg.weight_decay))

  head = nn.Dense(num_classes, kernel_init=nn.initializers.zeros).init(
      jax.random.key(seed), jnp.zeros((1, _probe_dim(s)), jnp.float32))["params"]
  params = {"encoder": s.ckpt.params["encoder"], "head": head}
  batch_stats = {"encoder": s.ckpt.batch_stats["encoder"]}
  params, batch_stats = features_lib.replicate((params, batch_stats), s.mesh)
  opt_state = features_lib.replicate(tx.init(params), s.mesh)

  root = jax.random.key(seed)
  losses = []
  train_idx = np.arange(len(train_y))
  for i, idx in enumerate(common.epoch_batches(train_idx, batch, seed, epochs)):
    images, labels = common.put(s.mesh, train_images[idx], train_y[idx])
    params, batch_stats, opt_state, loss = step_fn(
        params, batch_stats, opt_state, images, labels, jax.random.fold_in(root, i),
        jnp.float32(schedule(i)))
    losses.append(loss)

  batch_stats = precise_batch_stats(stats_fn, params, batch_stats, s.mesh, train_images, batch,
                                    int(cfg.precise_bn_batches), seed)
  scores = common.predict_in_batches(lambda x: logits_fn(params, batch_stats, x), s.mesh,
                                     test_images, s.config.eval_batch_size)
  losses = np.asarray(jax.device_get(losses))
  metrics = {"top1": common.topk_accuracy(scores, test_y, 1),
             "top5": common.topk_accuracy(scores, test_y, 5),
             "final_loss": float(losses[-1]) if len(losses) else float("nan")}
  settings = {"optimizer": "sgd nesterov", "lr": lr, "momentum": cfg.momentum,
              "weight_decay": cfg.weight_decay, "schedule": "cosine", "epochs": epochs,
              "batch_size": batch, "steps": steps, "labelled": len(train_y),
              "bn": "train mode, global batch", "precise_bn_batches": cfg.precise_bn_batches,
              "train": "random-resized crop + flip",
              "test": "centre crop"}
  return metrics, settings


def _probe_dim(s) -> int:
  """Feature dimension of the backbone (one abstract forward pass)."""
  encoder = encoder_lib.build_encoder(s.config.model)
  size = s.config.augment.size
  out = jax.eval_shape(
      lambda p, bs: encoder.apply({"params": p, "batch_stats": bs},
                                  jnp.zeros((1, size, size, 3)), train=False),
      s.ckpt.params["encoder"], s.ckpt.batch_stats["encoder"])
  return int(out.shape[-1])


def _splits(s):
  train = features_lib.load_split(s.data_config, s.data_config.eval_train_split,
                                  batch_size=s.config.eval_batch_size)
  test = features_lib.load_split(s.data_config, s.data_config.eval_test_split,
                                 batch_size=s.config.eval_batch_size)
  return train, test


def finetune_protocol(workdir: str, eval_config, *, dataset: str | None = None,
                      data_dir: str | None = None, folder: str | None = None,
                      setup=None) -> dict:
  """The ``finetune`` protocol on all labels of the eval dataset's train split."""
  s = setup or features_lib.setup(workdir, dataset=dataset, data_dir=data_dir, folder=folder,
                                  batch_size=eval_config.batch_size)
  start = time.perf_counter()
  (train_images, train_y), (test_images, test_y) = _splits(s)
  metrics, settings = finetune(s, eval_config, train_images, train_y, test_images, test_y,
                               epochs=int(eval_config.finetune.epochs))
  settings["seconds"] = round(time.perf_counter() - start, 1)
  record = s.record("finetune", metrics, settings, eval_config.seed)
  results_lib.write_result(workdir, record)
  return record


def semisup_protocol(workdir: str, eval_config, *, dataset: str | None = None,
                     data_dir: str | None = None, folder: str | None = None,
                     setup=None) -> dict:
  """The ``semisup`` protocol: fine-tuning on each class-balanced labelled fraction."""
  s = setup or features_lib.setup(workdir, dataset=dataset, data_dir=data_dir, folder=folder,
                                  batch_size=eval_config.batch_size)
  cfg = eval_config.semisup
  if len(cfg.epochs) != len(cfg.fractions):
    raise ValueError(f"eval.semisup.epochs={cfg.epochs} needs one entry per fraction "
                     f"{cfg.fractions}.")
  start = time.perf_counter()
  (train_images, train_y), (test_images, test_y) = _splits(s)
  metrics, settings = {}, {"fractions": tuple(cfg.fractions), "subsets": "class-balanced"}
  for fraction, epochs in zip(cfg.fractions, cfg.epochs):
    subset = common.class_balanced_subset(train_y, fraction, int(eval_config.seed),
                                          s.info.num_classes)
    m, fs = finetune(s, eval_config, train_images[subset], train_y[subset], test_images, test_y,
                     epochs=int(epochs))
    tag = f"{100 * fraction:g}pct"
    metrics.update({f"top1_{tag}": m["top1"], f"top5_{tag}": m["top5"]})
    settings.update({f"labelled_{tag}": fs["labelled"], f"epochs_{tag}": epochs,
                     f"lr_{tag}": fs["lr"]})
  settings["seconds"] = round(time.perf_counter() - start, 1)
  record = s.record("semisup", metrics, settings, eval_config.seed)
  results_lib.write_result(workdir, record)
  return record
