"""Where metrics go: ``metrics.jsonl``, TensorBoard events, a progress bar, a PNG.

Only process 0 writes (``enabled``). ``metrics.jsonl`` holds one JSON object
per logged step (``step``, ``loss``, ``learning_rate``, ``images_per_sec``,
``ms_per_step``, ``knn_top1``, ...).
"""

from __future__ import annotations

import json
import sys

from absl import logging
from clu import metric_writers
import tqdm

from ssl_jax import files

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "curves.png"
# Panels of curves.png, in order (those never logged are skipped).
PLOTTED = ("loss", "learning_rate", "knn_top1", "embedding_std_ratio", "embedding_rank",
           "alignment", "uniformity")
PLOT_COLUMNS = 4


class MetricsWriter:
  """Appends metrics to ``workdir/metrics.jsonl`` and TensorBoard events."""

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.workdir = workdir
    self.enabled = enabled
    self._path = files.join(workdir, METRICS_FILE)
    if enabled:
      files.makedirs(workdir)
      self._tb = metric_writers.create_default_writer(workdir, just_logging=False,
                                                      asynchronous=True)

  def write_config(self, config) -> None:
    if self.enabled:
      files.write_text(files.join(self.workdir, "config.json"),
                       config.to_json_best_effort(indent=2))

  def drop_after(self, step: int) -> None:
    """Removes records of steps after ``step`` (a resumed run logs them again)."""
    if not self.enabled:
      return
    records = read_metrics(self.workdir)
    kept = [r for r in records if r.get("step", 0) <= step]
    if len(kept) == len(records):
      return
    files.write_text(self._path, "".join(json.dumps(r) + "\n" for r in kept))

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    files.append_text(self._path, json.dumps(record) + "\n")
    self._tb.write_scalars(int(step), {k: float(v) for k, v in scalars.items()})
    logging.info("step %d: %s", step, ", ".join(f"{k}={v:.5g}" for k, v in scalars.items()))

  def close(self, plot: bool = False) -> None:
    if not self.enabled:
      return
    self._tb.flush()
    self._tb.close()
    if plot:
      plot_curves(self.workdir)


def read_metrics(workdir: str) -> list[dict]:
  path = files.join(workdir, METRICS_FILE)
  if not files.exists(path):
    return []
  return [json.loads(line) for line in files.read_text(path).splitlines() if line.strip()]


def training_seconds(workdir: str) -> float:
  """The training loop's time, from ``metrics.jsonl``: ``ms_per_step`` x the steps of each
  log interval (compilation, checkpoints and epoch hooks included).

  Unlike a clock around the whole run it stays right across preemption: the
  intervals of every attempt add up, and a step logged twice (redone after a
  resume from an older checkpoint) counts once, at its last timing.
  """
  ms_per_step = {r["step"]: r["ms_per_step"] for r in read_metrics(workdir)
                 if "ms_per_step" in r}
  total, previous = 0.0, 0
  for step in sorted(ms_per_step):
    total += ms_per_step[step] * (step - previous) / 1e3
    previous = step
  return total


def plot_curves(workdir: str) -> str | None:
  """Loss, learning rate, kNN accuracy and collapse metrics against step -> ``curves.png``.

  Each panel is drawn only if its metric was logged; the collapse metrics are
  those of ``ssl_jax.diagnostics`` (std ratio ~1 healthy / 0 collapsed,
  effective rank, alignment and uniformity of Wang & Isola 2020).
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  records = read_metrics(workdir)
  keys = [k for k in PLOTTED if any(k in r for r in records)]
  if not keys:
    return None
  cols = min(len(keys), PLOT_COLUMNS)
  rows = -(-len(keys) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
  for ax in axes.flat[len(keys):]:
    ax.axis("off")
  for ax, key in zip(axes.flat, keys):
    points = [(r["step"], r[key]) for r in records if key in r]
    ax.plot(*zip(*points), marker="." if len(points) < 50 else None)
    ax.set_xlabel("step")
    ax.set_title(key)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  path = files.join(workdir, PLOT_FILE)
  files.save_figure(fig, path)
  plt.close(fig)
  return path


def progress_bar(total: int, initial: int, *, enabled: bool):
  """A tqdm bar on a terminal; silent (but still countable) elsewhere."""
  return tqdm.tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                   disable=not (enabled and sys.stderr.isatty()))
