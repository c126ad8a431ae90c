"""Evaluation protocols, plots and cross-topology checkpoint restore.

One tiny SimCLR run (ResNet-10 at base width 4, 16x16 views of the offline
digits, 3 steps) is shared by the module; the supervised protocols run on a
tiny colour-separable image folder (4 classes), which doubles as the transfer
target (digits -> folder).
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from ssl_jax import checkpoint
from ssl_jax import evaluate
from ssl_jax import methods
from ssl_jax import optim
from ssl_jax import train
from ssl_jax.evaluate import common
from ssl_jax.evaluate import linear
from ssl_jax.evaluate import plots
from ssl_jax.evaluate import results
from ssl_jax.parallel import make_mesh

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_train  # noqa: E402  pylint: disable=g-import-not-at-top

def write_colour_folder(root, colours, train_per_class, test_per_class, seed):
  """An image folder (16x16 PNG) whose classes differ by colour: linearly separable."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  for split, count in (("train", train_per_class), ("test", test_per_class)):
    for c, colour in enumerate(colours):
      os.makedirs(os.path.join(root, split, f"class_{c}"))
      for i in range(count):
        image = np.clip(np.asarray(colour) + rng.integers(-8, 9, (16, 16, 3)), 0, 255)
        Image.fromarray(image.astype(np.uint8)).save(
            os.path.join(root, split, f"class_{c}", f"{i}.png"))
  return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  """(pre-training folder: 4 classes, 24+8 per class; transfer folder: 3 classes)."""
  a = write_colour_folder(str(tmp_path_factory.mktemp("folder_a")),
                          [[220, 30, 30], [30, 220, 30], [30, 30, 220], [220, 220, 30]],
                          24, 8, seed=0)
  b = write_colour_folder(str(tmp_path_factory.mktemp("folder_b")),
                          [[30, 220, 220], [220, 30, 220], [120, 120, 120]], 16, 8, seed=1)
  return a, b


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, folders):
  """(workdir, data_dir) holding a step-3 checkpoint of a tiny SimCLR on folder A.

  Written as the trainer writes it (state + meta, from 8 devices) without
  compiling a train step: the protocols only read the backbone (here at its
  initialisation). The trainer's own outputs (feature_map.png) are checked in
  test_train's smoke run.
  """
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  workdir = str(tmp_path_factory.mktemp("run"))
  config = test_train.tiny_config(data_dir, total_steps=3)
  config.data.name = "image_folder"
  config.data.folder = folders[0]
  method = methods.get_method(config.method)
  tx, _ = optim.make_optimizer(config.optim, total_steps=3, steps_per_epoch=3,
                               batch_size=config.batch_size)
  state = train.create_train_state(config, method, tx, make_mesh())
  state = state.replace(step=jnp.int32(3))
  manager = checkpoint.make_manager(workdir, max_to_keep=1, asynchronous=False)
  checkpoint.save(manager, 3, state, train._meta(config, 3))  # pylint: disable=protected-access
  manager.wait_until_finished()
  manager.close()
  return workdir, data_dir


def small_eval_config(**linear):
  c = evaluate.default_config()
  c.batch_size = 32
  c.linear.inverse_l2 = (0.1, 1.0)
  c.linear.update(linear)
  return c


# ---------------------------------------------------------------------------
# kNN against NumPy.
# ---------------------------------------------------------------------------


def knn_reference(bank, bank_labels, queries, k, temperature, num_classes):
  """Wu et al. 2018 weighted kNN in float64: sum of exp(s/T) of the k nearest per class."""
  sims = queries.astype(np.float64) @ bank.astype(np.float64).T
  preds = []
  for row in sims:
    nearest = np.argsort(-row, kind="stable")[:k]
    scores = np.zeros(num_classes)
    np.add.at(scores, bank_labels[nearest], np.exp(row[nearest] / temperature))
    preds.append(np.argmax(scores))
  return np.asarray(preds)


@pytest.mark.parametrize("num_devices", [1, 8])
def test_knn_matches_numpy_reference(num_devices):
  rng = np.random.default_rng(0)
  num_classes = 5
  centres = rng.normal(size=(num_classes, 8))
  bank_labels = rng.integers(0, num_classes, 203)
  bank = centres[bank_labels] + 1.5 * rng.normal(size=(203, 8))
  query_labels = rng.integers(0, num_classes, 37)
  queries = centres[query_labels] + 1.5 * rng.normal(size=(37, 8))
  bank /= np.linalg.norm(bank, axis=1, keepdims=True)
  queries /= np.linalg.norm(queries, axis=1, keepdims=True)
  mesh = make_mesh(jax.devices()[:num_devices])
  for k in (20, 200):
    got = evaluate.knn_predict(bank.astype(np.float32), bank_labels.astype(np.int32),
                               queries.astype(np.float32), num_classes=num_classes, mesh=mesh,
                               k=k, temperature=0.07, query_chunk=16)
    want = knn_reference(bank, bank_labels, queries, k, 0.07, num_classes)
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------
# Linear: the L-BFGS path solves the regularised problem; both paths learn.
# ---------------------------------------------------------------------------


