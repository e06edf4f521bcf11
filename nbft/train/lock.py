"""One writer per run directory: ``<run_dir>/run.lock``, held for the whole life of a run.

The lock is an OS lock (``fcntl.flock``, exclusive) on ``run.lock``: the operating system drops it when the process
ends however it ends (``kill -9``, a crashed kernel), so a lock is never left stale. The file's body says who holds
it, for people and for :func:`nbft.runs` (which reads it without writing)::

    {"pid": 4242, "host": "gpu-7", "started": "2026-11-27T18:40:02", "command": "python train.py",
     "os_lock": true, "nbft": "0.1.0"}

``os_lock: true`` says the OS lock is authoritative: when it is free, the holder is gone even if its PID was reused.
Where a file system has no ``flock`` (some network mounts), the PID and host in the body decide: a live PID on this
host holds the run; a body from another host is respected (its PID cannot be checked from here) and the message
says which file to delete if that process is gone. A second open of the lock in the same process conflicts too, so
two runs in one kernel cannot share a run directory either.

Example:
    >>> lock = RunLock("/tmp/nbft-doc-lock").acquire()
    >>> try:
    ...     RunLock("/tmp/nbft-doc-lock").acquire()
    ... except RunInUseError as exc:
    ...     print(str(exc).split(" (")[0])
    /tmp/nbft-doc-lock is being written by this process
    >>> lock.release()
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

LOCK_NAME = "run.lock"

logger = logging.getLogger("nbft.train")


class RunInUseError(OSError):
    """Another run (in this process or another one) is writing the run directory; the message names it."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RunLock:
    """The lock of one run directory. ``acquire()`` creates the folder when needed; ``release()`` removes the file
    (and the folder, when this lock created it and nothing else was written there)."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self._made_dir = False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunInUseError` naming the process that holds it."""
        if self._fd is not None:
            return self
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise FileExistsError(f"run_dir {self.run_dir} is a file; give a folder path for the run")
        self._made_dir = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            for attempt in range(5):  # a holder that releases unlinks the file: retry on the new one
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    locked = _flock(fd)
                except BaseException:
                    os.close(fd)
                    raise
                if locked is False:
                    os.close(fd)
                    holder = read_lock(self.path)
                    if attempt < 4 and not (holder and _holder_alive(holder)):
                        time.sleep(0.05)  # most likely nbft.runs() probing the lock for a moment
                        continue
                    raise RunInUseError(self._held_message(holder))
                if locked is None:  # no flock here: the body's PID decides
                    holder = read_lock(self.path)
                    if holder and _holder_alive(holder):
                        os.close(fd)
                        raise RunInUseError(self._held_message(holder))
                if not _same_file(fd, self.path):
                    os.close(fd)
                    continue
                self._fd = fd
                self._write_body(os_lock=locked is True)
                return self
            raise RunInUseError(f"{self.run_dir}: could not take {self.path} (it kept changing); try again")
        except BaseException:
            self._cleanup_dir()
            raise

    def release(self) -> None:
        """Give the lock up and remove the file (the next writer creates its own)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if _same_file(fd, self.path):
                self.path.unlink(missing_ok=True)  # while still holding it: nobody can take the old file meanwhile
        except OSError as exc:
            # A read-only or failing disk: the file stays, harmless (the OS lock ends with the close below and the
            # next writer takes the file over). Never raise here: it would hide the error that ended the run.
            logger.warning("could not remove the lock file %s (%s); the next run takes it over", self.path, exc)
        finally:
            os.close(fd)
        self._cleanup_dir()

    def _cleanup_dir(self) -> None:
        if self._made_dir:
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()  # only when empty: a run that wrote nothing leaves nothing
            self._made_dir = False

    def _write_body(self, os_lock: bool) -> None:
        from nbft import __version__

        body = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _dt.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:300],
            "os_lock": os_lock,
            "nbft": __version__,
        }
        data = (json.dumps(body) + "\n").encode()
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def _held_message(self, holder: dict[str, Any] | None) -> str:
        where = str(self.run_dir)
        if not holder:
            return f"{where} is being written by another run (its lock {self.path} is held); wait for it or stop it"
        pid, host = holder.get("pid"), holder.get("host")
        since = f" since {holder['started']}" if holder.get("started") else ""
        if pid == os.getpid() and host == socket.gethostname():
            return (
                f"{where} is being written by this process (another run in this kernel{since}): stop it with "
                "run.stop() (or %nbft stop), wait for it with run.wait(), or give this run another run_dir"
            )
        command = f" ({holder['command']})" if holder.get("command") else ""
        text = f"{where} is being written by process {pid} on {host}{since}{command}. Stop that run first"
        if host != socket.gethostname():
            text += f"; if that process no longer runs, delete {self.path}"
        return text + ", or give this run another run_dir"

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a lost handle must not keep the folder locked for the life of the kernel
        with contextlib.suppress(Exception):
            self.release()


def read_lock(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The body of a lock file (``pid``, ``host``, ``started``...), or ``None`` when absent or unreadable."""
    try:
        data = json.loads(Path(path).read_text(errors="replace"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _flock(fd: int) -> bool | None:
    """True: locked; False: someone holds it; None: this file system (or platform) has no flock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return None
        raise
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _holder_alive(holder: dict[str, Any]) -> bool:
    pid, host = holder.get("pid"), holder.get("host")
    if host not in (None, socket.gethostname()):
        return True  # another machine's process: it cannot be checked from here
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
