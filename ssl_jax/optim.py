"""Optimizers, learning-rate schedules and weight-decay masks for SSL pre-training.

Everything here is a thin, validated layer over optax: the optimizer math is
optax's (``optax.lars``, ``optax.sgd``, ``optax.adamw``, ``optax.lamb``,
``optax.warmup_cosine_decay_schedule``); this module decides *which* parameters
get weight decay / layer-wise adaptation, how the learning rate scales with the
batch size, and turns an ``ml_collections`` config into one
``optax.GradientTransformation`` built once per run.

References:
  LARS: You, Gitman & Ginsburg, "Large Batch Training of Convolutional
    Networks", 2017 (arXiv:1708.03888), Algorithm 1 and eq. (6).
  LAMB: You et al., "Large Batch Optimization for Deep Learning: Training BERT
    in 76 minutes", ICLR 2020 (arXiv:1904.00962), Algorithm 2.
  AdamW: Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
  SimCLR: Chen et al. 2020 (arXiv:2002.05709), Sec. 2 "Training with large batch
    size" and Appendix B.1 (learning-rate scaling rules, LARS, warmup + cosine).
  BYOL: Grill et al. 2020 (arXiv:2006.07733), Appendix C (LARS, warmup + cosine).

How optax.lars relates to the LARS paper (read from optax 0.2.8's source):
  ``optax.lars`` is ``chain(add_decayed_weights(wd, mask=weight_decay_mask),
  masked(scale_by_trust_ratio(eta), mask=trust_ratio_mask),
  scale_by_learning_rate(lr), trace(momentum))``, i.e. per parameter array
  (the paper's "layer"), with ``g' = g + wd * w`` on decayed leaves::

      trust = eta * ||w|| / ||g'||      (1 if ||w|| == 0 or ||g'|| == 0)
      v_{t+1} = momentum * v_t + lr_t * trust * g'
      w_{t+1} = w_t - v_{t+1}

  * The learning rate enters *inside* the momentum buffer ("classic"
    momentum), as in the paper's Algorithm 1 and SimCLR's LARSOptimizer
    (``classic_momentum=True``); BYOL's code applies ``lr`` after the momentum
    buffer instead. With a constant learning rate (and for the first step from
    a zero buffer) both forms agree; under a schedule they differ slightly.
  * The trust-ratio denominator is ``||g + wd * w||``, as in SimCLR and BYOL.
    The paper's eq. (6) writes ``||g|| + wd * ||w||`` (an upper bound of the
    former, equal only when g and w are parallel). With SimCLR's wd = 1e-6 the
    difference is negligible; with a large wd the optax trust ratio is larger.
  * Leaves masked out of ``trust_ratio_mask`` get trust 1 and leaves masked out
    of ``weight_decay_mask`` get no decay, so with both masks set to
    ``decay_mask`` biases and normalisation parameters are updated by plain
    momentum SGD (``v = m v + lr g``), which is what SimCLR
    (``exclude_from_weight_decay=['batch_normalization', 'bias']``, reused for
    layer adaptation) and BYOL (``exclude_bias_and_norm``) do.
  * Both masks may be pytrees or callables; optax calls a callable mask with the
    *updates* tree inside ``update`` (and with the params in ``init``), so
    ``decay_mask`` must depend only on the tree's structure and names, never on
    values — it does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from ml_collections import config_dict

LR_SCALING_RULES = ("linear", "sqrt", "none")
OPTIMIZERS = ("lars", "sgd", "adamw", "lamb")

# Fields every optimizer config has, then the ones specific to each optimizer.
# Optional fields (with the value used when absent) are listed in _OPTIONAL.
_COMMON_FIELDS = (
    "name",
    "base_learning_rate",
    "lr_scaling",
    "warmup_epochs",
    "end_learning_rate",
    "weight_decay",
    "grad_clip_norm",
    "fixed_lr_params",
    "frozen_params",
    "frozen_epochs",
    "schedule",
    "decay_fractions",
    "decay_factor",
    "exclude_bias_and_norm",
)
_SPECIFIC_FIELDS = {
    "lars": ("momentum", "trust_coefficient", "clip_trust_ratio"),
    "sgd": ("momentum", "nesterov"),
    "adamw": ("b1", "b2", "eps"),
    "lamb": ("b1", "b2", "eps"),
}
_OPTIONAL = {"end_learning_rate": 0.0, "grad_clip_norm": None, "fixed_lr_params": (),
             "frozen_params": "", "frozen_epochs": 0.0, "schedule": "warmup_cosine",
             "decay_fractions": (), "decay_factor": 0.1, "clip_trust_ratio": False,
             "exclude_bias_and_norm": True}
# 'warmup_cosine': SimCLR/BYOL. 'step': piecewise-constant decay (RotNet's LUT_lr,
# the classic ImageNet recipe), multiplied by decay_factor at each decay_fractions
# entry (fractions of the run, so the schedule scales with total_steps).
SCHEDULES = ("warmup_cosine", "step")

# Leaf names that never get weight decay or LARS adaptation (flax linen names:
# Conv/Dense 'bias'; BatchNorm/GroupNorm/LayerNorm 'scale' and 'bias').
_NO_DECAY_LEAVES = frozenset({"bias", "scale"})
# A path component names a normalisation module if, lower-cased, it contains
# 'norm' (BatchNorm_0, GroupNorm_0, LayerNorm_0, RMSNorm_0, norm, norm1,
# batch_normalization) or has a token 'bn'/'gn'/'ln', optionally followed by
# digits, between '_' separators or the ends (bn, bn1, bn_2, proj_bn, ln_f).
_NORM_MODULE = re.compile(r"norm|(?:^|_)(?:bn|gn|ln)\d*(?:_|$)")


def scaled_learning_rate(base_learning_rate: float, batch_size: int, rule: str) -> float:
  """The peak learning rate for a global batch size (SimCLR Appendix B.1).

  SimCLR trains with LARS at ``0.3 x B / 256`` ('linear') and reports that
  ``0.075 x sqrt(B)`` ('sqrt') works better for small batches and long
  training; 'none' uses ``base_learning_rate`` as is.

  Args:
    base_learning_rate: the rate before scaling (0.3 for SimCLR 'linear',
      0.075 for 'sqrt').
    batch_size: the GLOBAL batch size B (all devices and hosts), in examples
      (not views).
    rule: one of ``LR_SCALING_RULES``: 'linear' | 'sqrt' | 'none'.

  Returns:
    The scaled learning rate, e.g. 0.3 x 4096 / 256 = 4.8 or 0.075 x sqrt(4096) = 4.8.

  Raises:
    ValueError: unknown rule, non-positive batch size or negative base rate.
  """
  if rule not in LR_SCALING_RULES:
    raise ValueError(
        f"Unknown learning-rate scaling rule {rule!r}; use one of {LR_SCALING_RULES} "
        "('linear': base * batch_size / 256, 'sqrt': base * sqrt(batch_size), "
        "'none': base).")
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int (the global batch), got {batch_size!r}.")
  if not base_learning_rate >= 0:
    raise ValueError(f"base_learning_rate must be >= 0, got {base_learning_rate!r}.")
  if rule == "linear":
    return float(base_learning_rate) * batch_size / 256.0
  if rule == "sqrt":
    return float(base_learning_rate) * math.sqrt(batch_size)
  return float(base_learning_rate)


def warmup_cosine_schedule(
    peak_value: float,
    total_steps: int,
    warmup_steps: int,
    end_value: float = 0.0,
) -> optax.Schedule:
  """Linear warmup from 0 to ``peak_value``, then cosine decay to ``end_value``.

  The SimCLR / BYOL schedule: ``lr(t) = peak * t / W`` for ``t < W``, then
  ``lr(t) = end + (peak - end) * 0.5 * (1 + cos(pi * (t - W) / (T - W)))`` for
  ``W <= t <= T``, held at ``end`` after ``T`` (W = warmup_steps,
  T = total_steps). Step ``t`` is the optimizer step count, so the first update
  (t = 0) uses lr 0 when there is a warmup, as in SimCLR/BYOL. Built from
  ``optax.warmup_cosine_decay_schedule`` (or ``optax.cosine_decay_schedule``
  when ``warmup_steps == 0``, where the schedule starts at the peak).

  Args:
    peak_value: the learning rate reached at the end of the warmup (already
      scaled with the batch size, see ``scaled_learning_rate``).
    total_steps: T, the total number of optimizer steps of the run.
    warmup_steps: W, linear-warmup steps, ``0 <= W < T``.
    end_value: the value at step T (and after).

  Returns:
    An ``optax.Schedule``: int step (Python or traced scalar) -> float32 scalar.

  Raises:
    ValueError: negative values or ``warmup_steps >= total_steps`` (there would
      be no step left for the decay), with the fix in the message.
  """
  for name, value in (("total_steps", total_steps), ("warmup_steps", warmup_steps)):
    if isinstance(value, bool) or not isinstance(value, int):
      raise ValueError(f"{name} must be an int, got {value!r}; round it first.")
  if total_steps < 1:
    raise ValueError(f"total_steps must be >= 1, got {total_steps}.")
  if warmup_steps < 0:
    raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}.")
  if warmup_steps >= total_steps:
    raise ValueError(
        f"warmup_steps ({warmup_steps}) must be smaller than total_steps ({total_steps}) so the "
        "cosine decay has steps to run: lower the warmup (warmup_epochs) or train for more "
        "steps/epochs.")
  if not peak_value >= 0 or not end_value >= 0:
    raise ValueError(
        f"peak_value and end_value must be >= 0, got peak_value={peak_value!r}, "
        f"end_value={end_value!r}.")
  if warmup_steps == 0:
    alpha = 0.0 if peak_value == 0 else end_value / peak_value
    return optax.cosine_decay_schedule(peak_value, decay_steps=total_steps, alpha=alpha)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=peak_value,
      warmup_steps=warmup_steps,
      decay_steps=total_steps,  # optax counts the warmup inside decay_steps.
      end_value=end_value,
  )


def warmup_step_schedule(peak_value: float, total_steps: int, warmup_steps: int,
                         decay_fractions, decay_factor: float) -> optax.Schedule:
  """Linear warmup to ``peak_value``, then piecewise-constant step decay.

  ``lr(t) = peak * decay_factor ** #{f in decay_fractions : t >= round(f * T)}``
  after the warmup (T = total_steps), as RotNet's ``LUT_lr`` (Gidaris et al.
  2018: CIFAR lr 0.1 x 0.2 at epochs 60/120/160 of 200) and the classic ImageNet
  step schedule. Fractions of the run rather than epochs, so a shortened run
  (``runlocal``) keeps the schedule's shape.

  Args:
    peak_value: the learning rate after the warmup.
    total_steps: T.
    warmup_steps: W >= 0 (0: start at the peak).
    decay_fractions: increasing fractions in (0, 1) of T at which to decay.
    decay_factor: multiplier applied at each boundary, in (0, 1].

  Returns:
    An ``optax.Schedule``.
  """
  fractions = tuple(float(f) for f in decay_fractions)
  if any(not 0.0 < f < 1.0 for f in fractions) or list(fractions) != sorted(fractions):
    raise ValueError(f"decay_fractions={fractions!r} must be increasing fractions of the run "
                     "in (0, 1), e.g. (0.3, 0.6, 0.8).")
  if not 0.0 < decay_factor <= 1.0:
    raise ValueError(f"decay_factor={decay_factor!r} must be in (0, 1], e.g. 0.2.")
  if warmup_steps >= total_steps:
    raise ValueError(f"warmup_steps ({warmup_steps}) must be smaller than total_steps "
                     f"({total_steps}).")
  boundaries = {}
  for f in fractions:
    step = max(int(round(f * total_steps)), warmup_steps + 1) - warmup_steps
    boundaries[step] = boundaries.get(step, 1.0) * decay_factor
  decay = optax.piecewise_constant_schedule(peak_value, boundaries)
  if warmup_steps == 0:
    return decay
  warmup = optax.linear_schedule(0.0, peak_value, warmup_steps)
  return optax.join_schedules([warmup, decay], [warmup_steps])


def _key_name(key: Any) -> str:
  """The string name of one pytree path entry (dict key, attribute or index)."""
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _gets_decay(path: tuple[Any, ...]) -> bool:
  names = [_key_name(k) for k in path]
  if not names:
    return True  # a bare array: a single weight tensor.
  leaf, modules = names[-1].lower(), [n.lower() for n in names[:-1]]
  if leaf in _NO_DECAY_LEAVES:
    return False
  return not any(_NORM_MODULE.search(m) for m in modules)


def decay_mask(params: Any) -> Any:
  """Which parameters get weight decay and LARS trust-ratio adaptation.

  The rule, decided from the flax parameter path only (never from values, and
  not just from ``ndim``, so it also works on the *updates* tree optax passes
  to a callable mask, and a 1-D Dense kernel or a 4-D norm parameter is still
  classified by role):

  * False if the leaf is named ``bias`` or ``scale`` (Conv/Dense biases; the
    scale and bias of BatchNorm, GroupNorm, LayerNorm);
  * False for every leaf inside a normalisation module, i.e. any enclosing
    module name that, lower-cased, contains ``norm`` (``BatchNorm_0``,
    ``GroupNorm_0``, ``LayerNorm_0``, ``norm``, ``norm1``) or has a ``bn`` /
    ``gn`` / ``ln`` token with optional digits (``bn``, ``bn1``, ``bn_2``,
    ``proj_bn``, ``ln_f``; ``linear`` or ``conv_bnx`` do not match);
  * True otherwise: conv/dense ``kernel`` and any other weight (embeddings,
    prototypes), as SimCLR decays everything outside its exclusion list.

  This is SimCLR's exclusion (``['batch_normalization', 'bias']`` matched in
  the variable name, used for both weight decay and LARS adaptation) and
  BYOL's ``exclude_bias_and_norm``, written for flax names.

  Args:
    params: a pytree of arrays (nested dicts / FrozenDicts from
      ``module.init(...)['params']``, or the matching updates tree).

  Returns:
    A pytree of Python bools with the structure of ``params``: True for leaves
    that are decayed and LARS-adapted.
  """
  return jax.tree_util.tree_map_with_path(lambda path, _: _gets_decay(path), params)


def _path_prefix(path: tuple[Any, ...]) -> str:
  return "/".join(_key_name(k) for k in path)


def fixed_lr_labels(params: Any, prefixes) -> Any:
  """'fixed' for leaves whose '/'-joined path starts with one of ``prefixes``, else 'scheduled'.

  A prefix matches whole path components: 'predictor' matches
  'predictor/hidden_0/kernel', not 'predictor2/...'.
  """
  prefixes = tuple(p.strip("/") for p in prefixes)

  def label(path, _):
    name = _path_prefix(path)
    fixed = any(name == p or name.startswith(p + "/") for p in prefixes)
    return "fixed" if fixed else "scheduled"

  return jax.tree_util.tree_map_with_path(label, params)


class FreezeState(NamedTuple):
  """State of ``freeze_for_steps``: steps taken and the wrapped optimizer's state."""
  count: jax.Array
  inner_state: Any


