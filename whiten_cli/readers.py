"""Read texts from plain text, JSONL and CSV/TSV files, with errors that name the file and line.

Formats are chosen by suffix: ``.jsonl``/``.ndjson`` are JSON lines, ``.csv`` is comma-separated
with a header (RFC 4180 quoting), ``.tsv``/``.tab`` is tab-separated with a header and no quoting
(quotes are plain characters, as in STS-B), anything else is one text per line. Any of them may be
gzip-compressed (``corpus.jsonl.gz``).
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import warnings
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from whiten_cli.errors import InputError

DEFAULT_TEXT_NAMES = ("text", "sentence", "query", "document")
DEFAULT_ID_NAMES = ("id", "_id", "doc_id")


@dataclass(frozen=True)
class Record:
    """One input text, the line it came from, and its id (the line number when the file has none)."""

    text: str
    line: int
    id: str
    id_from_file: bool = False  # whether ``id`` is the file's own (an id field or column)


def format_suffix(path: str | os.PathLike[str]) -> str:
    """The suffix that tells a file's format, lower-cased: ``.csv`` for ``pairs.csv.gz`` too."""
    path = Path(path)
    if path.suffix.lower() == ".gz":
        path = path.with_suffix("")
    return path.suffix.lower()


def file_format(path: str | os.PathLike[str]) -> str:
    """``"jsonl"``, ``"csv"``, ``"tsv"`` or ``"text"``, from the file's suffix (a ``.gz`` after it is read through)."""
    suffix = format_suffix(path)
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    if suffix in (".tsv", ".tab"):
        return "tsv"
    return "text"


