"""The one error type users see: the CLI prints it as a single line and exits with code 2."""

from __future__ import annotations

from os import PathLike


class WhitenError(Exception):
    """A problem the user can fix (bad file, bad flag, mismatched artifact)."""


class InputError(WhitenError):
    """Bad content in an input file; the message names the file and, when known, the line."""

    def __init__(self, path: str | PathLike[str], message: str, line: int | None = None):
        location = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{location}: {message}")
        self.path = str(path)
        self.line = line
