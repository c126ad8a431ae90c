"""Large effective batches on small devices: each device's batch in micro-batches.

``config.microbatches = m`` splits every device's share of the batch into m
chunks that go through the network one at a time, so activation memory is that
of a batch m times smaller. The trainer picks the technique that keeps the loss
of the whole batch exact:

- **Gradient caching** (Gao, Zhang, Han & Callan 2021, "Scaling Deep
  Contrastive Learning Batch Size under Memory Limited Setup", Alg. 1) for
  batch-coupled losses (NT-Xent and InfoNCE over the batch): methods that
  define ``embed`` and ``loss_from_embeddings``. (1) embeddings of every chunk
  without gradients; (2) the loss of the whole batch -- every negative of every
  device -- and its gradient w.r.t. the embeddings; (3) chunk by chunk, the
  forward pass again and the vector-Jacobian product with that cached gradient,
  summed. The gradient equals the full-batch gradient.
- **Gradient accumulation** for methods whose loss is a mean over examples
  (BYOL, SimSiam, RotNet, ...): ``loss_fn`` per chunk, gradients and metrics
  averaged over chunks (chunks are equal-sized, so this is the full-batch mean).
  Batch statistics and method state are threaded from chunk to chunk.
  Methods whose loss couples the batch without gradient caching (MoCo v3's
  in-batch keys, SwAV's Sinkhorn; ``BATCH_COUPLED_LOSS``) and methods with
  per-example state (DeepCluster) are refused by the config check.

BatchNorm: either way, a BN layer in train mode normalises each chunk with the
statistics of that chunk (across devices when cross-replica), i.e. over a batch
m times smaller, and its running averages take m updates per step. Results
then differ from a full-batch step exactly as a smaller per-device batch does;
with GroupNorm + Weight Standardization (``config.model.norm='group_ws'``) and
heads without BN they are the full-batch results.

Extra loss arguments (``loss_kwargs``: the trainer's ``step`` for ``USES_STEP``
methods, ``example_index`` for ``USES_EXAMPLE_INDEX`` ones) reach the loss
either way: whole to ``loss_from_embeddings`` (it sees the whole batch), and
to each chunk's ``loss_fn`` with every array of rank >= 1 split along its
leading (example) axis like the views, scalars passed as they are.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def split(tree, num_chunks: int):
  """Leading axis n of every leaf -> [num_chunks, n / num_chunks, ...]."""
  def reshape(x):
    if x.shape[0] % num_chunks:
      raise ValueError(f"A device's batch of {x.shape[0]} does not split into "
                       f"config.microbatches={num_chunks} equal chunks; make batch_size / "
                       "devices a multiple of it.")
    return x.reshape(num_chunks, x.shape[0] // num_chunks, *x.shape[1:])
  return jax.tree.map(reshape, tree)


def merge(tree):
  """Inverse of ``split``: [m, n/m, ...] -> [n, ...]."""
  return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), tree)


def gradient_cache(method, params, batch_stats, method_state, views, key, *, config,
                   axis_name, num_chunks: int, loss_kwargs=None):
  """``value_and_grad`` of a batch-coupled loss in ``num_chunks`` chunks (module docstring).

  Args:
    method: a method module with ``embed(params, batch_stats, method_state, views, *,
      config, axis_name) -> (embeddings, batch_stats, method_state)`` and
      ``loss_from_embeddings(embeddings, method_state, key, *, config, axis_name)
      -> (loss, (method_state, metrics))``. ``embed`` may update the method
      state (MoCo v3: the momentum encoder's batch statistics) and return
      embeddings computed without gradient (the momentum keys).
    views: this device's views, each [n, S, S, 3].

  Returns:
    ((loss, (batch_stats, method_state, metrics)), grads), as
    ``jax.value_and_grad(method.loss_fn, has_aux=True)`` would. batch_stats and
    the state ``embed`` updates are threaded chunk to chunk through pass (3).
  """
  chunks = split(list(views), num_chunks)

  def embed(p, stats, state, chunk):
    embeddings, stats, state = method.embed(p, stats, state, chunk, config=config,
                                            axis_name=axis_name)
    return embeddings, (stats, state)

  # (1) Embeddings of all chunks, no gradients, one chunk's activations at a time.
  def forward(carry, chunk):
    embeddings, carry = embed(params, *carry, chunk)
    return carry, jax.lax.stop_gradient(embeddings)

  _, chunk_embeddings = jax.lax.scan(forward, (batch_stats, method_state), chunks)
  embeddings = merge(chunk_embeddings)

  # (2) The exact loss of the whole batch and its gradient w.r.t. the embeddings.
  def loss_of(e):
    return method.loss_from_embeddings(e, method_state, key, config=config,
                                       axis_name=axis_name, **(loss_kwargs or {}))

  (loss, (new_method_state, metrics)), embedding_grads = jax.value_and_grad(
      loss_of, has_aux=True)(embeddings)

  # (3) Chunk by chunk: recompute, pull the cached gradient back to the params.
  # The state the loss returned is the starting point of embed's updates.
  def backward(carry, inputs):
    grads, stats, state = carry
    chunk, cotangent = inputs
    _, vjp, (stats, state) = jax.vjp(lambda p: embed(p, stats, state, chunk), params,
                                     has_aux=True)
    (chunk_grads,) = vjp(cotangent)
    return (jax.tree.map(jnp.add, grads, chunk_grads), stats, state), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  (grads, batch_stats, new_method_state), _ = jax.lax.scan(
      backward, (zeros, batch_stats, new_method_state),
      (chunks, split(embedding_grads, num_chunks)))
  return (loss, (batch_stats, new_method_state, metrics)), grads


def gradient_accumulation(method, params, batch_stats, method_state, views, key, *, config,
                          axis_name, num_chunks: int, loss_kwargs=None):
  """``value_and_grad`` of a per-example-mean loss, accumulated over ``num_chunks`` chunks.

  Returns:
    ((loss, (batch_stats, method_state, metrics)), grads): loss, metrics and
    grads are the means over the chunks; batch_stats and method_state come
    from the last chunk (each chunk starts from the previous chunk's).
  """
  chunks = split(list(views), num_chunks)
  keys = jax.random.split(key, num_chunks)
  loss_kwargs = dict(loss_kwargs or {})
  per_example = split({k: v for k, v in loss_kwargs.items() if jnp.ndim(v) >= 1}, num_chunks)
  shared = {k: v for k, v in loss_kwargs.items() if jnp.ndim(v) == 0}

  def micro_step(carry, inputs):
    stats, state = carry
    chunk, chunk_key, chunk_kwargs = inputs
    (loss, (stats, state, metrics)), grads = jax.value_and_grad(
        method.loss_fn, has_aux=True)(params, stats, state, chunk, chunk_key, config=config,
                                      axis_name=axis_name, **shared, **chunk_kwargs)
    return (stats, state), (loss, metrics, grads)

  (batch_stats, method_state), (losses, metrics, grads) = jax.lax.scan(
      micro_step, (batch_stats, method_state), (chunks, keys, per_example))
  mean = lambda tree: jax.tree.map(lambda x: jnp.mean(x, axis=0), tree)
  return (jnp.mean(losses), (batch_stats, method_state, mean(metrics))), mean(grads)


def value_and_grad(method, params, batch_stats, method_state, views, key, *, config,
                   axis_name, num_chunks: int = 1, loss_kwargs=None):
  """The step's ``value_and_grad`` of ``method.loss_fn``, in micro-batches if asked.

  ``loss_kwargs``: extra keyword arguments of the loss (module docstring).
  """
  if num_chunks == 1:
    return jax.value_and_grad(method.loss_fn, has_aux=True)(
        params, batch_stats, method_state, views, key, config=config, axis_name=axis_name,
        **(loss_kwargs or {}))
  technique = (gradient_cache if hasattr(method, "loss_from_embeddings")
               else gradient_accumulation)
  return technique(method, params, batch_stats, method_state, views, key, config=config,
                   axis_name=axis_name, num_chunks=num_chunks, loss_kwargs=loss_kwargs)