def frozen_mask(params: Any, pattern: str) -> Any:
  """True for the leaves whose '/'-joined path matches the regex ``pattern`` (search)."""
  regex = re.compile(pattern)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: bool(regex.search("/".join(_key_name(k) for k in path))), params)


def freeze_for_steps(inner: optax.GradientTransformation, pattern: str,
                     num_steps: int) -> optax.GradientTransformation:
  """``inner`` with the params matching ``pattern`` frozen for the first ``num_steps`` steps.

  SwAV's ``freeze_prototypes_niters`` (Caron et al. 2020, Sec. 4 / appendix A.1;
  facebookresearch/swav main_swav.py sets ``p.grad = None`` for the prototypes,
  so ``torch.optim`` skips them: no step, no weight decay, no momentum). Here,
  while frozen, the matched leaves enter ``inner`` with a zero gradient AND a zero
  parameter (so no weight decay and, for LARS, trust ratio 1 on a zero update),
  and their final update is zeroed. Momentum-type states (SGD, LARS) that start at
  zero therefore stay exactly zero for those leaves, as if they were skipped;
  Adam's step count still advances (its bias correction differs slightly).

  Args:
    inner: the optimizer to wrap.
    pattern: regex searched in each leaf's '/'-joined path, e.g. 'prototypes'.
    num_steps: steps (counted from 0) during which the matched leaves stay fixed.

  Returns:
    An ``optax.GradientTransformation``; ``update`` needs ``params``.
  """
  if num_steps < 0:
    raise ValueError(f"num_steps must be >= 0, got {num_steps}.")

  def init(params):
    return FreezeState(count=jnp.zeros((), jnp.int32), inner_state=inner.init(params))

  def update(updates, state, params=None):
    frozen = state.count < num_steps
    mask = frozen_mask(updates, pattern)

    def zero(tree):
      if tree is None:
        return None
      return jax.tree.map(lambda x, m: jnp.where(frozen, jnp.zeros_like(x), x) if m else x,
                          tree, mask)

    updates, inner_state = inner.update(zero(updates), state.inner_state, zero(params))
    return zero(updates), FreezeState(count=state.count + 1, inner_state=inner_state)

  return optax.GradientTransformation(init, update)


