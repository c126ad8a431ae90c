"""The weighted kNN classifier: the trainer's monitor and the ``knn`` protocol.

The kNN classifier is the weighted form of Wu et al. 2018 ("Unsupervised
Feature Learning via Non-Parametric Instance Discrimination", Sec. 3.4) as used
by DINO (Caron et al. 2021): cosine similarities s_i to the k nearest training
features, weights exp(s_i / T), class score = sum of the weights of the
neighbours of that class, prediction = argmax. Defaults k=200, T=0.07.
The feature bank is sharded over the devices (each finds its shard's top-k).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from ssl_jax.evaluate import features as features_lib
from ssl_jax.evaluate import results as results_lib
from ssl_jax.parallel import BATCH_AXIS


@functools.partial(jax.jit, static_argnames=("num_classes", "k", "mesh"))
def _knn_scores(bank, bank_labels, bank_valid, queries, *, num_classes, k, temperature, mesh):
  """Class scores [Q, C]: the bank is sharded over devices, queries replicated.

  Each device finds the top-k of its bank shard; the n*k candidates are gathered
  and the global top-k taken, so the bank never has to fit on one device.
  """

  def per_device(bank, bank_labels, bank_valid, queries):
    sims = queries @ bank.T                                          # [Q, Nb/n]
    sims = jnp.where(bank_valid[None, :], sims, -jnp.inf)
    local_k = min(k, bank.shape[0])
    top_sims, top_idx = jax.lax.top_k(sims, local_k)                 # [Q, k]
    top_labels = bank_labels[top_idx]
    all_sims = jax.lax.all_gather(top_sims, BATCH_AXIS, axis=1, tiled=True)
    all_labels = jax.lax.all_gather(top_labels, BATCH_AXIS, axis=1, tiled=True)
    best_sims, best = jax.lax.top_k(all_sims, min(k, all_sims.shape[1]))
    best_labels = jnp.take_along_axis(all_labels, best, axis=1)
    weights = jnp.where(jnp.isfinite(best_sims), jnp.exp(best_sims / temperature), 0.0)
    one_hot = jax.nn.one_hot(best_labels, num_classes, dtype=jnp.float32)
    return jnp.einsum("qk,qkc->qc", weights, one_hot)

  return jax.shard_map(
      per_device, mesh=mesh,
      in_specs=(P(BATCH_AXIS), P(BATCH_AXIS), P(BATCH_AXIS), P()), out_specs=P(),
      check_vma=False)(bank, bank_labels, bank_valid, queries)


def knn_predict(bank, bank_labels, queries, *, num_classes: int, mesh, k: int = 200,
                temperature: float = 0.07, query_chunk: int = 1024) -> np.ndarray:
  """Weighted-kNN predictions int32 [Q] for l2-normalised features.

  Args:
    bank: float32 [N, D] training features (l2-normalised); labels int [N].
    queries: float32 [Q, D] features to classify (l2-normalised).
  """
  n = mesh.size
  pad = (-len(bank)) % n
  valid = np.concatenate([np.ones(len(bank), bool), np.zeros(pad, bool)])
  bank = np.concatenate([bank, np.zeros((pad, bank.shape[1]), bank.dtype)])
  bank_labels = np.concatenate([bank_labels, np.zeros(pad, bank_labels.dtype)])
  preds = []
  for start in range(0, len(queries), query_chunk):
    chunk = queries[start:start + query_chunk]
    padded = np.concatenate([chunk, np.zeros((query_chunk - len(chunk), chunk.shape[1]),
                                              chunk.dtype)])
    scores = _knn_scores(bank, bank_labels, valid, padded, num_classes=num_classes, k=k,
                         temperature=temperature, mesh=mesh)
    preds.append(np.asarray(jnp.argmax(scores, axis=-1))[:len(chunk)])
  return np.concatenate(preds) if preds else np.zeros((0,), np.int32)


def knn_accuracy(feature_fn, params, batch_stats, config, mesh, num_classes) -> float:
  """Top-1 weighted-kNN accuracy: bank = eval_train split, queries = eval_test split."""
  bank, bank_labels = features_lib.extract_features(feature_fn, params, batch_stats, config,
                                       config.data.eval_train_split, mesh)
  queries, labels = features_lib.extract_features(feature_fn, params, batch_stats, config,
                                     config.data.eval_test_split, mesh)
  preds = knn_predict(bank, bank_labels, queries, num_classes=num_classes, mesh=mesh,
                      k=config.knn.k, temperature=config.knn.temperature)
  return float(np.mean(preds == labels))


def knn_protocol(workdir: str, eval_config, *, dataset: str | None = None,
                 data_dir: str | None = None, folder: str | None = None, setup=None) -> dict:
  """The ``knn`` protocol: top-1 of weighted kNN for each k, written to ``workdir/eval``.

  Bank: the eval dataset's ``eval_train_split``; queries: its ``eval_test_split``;
  l2-normalised centre-crop backbone features of the checkpoint.

  Returns:
    The result record ({'metrics': {'top1_k20': ..., 'top1_k200': ...}, ...}).
  """
  s = setup or features_lib.setup(workdir, dataset=dataset, data_dir=data_dir, folder=folder,
                                  batch_size=eval_config.batch_size)
  feature_fn = features_lib.make_feature_fn(s.config, s.mesh)
  bank, bank_labels = features_lib.extract_features(
      feature_fn, s.params, s.batch_stats, s.config, s.data_config.eval_train_split, s.mesh)
  queries, labels = features_lib.extract_features(
      feature_fn, s.params, s.batch_stats, s.config, s.data_config.eval_test_split, s.mesh)
  ks = tuple(int(k) for k in eval_config.knn.k)
  metrics = {}
  for k in ks:
    preds = knn_predict(bank, bank_labels, queries, num_classes=s.info.num_classes,
                        mesh=s.mesh, k=k, temperature=eval_config.knn.temperature)
    metrics[f"top1_k{k}"] = float(np.mean(preds == labels))
  record = s.record("knn", metrics, {
      "k": ks, "temperature": float(eval_config.knn.temperature),
      "bank": f"{s.data_config.eval_train_split} ({len(bank)})",
      "queries": f"{s.data_config.eval_test_split} ({len(queries)})",
      "features": "l2-normalised centre crop"}, eval_config.seed)
  results_lib.write_result(workdir, record)
  return record
