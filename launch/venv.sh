# shellcheck shell=bash
# Sourced by the launch scripts: makes ./.venv (or $SSL_JAX_VENV) once and
# installs ssl_jax with its pinned dependencies into it; sets $PY.
venv=${SSL_JAX_VENV:-.venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -r requirements.txt -e .
export PY="$venv/bin/python"
