"""Atomic writes: a file or folder appears complete under its final name, or not at all.

A folder (pipeline, index) is written to a hidden temporary folder beside its final name and
swapped in with one rename-exchange (Linux ``renameat2(RENAME_EXCHANGE)``), so a complete folder
is at the path at every instant, a SIGKILL included. Where the OS or file system has no exchange,
two renames are used (path → ``.NAME.old``, temporary → path) and the next run that finds the
path empty puts ``.NAME.old`` back. Files and folders are fsynced before the swap.

Writers and readers of a folder lock it with ``flock`` on the folder itself (no lock file is
added beside it): writers exclusively, readers shared while they open its files, so a reader
never mixes files of two versions. A writer that finds no folder yet locks the parent folder.
Leftovers of a killed writer (``.NAME.*.tmp``, ``.NAME.old``) are removed by the next writer or
reader of the path once no live process holds them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from whiten_cli.errors import WhitenError

TMP_SUFFIX = ".tmp"
OLD_SUFFIX = ".old"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _usual_permissions(path: Path) -> None:
    """mkstemp/mkdtemp create 0600/0700; give the result the permissions a plain open()/mkdir() would."""
    mask = _umask()
    if path.is_dir():
        os.chmod(path, 0o777 & ~mask)
        for child in path.iterdir():
            if child.is_file() and not child.is_symlink():
                os.chmod(child, 0o666 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """Flush every file and folder under ``folder`` (and itself) to disk."""
    for root, _, files in os.walk(folder):
        for name in files:
            _fsync(Path(root) / name)
        _fsync(Path(root))


def check_file_target(path: str | os.PathLike[str]) -> None:
    """Refuse, before any work, a file name that cannot be written: a folder, or under a file or
    a read-only folder."""
    target = Path(path)
    if target.is_dir():
        raise WhitenError(f"{target}: is a folder; give a file name to write")
    _check_writable_parent(target)


def _check_writable_parent(target: Path) -> None:
    """Refuse, before any work, an output whose folder cannot be made or written in (a file in the
    way, a read-only file system, no permission): it is written as a temporary sibling, then renamed."""
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise WhitenError(f"{target}: cannot be written: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise WhitenError(f"{target}: cannot be written: {parent} is not writable"
                                  + (" (read-only file system)" if _read_only(parent) else ""))
            return


def check_folder_target(path: str | os.PathLike[str], marker: str, kind: str) -> None:
    """Refuse, before any work, an output folder that cannot be written, or that holds something
    other than ``kind`` (no ``marker`` file in it): it is swapped in whole, so what was there would be
    gone (a mistyped -o, the input folder itself). An empty or missing folder is fine."""
    target = Path(path)
    if (target.exists() or target.is_symlink()) and not target.is_dir():
        raise WhitenError(f"{target}: exists and is not a folder; refusing to replace it with {kind}")
    if target.is_dir() and any(target.iterdir()) and not (target / marker).is_file():
        raise WhitenError(f"{target}: folder exists and is not {kind} (no {marker}); refusing to replace its "
                          "contents (choose another output)")
    _check_writable_parent(target)


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place."""
    target = Path(path)
    check_file_target(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise WhitenError(f"{target}: cannot be written ({exc.strerror})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        _usual_permissions(tmp)
        _fsync(tmp)
        os.replace(tmp, target)
        _fsync(target.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def check_not_an_input(path: str | os.PathLike[str] | None, inputs) -> None:
    """Refuse to write ``path`` (None: no output) when it is one of the files the command reads (the
    same file under any name): the output would replace the input it was computed from."""
    for source in inputs if path is not None else ():
        if source is None:
            continue
        try:
            same = os.path.samefile(path, source)
        except (OSError, ValueError):  # one of them does not exist (yet), or is no path
            same = False
        if same:
            raise WhitenError(f"{path}: is also an input of this command ({source}); write the output elsewhere")


def save_npy(path: str | os.PathLike[str], array) -> Path:
    """Write a .npy file atomically (never pickled)."""
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)

    return atomic_write(path, write)


# --------------------------------------------------------------------------- locks


@dataclass
class _Held:
    fd: int
    exclusive: bool
    count: int


_local = threading.local()


def _held() -> dict[tuple[int, int], _Held]:
    """Locks this thread holds, by (device, inode): a second flock from a new descriptor would deadlock."""
    if not hasattr(_local, "locks"):
        _local.locks = {}
    return _local.locks


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _lock(folder: Path, exclusive: bool, *, wait: bool = True) -> tuple[int, int] | None:
    """flock the folder at ``folder``; its key, or None when nothing is there (or, not waiting, it is held)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise WhitenError(f"{folder}: cannot be opened ({exc.strerror})") from None
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino)
    held = _held()
    if key in held:
        os.close(fd)
        if not wait:
            return None  # held by this thread: in use
        if exclusive and not held[key].exclusive:
            raise RuntimeError(f"{folder}: a shared lock cannot be upgraded")  # a bug, not a user error
        held[key].count += 1
        return key
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            os.close(fd)
            raise
        # a file system without flock (some network mounts): go on unlocked
    except BaseException:
        os.close(fd)
        raise
    held[key] = _Held(fd, exclusive, 1)
    return key


def _release(key: tuple[int, int] | None) -> None:
    held = _held()
    if key is None or key not in held:
        return
    held[key].count -= 1
    if held[key].count == 0:
        os.close(held.pop(key).fd)


def _old_path(target: Path) -> Path:
    return target.parent / f".{target.name}{OLD_SUFFIX}"


def _acquire(target: Path, exclusive: bool) -> tuple[int, int] | None:
    """Lock the folder at ``target`` as it is once locked (it may be swapped while we wait).

    A writer that finds nothing there locks the parent instead, so that two first writes take
    turns. A missing path with ``.NAME.old`` beside it (a writer killed between its two renames)
    is repaired first. Readers get None when nothing is there.
    """
    while True:
        key = _lock(target, exclusive)
        if key is not None:
            if _identity(target) == key:
                return key
            _release(key)  # swapped while we waited: lock the new folder
            continue
        if target.exists() or target.is_symlink():
            raise WhitenError(f"{target}: exists and is not a folder")
        old = _old_path(target)
        if not exclusive and not old.is_dir():
            return None
        parent = _lock(target.parent, True)
        if target.exists():
            _release(parent)
            continue
        if old.is_dir():
            try:
                _restore(old, target)
            finally:
                _release(parent)
            continue
        if exclusive:
            return parent
        _release(parent)
        return None


def _restore(old: Path, target: Path) -> None:
    """Put back the folder a killed writer moved to ``.NAME.old``; wait if its writer is still alive."""
    key = _lock(old, True, wait=False)
    if key is None:  # a live writer is between its two renames: wait for it to finish
        key = _lock(old, True)
        _release(key)
        return
    try:
        if old.is_dir() and not target.exists():
            try:
                os.rename(old, target)
                _fsync(target.parent)
            except OSError as exc:
                raise WhitenError(f"{target}: missing, and the previous version at {old} cannot be put back "
                                  f"({exc.strerror})") from None
    finally:
        _release(key)


def _remove_leftovers(target: Path) -> None:
    """Remove temporary and old folders of ``target`` that no live process holds."""
    prefix = f".{target.name}."
    try:
        siblings = [p for p in target.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return
    for path in siblings:
        if not path.name.endswith((TMP_SUFFIX, OLD_SUFFIX)) or path.is_symlink() or not path.is_dir():
            continue
        key = _lock(path, True, wait=False)
        if key is None:
            continue  # held: a live writer's
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            _release(key)


@contextlib.contextmanager
def locked(path: str | os.PathLike[str], *, exclusive: bool = True) -> Iterator[None]:
    """Hold the folder at ``path`` against other writers (and, ``exclusive``, against readers).

    Re-entrant within a thread: a writer holding the lock can load and save the folder.
    """
    key = _acquire(Path(path), exclusive)
    try:
        yield
    finally:
        _release(key)


@contextlib.contextmanager
def reading(path: str | os.PathLike[str]) -> Iterator[None]:
    """A shared lock while the files of the folder at ``path`` are opened: no swap in between."""
    target = Path(path)
    with locked(target, exclusive=False):
        if target.is_dir():
            _remove_leftovers(target)
        yield


def reads_one_version(load: Callable) -> Callable:
    """Decorate ``load(cls, path, ...)`` so that it reads the folder at ``path`` under :func:`reading`."""

    @functools.wraps(load)
    def wrapper(cls, path, *args, **kwargs):
        with reading(path):
            return load(cls, path, *args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------- the swap


class _NoExchange(Exception):
    """The OS or file system cannot exchange two paths in one step."""


@functools.cache
def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> None:
    """Swap the names of ``a`` and ``b`` atomically; :class:`_NoExchange` where that is impossible."""
    renameat2 = _renameat2()
    if renameat2 is None:
        raise _NoExchange
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise _NoExchange
        raise OSError(code, os.strerror(code), str(b))


def _swap(tmp: Path, target: Path) -> None:
    """Put ``tmp`` at ``target``; the previous folder, if any, ends up at ``tmp`` or is removed."""
    if not target.exists():
        os.rename(tmp, target)  # the parent is locked: nobody creates target meanwhile
    else:
        try:
            _exchange(tmp, target)
        except _NoExchange:
            old = _old_path(target)
            os.rename(target, old)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
    _fsync(target.parent)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces ``path`` whole.

    On an exception (Ctrl-C and SIGTERM included) the temporary folder is removed and whatever
    was at ``path`` before is left untouched; after a SIGKILL a complete folder (old or new) is
    at ``path`` and the next run removes the leftovers.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WhitenError(f"{target}: cannot be written ({exc.strerror})") from None
    with locked(target):
        _remove_leftovers(target)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent))
        except OSError as exc:
            raise WhitenError(f"{target}: cannot be written ({exc.strerror})") from None
        tmp_key = _lock(tmp, True)  # marks it live for other runs' _remove_leftovers
        try:
            yield tmp
            _usual_permissions(tmp)
            _fsync_tree(tmp)
            _swap(tmp, target)
        finally:
            _release(tmp_key)
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
