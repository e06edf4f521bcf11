#!/usr/bin/env bash
# Create .venv (if missing) and install nbft into it with the extras given as arguments.
# Used by the README's two quick-start commands and by CI, so all three install the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --disable-pip-version-check --upgrade pip
# torch first, pinned: a plain `torch` requirement pulls a multi-GB CUDA build; 2.13.0 is the CPU build we test.
# Override with NBFT_TORCH (e.g. NBFT_TORCH="torch --index-url https://download.pytorch.org/whl/cpu").
python -m pip install --quiet --disable-pip-version-check ${NBFT_TORCH:-torch==2.13.0}
python -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}"
