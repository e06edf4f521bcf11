"""Small shared helpers: "did you mean" suggestions and atomic file writes."""

from __future__ import annotations

import contextlib
import difflib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


class UnknownNameError(LookupError):
    """An unknown template, task, model or metric name; the message lists close matches."""

    def __str__(self) -> str:  # LookupError/KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


def did_you_mean(name: str, options: Iterable[str], n: int = 3) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest options, or ``""`` when nothing is close.

    Example:
        >>> did_you_mean("sentimnt/1", ["sentiment/1", "qa/1"])
        " Did you mean 'sentiment/1'?"
    """
    options = list(options)
    close = difflib.get_close_matches(name, options, n=n, cutoff=0.5)
    if not close:
        lowered = {o.lower(): o for o in options}
        close = [lowered[o] for o in difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)]
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


def user_stacklevel() -> int:
    """The ``warnings.warn`` stacklevel that points at the first frame outside nbft: the user's call, however deep
    inside nbft the warning is raised (call it from the function that warns)."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def unknown(kind: str, name: str, options: Iterable[str]) -> UnknownNameError:
    """Build the standard error for an unknown ``kind`` name, with suggestions and the full list."""
    options = sorted(options)
    listing = ", ".join(options[:30]) + (" ..." if len(options) > 30 else "")
    return UnknownNameError(f"unknown {kind} {name!r}.{did_you_mean(name, options)} Known: {listing}")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it replaces ``target`` in one rename.

    Works for files and folders. On error the temporary is removed, so no half-written result is ever left.

    Example:
        >>> with atomic_path("/tmp/nbft-doctest.txt") as tmp:
        ...     _ = tmp.write_text("ok")
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent)) / target.name
    try:
        yield tmp
        if target.is_dir() and not target.is_symlink():
            # os.replace cannot replace a non-empty folder: move the old one aside first, then drop it.
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)
