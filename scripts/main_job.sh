#!/usr/bin/env bash
# The README's main job: sets up .venv if needed, then trains and evaluates the offline SMOKE model
# (random-weight CLIP) on the generated demo dataset. Results land in outputs/demo/model/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1
exec python -m training.demo --output_dir "${1:-outputs/demo}"
