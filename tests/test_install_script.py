"""scripts/install.sh picks the CPU build of torch on Linux without a GPU (its plan, without installing)."""

from __future__ import annotations

import os
import platform
import stat
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "install.sh"

pytestmark = pytest.mark.skipif(platform.system() != "Linux", reason="the CPU-index choice is made on Linux only")


def _plan(tmp_path: Path, *, gpu: bool, **env: str) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "nvidia-smi"
    if gpu:
        fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n")
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    elif fake.exists():
        fake.unlink()
    # only the fake bin and the system tools: a real nvidia-smi elsewhere on PATH must not decide the test
    path = os.pathsep.join([str(bin_dir), "/usr/bin", "/bin"])
    full_env = {"PATH": path, "HOME": str(tmp_path), "NBFT_INSTALL_DRY_RUN": "1", **env}
    proc = subprocess.run(["bash", str(SCRIPT)], env=full_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_no_gpu_means_the_cpu_index_first_then_the_default(tmp_path):
    plan = _plan(tmp_path, gpu=False)
    assert plan == (
        "torch: torch==2.13.0 from https://download.pytorch.org/whl/cpu (no GPU found), else from the default index"
    )


def test_a_gpu_means_the_default_index(tmp_path):
    assert _plan(tmp_path, gpu=True) == "torch: torch==2.13.0 from the default index"


def test_nbft_torch_overrides_the_choice(tmp_path):
    plan = _plan(tmp_path, gpu=False, NBFT_TORCH="torch==2.13.0 --index-url https://example.org/whl")
    assert plan == "torch: NBFT_TORCH=torch==2.13.0 --index-url https://example.org/whl"


FAKE_PYTHON3 = """#!/bin/bash
# stands in for python3: "-m venv .venv" makes a venv whose python logs pip calls and fails the CPU index
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  mkdir -p "$3/bin"
  printf 'export PATH="%s/bin:$PATH"\\n' "$(cd "$3" && pwd)" > "$3/bin/activate"
  cat > "$3/bin/python" <<'PY'
#!/bin/bash
echo "$*" >> "$PIP_LOG"
case "$*" in *--index-url*) exit 1 ;; esac
exit 0
PY
  chmod +x "$3/bin/python"
fi
"""


def test_an_unreachable_cpu_index_falls_back_to_the_default_index(tmp_path):
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "scripts" / "install.sh").write_text(SCRIPT.read_text())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(FAKE_PYTHON3)
    (bin_dir / "python3").chmod(0o755)
    log = tmp_path / "pip.log"
    env = {"PATH": os.pathsep.join([str(bin_dir), "/usr/bin", "/bin"]), "HOME": str(tmp_path), "PIP_LOG": str(log)}
    proc = subprocess.run(["bash", str(repo / "scripts" / "install.sh"), "test"], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert [c.split(" --disable-pip-version-check ", 1)[1] for c in calls] == [
        "--upgrade pip",
        "--index-url https://download.pytorch.org/whl/cpu --retries 0 --timeout 15 torch==2.13.0",
        "torch==2.13.0",
        "-e .[test]",
    ]
    assert "could not be reached" in proc.stderr and "NBFT_TORCH" in proc.stderr