def iter_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` with line ends (LF or CRLF) and a UTF-8 BOM removed; a ``.gz``
    file is decompressed on the way."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    if path.is_dir():
        raise InputError(path, "is a folder, expected a file")
    try:
        handle = gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror})") from None
    number = 0
    try:
        with handle:
            for number, line in decoded_lines(path, handle):
                yield number, line
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise InputError(path, f"not a readable gzip file ({exc or 'cut short'})", number + 1) from None
    except OSError as exc:  # a read that fails midway (an I/O error, a file that cannot be read as a stream)
        raise InputError(path, f"cannot be read ({exc.strerror or exc})", number + 1) from None


def decoded_lines(name: str | os.PathLike[str], handle) -> Iterator[tuple[int, str]]:
    """``(line_number, line)`` of a binary stream (stdin), checked and decoded as :func:`iter_lines`
    does; errors name ``name``."""
    for number, raw in enumerate(handle, start=1):
        yield number, _decoded(name, raw, number)


def _decoded(path: str | os.PathLike[str], raw: bytes, number: int) -> str:
    if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if number == 1 and raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputError(path, "UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8", number)
    nul = raw.find(0)
    if nul >= 0:  # valid UTF-8, but no text holds one: a binary file, or UTF-16 without its mark
        raise InputError(path, f"a NUL byte at column {nul + 1} (a binary or UTF-16 file?)", number)
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})", number) from None


def read_records(
    path: str | os.PathLike[str],
    *,
    field: str | None = None,
    id_field: str | None = None,
    skip_empty: bool = False,
) -> list[Record]:
    """Read every text of ``path``.

    ``field`` names the JSON key or CSV/TSV column holding the text (default: the first of
    ``text``, ``sentence``, ``query``, ``document`` present, or the only column).
    ``id_field`` names the id key or column (default: ``id`` when present, else the line number).
    Empty texts are an error, naming their line, unless ``skip_empty``.
    """
    kind = file_format(path)
    if kind == "jsonl":
        records = _read_jsonl(path, field, id_field, skip_empty)
    elif kind in ("csv", "tsv"):
        records = _read_table(path, kind, field, id_field, skip_empty)
    else:
        records = _read_text(path, skip_empty)
        given = [f"{what} {value!r}" for what, value in (("text field", field), ("id field", id_field)) if value]
        if given:  # e.g. JSON lines in a .txt: each line would be encoded whole, braces and all
            warnings.warn(f"{path}: read as plain text, one text a line (by its name); the "
                          f"{' and the '.join(given)} {'is' if len(given) == 1 else 'are'} not used", stacklevel=2)
    if not records:
        raise InputError(path, "holds no text")
    return records


def read_texts(path: str | os.PathLike[str], *, field: str | None = None, skip_empty: bool = False) -> list[str]:
    """The texts of ``path`` in file order (see :func:`read_records`)."""
    return [record.text for record in read_records(path, field=field, skip_empty=skip_empty)]


def _checked_text(path, text: str, line: int, skip_empty: bool) -> str | None:
    if text.strip():
        return text
    if skip_empty:
        return None
    raise InputError(path, "empty text (remove the line, or pass --skip-empty)", line)


def _read_text(path, skip_empty: bool) -> list[Record]:
    records = []
    for number, line in iter_lines(path):
        if _checked_text(path, line, number, skip_empty) is not None:
            records.append(Record(line, number, str(number)))
    return records


def iter_json_objects(path, lines: Iterable[tuple[int, str]] | None = None) -> Iterator[tuple[int, dict]]:
    """``(line_number, object)`` for each non-blank line of a JSON-lines file."""
    for number, line in lines if lines is not None else iter_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(path, f"invalid JSON ({exc.msg})", number) from None
        except RecursionError:
            raise InputError(path, "invalid JSON (nested too deeply)", number) from None
        if not isinstance(row, dict):
            raise InputError(path, "expected a JSON object", number)
        yield number, row


def _read_jsonl(path, field: str | None, id_field: str | None, skip_empty: bool) -> list[Record]:
    records = []
    for number, row in iter_json_objects(path):
        key = field or next((name for name in DEFAULT_TEXT_NAMES if name in row), None)
        if key is None or key not in row:
            wanted = f"field {field!r}" if field else f"a text field ({', '.join(DEFAULT_TEXT_NAMES)}; choose with --field)"
            raise InputError(path, f"no {wanted}", number)
        text = row[key]
        if not isinstance(text, str):
            raise InputError(path, f"field {key!r} is not a string", number)
        id_key = id_field or next((name for name in DEFAULT_ID_NAMES if name in row), None)
        if id_field and id_field not in row:
            raise InputError(path, f"no id field {id_field!r}", number)
        if _checked_text(path, text, number, skip_empty) is not None:
            records.append(Record(text, number, str(row[id_key]) if id_key else str(number), id_key is not None))
    return records


def _column_index(path, header: list[str], name: str | None, defaults: tuple[str, ...], what: str) -> int | None:
    if name is not None:
        if name in header:
            return header.index(name)
        raise InputError(path, f"no {what} column {name!r} (columns: {', '.join(header)})", 1)
    for candidate in defaults:
        if candidate in header:
            return header.index(candidate)
    return None


def _csv_rows(reader, started: list[int]):
    """(line, row) with the line a row starts on; ``started[0]`` is the line of the row being read,
    so that an error (an unterminated quote) names where the broken row begins."""
    started[0] = 1
    for row in reader:
        yield started[0], row
        started[0] = reader.line_num + 1


def _read_table(path, kind: str, field: str | None, id_field: str | None, skip_empty: bool) -> list[Record]:
    lines = iter_lines(path)
    started = [1]
    if kind == "csv":
        # Line ends go back in, so that a quoted field spanning lines keeps its newline (RFC 4180).
        reader = csv.reader((line + "\n" for _, line in lines), strict=True)
        rows = _csv_rows(reader, started)
    else:
        rows = ((number, line.split("\t")) for number, line in lines)
    try:
        _, header = next(rows)
    except StopIteration:
        raise InputError(path, "holds no text") from None
    except csv.Error as exc:
        raise InputError(path, f"bad CSV ({exc})", 1) from None
    header = [name.strip() for name in header]
    text_col = _column_index(path, header, field, DEFAULT_TEXT_NAMES, "text")
    if text_col is None:
        if len(header) != 1:
            raise InputError(path, f"which column holds the text? choose with --field (columns: {', '.join(header)})", 1)
        text_col = 0
    id_col = _column_index(path, header, id_field, DEFAULT_ID_NAMES, "id")
    records = []
    try:
        for number, row in rows:
            if not row or row == [""]:
                continue
            needed = max(text_col, id_col or 0) + 1
            if len(row) < needed:
                raise InputError(path, f"expected at least {needed} columns, found {len(row)}", number)
            text = row[text_col]
            if _checked_text(path, text, number, skip_empty) is not None:
                records.append(Record(text, number, row[id_col] if id_col is not None else str(number), id_col is not None))
    except csv.Error as exc:
        raise InputError(path, f"bad CSV ({exc})", started[0]) from None
    return records