def default_optim_config(name: str = "lars") -> ml_collections.ConfigDict:
  """Default optimizer config for ``make_optimizer``; 'lars' is SimCLR's recipe.

  lars: SimCLR (Sec. 2 default setting, Appendix B.1) — LARS, lr 0.3 x B/256, 10 warmup epochs,
    cosine decay without restarts, weight decay 1e-6, momentum 0.9, eta 0.001.
  sgd: SimSiam (Chen & He 2021) baseline settings (MoCo v2-like) — lr 0.05 x B/256,
    no warmup, cosine decay, weight decay 1e-4, momentum 0.9.
  adamw: DINO-like — lr 5e-4 x B/256, 10 warmup epochs, cosine to 1e-6,
    weight decay 0.04 (constant here), betas (0.9, 0.999).
  lamb: a generic starting point (not a paper recipe for SSL) — lr 1e-3 x B/256,
    10 warmup epochs, weight decay 0.01, betas (0.9, 0.999), eps 1e-6 (LAMB paper).

  Args:
    name: one of ``OPTIMIZERS``.

  Returns:
    A ConfigDict with exactly the fields ``make_optimizer`` accepts for ``name``;
    ``grad_clip_norm`` is a float placeholder (None = no clipping) so it can be
    set from the command line.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"Unknown optimizer name {name!r}; use one of {OPTIMIZERS}.")
  config = ml_collections.ConfigDict()
  config.name = name
  config.grad_clip_norm = config_dict.placeholder(float)  # None: no global-norm clipping.
  # Path prefixes ('predictor', 'encoder/stem') whose learning rate is held at the
  # peak value instead of following the schedule (SimSiam's predictor, Sec. 4.1).
  config.fixed_lr_params = ()
  config.end_learning_rate = 0.0
  # True: biases and normalisation parameters get no weight decay and no LARS
  # adaptation (SimCLR, BYOL; ``decay_mask``). False: every parameter gets both,
  # as torch.optim + apex LARC on ``model.parameters()`` (SwAV's reference).
  config.exclude_bias_and_norm = True
  if name == "lars":
    config.base_learning_rate = 0.3  # SimCLR B.1: 0.3 x BatchSize / 256.
    config.lr_scaling = "linear"
    config.warmup_epochs = 10.0  # SimCLR: linear warmup for the first 10 epochs.
    config.weight_decay = 1e-6  # SimCLR: weight decay 1e-6.
    config.momentum = 0.9
    config.trust_coefficient = 1e-3  # LARS eta (SimCLR EETA_DEFAULT, BYOL).
    # True: LARC's clipped trust ratio, a layer's step <= the global lr's
    # (scale_by_clipped_trust_ratio; solo-learn's CIFAR recipes, SwAV's LARC).
    config.clip_trust_ratio = False
  elif name == "sgd":
    config.base_learning_rate = 0.05  # SimSiam: lr = 0.05 x BatchSize / 256.
    config.lr_scaling = "linear"
    config.warmup_epochs = 0.0
    config.weight_decay = 1e-4
    config.momentum = 0.9
    config.nesterov = False
  elif name == "adamw":
    config.base_learning_rate = 5e-4  # DINO: 0.0005 x BatchSize / 256.
    config.lr_scaling = "linear"
    config.warmup_epochs = 10.0
    config.end_learning_rate = 1e-6
    config.weight_decay = 0.04
    config.b1 = 0.9
    config.b2 = 0.999
    config.eps = 1e-8
  else:  # lamb
    config.base_learning_rate = 1e-3
    config.lr_scaling = "linear"
    config.warmup_epochs = 10.0
    config.weight_decay = 0.01
    config.b1 = 0.9
    config.b2 = 0.999
    config.eps = 1e-6  # LAMB paper / optax.lamb default.
  return config


def _config_as_dict(optim_config: Any) -> dict[str, Any]:
  if isinstance(optim_config, ml_collections.ConfigDict):
    return optim_config.to_dict()
  if isinstance(optim_config, Mapping):
    return dict(optim_config)
  raise ValueError(
      f"optim_config must be an ml_collections.ConfigDict (see default_optim_config), got "
      f"{type(optim_config).__name__}.")


def _check_fields(config: dict[str, Any]) -> str:
  """Validates field names for the chosen optimizer and returns the name."""
  name = config.get("name")
  if name not in OPTIMIZERS:
    raise ValueError(f"optim_config.name is {name!r}; use one of {OPTIMIZERS}.")
  allowed = set(_COMMON_FIELDS) | set(_SPECIFIC_FIELDS[name])
  extra = sorted(set(config) - allowed)
  if extra:
    raise ValueError(
        f"optim_config has field(s) {extra} that optimizer {name!r} does not use; it takes "
        f"{sorted(allowed)}. Remove them (or start from default_optim_config({name!r})).")
  missing = sorted(allowed - set(config) - set(_OPTIONAL))
  if missing:
    raise ValueError(
        f"optim_config is missing field(s) {missing} needed by optimizer {name!r}; it takes "
        f"{sorted(allowed)}. See default_optim_config({name!r}).")
  return name


def _check_number(config: dict[str, Any], field: str, low: float, high: float | None = None,
                  *, low_inclusive: bool = True, high_inclusive: bool = False) -> float:
  value = config[field]
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f"optim_config.{field} must be a number, got {value!r}.")
  ok_low = value >= low if low_inclusive else value > low
  ok_high = True if high is None else (value <= high if high_inclusive else value < high)
  if not (ok_low and ok_high):
    lo = "[" if low_inclusive else "("
    hi = "inf)" if high is None else (f"{high}]" if high_inclusive else f"{high})")
    raise ValueError(f"optim_config.{field} must be in {lo}{low}, {hi}, got {value!r}.")
  return float(value)


def make_optimizer(
    optim_config: ml_collections.ConfigDict,
    *,
    total_steps: int,
    steps_per_epoch: int,
    batch_size: int,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the run's optimizer (once) and its learning-rate schedule.

  The learning rate follows ``warmup_cosine_schedule`` with peak
  ``scaled_learning_rate(base_learning_rate, batch_size, lr_scaling)``,
  ``round(warmup_epochs * steps_per_epoch)`` warmup steps, and
  ``end_learning_rate`` (absolute, not scaled) at ``total_steps``; with
  ``schedule='step'`` it follows ``warmup_step_schedule`` instead (the peak
  multiplied by ``decay_factor`` at each of ``decay_fractions`` of the run).

  * lars: ``optax.lars`` with ``weight_decay_mask = trust_ratio_mask =
    decay_mask`` (LARS, You et al. 2017; SimCLR/BYOL exclude biases and
    normalisation parameters from both). See the module docstring for how
    optax.lars relates to the paper's formula.
  * sgd: ``optax.add_decayed_weights(wd, mask=decay_mask)`` chained before
    ``optax.sgd`` — coupled L2 decay as in ``torch.optim.SGD``:
    ``v = m v + (g + wd w)``, ``w -= lr v``.
  * adamw: ``optax.adamw(mask=decay_mask)`` (Loshchilov & Hutter 2019). As in
    PyTorch, optax multiplies the decoupled decay by the full learning rate
    (``w -= lr (adam_step + wd w)``); the paper multiplies it by the schedule
    multiplier only, so its lambda equals ``weight_decay * peak lr``.
  * lamb: ``optax.lamb(mask=decay_mask)`` (You et al. 2019). The mask only
    removes weight decay; optax.lamb applies the trust ratio (coefficient 1)
    to every parameter, as in the LAMB paper's Algorithm 2.

  If ``fixed_lr_params`` names path prefixes (e.g. ``('predictor',)``), the
  parameters under them get the same optimizer with a constant learning rate
  equal to the schedule's peak (SimSiam, Chen & He 2021, Sec. 4.1: "the
  predictor's lr is not decayed"), via ``optax.multi_transform``; the other
  parameters follow the schedule. Optimizer state is per parameter in every
  optimizer here, so the split changes nothing else.

  ``exclude_bias_and_norm`` (default True) selects the mask above; False
  decays and adapts every parameter (SwAV's and DeepCluster v2's reference,
  which wrap ``torch.optim.SGD(model.parameters())`` in apex ``LARC``).

  If ``grad_clip_norm`` is set, ``optax.clip_by_global_norm`` runs first, on the
  raw gradients (before weight decay). Under ``jax.shard_map`` the gradients of
  replicated params are already global, so the norm is the global one.

  Args:
    optim_config: a ConfigDict (or mapping) with exactly the fields of
      ``default_optim_config(name)``: name, base_learning_rate, lr_scaling,
      warmup_epochs, end_learning_rate (optional, 0.), weight_decay,
      grad_clip_norm (optional, None), frozen_params (optional regex, '') and
      frozen_epochs (optional, 0.: params matching frozen_params stay fixed for that
      many epochs, see ``freeze_for_steps``), and momentum + trust_coefficient (lars),
      momentum + nesterov (sgd), b1 + b2 + eps (adamw, lamb).
    total_steps: total optimizer steps of the run.
    steps_per_epoch: optimizer steps per epoch (to convert warmup_epochs).
    batch_size: the GLOBAL batch size, for learning-rate scaling.

  Returns:
    ``(tx, schedule)``: the ``optax.GradientTransformation`` (call
    ``tx.update(grads, opt_state, params)`` — params are required for weight
    decay and the trust ratio) and the learning-rate schedule
    (``schedule(step)`` is the lr used by the update at optimizer step ``step``,
    for logging).

  Raises:
    ValueError: unknown optimizer name, missing or extra fields, or values out
      of range; the message names the field and the valid values.
  """
  config = _config_as_dict(optim_config)
  name = _check_fields(config)
  for key, default in _OPTIONAL.items():
    config.setdefault(key, default)

  if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) \
      or steps_per_epoch < 1:
    raise ValueError(f"steps_per_epoch must be a positive int, got {steps_per_epoch!r}.")
  if config["lr_scaling"] not in LR_SCALING_RULES:
    raise ValueError(
        f"optim_config.lr_scaling is {config['lr_scaling']!r}; use one of {LR_SCALING_RULES}.")
  base_lr = _check_number(config, "base_learning_rate", 0.0, low_inclusive=False)
  warmup_epochs = _check_number(config, "warmup_epochs", 0.0)
  end_lr = _check_number(config, "end_learning_rate", 0.0)
  weight_decay = _check_number(config, "weight_decay", 0.0)
  clip = config["grad_clip_norm"]
  if clip is not None:
    clip = _check_number(config, "grad_clip_norm", 0.0, low_inclusive=False)

  peak_lr = scaled_learning_rate(base_lr, batch_size, config["lr_scaling"])
  warmup_steps = int(round(warmup_epochs * steps_per_epoch))
  if config["schedule"] not in SCHEDULES:
    raise ValueError(f"optim_config.schedule is {config['schedule']!r}; use one of {SCHEDULES}.")
  try:
    if config["schedule"] == "step":
      schedule = warmup_step_schedule(peak_lr, total_steps, warmup_steps,
                                      config["decay_fractions"],
                                      float(config["decay_factor"]))
    else:
      schedule = warmup_cosine_schedule(peak_lr, total_steps, warmup_steps, end_lr)
  except ValueError as e:
    raise ValueError(
        f"{e} (warmup_epochs={warmup_epochs} x steps_per_epoch={steps_per_epoch} = "
        f"{warmup_steps} warmup steps, total_steps={total_steps}).") from e

  if not isinstance(config["exclude_bias_and_norm"], bool):
    raise ValueError(f"optim_config.exclude_bias_and_norm must be a bool, got "
                     f"{config['exclude_bias_and_norm']!r}.")
  fixed = config["fixed_lr_params"] or ()
  if isinstance(fixed, str) or not all(isinstance(p, str) and p for p in fixed):
    raise ValueError(f"optim_config.fixed_lr_params must be a tuple of parameter path prefixes "
                     f"such as ('predictor',), got {fixed!r}.")

  def build(learning_rate):
    return _base_optimizer(name, config, learning_rate, weight_decay)

  if fixed:
    tx = optax.multi_transform(
        {"scheduled": build(schedule), "fixed": build(peak_lr)},
        lambda params: fixed_lr_labels(params, fixed))
  else:
    tx = build(schedule)
  if clip is not None:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  frozen_epochs = _check_number(config, "frozen_epochs", 0.0)
  if config["frozen_params"] and frozen_epochs > 0:
    tx = freeze_for_steps(tx, config["frozen_params"],
                          int(round(frozen_epochs * steps_per_epoch)))
  return tx, schedule


class ClippedTrustRatioState(NamedTuple):
  count: jax.Array


def scale_by_clipped_trust_ratio(trust_coefficient: float, learning_rate
                                 ) -> optax.GradientTransformation:
  """LARC's clipped trust ratio (NVIDIA apex ``LARC(clip=True)``; solo-learn's
  ``clip_lr``): each leaf's update g' is scaled by ``min(trust, lr_t) / lr_t`` with
  ``trust = eta ||w|| / ||g'||`` (1 if either norm is 0).

  Followed by ``scale_by_learning_rate(lr_t)``, the step of a leaf is
  ``min(eta ||w|| / ||g'||, lr_t) g'``: the trust ratio never makes a layer's
  step larger than the global learning rate's (plain LARS has no such cap).

  Args:
    trust_coefficient: eta.
    learning_rate: the schedule (or constant) applied after this transform.
  """

  def init_fn(params):
    del params
    return ClippedTrustRatioState(count=jnp.zeros((), jnp.int32))

  def update_fn(updates, state, params):
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    lr = jnp.asarray(lr, jnp.float32)

    def scale(u, w):
      w_norm, u_norm = jnp.linalg.norm(w), jnp.linalg.norm(u)
      trust = jnp.where((w_norm > 0) & (u_norm > 0),
                        trust_coefficient * w_norm / jnp.where(u_norm > 0, u_norm, 1.0), 1.0)
      factor = jnp.where(lr > 0, jnp.minimum(trust, lr) / jnp.where(lr > 0, lr, 1.0), trust)
      return (u * factor).astype(u.dtype)

    updates = jax.tree.map(scale, updates, params)
    return updates, ClippedTrustRatioState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


def _every_leaf(params: Any) -> Any:
  """A mask that is True for every leaf (no exclusion from decay or adaptation)."""
  return jax.tree.map(lambda _: True, params)


def _base_optimizer(name: str, config: dict[str, Any], learning_rate, weight_decay: float
                    ) -> optax.GradientTransformation:
  """The named optimizer with ``learning_rate`` (a schedule or a constant)."""
  mask = decay_mask if config["exclude_bias_and_norm"] else _every_leaf
  if name == "lars" and config["clip_trust_ratio"]:
    momentum = _check_number(config, "momentum", 0.0, 1.0)
    eta = _check_number(config, "trust_coefficient", 0.0, low_inclusive=False)
    tx = optax.chain(  # optax.lars's chain with the clipped (LARC) trust ratio
        optax.add_decayed_weights(weight_decay, mask=mask),
        optax.masked(scale_by_clipped_trust_ratio(eta, learning_rate), mask),
        optax.scale_by_learning_rate(learning_rate),
        optax.trace(decay=momentum),
    )
  elif name == "lars":
    momentum = _check_number(config, "momentum", 0.0, 1.0)
    eta = _check_number(config, "trust_coefficient", 0.0, low_inclusive=False)
    tx = optax.lars(
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        weight_decay_mask=mask,
        trust_coefficient=eta,
        trust_ratio_mask=mask,
        momentum=momentum,
    )
  elif name == "sgd":
    momentum = _check_number(config, "momentum", 0.0, 1.0)
    if not isinstance(config["nesterov"], bool):
      raise ValueError(f"optim_config.nesterov must be a bool, got {config['nesterov']!r}.")
    tx = optax.chain(
        optax.add_decayed_weights(weight_decay, mask=mask),
        optax.sgd(learning_rate=learning_rate, momentum=momentum or None,
                  nesterov=config["nesterov"]),
    )
  else:
    b1 = _check_number(config, "b1", 0.0, 1.0)
    b2 = _check_number(config, "b2", 0.0, 1.0)
    eps = _check_number(config, "eps", 0.0)
    make = optax.adamw if name == "adamw" else optax.lamb
    tx = make(learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
              mask=mask)

  return tx
