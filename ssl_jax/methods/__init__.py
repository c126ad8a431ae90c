"""SSL methods: one module per method, all on the same small interface.

A method module defines (see ``simclr.py`` for the reference implementation)::

  view_recipes(config) -> tuple[augment.ViewRecipe, ...]
      The augmented views the step feeds to ``loss_fn``.
  init(key, config, sample_images) -> (params, batch_stats, method_state)
      ``params['encoder']`` / ``batch_stats['encoder']`` hold the backbone
      (what ``load_encoder`` and the kNN monitor use); the rest is the method's.
  loss_fn(params, batch_stats, method_state, views, key, *, config, axis_name)
      -> (loss, (batch_stats, method_state, metrics))
      Per-device code. ``loss`` and ``metrics`` are already averaged over the
      global batch (the losses' ``axis_name``), so they are the same on every
      device, and the gradient of replicated params is the global gradient.
  post_update(params, batch_stats, method_state, step, config, *, total_steps) -> method_state
      After the optimizer step: EMA of target params (tau scheduled over
      ``total_steps``), queue push, ... ``step`` counts steps taken (>= 1).

Methods that keep a target network or a queue (BYOL, MoCo v2/v3) hold it in
``method_state`` as an explicit pytree; ``loss_fn`` may update it (the target's
BN statistics from its forward pass, MoCo's queue push with the keys it just
computed) and ``post_update`` applies the EMA. Their shared parts (EMA, cosine
tau schedule, replicated gather, FIFO queue) are in ``common.py``.

Optional parts (the trainer calls them only when a method defines them):

  project_params(params, config) -> params
      Applied right after each optimizer update (SwAV: prototypes back onto the
      unit sphere, i.e. normalised before every step as the reference does).
  epoch_start(state, context) -> state
      Before the first step of every epoch (``ssl_jax.epoch_hooks``): offline
      re-clustering (DeepCluster), epoch-dependent switches (SwAV's queue start).
  USES_EXAMPLE_INDEX = True
      ``loss_fn`` then also gets ``example_index``: int32 [n], each example's
      position in the training split (DeepCluster's pseudo-labels, memory bank).
  USES_STEP = True
      ``loss_fn`` then also gets ``step``: int32 [], the optimizer steps taken
      before this one (SwAV's queue, which starts at a step).
  BATCH_COUPLED_LOSS = True
      The loss couples the examples of the global batch (in-batch negatives,
      Sinkhorn): without ``embed`` / ``loss_from_embeddings`` the trainer then
      refuses ``config.microbatches > 1`` (accumulation would change the loss).
  embed(params, batch_stats, method_state, views, *, config, axis_name)
      -> (embeddings, batch_stats, method_state)
  loss_from_embeddings(embeddings, method_state, key, *, config, axis_name)
      -> (loss, (method_state, metrics))
      ``loss_fn`` split in two, for batch-coupled losses (SimCLR, CPC, MoCo v3):
      ``embed`` is per example (its embeddings have the examples on the leading
      axis; it may update the method state, e.g. MoCo v3's momentum encoder
      statistics, and return stop-gradient embeddings such as momentum keys). Lets
      ``config.microbatches`` use gradient caching (``ssl_jax.microbatch``)
      instead of accumulation, so the loss stays that of the whole batch.
      With ``USES_STEP`` / ``USES_EXAMPLE_INDEX`` it gets ``step`` /
      ``example_index`` as ``loss_fn`` does.
  make_views(example_keys, images, recipes, *, config) -> views
      Replaces the step's ``augment.views(example_keys, images, recipes)`` for
      methods whose inputs are not plain augmented views (Jigsaw's shuffled
      tiles and permutation labels, CPC's per-patch augmentations). Gets the
      step's per-example keys (folded with the GLOBAL example index) and the
      batch exactly as ``augment.views`` would, so its randomness does not
      depend on how the batch is split over devices; returns any pytree of
      per-example arrays, handed to ``loss_fn`` as ``views``. Per-example
      randomness belongs here, not in ``loss_fn``, whose ``key`` is folded with
      the device index.

The encoder that ``load_encoder`` and the kNN monitor apply is
``models.encoder.build_encoder(config.model)``; a method whose backbone is not
the plain ResNet on the whole image (CPC: the ResNet on a grid of patches,
mean-pooled) says so through ``config.model`` (``patch_size``), never in the
evaluation code.

Adding a method = one module here, its name in ``_METHODS``, a config, a test.
"""

from __future__ import annotations

import importlib
import types

_METHODS = ("simclr", "byol", "mocov2", "simsiam", "mocov3", "swav", "deepcluster",
            "deepclusterv2", "rotnet", "jigsaw", "cpc", "deepercluster")


def get_method(name: str) -> types.ModuleType:
  """The method module called ``name`` (e.g. ``'simclr'``)."""
  if name not in _METHODS:
    raise ValueError(
        f"Unknown method {name!r}. Known methods: {', '.join(_METHODS)}. "
        "Set config.method to one of them.")
  return importlib.import_module(f"ssl_jax.methods.{name}")
