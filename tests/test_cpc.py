"""CPC v2: patch grid, causal context, InfoNCE vs NumPy float64, 1 vs 8 devices, smoke run.

The 1-vs-8-device test runs the loss (and its gradient) under shard_map: the
all_gather of negatives is CPC's only cross-device term (layer norm has no
batch statistics); per-example view keys are covered by test_jigsaw.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ssl_jax import train
from ssl_jax.methods import cpc
from ssl_jax.models import context as context_lib
from ssl_jax.models import encoder as encoder_lib
from ssl_jax.parallel import make_mesh
from ssl_jax.parallel import BATCH_AXIS

import method_testing


def test_patch_grid_geometry():
  assert encoder_lib.patch_grid(32, 8, 4) == 7      # CIFAR: 7x7, 50% overlap
  assert encoder_lib.patch_grid(256, 64, 32) == 7   # the paper's grid
  with pytest.raises(ValueError, match="multiple of the stride"):
    encoder_lib.patch_grid(30, 8, 4)
  images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  patches = np.asarray(encoder_lib.extract_patches(images, 8, 4))
  assert patches.shape == (2, 7, 7, 8, 8, 3)
  for i in range(7):
    for j in range(7):
      np.testing.assert_array_equal(patches[:, i, j], images[:, 4 * i:4 * i + 8, 4 * j:4 * j + 8])
  # Neighbours overlap by half a patch.
  np.testing.assert_array_equal(patches[:, 0, 0, :, 4:], patches[:, 0, 1, :, :4])
  np.testing.assert_array_equal(patches[:, 0, 0, 4:], patches[:, 1, 0, :4])


def test_context_is_causal_over_rows():
  net = context_lib.ContextNetwork(width=8, bottleneck=4, num_blocks=3, output_dim=6)
  z = jax.random.normal(jax.random.key(0), (2, 7, 5, 3))
  params = net.init(jax.random.key(1), z)

  @jax.jit
  def row_sensitivity(z):  # [r, row]: how much c[:, r] depends on z[:, row]
    out, vjp = jax.vjp(lambda z: net.apply(params, z), z)
    noise = jax.random.normal(jax.random.key(2), out.shape)
    cotangents = jnp.stack([noise.at[:, :r].set(0).at[:, r + 1:].set(0) for r in range(7)])
    (grads,) = jax.vmap(vjp)(cotangents)                      # [7, B, R, C, D]
    return jnp.sum(jnp.abs(grads), axis=(1, 3, 4))

  sensitivity = np.asarray(row_sensitivity(z))
  for r in range(7):
    row_norms = sensitivity[r]
    assert np.all(row_norms[r + 1:] == 0.0), (r, row_norms)
    assert row_norms[r] > 0.0
    if r > 0:
      assert row_norms[r - 1] > 0.0
  # Perturbing the rows below r leaves c[:, :r + 1] unchanged exactly.
  perturbed = z.at[:, 4:].add(10.0)
  apply = jax.jit(net.apply)
  np.testing.assert_array_equal(np.asarray(apply(params, z))[:, :4],
                                np.asarray(apply(params, perturbed))[:, :4])


def test_bidirectional_predictions_never_see_their_target_rows():
  def context():
    return context_lib.ContextNetwork(width=8, bottleneck=4, num_blocks=2, output_dim=6)
  model = cpc.CPCModel(encoder=None, context_down=context(), context_up=context(),
                       prediction_offsets=(1, 2), target_dim=3,
                       embedding_scale=0.1)
  z = jax.random.normal(jax.random.key(0), (2, 7, 5, 3))
  params = model.init(jax.random.key(1), z, method=cpc.CPCModel.predict)

  @jax.jit
  def sensitivity(z):  # {(k, r): how much the prediction at row r for k depends on each row}
    out, vjp = jax.vjp(lambda z: model.apply(params, z, method=cpc.CPCModel.predict), z)
    result = {}
    for k in (1, 2):
      rows = out[k - 1].shape[1]
      noise = jax.random.normal(jax.random.key(k), out[k - 1].shape)
      cotangents = [[jnp.zeros_like(o) for o in out] for _ in range(rows)]
      for r in range(rows):
        cotangents[r][k - 1] = noise.at[:, :r].set(0).at[:, r + 1:].set(0)
      stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *cotangents)
      (grads,) = jax.vmap(vjp)(stacked)
      for r in range(rows):
        result[(k, r)] = jnp.sum(jnp.abs(grads[r]), axis=(0, 2, 3))
    return result

  for (k, r), rows in sensitivity(z).items():
    rows = np.asarray(rows)
    assert np.all(rows[r + 1:r + k + 1] == 0.0), (k, r, rows)   # the target rows stay hidden
    assert rows[r] > 0.0, (k, r, rows)                           # its own row (top-down)
    assert r + k + 1 >= 7 or rows[r + k + 1] > 0.0, (k, r, rows)  # the rows below (bottom-up)


def _reference_loss(predictions, z, offsets=None):
  """CPC InfoNCE in float64, loops over queries (independent of the code under test)."""
  z = np.asarray(z, np.float64)
  n, rows, cols, dim = z.shape
  keys = z.reshape(-1, dim)
  per_k, acc_k = [], []
  for k, pred in zip(offsets or range(1, len(predictions) + 1), predictions):
    pred = np.asarray(pred, np.float64)
    losses, hits = [], []
    for b in range(n):
      for r in range(rows - k):
        for c in range(cols):
          logits = keys @ pred[b, r, c]
          target = (b * rows + r + k) * cols + c
          m = logits.max()
          losses.append(m + np.log(np.sum(np.exp(logits - m))) - logits[target])
          hits.append(np.argmax(logits) == target)
    per_k.append(np.mean(losses))
    acc_k.append(np.mean(hits))
  return np.mean(per_k), np.mean(acc_k)


def _random_inputs(n=8, rows=5, cols=4, dim=6, offsets=(1, 2, 3), seed=0):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n, rows, cols, dim)).astype(np.float32)
  predictions = [rng.normal(size=(n, rows - k, cols, dim)).astype(np.float32)
                 for k in offsets]
  return predictions, z


def test_info_nce_matches_numpy_float64():
  predictions, z = _random_inputs()
  loss, accuracy = cpc.cpc_info_nce(predictions, z)
  ref_loss, ref_accuracy = _reference_loss(predictions, z)
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
  np.testing.assert_allclose(float(accuracy), ref_accuracy, rtol=1e-6)
  # Only some offsets (Hénaff et al. Appendix A.2 predicts k = 3 alone).
  predictions, z = _random_inputs(offsets=(2, 4), seed=1)
  loss, accuracy = cpc.cpc_info_nce(predictions, z, offsets=(2, 4))
  ref_loss, ref_accuracy = _reference_loss(predictions, z, offsets=(2, 4))
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
  np.testing.assert_allclose(float(accuracy), ref_accuracy, rtol=1e-6)
  with pytest.raises(ValueError, match="offsets"):
    cpc.cpc_info_nce(predictions, z, offsets=(2,))


def test_targets_are_projected_and_predictions_scaled_as_appendix_a2():
  """t = W_t z (64-d in the paper), prediction = s W_k c with s = emb_scale."""
  def model(scale):
    context = context_lib.ContextNetwork(width=8, bottleneck=4, num_blocks=1, output_dim=6)
    return cpc.CPCModel(encoder=None, context_down=context, context_up=None,
                        prediction_offsets=(1, 3), target_dim=5, embedding_scale=scale)
  z = jax.random.normal(jax.random.key(0), (2, 5, 4, 3))
  params = model(0.1).init(jax.random.key(1), z,
                           method=lambda m, z: (m.target_projection(z), m.predict(z)))
  assert params["params"]["target_projection"]["kernel"].shape == (3, 5)
  scaled = model(0.1).apply(params, z, method=cpc.CPCModel.predict)
  unscaled = model(1.0).apply(params, z, method=cpc.CPCModel.predict)
  assert [p.shape for p in scaled] == [(2, 4, 4, 5), (2, 2, 4, 5)]
  for a, b in zip(scaled, unscaled):
    np.testing.assert_allclose(np.asarray(a), 0.1 * np.asarray(b), rtol=1e-6)
  # The tiny config's 16-px view gives a 3-row grid: offset 3 has no target row.
  config = method_testing.method_config("cpc", "unused", **{"cpc.prediction_offsets": (3,)})
  with pytest.raises(ValueError, match="prediction_offsets"):
    cpc.init(jax.random.key(0), config, None)


def test_info_nce_positives_are_the_right_image_and_position():
  n, rows, cols = 3, 4, 3
  z = np.eye(n * rows * cols, dtype=np.float32).reshape(n, rows, cols, -1)
  right = [30.0 * z[:, k:] for k in (1, 2)]
  loss, accuracy = cpc.cpc_info_nce(right, z)
  assert float(loss) < 1e-6 and float(accuracy) == 1.0
  for wrong in ([30.0 * z[:, :rows - k] for k in (1, 2)],              # the context's own row
                [30.0 * np.roll(z[:, k:], 1, axis=0) for k in (1, 2)],  # another image
                [30.0 * np.roll(z[:, k:], 1, axis=2) for k in (1, 2)]):  # another column
    loss, accuracy = cpc.cpc_info_nce(wrong, z)
    assert float(loss) > 20.0 and float(accuracy) == 0.0


def test_info_nce_8_devices_equals_1_device():
  predictions, z = _random_inputs(n=16)
  mesh = make_mesh(jax.devices())
  fn = jax.jit(jax.shard_map(functools.partial(cpc.cpc_info_nce, axis_name=BATCH_AXIS), mesh=mesh,
                             in_specs=(P(BATCH_AXIS), P(BATCH_AXIS)), out_specs=(P(), P())))
  loss, accuracy = fn(predictions, z)
  ref_loss, ref_accuracy = _reference_loss(predictions, z)
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
  np.testing.assert_allclose(float(accuracy), ref_accuracy, rtol=1e-6)
  # And the gradient w.r.t. z equals the single-device one.
  g8 = jax.grad(lambda z: fn(predictions, z)[0])(z)
  g1 = jax.grad(lambda z: cpc.cpc_info_nce(predictions, z)[0])(z)
  np.testing.assert_allclose(np.asarray(g8), np.asarray(g1), rtol=1e-4, atol=1e-7)


def test_smoke_run_with_knn_on_pooled_patch_features(data_dir, tmp_path):
  config = method_testing.method_config(
      "cpc", data_dir, total_steps=12, log_every_steps=4, batch_size=16,
      **{"cpc.prediction_offsets": (2,), "knn.every_epochs": 1000.0})
  cfg = config.cpc
  cfg.context_width, cfg.context_bottleneck, cfg.context_dim = 16, 8, 16
  results = train.train_and_evaluate(config, str(tmp_path))
  records = [r for r in method_testing.read_metrics(str(tmp_path)) if "loss" in r]
  losses = [r["loss"] for r in records]
  assert np.all(np.isfinite(losses))
  assert losses[-1] < losses[0], losses
  assert "cpc_accuracy" in records[-1]
  # The kNN monitor applied the patch encoder (mean-pooled patch features).
  assert isinstance(encoder_lib.build_encoder(config.model), encoder_lib.PatchEncoder)
  assert 0.0 <= results["knn_top1"] <= 1.0
