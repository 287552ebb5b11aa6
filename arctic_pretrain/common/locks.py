"""Kernel file locks, the one lock implementation of the project (run dirs, a sweep's shared prefix, the
demo corpus cache).

A kernel lock is dropped when its holder dies in any way (SIGKILL and OOM included), so a dead holder never
blocks the next one and no stale-lock timeout is needed. Two kinds, chosen by the caller:
- ``flock`` (default): held by the open file, so two opens in one process exclude each other too (a run
  dir's lock, tests that start a second holder in-process);
- ``posix=True``: a POSIX record lock (``lockf``), the kind NFS servers honour across clients (a sweep's
  variants on several nodes; on Lustre either kind is node-local unless mounted with ``-o flock``). It is
  held by the process and dropped when the process closes ANY descriptor of the file: open it once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

HELD_ELSEWHERE = (errno.EAGAIN, errno.EACCES)


def try_lock(fd: int, posix: bool = False) -> bool:
    """Take an exclusive lock on the open ``fd`` without waiting: False when another holder has it; any
    other OSError (a filesystem without locks) is raised."""
    try:
        (fcntl.lockf if posix else fcntl.flock)(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in HELD_ELSEWHERE:
            return False
        raise
    return True


def unlock(fd: int, posix: bool = False) -> None:
    (fcntl.lockf if posix else fcntl.flock)(fd, fcntl.LOCK_UN)


@contextlib.contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed), waiting for it: one builder at a time."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock
