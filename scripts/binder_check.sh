#!/usr/bin/env bash
# CI: build the Binder environment from binder/ alone, in a fresh virtual environment, then run every notebook
# headless (nbclient) with memory capped at 2 GB as on mybinder.org. Prints the time of each phase and the peak
# memory; fails when a notebook fails, leaves a widget view without its static result, or goes over the cap.
#
# What repo2docker does, without Docker: Python from binder/runtime.txt, `pip install -r binder/requirements.txt`,
# then `binder/postBuild` from the repository root. The notebooks run with MODEL = "auto" and MEM_LIMIT set as
# Binder sets it, so their switch to the tiny model is exercised, not forced.
#
# The cap: a memory cgroup below this process's own (v2 memory.max or v1 memory.limit_in_bytes, as a container
# limit works) when the cgroup filesystem is writable (root in a container). Without one there is no hard cap
# (`ulimit -v 2G` is no substitute: it counts reserved address space, and torch's OpenMP threads cannot even start
# under it); then only the check after the run holds. Either way the peak resident memory of the notebook kernels
# is measured and must stay under the cap.
#
#   bash scripts/binder_check.sh                 # a new temporary folder for the environment
#   NBFT_BINDER_DIR=/tmp/b bash scripts/binder_check.sh   # reuse (or keep) the environment there
#   NBFT_BINDER_MEM_MB=1024 ...                  # another cap (mybinder.org gives 1-2 GB)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work="${NBFT_BINDER_DIR:-$(mktemp -d -t nbft-binder-XXXXXX)}"
limit_mb="${NBFT_BINDER_MEM_MB:-2048}"
limit_bytes=$((limit_mb * 1024 * 1024))
start=$(date +%s)
say() { echo "binder_check: $*" >&2; }

# 1. the environment, from binder/ alone --------------------------------------------------------------------------
want=$(sed -n 's/^python-\([0-9]*\.[0-9]*\).*/\1/p' binder/runtime.txt)
python_bin=$(command -v "python${want}" || command -v python3)
got=$("$python_bin" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$got" = "$want" ] || say "binder/runtime.txt asks Python ${want}; using ${got} (${python_bin})"
if [ ! -x "$work/venv/bin/python" ]; then
  "$python_bin" -m venv "$work/venv"
fi
# shellcheck disable=SC1091
. "$work/venv/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# an index that cannot be reached (download.pytorch.org from a registry-only CI) is skipped at once, not retried
export PIP_RETRIES="${PIP_RETRIES:-0}"
# a fresh data cache too, as in a new image: postBuild warms it, the notebooks read it
export NBFT_CACHE="${NBFT_CACHE:-$work/cache}"
python -m pip install --quiet -r binder/requirements.txt
bash binder/postBuild
python -c "import nbclient, ipykernel" 2>/dev/null || {
  say "the Binder environment has no nbclient/ipykernel (JupyterLab brings them): cannot run the notebooks"
  exit 1
}
built=$(date +%s)
say "environment built in $((built - start)) s in ${work}/venv"

# 2. the cap ------------------------------------------------------------------------------------------------------
cgroup=""
cap_with_cgroup() {
  local line path base
  line=$(grep -E '^0::|:memory:' /proc/self/cgroup | head -1) || return 1
  path=${line##*:}
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    base=/sys/fs/cgroup$path
  else
    base=/sys/fs/cgroup/memory$path
  fi
  [ -w "$base" ] || return 1
  cgroup="$base/nbft-binder-$$"
  mkdir "$cgroup" 2>/dev/null || return 1
  if [ -f "$cgroup/memory.max" ]; then
    echo "$limit_bytes" >"$cgroup/memory.max" && echo 0 >"$cgroup/memory.swap.max" 2>/dev/null || true
  else
    echo "$limit_bytes" >"$cgroup/memory.limit_in_bytes" || return 1
    echo "$limit_bytes" >"$cgroup/memory.memsw.limit_in_bytes" 2>/dev/null || true
  fi
}
cgroup_peak() {
  cat "$cgroup/memory.peak" 2>/dev/null || cat "$cgroup/memory.max_usage_in_bytes" 2>/dev/null || echo 0
}
cleanup() { [ -n "$cgroup" ] && rmdir "$cgroup" 2>/dev/null || true; }
trap cleanup EXIT
if cap_with_cgroup; then
  how="cgroup ${cgroup}"
else
  cgroup=""
  how="no hard cap (no writable memory cgroup): the peak is checked after the run"
fi
say "memory cap ${limit_mb} MB: ${how}"

# 3. the notebooks, headless, under the cap -----------------------------------------------------------------------
export MEM_LIMIT="$limit_bytes"  # what Binder (jupyter-resource-usage) sets; MODEL = "auto" reads it
export NBFT_NOTEBOOK_MODEL=auto NBFT_NOTEBOOK_AUTOTRAIN=1 MPLBACKEND=Agg
# Binder users run the notebooks as they are; CI keeps them short (the tiny model learns nothing either way)
export NBFT_NOTEBOOK_N="${NBFT_NOTEBOOK_N:-200}" NBFT_NOTEBOOK_STEPS="${NBFT_NOTEBOOK_STEPS:-10}"
export NBFT_NOTEBOOK_EVAL_N="${NBFT_NOTEBOOK_EVAL_N:-10}"
out="$work/executed"
mkdir -p "$out"
set +e
(
  if [ -n "$cgroup" ]; then
    echo "$BASHPID" >"$cgroup/cgroup.procs"
  fi
  exec python "$root/scripts/binder_notebooks.py" --out "$out" --limit-mb "$limit_mb" "$root"/notebooks/*.ipynb
)
status=$?
set -e
[ -n "$cgroup" ] && say "peak memory of the capped group (cgroup): $(($(cgroup_peak) / 1024 / 1024)) MB"
say "notebooks: exit ${status} after $(($(date +%s) - built)) s; total $(($(date +%s) - start)) s"
exit "$status"
