"""One writer per run or sweep folder: an exclusive lock held for the writer's lifetime.

    with RunLock(run_dir):        # a second writer gets "RUN is in use by pid N on HOST"
        train_loop(...)

The lock is `fcntl.flock` on `<folder>/.lock`, which also holds the owner's "pid host" for the
message. The kernel drops the lock when its process dies (however it dies), so a lock left by
a crashed or killed writer is simply taken by the next one; the file's stale contents are only
text. Readers (evaluate, recommend, report) never take it.

Shared storage: on Linux NFS clients flock is carried by NFS byte-range locks (NLM for NFSv3,
built into NFSv4), so writers on different nodes exclude each other when the mount supports
locking (AWS EFS and most NFSv4 servers do; `nolock` mounts and FUSE object-store mounts such as
s3fs/gcsfuse do not, and then this lock only excludes writers on the same node). A node that
dies while holding an NFSv4 lock releases it when its lease expires (about 90 s).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from slifmr.errors import SlifmrError

LOCK_FILE = ".lock"


class FolderInUseError(SlifmrError):
    """Another live process writes this run or sweep folder."""


class RunLock:
    """Exclusive, non-blocking ownership of `folder` (created if missing) until `release()`.

    Raises FolderInUseError naming the owner's pid and host when another process holds it.
    A folder this lock created and that holds nothing but the lock file when released is
    removed again, so a command refused after taking the lock leaves nothing behind."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._fd: int | None = None
        self._created = False

    def acquire(self) -> RunLock:
        self._created = not self.folder.exists()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise SlifmrError(f"cannot lock {self.folder}: {e.strerror or e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.pread(fd, 200, 0).decode(errors="replace").split()
            os.close(fd)
            pid, host = (owner + ["?", "?"])[:2]
            raise FolderInUseError(f"{self.folder} is in use by pid {pid} on {host} (one writer per folder; "
                                   "wait for it to finish or stop it)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if self._created and [p.name for p in self.folder.iterdir()] == [LOCK_FILE]:
            shutil.rmtree(self.folder, ignore_errors=True)  # refused before writing anything
        os.close(fd)  # closing drops the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


@contextmanager
def exclusive(lock_file: str | os.PathLike) -> Iterator[None]:
    """Wait for, then hold, an exclusive flock on `lock_file` (created, with its folder) for the
    body: a shared resource two processes could create at once (a sqlite store, a cached
    dataset) is created by one while the others wait, then found made."""
    path = Path(lock_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock
