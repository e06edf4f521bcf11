#!/usr/bin/env bash
# Quick start 2: install nbft with its test extras and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
. .venv/bin/activate
python -m pytest "$@"