def test_lbfgs_fit_is_the_l2_regularised_multinomial_optimum():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(120, 6)) * np.asarray([1, 5, 0.2, 1, 3, 1]) + 2.0
  y = rng.integers(0, 3, 120)
  x[:, 0] += 2.0 * y          # some signal
  c = 0.5
  model = linear.fit_logistic(x, y, inverse_l2=c, max_iter=1000)
  scaler, logreg = model[0], model[-1]
  # Independent float64 re-derivation: standardise with population std, then
  # the gradient of sum_i CE(W z_i + b, y_i) + ||W||^2 / (2C) must vanish.
  z = (x - x.mean(0)) / x.std(0)
  np.testing.assert_allclose(scaler.transform(x), z, atol=1e-10)
  w, b = logreg.coef_.T, logreg.intercept_            # [D, K], [K]
  logits = z @ w + b
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  residual = p - np.eye(3)[y]
  grad_w = z.T @ residual + w / c
  grad_b = residual.sum(0)
  assert np.max(np.abs(grad_w)) < 1e-3, grad_w
  assert np.max(np.abs(grad_b)) < 1e-3, grad_b


def test_lbfgs_probe_separable_toy_and_topk():
  rng = np.random.default_rng(2)
  y = np.repeat(np.arange(4), 30)
  x = np.eye(4)[y] * 3 + 0.3 * rng.normal(size=(120, 4))
  metrics, settings = linear.lbfgs_probe(x, y, x[::3], y[::3], num_classes=6,
                                         inverse_l2=(0.1, 1.0), val_fraction=0.2,
                                         max_iter=500, seed=0)
  assert metrics["top1"] == 1.0 and metrics["top5"] == 1.0
  assert settings["C"] in (0.1, 1.0)
  scores = np.asarray([[0.1, 0.5, 0.2, 0.9], [0.8, 0.1, 0.3, 0.0]])
  assert common.topk_accuracy(scores, np.asarray([1, 1]), 1) == 0.0
  assert common.topk_accuracy(scores, np.asarray([1, 1]), 2) == 0.5
  assert common.topk_accuracy(scores, np.asarray([1, 1]), 3) == 1.0


# ---------------------------------------------------------------------------
# Semi-supervised subsets.
# ---------------------------------------------------------------------------


def test_semisup_subsets_deterministic_balanced_right_size():
  labels = np.random.default_rng(3).permutation(np.repeat(np.arange(10), 400))
  for fraction, per_class in ((0.01, 4), (0.1, 40)):
    a = common.class_balanced_subset(labels, fraction, seed=0, num_classes=10)
    b = common.class_balanced_subset(labels, fraction, seed=0, num_classes=10)
    other = common.class_balanced_subset(labels, fraction, seed=1, num_classes=10)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, other)
    assert len(a) == 10 * per_class == int(round(fraction * len(labels)))
    assert len(np.unique(a)) == len(a)
    np.testing.assert_array_equal(np.bincount(labels[a], minlength=10), per_class)
  fit, held = common.stratified_holdout(labels, 0.1, seed=0)
  assert len(np.intersect1d(fit, held)) == 0 and len(fit) + len(held) == len(labels)
  np.testing.assert_array_equal(np.bincount(labels[held]), 40)


# ---------------------------------------------------------------------------
# Checkpoints across device topologies.
# ---------------------------------------------------------------------------


def test_restore_raw_across_device_topologies(tmp_path):
  mesh8 = make_mesh()
  state = {"params": {"w": jnp.arange(24.0).reshape(4, 6)}, "step": jnp.int32(7),
           "rng": jnp.asarray([1, 2], jnp.uint32)}
  state = jax.device_put(state, NamedSharding(mesh8, P()))
  manager = checkpoint.make_manager(str(tmp_path), max_to_keep=1, asynchronous=False)
  checkpoint.save(manager, 7, state, {"config": {"seed": 3}})
  manager.wait_until_finished()
  manager.close()
  # Onto one device (default), and onto a 2-device mesh, in this 8-device process.
  for sharding in (None, NamedSharding(make_mesh(jax.devices()[:2]), P())):
    raw, meta, step = checkpoint.restore_raw(str(tmp_path), sharding=sharding)
    assert step == 7 and meta["config"]["seed"] == 3
    jax.tree.map(np.testing.assert_array_equal, raw, jax.device_get(state))


# ---------------------------------------------------------------------------
# The protocols on the tiny run.
# ---------------------------------------------------------------------------


