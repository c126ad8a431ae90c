"""Workdir file operations that work on local disks and on object stores (gs://, s3://).

TPU pod runs keep their workdir on GCS, which every worker sees. ``etils.epath``
(orbax's path library) reads and writes both; what an object store lacks is
appending to a file and renaming a directory, so:

- ``append_text`` appends locally and rewrites the whole (small) file on an
  object store;
- ``absolute`` leaves URLs alone (``os.path.abspath('gs://b/r')`` would make
  it a local path under the current directory).
"""

from __future__ import annotations

import io
import os

from etils import epath


def is_url(path) -> bool:
  return "://" in str(path)


def absolute(path: str) -> str:
  """``path`` made absolute if it is local; URLs unchanged."""
  return str(path) if is_url(path) else os.path.abspath(path)


def join(*parts) -> str:
  return str(epath.Path(parts[0]).joinpath(*parts[1:]))


def exists(path) -> bool:
  return epath.Path(path).exists()


def is_dir(path) -> bool:
  return epath.Path(path).is_dir()


def makedirs(path) -> None:
  epath.Path(path).mkdir(parents=True, exist_ok=True)


def read_text(path) -> str:
  return epath.Path(path).read_text(encoding="utf-8")


def write_text(path, text: str) -> None:
  """Writes ``text`` whole: atomically (a temporary file renamed) on a local disk;
  object-store writes are atomic by themselves."""
  path = epath.Path(path)
  if is_url(path):
    path.write_text(text, encoding="utf-8")
    return
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text, encoding="utf-8")
  os.replace(tmp, path)


def append_text(path, text: str) -> None:
  path = epath.Path(path)
  if is_url(path):  # object stores cannot append: rewrite the (small) file
    write_text(path, (read_text(path) if path.exists() else "") + text)
    return
  with path.open("a", encoding="utf-8") as f:
    f.write(text)


def save_figure(fig, path) -> None:
  """``fig.savefig`` to a local path or a URL (PNG)."""
  buffer = io.BytesIO()
  fig.savefig(buffer, dpi=100, format="png")
  makedirs(epath.Path(path).parent)
  epath.Path(path).write_bytes(buffer.getvalue())
