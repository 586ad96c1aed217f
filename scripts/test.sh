#!/usr/bin/env bash
# The README's test command: sets up .venv if needed, checks lint and formatting, then runs the whole suite offline.
# Extra arguments go to pytest (e.g. -m "not slow" for the quick inner loop).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1
python -m ruff check .
python -m ruff format --check .
exec python -m pytest -q "$@"
