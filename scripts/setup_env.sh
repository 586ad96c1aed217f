#!/usr/bin/env bash
# Creates .venv (once) with torch and this project; sourced by the README's commands.
# On a CPU-only machine, torch 2.13.0 is installed first so that no multi-GB CUDA build is pulled.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CLIPADA_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
if ! python -c "import torch" >/dev/null 2>&1; then
    echo "[setup] installing torch 2.13.0"
    python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
fi
STAMP="$VENV/.clipada-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
    echo "[setup] installing clipada and its dependencies"
    python -m pip install --quiet --disable-pip-version-check -e "$ROOT[torch,dev,demo,onnx,openvino,int8,serve,mvtec-ad2,ray]"
    touch "$STAMP"
fi
