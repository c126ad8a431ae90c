"""Results name their protocol: one JSON file per (protocol, dataset), one Markdown row each.

``DIR/eval/<protocol>_<dataset>.json`` holds the whole record (metrics,
settings, checkpoint path and step, seed, wall time); ``DIR/eval/results.md``
gets one table row per evaluation, appended, so the file is the history of
every number reported for the run.
"""

from __future__ import annotations

import datetime
import json

import jax

from ssl_jax import files

EVAL_DIR = "eval"
RESULTS_MD = "results.md"
_HEADER = ("| protocol | dataset | metrics | settings | checkpoint | step | seed | date |\n"
           "|---|---|---|---|---|---|---|---|\n")


def _slug(name: str) -> str:
  return "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in name)


def _fmt(value) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  if isinstance(value, (list, tuple)):
    return "/".join(_fmt(v) for v in value)
  return str(value)


def markdown_row(record: dict) -> str:
  """One table row: protocol, dataset, metrics (accuracies in %), settings, checkpoint, step,
  seed, date."""
  metrics = ", ".join(f"{k} {100 * v:.2f}%" if "top" in k and isinstance(v, float)
                      else f"{k} {_fmt(v)}" for k, v in record["metrics"].items())
  settings = ", ".join(f"{k}={_fmt(v)}" for k, v in record["settings"].items())
  return (f"| {record['protocol']} | {record['dataset']} | {metrics} | {settings} | "
          f"`{record['checkpoint']}` | {record['step']} | {record['seed']} | "
          f"{record['date']} |\n")


def write_result(workdir: str, record: dict) -> str:
  """Writes the JSON record and appends its Markdown row; returns the JSON path.

  Args:
    workdir: the pre-training workdir (results go to ``workdir/eval``).
    record: {'protocol', 'dataset', 'metrics': {name: value}, 'settings': {...},
      'checkpoint': path, 'step': int, 'seed': int, ...}; 'date' is added.
  """
  record = dict(record, date=datetime.datetime.now(datetime.timezone.utc).strftime(
      "%Y-%m-%d %H:%M UTC"))
  directory = files.join(workdir, EVAL_DIR)
  path = files.join(directory, f"{_slug(record['protocol'])}_{_slug(record['dataset'])}.json")
  if jax.process_index() != 0:
    return path
  files.makedirs(directory)
  files.write_text(path, json.dumps(record, indent=2, default=_fmt))
  md = files.join(directory, RESULTS_MD)
  files.append_text(md, ("" if files.exists(md) else _HEADER) + markdown_row(record))
  return path


def read_result(workdir: str, protocol: str, dataset: str) -> dict:
  return json.loads(files.read_text(
      files.join(workdir, EVAL_DIR, f"{_slug(protocol)}_{_slug(dataset)}.json")))
