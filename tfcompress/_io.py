"""Small file helpers shared by every stage that writes results."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union

__all__ = [
    "atomic_write_bytes",
    "exclusive_lock",
    "rename_no_replace",
]

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    """The process's umask, read without changing it where /proc allows."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: PathLike, data: bytes, *, overwrite: bool = False) -> Path:
    """Writes ``data`` to ``path`` through a temporary file and a rename.

    A reader never sees a half-written file, and a failure leaves nothing behind.
    The file gets the mode a plain ``open(path, "wb")`` would give it (0666 less the
    umask), or keeps the mode of the file it replaces.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        IsADirectoryError: ``path`` is a directory.
        FileNotFoundError: the parent directory does not exist.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"Cannot write a file over a directory. Received: path={str(path)!r}; pass the "
            "path of a file (inside the directory if you meant to write there).")
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"Refusing to overwrite an existing file. Received: path={str(path)!r}. "
            "Pass overwrite=True (CLI: --overwrite) to replace it."
        )
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(
            f"The output directory does not exist. Received: path={str(path)!r}."
        )
    try:
        mode = os.stat(path).st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    try:
        os.fchmod(fd, mode)  # mkstemp makes 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def rename_no_replace(src: PathLike, dst: PathLike) -> None:
    """Renames ``src`` to ``dst`` unless ``dst`` exists, atomically where Linux allows.

    ``os.rename`` silently replaces an empty directory or a file at ``dst``; this uses
    ``renameat2(RENAME_NOREPLACE)``, so a ``dst`` created by someone else at any moment
    before the rename is never replaced. Where that call is missing, ``dst`` is
    checked just before a plain rename.

    Raises:
        FileExistsError: ``dst`` exists.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    try:
        # Only here: loading ctypes costs a few milliseconds every other write would pay.
        import ctypes

        renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except (ImportError, OSError):
        renameat2 = None
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst),
                     _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(errno.EEXIST, "Refusing to replace an existing path", dst)
        if err not in (errno.ENOSYS, errno.EINVAL):  # not: this file system cannot
            raise OSError(err, os.strerror(err), src, None, dst)
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "Refusing to replace an existing path", dst)
    os.rename(src, dst)


@contextlib.contextmanager
def exclusive_lock(path: PathLike, *, what: str) -> Iterator[None]:
    """Holds an exclusive lock on the file ``path`` (created; removed on release).

    The lock is the kernel's (``flock``), so it goes away with its process, even after
    ``kill -9``; the file holds the holder's pid for the message the next one gets.

    Args:
        path: the lock file.
        what: what the lock protects, for the error message.

    Raises:
        BlockingIOError: another process holds the lock (its pid is named).
    """
    # POSIX only (the rest of this module works on Windows too).
    import fcntl

    path = Path(path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise BlockingIOError(
                f"Another process (pid {holder}) is working on {what}, and holds "
                f"{str(path)!r}. Wait for it to finish or stop it; two runs on one output "
                "would overwrite each other's files.") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file the previous holder removed while we waited for it
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
