"""RotNet: exact rotations and labels, the step schedule, smoke run.

RotNet has no cross-device term but BN and the mean; the trainer's 1-vs-8
device test and test_jigsaw's (same make-views/BN path) cover those.
"""

import numpy as np

from ssl_jax import optim
from ssl_jax import train
from ssl_jax.methods import rotnet

import method_testing


def _reference_rotation(image, k):
  """FeatureLearningRotNet's rotate_img, re-derived: 90 = flipud(transpose), ..."""
  if k == 0:
    return image
  if k == 1:
    return np.flipud(np.transpose(image, (1, 0, 2)))
  if k == 2:
    return np.fliplr(np.flipud(image))
  return np.transpose(np.flipud(image), (1, 0, 2))


def test_rotations_exact_and_labelled():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(3, 5, 5, 2)).astype(np.float32)
  rotated, labels = rotnet.rotate_batch(images)
  rotated, labels = np.asarray(rotated), np.asarray(labels)
  assert rotated.shape == (12, 5, 5, 2)
  for row in range(12):
    k, i = divmod(row, 3)
    assert labels[row] == k
    np.testing.assert_array_equal(rotated[row], _reference_rotation(images[i], k))
  # 90 degrees is counter-clockwise: the top-right pixel goes to the top-left.
  corner = np.zeros((1, 4, 4, 1), np.float32)
  corner[0, 0, 3, 0] = 1.0
  assert np.asarray(rotnet.rotate_batch(corner)[0])[1, 0, 0, 0] == 1.0


def test_step_schedule_matches_reference():
  config = optim.default_optim_config("sgd")
  config.schedule, config.decay_fractions, config.decay_factor = "step", (0.3, 0.6, 0.8), 0.2
  config.lr_scaling, config.base_learning_rate = "none", 0.1
  _, schedule = optim.make_optimizer(config, total_steps=200, steps_per_epoch=1, batch_size=128)
  # RotNet's CIFAR LUT_lr: 0.1 until epoch 60, 0.02 until 120, 0.004 until 160, then 0.0008.
  for step in range(200):
    expected = 0.1 * 0.2 ** sum(step >= b for b in (60, 120, 160))
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-6)


def test_smoke_learns_rotations(data_dir, tmp_path):
  config = method_testing.method_config(
      "rotnet", data_dir, total_steps=16, log_every_steps=4, batch_size=32)
  config.optim.base_learning_rate = 0.4
  results = train.train_and_evaluate(config, str(tmp_path))
  records = [r for r in method_testing.read_metrics(str(tmp_path)) if "loss" in r]
  losses = [r["loss"] for r in records]
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-2:]) < losses[0] - 0.1, losses
  assert records[-1]["rotation_accuracy"] > 0.4, records[-1]
  assert "embedding_rank" in records[-1]
  assert results["step"] == 16
