#!/usr/bin/env bash
# The README's test command: sets up .venv if needed, then runs the whole suite offline.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1
exec python -m pytest -q "$@"
