"""Atomic writes: a file or folder appears complete under its final name, or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from whiten_cli.errors import WhitenError


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


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place."""
    target = Path(path)
    if target.is_dir():
        raise WhitenError(f"{target}: is a folder; give a file name to write")
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
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def save_npy(path: str | os.PathLike[str], array) -> Path:
    """Write a .npy file atomically (never pickled)."""
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)

    return atomic_write(path, write)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces ``path`` whole.

    On an exception (Ctrl-C included) the temporary folder is removed and whatever
    was at ``path`` before is left untouched.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise WhitenError(f"{target}: cannot be written ({exc.strerror})") from None
    try:
        yield tmp
        _usual_permissions(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / "previous")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
