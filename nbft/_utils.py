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


OWNER_MARKER = ".nbft"
"""A file nbft writes inside every folder it writes atomically: the folder is nbft's own and may be replaced."""


def is_nbft_folder(path: str | os.PathLike[str]) -> bool:
    """True for a folder written by :func:`atomic_path` (it holds the :data:`OWNER_MARKER` file)."""
    return (Path(path) / OWNER_MARKER).is_file()


def _refusal(target: Path, problem: str, fix: str) -> FileExistsError:
    return FileExistsError(f"{target} {problem}: nbft never deletes what it did not write. {fix}")


def _check_replaceable(target: Path, kind: str | None, overwrite: bool) -> None:
    """Raise before any work when writing ``kind`` (``"file"``/``"dir"``) at ``target`` would lose something."""
    if target.is_symlink() or not target.exists():
        return  # a link itself is replaced, never what it points to
    if target.is_dir():
        if kind == "file":
            raise _refusal(target, "is a folder", f"Give a file path, e.g. {target / 'name'}")
        if any(target.iterdir()) and not overwrite and not is_nbft_folder(target):
            raise _refusal(
                target,
                "is a folder that nbft did not write and it is not empty",
                "Choose a new path, or pass overwrite=True to replace that folder and everything in it",
            )
    elif kind == "dir" and not overwrite:
        raise _refusal(target, "is a file", "Choose another path, or pass overwrite=True to replace the file")


def check_target(target: str | os.PathLike[str], kind: str, *, overwrite: bool = False) -> Path:
    """Raise ``FileExistsError`` now (before any work) if writing a ``kind`` (``"file"``/``"dir"``) at ``target``
    would replace something nbft did not write; return the path. :func:`atomic_path` checks the same again.

    Example:
        >>> check_target("/tmp/nbft-doc-new.html", "file").name
        'nbft-doc-new.html'
    """
    target = Path(target)
    _check_replaceable(target, kind, overwrite)
    return target


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], *, overwrite: bool = False, kind: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it replaces ``target`` in one rename.

    Works for files and folders. On error the temporary is removed, so no half-written result is ever left.
    What exists at ``target`` is replaced only when nothing of the user's is lost: a file by a file (the path the
    caller named), an empty folder, or a folder nbft wrote (a folder written here gets an :data:`OWNER_MARKER`
    file). A non-empty folder nbft did not write is refused (``FileExistsError`` naming ``overwrite=True``), and
    a folder is never replaced by a file. ``kind`` (``"file"`` or ``"dir"``), when given, lets the check run
    before any work is done; it runs again before the rename in any case.

    Example:
        >>> with atomic_path("/tmp/nbft-doctest.txt") as tmp:
        ...     _ = tmp.write_text("ok")
    """
    target = Path(target)
    _check_replaceable(target, kind, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent)) / target.name
    try:
        yield tmp
        made = "dir" if tmp.is_dir() else "file"
        if made == "dir":
            (tmp / OWNER_MARKER).write_text("written by nbft; this folder may be replaced by nbft\n")
        _check_replaceable(target, made, overwrite)
        if target.is_dir() and not target.is_symlink():
            replace_folder(tmp, target)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def replace_folder(new: Path, target: Path) -> None:
    """Put folder ``new`` at ``target`` (an existing folder) so that a crash at any moment leaves one of them there.

    Linux swaps the two in one step (``renameat2(RENAME_EXCHANGE)``); elsewhere the old folder moves aside to
    ``.<name>.old-<pid>`` first (a crash between the two renames leaves it there, whole, for recovery).
    """
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now names the old folder
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 with RENAME_EXCHANGE); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    ok = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
    return ok  # EINVAL (a file system without it) or ENOSYS: the caller falls back
