"""The headless widget tests again, under ipywidgets 7.7 (Colab's version), in a subprocess.

ipywidgets 7.7 and its two front-end packages are installed once with ``pip install --target`` into a folder inside
the virtual environment (no dependencies: the venv's IPython, ipykernel and traitlets serve both versions), and put
first on ``PYTHONPATH`` for a second run of ``tests/test_widgets.py``. ``NBFT_EXPECT_IPYWIDGETS`` makes that run
check which version it really imported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(sys.prefix) / "nbft-test-ipywidgets7"
PACKAGES = ["ipywidgets==7.7.*", "widgetsnbextension==3.6.*", "jupyterlab_widgets==1.1.*", "ipython_genutils==0.2.*"]


def _installed() -> bool:
    return any(TARGET.glob("ipywidgets-7.7.*.dist-info"))


def _install() -> None:
    if _installed():
        return
    # Into a temporary folder first, renamed when complete: an interrupted install never looks installed.
    tmp = Path(tempfile.mkdtemp(prefix=".ipywidgets7-", dir=TARGET.parent))
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--target", str(tmp), *PACKAGES]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.skip(f"ipywidgets 7.7 could not be installed from the package registry: {proc.stderr[-500:]}")
    shutil.rmtree(TARGET, ignore_errors=True)
    os.replace(tmp, TARGET)


def test_headless_widget_tests_pass_under_ipywidgets_7_7():
    _install()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TARGET), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "NBFT_EXPECT_IPYWIDGETS": "7.7",
    }
    cmd = [sys.executable, "-m", "pytest", "tests/test_widgets.py", "-q", "-p", "no:cacheprovider", "-x",
           "-W", "ignore::DeprecationWarning"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and "failed" not in proc.stdout, tail