def test_knn_protocol_writes_json_and_markdown(pretrained):
  workdir, _ = pretrained
  record = evaluate.knn_protocol(workdir, small_eval_config())
  assert set(record["metrics"]) == {"top1_k20", "top1_k200"}
  # Initial backbone, colour-separable classes: the neighbours share the colour.
  assert record["metrics"]["top1_k20"] >= 0.9, record
  with open(os.path.join(workdir, "eval", "knn_image_folder.json")) as f:
    saved = json.load(f)
  assert saved["step"] == 3 and saved["seed"] == 0 and saved["devices"] == 8
  assert saved["checkpoint"].endswith(os.path.join("checkpoints", "3"))
  with open(os.path.join(workdir, "eval", "results.md")) as f:
    rows = [line for line in f if line.startswith("| knn |")]
  assert rows and "temperature=0.07" in rows[-1] and saved["checkpoint"] in rows[-1]


def test_linear_lbfgs_and_sgd_learn_separable_folder(pretrained):
  workdir, _ = pretrained
  lbfgs = evaluate.linear_protocol(workdir, small_eval_config(solver="lbfgs"))
  assert lbfgs["settings"]["solver"] == "lbfgs"
  assert lbfgs["metrics"]["top1"] >= 0.9, lbfgs
  sgd = evaluate.linear_protocol(
      workdir, small_eval_config(solver="sgd", epochs=4, learning_rates=(1.0, 4.0)))
  assert sgd["settings"]["solver"] == "sgd" and len(sgd["settings"]["lr_grid"]) == 2
  assert sgd["metrics"]["top1"] >= 0.9, sgd
  assert sgd["metrics"]["top5"] == 1.0


def test_transfer_to_another_dataset(pretrained, folders):
  workdir, _ = pretrained
  record = evaluate.transfer_protocol(workdir, small_eval_config(solver="lbfgs"),
                                      dataset="image_folder", folder=folders[1])
  assert record["settings"]["from"] == "image_folder"
  assert record["metrics"]["linear_top1"] >= 0.9, record
  assert record["metrics"]["knn_top1_k20"] > 0.5, record     # chance: 1/3
  saved = results.read_result(workdir, "transfer", "image_folder")
  assert saved["metrics"] == record["metrics"]


def test_finetune_and_semisup(pretrained):
  workdir, _ = pretrained
  config = small_eval_config()
  config.finetune.epochs = 8
  config.finetune.learning_rate = 2.0
  s = evaluate.setup(workdir, batch_size=32)
  record = evaluate.finetune_protocol(workdir, config, setup=s)
  assert record["settings"]["labelled"] == 96 and record["settings"]["steps"] == 24
  # It learns (cross-entropy starts at log 4 = 1.386 with the zero-init head) and
  # beats chance (0.25) at test with eval-mode BN after 24 steps.
  assert record["metrics"]["final_loss"] < 1.2, record
  assert record["metrics"]["top1"] > 0.3, record
  # 1/3 of 96 = 8 per class = one batch of 32: the same compiled step.
  config.semisup.fractions = (1 / 3,)
  config.semisup.epochs = (2,)
  semi = evaluate.semisup_protocol(workdir, config, setup=s)
  tag = f"{100 / 3:g}pct"
  assert semi["settings"][f"labelled_{tag}"] == 32
  assert 0.0 <= semi["metrics"][f"top1_{tag}"] <= 1.0


def test_cli_knn_on_two_devices(pretrained):
  """Checkpoint written by 8 devices, evaluated by a 2-device process."""
  workdir, _ = pretrained
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "ssl_jax.evaluate", f"--workdir={workdir}", "--protocol=knn",
       "--eval.knn.k=20", "--eval.batch_size=64", "--eval.seed=5"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("ssl_jax.evaluate ")][-1]
  out = json.loads(line[len("ssl_jax.evaluate "):])
  assert out["seed"] == 5 and set(out["metrics"]) == {"top1_k20"}
  saved = results.read_result(workdir, "knn", "image_folder")
  assert saved["devices"] == 2 and saved["seed"] == 5


def test_feature_map_pca_and_tsne(tmp_path):
  rng = np.random.default_rng(4)
  labels = np.repeat(np.arange(3), 10)
  feats = np.eye(3)[labels] * 4 + rng.normal(size=(30, 3))
  points = plots.embed_2d(feats, method="tsne", tsne_iters=250)
  assert points.shape == (30, 2) and np.all(np.isfinite(points))
  path = plots.feature_map(feats, labels, str(tmp_path / "map.png"), method="pca")
  assert os.path.getsize(path) > 0
  # PCA keeps the class structure: class centroids are far apart in 2-D.
  pca = plots.embed_2d(feats, method="pca")
  centroids = np.stack([pca[labels == c].mean(0) for c in range(3)])
  spread = np.mean([pca[labels == c].std() for c in range(3)])
  assert np.min(np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)
                + 1e9 * np.eye(3)) > 2 * spread
