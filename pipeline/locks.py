"""One run per output folder: `<output_dir>.lock` names the process that writes the folder.

A second run on a folder whose holder is alive stops at once; a lock left by a process that has
died (`kill -9`, a crashed node) is taken over with a warning. The lock holds the host name too:
on a shared file system a holder on another host cannot be checked, so that lock is not taken over.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from pipeline.errors import PipelineError

logger = logging.getLogger(__name__)
_held: set[Path] = set()  # the locks this process holds


def lock_path(output_dir: str | Path) -> Path:
    output_dir = Path(output_dir)
    return output_dir.with_name(output_dir.name + ".lock")


def _holder(path: Path) -> tuple[str, int] | None:
    """(host, pid) written in a lock file; None when it is unreadable (a writer interrupted)."""
    try:
        host, _, pid = path.read_text().strip().rpartition(":")
        return host, int(pid)
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    """Whether a process of this machine is running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def acquire(output_dir: str | Path) -> None:
    """Take the folder's lock for this process (again, if it already holds it)."""
    path, me = lock_path(output_dir), (socket.gethostname(), os.getpid())
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = _holder(path)
            if holder == me:
                _held.add(path)
                return
            if holder is not None and (holder[0] != me[0] or alive(holder[1])):
                raise PipelineError(
                    f"{output_dir} is being written by another run (pid {holder[1]} on {holder[0]}); wait for "
                    f"it to end, or stop it; if it is gone, delete {path}"
                ) from None
            logger.warning(
                "%s: taking over the lock of pid %s, which is no longer running",
                output_dir,
                holder[1] if holder else "unknown",
            )
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{me[0]}:{me[1]}\n")
        _held.add(path)
        return


def release(output_dir: str | Path) -> None:
    """Drop the folder's lock if this process holds it."""
    path = lock_path(output_dir)
    _held.discard(path)
    if _holder(path) == (socket.gethostname(), os.getpid()):
        path.unlink(missing_ok=True)


def held() -> list[Path]:
    """The output folders whose locks this process holds."""
    return sorted(path.with_suffix("") for path in _held)


def release_all() -> None:
    """Drop every lock this process holds: a stage that failed leaves its folder free for the next run."""
    for path in list(_held):
        release(path.with_suffix(""))
