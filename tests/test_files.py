"""Workdirs on object stores: URLs stay URLs, and files are rewritten, never appended.

GCS is not reachable in tests; the object-store code path (``files.is_url``) is
forced on a local directory, which etils.epath writes the same way.
"""

import json

import numpy as np

from ssl_jax import checkpoint
from ssl_jax import files
from ssl_jax import metrics_io
from ssl_jax.evaluate import results


def test_urls_are_not_made_local_paths():
  assert files.absolute("gs://bucket/runs/simclr") == "gs://bucket/runs/simclr"
  assert checkpoint.checkpoint_dir("gs://bucket/run") == "gs://bucket/run/checkpoints"
  assert checkpoint.quarantine_dir("gs://b/run").startswith("gs://b/run/")
  assert files.join("gs://b/run", "eval", "x.json") == "gs://b/run/eval/x.json"
  assert checkpoint.checkpoint_dir("rel/run").startswith("/")  # local: absolute


def test_metrics_and_results_without_append_as_on_gcs(tmp_path, monkeypatch):
  appended = []
  real_open = files.epath.Path.open

  def no_append(self, mode="r", **kwargs):
    appended.append(mode)
    assert "a" not in mode, "object stores cannot append"
    return real_open(self, mode, **kwargs)

  monkeypatch.setattr(files, "is_url", lambda path: True)
  monkeypatch.setattr(files.epath.Path, "open", no_append)
  workdir = str(tmp_path / "run")
  writer = metrics_io.MetricsWriter(workdir)
  for step in (10, 20, 30):
    writer.write(step, {"loss": 1.0 / step})
  writer.drop_after(20)  # a resumed run replays step 30
  writer.write(30, {"loss": 0.5})
  writer.close(plot=True)
  records = metrics_io.read_metrics(workdir)
  assert [r["step"] for r in records] == [10, 20, 30]
  np.testing.assert_allclose(records[-1]["loss"], 0.5)
  assert (tmp_path / "run" / metrics_io.PLOT_FILE).stat().st_size > 0
  for seed in (0, 1):
    results.write_result(workdir, {"protocol": "knn", "dataset": "digits",
                                   "metrics": {"top1": 0.5}, "settings": {}, "checkpoint": "c",
                                   "step": 1, "seed": seed})
  table = (tmp_path / "run" / results.EVAL_DIR / results.RESULTS_MD).read_text()
  assert table.count("| knn |") == 2 and table.count("| protocol |") == 1
  assert json.loads((tmp_path / "run" / results.EVAL_DIR / "knn_digits.json").read_text())[
      "seed"] == 1


def test_training_seconds_add_up_across_a_resume(tmp_path):
  workdir = str(tmp_path / "run")
  writer = metrics_io.MetricsWriter(workdir)
  # Log every 50 steps; preempted at step 120 (logged and checkpointed there),
  # resumed: the second attempt logs 150 and 200. Step 50's interval holds the compile.
  for step, ms in ((50, 1000.0), (100, 20.0), (120, 30.0)):
    writer.write(step, {"loss": 1.0, "ms_per_step": ms})
  writer.close()
  resumed = metrics_io.MetricsWriter(workdir)
  resumed.drop_after(120)
  for step, ms in ((150, 25.0), (200, 20.0)):
    resumed.write(step, {"loss": 1.0, "ms_per_step": ms})
  resumed.close()
  expected = (50 * 1000 + 50 * 20 + 20 * 30 + 30 * 25 + 50 * 20) / 1e3
  np.testing.assert_allclose(metrics_io.training_seconds(workdir), expected)
  assert metrics_io.training_seconds(str(tmp_path / "never_trained")) == 0.0
