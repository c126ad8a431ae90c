"""The linear protocol: a linear classifier on the frozen backbone; top-1 and top-5.

Two forms, as in the literature:

- ``lbfgs`` (small data; SimCLR appendix B.6 transfer protocol, after Kornblith
  et al. 2019): features of the centre crop computed once, standardised with
  the train statistics, multinomial logistic regression fitted by L-BFGS
  (scikit-learn) with its L2 strength ``C`` chosen on a stratified held-out
  part of the train split, then refitted on the whole split.
- ``sgd`` (large data; the standard linear evaluation of MoCo/SimCLR): the
  head is trained on random-resized crops + flips of the frozen backbone's
  features (eval-mode BN), SGD with Nesterov momentum and cosine decay, centre
  crop at test. One head per learning rate of the sweep is trained in the same
  steps (the backbone runs once per batch); the head with the best held-out
  top-1 is reported on the test split.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from ssl_jax.evaluate import common
from ssl_jax.evaluate import features as features_lib
from ssl_jax.evaluate import results as results_lib
from ssl_jax.models import encoder as encoder_lib
from ssl_jax.parallel import BATCH_AXIS


def fit_logistic(train_x: np.ndarray, train_y: np.ndarray, *, inverse_l2, max_iter: int):
  """A fitted ``StandardScaler -> LogisticRegression(lbfgs)`` pipeline.

  Minimises ``sum_i -log softmax(W x_i + b)[y_i] + ||W||^2 / (2 C)`` over the
  standardised features (multinomial, L2 on W only).
  """
  from sklearn import linear_model, pipeline, preprocessing  # pylint: disable=g-import-not-at-top
  model = pipeline.make_pipeline(
      preprocessing.StandardScaler(),
      linear_model.LogisticRegression(C=float(inverse_l2), solver="lbfgs", max_iter=max_iter,
                                      tol=1e-6))
  return model.fit(train_x.astype(np.float64), train_y)


def _scores(model, x: np.ndarray, num_classes: int) -> np.ndarray:
  """[N, num_classes] class probabilities (classes absent from train get 0)."""
  proba = model.predict_proba(x.astype(np.float64))
  out = np.zeros((len(x), num_classes))
  out[:, model.classes_] = proba
  return out


def lbfgs_probe(train_x, train_y, test_x, test_y, *, num_classes: int, inverse_l2,
                val_fraction: float, max_iter: int, seed: int) -> tuple[dict, dict]:
  """(metrics, settings) of the L-BFGS logistic-regression probe on features."""
  fit, held = common.stratified_holdout(train_y, val_fraction, seed)
  val_top1 = {}
  for c in inverse_l2:
    model = fit_logistic(train_x[fit], train_y[fit], inverse_l2=c, max_iter=max_iter)
    val_top1[float(c)] = common.topk_accuracy(
        _scores(model, train_x[held], num_classes), train_y[held], 1)
  best = max(val_top1, key=lambda c: (val_top1[c], -c))  # ties: the stronger L2
  model = fit_logistic(train_x, train_y, inverse_l2=best, max_iter=max_iter)
  scores = _scores(model, test_x, num_classes)
  metrics = {"top1": common.topk_accuracy(scores, test_y, 1),
             "top5": common.topk_accuracy(scores, test_y, 5),
             "val_top1": val_top1[best]}
  settings = {"solver": "lbfgs", "C": best, "C_grid": tuple(float(c) for c in inverse_l2),
              "val_fraction": val_fraction, "features": "standardised centre crop"}
  return metrics, settings


def _make_sgd_step(config, mesh, recipe, tx, learning_rates):
  """jit(shard_map) of one SGD step of all heads; the backbone is frozen (eval-mode BN)."""
  lrs = jnp.asarray(learning_rates, jnp.float32)

  def step(heads, opt_state, params, batch_stats, mean, std, images, labels, key):
    views = common.augmented_views(key, images, recipe)
    f = encoder_lib.encode(config.model, params, batch_stats, views).astype(jnp.float32)
    f = jax.lax.stop_gradient((f - mean) / std)

    def loss_fn(heads):
      logits = jnp.einsum("nd,ldc->lnc", f, heads["w"]) + heads["b"][:, None, :]
      ce = optax.softmax_cross_entropy_with_integer_labels(
          logits, jnp.broadcast_to(labels, logits.shape[:2]))          # [L, n]
      # Heads are independent: the sum gives each head its own mean loss gradient.
      return jax.lax.pmean(jnp.sum(jnp.mean(ce, axis=1)), BATCH_AXIS)

    loss, grads = jax.value_and_grad(loss_fn)(heads)
    updates, opt_state = tx.update(grads, opt_state, heads)
    # The optimizer is linear in the gradients: scaling each head's update by
    # its own learning rate is SGD at that rate.
    updates = jax.tree.map(lambda u: -lrs.reshape((-1,) + (1,) * (u.ndim - 1)) * u, updates)
    return optax.apply_updates(heads, updates), opt_state, loss / len(learning_rates)

  return jax.jit(jax.shard_map(
      step, mesh=mesh,
      in_specs=(P(), P(), P(), P(), P(), P(), P(BATCH_AXIS), P(BATCH_AXIS), P()),
      out_specs=(P(), P(), P())), donate_argnums=(0, 1))


def sgd_probe(s: features_lib.Setup, eval_config) -> tuple[dict, dict]:
  """(metrics, settings) of the augmented SGD probe with a learning-rate sweep."""
  cfg = eval_config.linear
  seed = int(eval_config.seed)
  train_images, train_y = features_lib.load_split(s.data_config, s.data_config.eval_train_split,
                                                  batch_size=s.config.eval_batch_size)
  test_images, test_y = features_lib.load_split(s.data_config, s.data_config.eval_test_split,
                                                batch_size=s.config.eval_batch_size)
  fit, held = common.stratified_holdout(train_y, cfg.val_fraction, seed)
  feature_fn = features_lib.make_feature_fn(s.config, s.mesh, normalize=False)
  eval_bs = s.config.eval_batch_size

  def centre_features(images):
    return common.predict_in_batches(lambda x: feature_fn(s.params, s.batch_stats, x),
                                     s.mesh, images, eval_bs)

  fit_features = centre_features(train_images[fit])
  mean = fit_features.mean(0)
  std = fit_features.std(0) + 1e-6
  dim, num_classes = fit_features.shape[1], s.info.num_classes
  batch = common.fit_batch_size(eval_config.batch_size, len(fit), s.mesh.size)
  steps = cfg.epochs * (len(fit) // batch)
  lrs = tuple(float(lr) * batch / 256 for lr in cfg.learning_rates)
  tx = optax.chain(optax.trace(decay=cfg.momentum, nesterov=True),
                   optax.scale_by_schedule(optax.cosine_decay_schedule(1.0, max(1, steps))))
  heads = {"w": jnp.zeros((len(lrs), dim, num_classes)), "b": jnp.zeros((len(lrs), num_classes))}
  heads = features_lib.replicate(heads, s.mesh)
  opt_state = features_lib.replicate(tx.init(heads), s.mesh)
  recipe = common.train_recipe(s.config.augment.size, cfg.crop_scale)
  step_fn = _make_sgd_step(s.config, s.mesh, recipe, tx, lrs)
  mean_r, std_r = features_lib.replicate((mean, std), s.mesh)
  root = jax.random.key(seed)
  for i, idx in enumerate(common.epoch_batches(fit, batch, seed, cfg.epochs)):
    images, labels = common.put(s.mesh, train_images[idx], train_y[idx])
    heads, opt_state, _ = step_fn(heads, opt_state, s.params, s.batch_stats, mean_r, std_r,
                                  images, labels, jax.random.fold_in(root, i))
  w, b = np.asarray(heads["w"]), np.asarray(heads["b"])

  def head_scores(x):
    return np.einsum("nd,ldc->lnc", (x - mean) / std, w) + b[:, None, :]

  val_scores = head_scores(centre_features(train_images[held]))
  val_top1 = [common.topk_accuracy(v, train_y[held], 1) for v in val_scores]
  best = int(np.argmax(val_top1))
  test_scores = head_scores(centre_features(test_images))[best]
  metrics = {"top1": common.topk_accuracy(test_scores, test_y, 1),
             "top5": common.topk_accuracy(test_scores, test_y, 5),
             "val_top1": val_top1[best]}
  settings = {"solver": "sgd", "lr": lrs[best], "lr_grid": lrs, "epochs": cfg.epochs,
              "batch_size": batch, "steps": steps, "crop_scale": tuple(cfg.crop_scale),
              "val_fraction": cfg.val_fraction,
              "train": "random-resized crop + flip", "test": "centre crop"}
  return metrics, settings


def linear_protocol(workdir: str, eval_config, *, dataset: str | None = None,
                    data_dir: str | None = None, folder: str | None = None, setup=None,
                    protocol_name: str = "linear") -> dict:
  """The ``linear`` protocol on the eval dataset; writes and returns the result record."""
  s = setup or features_lib.setup(workdir, dataset=dataset, data_dir=data_dir, folder=folder,
                                  batch_size=eval_config.batch_size)
  cfg = eval_config.linear
  solver = cfg.solver
  if solver == "auto":
    solver = "lbfgs" if s.info.eval_train_size <= cfg.lbfgs_max_examples else "sgd"
  if solver not in ("lbfgs", "sgd"):
    raise ValueError(f"eval.linear.solver={cfg.solver!r}: use 'lbfgs', 'sgd' or 'auto'.")
  start = time.perf_counter()
  if solver == "lbfgs":
    feature_fn = features_lib.make_feature_fn(s.config, s.mesh, normalize=False)
    train_x, train_y = features_lib.extract_features(
        feature_fn, s.params, s.batch_stats, s.config, s.data_config.eval_train_split, s.mesh)
    test_x, test_y = features_lib.extract_features(
        feature_fn, s.params, s.batch_stats, s.config, s.data_config.eval_test_split, s.mesh)
    metrics, settings = lbfgs_probe(
        train_x, train_y, test_x, test_y, num_classes=s.info.num_classes,
        inverse_l2=cfg.inverse_l2, val_fraction=cfg.val_fraction, max_iter=cfg.max_iter,
        seed=int(eval_config.seed))
  else:
    metrics, settings = sgd_probe(s, eval_config)
  settings["seconds"] = round(time.perf_counter() - start, 1)
  record = s.record(protocol_name, metrics, settings, eval_config.seed)
  results_lib.write_result(workdir, record)
  return record
