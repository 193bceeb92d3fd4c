#!/usr/bin/env bash
# Prepare a Python environment for hamopt and print the path of its python.
#
#   source-free use:  PY=$(bash scripts/setup.sh)
#
# - Uses the active virtual environment ($VIRTUAL_ENV), or the one whose interpreter PYTHON
#   names, if there is one; otherwise creates and uses ./.venv (with the system
#   site-packages visible when the system python already has torch, so a torch you
#   installed is kept rather than downloaded again).
# - Installs torch only when the environment has none: the CPU build torch==2.13.0 when no
#   NVIDIA GPU is visible (a bare "pip install torch" would pull a multi-GB CUDA build),
#   the default PyPI build when nvidia-smi finds a GPU. Override with HAMOPT_TORCH_SPEC.
# - Installs hamopt in editable mode with the extras in HAMOPT_EXTRAS (default "dev", which
#   includes "bench" and "integrations": transformers, accelerate, lightning), keeping the
#   installed torch (a pip constraint), and skips all of this when nothing changed since the
#   last run (a stamp file in the env).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
log() { printf '[setup] %s\n' "$*" >&2; }

extras=${HAMOPT_EXTRAS:-dev}
base_python=${PYTHON:-python3}
command -v "$base_python" >/dev/null 2>&1 || { log "no $base_python on PATH; install Python >= 3.10"; exit 1; }
"$base_python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || { log "hamopt needs Python >= 3.10 (found $("$base_python" --version 2>&1))"; exit 1; }

in_venv() { "$1" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' 2>/dev/null; }
if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
  venv=$VIRTUAL_ENV
elif in_venv "$base_python"; then
  # PYTHON (or python3) is itself a virtual environment's interpreter: use that environment.
  venv=$("$base_python" -c 'import sys; print(sys.prefix)')
else
  venv=$root/.venv
  if [ ! -x "$venv/bin/python" ]; then
    flags=()
    if "$base_python" -c 'import torch' >/dev/null 2>&1; then
      log "system python has torch $("$base_python" -c 'import torch; print(torch.__version__)'); keeping it"
      flags+=(--system-site-packages)
    fi
    log "creating $venv"
    "$base_python" -m venv "${flags[@]}" "$venv"
  fi
fi
py=$venv/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1

stamp=$venv/.hamopt-setup-stamp
want="$extras $(cat pyproject.toml scripts/setup.sh | cksum)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$py" -c 'import torch, hamopt' >/dev/null 2>&1; then
  echo "$py"
  exit 0
fi

if ! "$py" -c 'import torch' >/dev/null 2>&1; then
  if [ -n "${HAMOPT_TORCH_SPEC:-}" ]; then
    spec=$HAMOPT_TORCH_SPEC
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    spec="torch>=2.4"
  else
    spec="torch==2.13.0"
  fi
  log "installing $spec (no torch in this environment)"
  "$py" -m pip install -q "$spec" 2>&1 | grep -v "is ignored: it is neither" >&2 || true
  "$py" -c 'import torch' >/dev/null 2>&1 || { log "torch install failed"; exit 1; }
else
  log "keeping torch $("$py" -c 'import torch; print(torch.__version__)')"
fi

log "installing hamopt[$extras]"
# Pin the torch now installed, so no extra (transformers, lightning, ...) can replace it by
# another build (a bare resolution could pull a multi-GB CUDA torch).
constraint=$venv/.hamopt-torch-constraint.txt
echo "torch==$("$py" -c 'import torch; print(torch.__version__)')" > "$constraint"
"$py" -m pip install -q -c "$constraint" -e ".[$extras]" 2>&1 | grep -v "is ignored: it is neither" >&2 || true
"$py" -c 'import hamopt' >/dev/null 2>&1 || { log "hamopt install failed"; exit 1; }
echo "$want" > "$stamp"
echo "$py"
