"""benchmarks/reproduce.py: an interrupted reproduction table resumes without redoing runs."""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reproduce(data_dir, out, *flags):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # the script sets its own device count
  return subprocess.run(
      [sys.executable, os.path.join(REPO, "benchmarks", "reproduce.py"), "--methods=simclr",
       "--seeds=0", "--random_init=false", "--datasets=digits", f"--data_dir={data_dir}",
       "--batch_size=16", "--base_width=4", f"--out={out}", *flags],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def test_finished_runs_are_read_back_and_missing_protocols_added(data_dir, tmp_path):
  out = tmp_path / "table"
  record_path = out / "simclr_digits_s0" / "reproduce_run.json"

  first = _reproduce(data_dir, out, "--total_steps=2", "--protocols=knn")
  assert first.returncode == 0, first.stderr[-3000:]
  record = json.loads(record_path.read_text())
  assert 0.0 <= record["knn20"] <= 1.0 and math.isnan(record["linear1"])
  assert record["train_s"] > 0  # from the loop's metrics.jsonl
  checkpoints = sorted(os.listdir(out / "simclr_digits_s0" / "checkpoints"))
  knn_only = (out / "reproduce.md").read_text()
  assert "nan" not in knn_only and "| - | - |" in knn_only  # linear not run: '-'

  # The same table with the linear protocol too: no pre-training, kNN kept, linear added.
  second = _reproduce(data_dir, out, "--total_steps=2", "--protocols=knn,linear")
  assert second.returncode == 0, second.stderr[-3000:]
  again = json.loads(record_path.read_text())
  assert again["train_s"] == record["train_s"] and again["knn20"] == record["knn20"]
  assert 0.0 <= again["linear1"] <= again["linear5"] <= 1.0
  assert sorted(os.listdir(out / "simclr_digits_s0" / "checkpoints")) == checkpoints
  assert "Resumed from" not in second.stderr  # train_and_evaluate was not called
  table = (out / "reproduce.md").read_text()
  assert f"{100 * again['linear1']:.2f}" in table

  # Another budget in the same --out is refused, not mixed into the table.
  third = _reproduce(data_dir, out, "--total_steps=3", "--protocols=knn")
  assert third.returncode != 0
  assert "is from another run" in third.stderr and "fresh --out" in third.stderr
  assert json.loads(record_path.read_text()) == again


def test_table_cells_say_which_seeds_ran_a_protocol():
  """'-' for a protocol no seed ran; a mean over only some seeds says so, not a silent n."""
  code = ("import math, reproduce as r; nan = math.nan; print(repr([r._mean_std([nan, nan]), "
          "r._mean_std([0.3, nan, 0.5]), r._mean_std([0.3, nan]), r._mean_std([0.3, 0.5])]))")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(REPO, "benchmarks"), REPO]))
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert ast.literal_eval(result.stdout.strip().splitlines()[-1]) == [
      "-", "40.00 ± 14.14 (2 of 3 seeds)", "30.00 (1 of 2 seeds)", "40.00 ± 14.14"]
