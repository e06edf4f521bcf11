#!/usr/bin/env bash
# Create .venv (if missing) and install nbft into it with the extras given as arguments.
# Used by the README's two quick-start commands and by CI, so all three install the same way.
#
# torch comes first, pinned to the version the tests run against. A plain `torch` requirement on Linux pulls the
# multi-GB CUDA build from the default index, so on a Linux machine without an NVIDIA GPU this script asks
# PyTorch's CPU wheel index first (a few hundred MB) and falls back to the default index only if that index can't
# be reached (quickly: no retries). Override the whole choice with NBFT_TORCH, e.g.
#   NBFT_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126" bash scripts/install.sh
# NBFT_INSTALL_DRY_RUN=1 prints the torch plan and installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
torch_version="${NBFT_TORCH_VERSION:-2.13.0}"
cpu_index="${NBFT_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"

has_nvidia_gpu() {
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q "GPU"
}

if [ -n "${NBFT_TORCH:-}" ]; then
  plan="custom"
elif [ "$(uname -s)" = "Linux" ] && ! has_nvidia_gpu; then
  plan="cpu-index"
else
  plan="default"  # macOS wheels are CPU/MPS builds; a Linux GPU machine wants the CUDA build
fi

if [ -n "${NBFT_INSTALL_DRY_RUN:-}" ]; then
  case "$plan" in
    custom) echo "torch: NBFT_TORCH=${NBFT_TORCH}" ;;
    cpu-index) echo "torch: torch==${torch_version} from ${cpu_index} (no GPU found), else from the default index" ;;
    default) echo "torch: torch==${torch_version} from the default index" ;;
  esac
  exit 0
fi

python3 -m venv .venv
. .venv/bin/activate
pip_install() { python -m pip install --quiet --disable-pip-version-check "$@"; }
pip_install --upgrade pip

case "$plan" in
  custom)
    # shellcheck disable=SC2086  # NBFT_TORCH is a list of pip arguments on purpose
    pip_install ${NBFT_TORCH}
    ;;
  cpu-index)
    echo "install.sh: no NVIDIA GPU found: installing the CPU build of torch ${torch_version}" >&2
    if ! pip_install --index-url "$cpu_index" --retries 0 --timeout 15 "torch==${torch_version}"; then
      echo "install.sh: ${cpu_index} could not be reached; installing torch ${torch_version} from the default" \
        "index instead (on Linux that may be the larger CUDA build; set NBFT_TORCH to choose)" >&2
      pip_install "torch==${torch_version}"
    fi
    ;;
  default)
    pip_install "torch==${torch_version}"
    ;;
esac
# nbft's own requirement is torch>=2.4, already satisfied now: pip keeps the build chosen above.
pip_install -e ".${extras:+[$extras]}"
