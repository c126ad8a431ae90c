"""launch/colab.ipynb runs top to bottom (headless, nbclient) with tiny settings."""

from __future__ import annotations

import os

import nbclient
import nbformat

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_colab_notebook_executes(data_dir, tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  for key, value in dict(SSL_JAX_NOTEBOOK_STEPS="4", SSL_JAX_NOTEBOOK_WIDTH="4",
                         SSL_JAX_NOTEBOOK_SIZE="16", SSL_JAX_NOTEBOOK_WORKDIR=str(workdir),
                         SSL_JAX_NOTEBOOK_DATA_DIR=data_dir).items():
    monkeypatch.setenv(key, value)
  notebook = nbformat.read(os.path.join(REPO, "launch", "colab.ipynb"), as_version=4)
  nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code"
                    for o in c.get("outputs", []))
  assert "kNN top-1:" in outputs and "linear probe top-1" in outputs
  assert (workdir / "notebook_summary.png").exists()
