"""The document store of an index: ids and texts in ``docs.jsonl``, read row by row through offsets."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from whiten_cli.errors import InputError, ParameterError

DOCS_FILE = "docs.jsonl"
OFFSETS_FILE = "docs.offsets.npy"


@dataclass(frozen=True)
class Document:
    """One indexed text and its id."""

    id: str
    text: str


@dataclass(frozen=True)
class Hit:
    """One search result: 1-based rank, cosine score, the document, and its row in the index."""

    rank: int
    score: float
    id: str
    text: str
    row: int


def documents(texts: Iterable[str | Document], start: int = 0) -> list[Document]:
    """Documents from texts (ids numbered ``start + 1``, ``start + 2``, ...) or Documents as they are.

    A single str is refused rather than indexed as one document per character, and an entry that is
    neither a str nor a Document (None, a number) rather than indexed as the text of its repr."""
    if isinstance(texts, (str, bytes)):
        raise ParameterError("docs", f"must be a sequence of texts or Documents, got a single {type(texts).__name__} "
                                     "(wrap one document in a list)")
    docs = []
    for number, item in enumerate(texts, start=start + 1):
        if not isinstance(item, (str, Document)):
            raise ParameterError("docs", f"{{name}}[{number - start - 1}] is {type(item).__name__}, not str or Document")
        docs.append(item if isinstance(item, Document) else Document(str(number), item))
    return docs


def records_to_documents(records, path, *, start: int = 0, existing_ids=()) -> list[Document]:
    """Documents from :class:`whiten_cli.readers.Record` rows, refusing duplicate ids.

    Without ids in the file, documents are numbered ``start + 1``, ``start + 2``, ... (their
    position in the index). A duplicate is reported at the line of its second occurrence.
    """
    seen: dict[str, int] = {}
    existing = existing_ids if isinstance(existing_ids, (set, frozenset, dict)) else set(existing_ids)
    docs = []
    for number, record in enumerate(records, start=start + 1):
        doc_id = record.id if record.id_from_file else str(number)
        if doc_id in seen:
            raise InputError(path, f"duplicate id {doc_id!r} (first on line {seen[doc_id]})", record.line)
        if doc_id in existing:
            raise InputError(path, f"id {doc_id!r} is already in the index", record.line)
        seen[doc_id] = record.line
        docs.append(Document(doc_id, record.text))
    return docs


def _doc_line(doc: Document) -> bytes:
    return (json.dumps({"id": doc.id, "text": doc.text}, ensure_ascii=False) + "\n").encode("utf-8")


def _parse_line(raw: bytes, path: Path, line: int) -> Document:
    try:
        item = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not a JSON document line ({exc})", line) from None
    if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not isinstance(item.get("text"), str):
        raise InputError(path, 'not a document line (expected {"id": string, "text": string})', line)
    return Document(item["id"], item["text"])


def check_offsets(offsets: np.ndarray, size: int, offsets_path: Path, docs_path: Path, chunk: int = 1 << 20) -> None:
    """Offsets start at 0, increase, and end at the size of docs.jsonl (read a chunk at a time)."""
    if len(offsets) == 0 or int(offsets[0]) != 0:
        raise InputError(offsets_path, f"does not start at byte 0 of {DOCS_FILE}")
    for start in range(0, len(offsets) - 1, chunk):
        part = np.asarray(offsets[start : start + chunk + 1])
        past = part > size
        if past.any():
            bad = start + int(np.argmax(past))
            raise InputError(offsets_path, f"entry {bad} ({int(offsets[bad])}) is past the end of {DOCS_FILE} "
                                           f"({size} bytes): the files do not match")
        rising = part[1:] > part[:-1]
        if not rising.all():
            bad = start + 1 + int(np.argmin(rising))
            raise InputError(offsets_path, f"entry {bad} ({int(offsets[bad])}) does not come after entry {bad - 1} "
                                           f"({int(offsets[bad - 1])}): offsets must increase")
    if int(offsets[-1]) != size:
        raise InputError(docs_path, f"{size} bytes, but {OFFSETS_FILE} ends at byte {int(offsets[-1])}: "
                                    f"the files do not match (the folder was modified)")


class _DocFile:
    """``docs.jsonl`` of a saved index, read row by row through its memory-mapped offsets.

    Both files are opened once (the index loads them under its read lock) and read through these
    handles only, so the documents stay those of the version loaded even after the folder is replaced.
    ``shown`` is the folder named in messages (the final path when ``folder`` is a temporary one).
    """

    def __init__(self, folder: Path, shown: Path | None = None):
        self.docs_path = (shown or folder) / DOCS_FILE
        self.offsets_path = (shown or folder) / OFFSETS_FILE
        try:
            self.offsets = np.load(folder / OFFSETS_FILE, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:  # EOFError: an empty file
            raise InputError(self.offsets_path, f"unreadable ({exc})") from None
        if self.offsets.ndim != 1 or self.offsets.dtype != np.uint64:
            raise InputError(self.offsets_path, f"not a document offsets file (expected a 1-d uint64 array, found "
                                                f"{self.offsets.dtype} {self.offsets.shape})")
        try:
            self._handle = open(folder / DOCS_FILE, "rb")
        except OSError as exc:
            raise InputError(self.docs_path, f"cannot be read ({exc.strerror})") from None
        try:
            check_offsets(self.offsets, os.fstat(self._handle.fileno()).st_size, self.offsets_path, self.docs_path)
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get(self, row: int) -> Document:
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        return _parse_line(os.pread(self._handle.fileno(), end - start, start), self.docs_path, row + 1)

    def ids(self) -> list[str]:
        """Every id, in row order (one pass over the file)."""
        self._handle.seek(0)
        return [_parse_line(raw, self.docs_path, line).id for line, raw in enumerate(self._handle, start=1)]

    def copy_to(self, out: BinaryIO) -> None:
        """Write the bytes of docs.jsonl to ``out``."""
        self._handle.seek(0)
        shutil.copyfileobj(self._handle, out, 1 << 20)

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()
