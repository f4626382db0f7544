"""Files that survive accidents: atomic writes, folder locks, and readable OS errors.

A kill (Ctrl-C, a job limit, ``kill -9``) can land in the middle of any write, and a
user can start the same command in two terminals.  Everything tinylib writes goes
through :func:`atomic_path`, so a reader sees the old file or the new one, never half
of one; a folder that one process must own (a run folder) is held with
:class:`FolderLock`; and an ``OSError`` becomes a sentence that names the path and
says what to do (:func:`describe_os_error`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
from pathlib import Path

TEMPORARY_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; when the block succeeds it replaces ``path``.

    The temporary name keeps ``path``'s own name as its ending (Keras insists that
    weights files end in ``.weights.h5``).  On any exception, including
    KeyboardInterrupt, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f"{TEMPORARY_PREFIX}{os.getpid()}-{path.name}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)  # the rename itself on disk before a caller deletes what it replaces
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_link(source: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Give ``source`` a second name, ``path``, atomically (a hard link, then a rename).

    No byte is copied: a checkpoint of gigabytes gets its new name at once.  False
    where the file system has no hard links, for the caller to write the file instead.
    """
    path = Path(path)
    tmp = path.with_name(f"{TEMPORARY_PREFIX}{os.getpid()}-{path.name}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(source, tmp)
    except OSError as error:
        if error.errno in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync(path.parent)
    return True


def _fsync(path: Path) -> None:
    """Flush a finished file to disk, so a crash after the rename finds it whole; or a folder,
    so that a rename in it is on disk too. Where the file system cannot (some network and
    FUSE mounts refuse a folder's fsync), nothing more can be done: it is let pass."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def flush_folder(folder: str | os.PathLike) -> None:
    """Flush every file of a finished folder, and the folder, to disk before it is renamed
    into place: after a crash the folder is then whole, not files of the right size that
    hold zeros where the pages never reached the disk."""
    folder = Path(folder)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            _fsync(path)
    _fsync(folder)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, payload, **dumps_kwargs) -> Path:
    """Write JSON atomically (indent 1 unless told otherwise)."""
    dumps_kwargs.setdefault("indent", 1)
    return write_text(path, json.dumps(payload, **dumps_kwargs))


def read_json_object(path: str | os.PathLike) -> dict:
    """The JSON object saved at ``path``; {} where none was saved (or it is not one), so a
    reader of an optional measurement has nothing to special-case."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries (files or folders) that killed writers left in ``folder``;
    returns what was removed.

    A temporary's name carries its writer's pid (``.tmp-PID-name``): one whose writer
    still runs on this machine is left alone, so a sweep never takes a file from under a
    live writer (an ``evaluate`` writing into a run folder that ``train`` opens). A live
    process that started after the temporary was last written is not its writer but a later
    process given the dead writer's pid, and does not keep it.
    """
    removed = []
    for tmp in Path(folder).glob(f"{TEMPORARY_PREFIX}*"):
        pid = tmp.name[len(TEMPORARY_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and writer_alive(tmp, int(pid)):
            continue
        if remove_path(tmp):
            removed.append(tmp)
    return removed


STARTED_MARGIN_SECONDS = 300.0  # see writer_alive


def writer_alive(path: Path, pid: int) -> bool:
    """Whether ``pid``, the writer a temporary's name gives, is another process that still runs
    and can have written ``path``: not one that started after ``path``'s inode last changed (a
    later process given the dead writer's pid). The inode's change time, not the modification
    time, which an unpacked archive or a copy sets to the past; five minutes' margin for the
    clocks' resolution and for a wall clock stepped since (the start is rebuilt from the boot
    time, which moves with it): a stale temporary kept is cheap, a live writer's deleted is not.
    Where a start time is unknown, a live pid keeps its temporaries."""
    if pid == os.getpid() or not process_running(pid):
        return False
    started = process_started_at(pid)
    try:
        changed = path.lstat().st_ctime
    except OSError:
        return True
    return started is None or changed >= started - STARTED_MARGIN_SECONDS


def process_started_at(pid: int) -> float | None:
    """When process ``pid`` started, in seconds since the epoch (Linux, to the second); None
    where this platform or the process cannot say."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[-1].split()
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text(encoding="ascii").splitlines()
                    if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start, in clock ticks
    except (OSError, ValueError, IndexError, StopIteration, AttributeError):
        return None


def remove_path(path: Path) -> bool:
    """Delete a folder or a file, whichever is there; whether it is gone."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()
    return not os.path.lexists(path)


def process_running(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (a zombie counts as gone where it can be told)."""
    if os.name == "nt":  # os.kill(pid, 0) there is TerminateProcess: it would kill what it asks about
        return _windows_process_running(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists, another user's (or this platform cannot say: keep its files)
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:  # bytes: a process's name can be any
            return stat.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return True


def _windows_process_running(pid: int) -> bool:  # pragma: no cover - Windows
    """``process_running`` on Windows: a handle to the process, asking for its exit code."""
    import ctypes

    kernel32 = ctypes.windll.kernel32
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.GetLastError() == 5  # ERROR_ACCESS_DENIED: it exists, another user's
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True  # cannot say: keep its files
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


class LockedError(RuntimeError):
    """Another process holds the lock."""


# flock's answers on a file system that has no locks (NFS without its lock daemon, some
# parallel file systems): an optional lock then goes without, as on a read-only folder.
_NO_LOCKS_HERE = frozenset(code for code in (getattr(errno, name, None) for name in ("ENOLCK", "ENOSYS", "EOPNOTSUPP"))
                           if code is not None)


class FolderLock:
    """An exclusive lock on a folder, held through a lock file inside it.

    The operating system releases it when the holder exits, however it exits (a
    ``kill -9`` included), so a lock is never left stale.  The holder's pid is
    written into the file so that the refusal can name it.  Where ``fcntl`` is
    missing (Windows) the lock is a no-op.

    ``remove=True`` deletes the lock file on release (the data cache's lock, which
    should not stay behind in ``TINYLIB_HOME``); a waiter that then holds the deleted
    file locks the path's new one instead.  ``optional=True`` goes on without a lock
    where the file cannot be created (a read-only folder: nothing is written there).
    """

    def __init__(self, folder: str | os.PathLike, name: str = ".lock", *, remove: bool = False,
                 optional: bool = False):
        self.path = Path(folder) / name
        self.remove = remove
        self.optional = optional
        self._file = None

    def holder(self) -> str:
        """The pid written by the current holder, or '?' when unreadable."""
        try:
            return self.path.read_text(encoding="utf-8").strip() or "?"
        except OSError:
            return "?"

    def acquire(self, wait: bool = False, message: str | None = None) -> "FolderLock":
        """Take the lock; if it is held: wait (printing ``message`` once, on stderr) or raise LockedError."""
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks here
            return self
        announced = False
        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # 0o666: the umask decides, so a cache folder shared by a group stays lockable by all.
                handle = os.fdopen(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666), "r+")
            except OSError as err:
                if self.optional and err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                    return self
                raise
            try:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if not wait:
                        raise LockedError(f"{self.path.parent} is in use by process {self.holder()}") from None
                    if message and not announced:
                        print(message.format(pid=self.holder()), file=sys.stderr, flush=True)
                        announced = True
                    fcntl.flock(handle, fcntl.LOCK_EX)
                except OSError as err:
                    if self.optional and err.errno in _NO_LOCKS_HERE:  # a file system without flock
                        handle.close()
                        if self.remove:
                            with contextlib.suppress(OSError):
                                self.path.unlink()
                        return self
                    raise
                if not self._holds_the_path(handle):
                    handle.close()  # the holder removed it as we waited: lock the new one
                    continue
                handle.seek(0)
                handle.truncate()
                handle.write(str(os.getpid()))
                handle.flush()
            except BaseException:
                handle.close()
                raise
            self._file = handle
            return self

    def _holds_the_path(self, handle) -> bool:
        try:
            on_disk, held = os.stat(self.path), os.fstat(handle.fileno())
        except FileNotFoundError:
            return False
        return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)

    def release(self) -> None:
        if self._file is not None:
            if self.remove:  # before closing: nobody can hold it while it is removed
                with contextlib.suppress(OSError):
                    self.path.unlink()
            self._file.close()  # closing the file releases the lock
            self._file = None

    def __enter__(self) -> "FolderLock":
        return self.acquire() if self._file is None else self

    def __exit__(self, *exc) -> None:
        self.release()


_WHAT_TO_DO = {
    errno.ENOSPC: "the disk is full: free some space, or point TINYLIB_HOME / TINYLIB_RUNS "
                  "(--runs) at a folder on another disk",
    errno.EDQUOT: "the disk quota is used up: free some space, or point TINYLIB_HOME / "
                  "TINYLIB_RUNS (--runs) at another folder",
    errno.EACCES: "no permission to use it: choose a folder you may write to with TINYLIB_HOME / "
                  "TINYLIB_RUNS (--runs)",
    errno.EPERM: "no permission to use it: choose a folder you may write to with TINYLIB_HOME / "
                 "TINYLIB_RUNS (--runs)",
    errno.EROFS: "the file system is read-only: point TINYLIB_HOME / TINYLIB_RUNS (--runs) at a "
                 "writable folder",
    errno.ENOTDIR: "a file stands where a folder should be: move that file away, or choose another "
                   "folder",
    errno.EEXIST: "something already stands there: move it away, or choose another folder",
    errno.ENOENT: "it does not exist: check the path",
    errno.EISDIR: "it is a folder where a file was expected: check the path",
}


def describe_os_error(err: OSError, doing: str | None = None) -> str:
    """One readable sentence for an OSError: what failed, on which path, and what to do."""
    paths = [p for p in (err.filename, err.filename2) if p]
    where = " -> ".join(str(p) for p in paths) if paths else "a file"
    reason = err.strerror or str(err) or type(err).__name__
    number = err.errno
    if number == errno.EEXIST and paths and Path(paths[0]).is_file():
        number = errno.ENOTDIR  # mkdir over a file: say which
    advice = _WHAT_TO_DO.get(number, "check that the path is right and writable")
    lead = f"{doing}: " if doing else ""
    return f"{lead}{where}: {reason} ({advice})"
