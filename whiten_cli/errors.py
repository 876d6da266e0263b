"""The one error type users see: the CLI prints it as a single line and exits with code 2.

Faults of the machine (disk full, out of memory, an unreadable database) arrive as other
exception types; :func:`describe_fault` turns them into the same one line, and :func:`writing`
names the file being written when one of them interrupts a write.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from os import PathLike


class WhitenError(ValueError):
    """A problem the user can fix (bad file, bad argument, mismatched artifact).

    A ValueError, so that library callers catching bad values catch it too."""


class ParameterError(WhitenError, TypeError):
    """A bad argument value. The message names the Python parameter (``n_components must be ...``);
    the command line names its flag instead (``-k/--dim must be ...``), from :attr:`parameter`.

    Also a TypeError, as a value of the wrong type (``n_components=2.5``, ``texts=None``) is one.

    ``reason`` follows the name, or holds ``{name}`` where the name goes."""

    def __init__(self, parameter: str, reason: str):
        self.parameter = parameter
        self.reason = reason if "{name}" in reason else "{name} " + reason
        super().__init__(self.naming(parameter))

    def naming(self, name: str) -> str:
        """The message with ``name`` (a flag) for the parameter."""
        return self.reason.replace("{name}", name)


class InputError(WhitenError):
    """Bad content in an input file; the message names the file and, when known, the line."""

    def __init__(self, path: str | PathLike[str], message: str, line: int | None = None):
        location = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{location}: {message}")
        self.path = str(path)
        self.line = line


def one_line(text: str) -> str:
    """``text`` with its line breaks (and the indentation after them) folded into single spaces."""
    return re.sub(r"\s*[\r\n]+\s*", " ", str(text).strip())


def _type_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _os_reason(exc: OSError) -> str:
    if exc.strerror:
        return exc.strerror
    if exc.errno:
        return os.strerror(exc.errno)
    # numpy's short write ("1920 requested and 992 written") carries no errno: the disk filled up.
    text = str(exc) or type(exc).__name__
    return f"{text}: is the disk full?" if re.fullmatch(r"\d+ requested and \d+ written", text) else text


def describe_fault(exc: BaseException) -> str | None:
    """One line for an exception caused by the machine's state or a damaged file, None for a bug.

    Torch, FAISS and safetensors are recognised by their types' names and messages, so that
    none of them is imported here.
    """
    names = _type_names(exc)
    if isinstance(exc, MemoryError) or "OutOfMemoryError" in names:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"out of memory{f' ({first})' if first else ''}; try a smaller --batch-size or fewer texts"
    if isinstance(exc, OSError):
        if exc.filename is not None:
            target = f" → {exc.filename2}" if exc.filename2 is not None else ""
            return f"{exc.filename}{target}: {_os_reason(exc)}"
        return _os_reason(exc)
    if isinstance(exc, UnicodeError):
        return f"text that is not valid Unicode ({exc})"
    if "SafetensorError" in names:
        return f"safetensors: {exc}"
    if any(cls.__module__ == "sqlite3" for cls in type(exc).__mro__):
        return f"database error ({exc})"
    if isinstance(exc, RuntimeError) and "faiss" in str(exc):
        return f"FAISS: {_faiss_reason(str(exc))}"
    return None


def _faiss_reason(text: str) -> str:
    """FAISS prefixes its message with the C++ function and source line; the reason is after ``failed:``."""
    reason = re.split(r"failed:\s*", text)[-1].strip()
    return reason or text


@contextlib.contextmanager
def writing(path: str | PathLike[str]) -> Iterator[None]:
    """Report a machine fault while writing ``path`` (disk full, no permission, ...) as a WhitenError naming it.

    The writers underneath are atomic, so when this raises nothing half-written is left at ``path``.
    """
    try:
        yield
    except WhitenError:
        raise
    except Exception as exc:
        fault = describe_fault(exc)
        if fault is None:
            raise
        if isinstance(exc, OSError):
            fault = _os_reason(exc)
        elif "SafetensorError" in _type_names(exc):
            fault = str(exc).removeprefix("Error while serializing: ")
        elif isinstance(exc, RuntimeError) and "faiss" in str(exc):
            # FAISS: "... write error in /tmp/x: 65491 != 128000 (No space left on device)": the OS's words.
            match = re.search(r"\(([^()]+)\)\s*$", str(exc))
            fault = match.group(1) if match else fault
        raise WhitenError(f"{path}: cannot be written ({fault})") from None
