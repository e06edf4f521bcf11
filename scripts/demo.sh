#!/usr/bin/env bash
# Quick start 1: install nbft and run the main job (`nbft demo`: offline, CPU, SmolLM2-135M-Instruct).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
nbft demo "$@"
