"""Sharded inputs and outputs: a folder or glob of text shards in, a folder of vector shards out.

Input shards are ``.txt``, ``.jsonl``, ``.csv``, ``.tsv`` (read by :mod:`whiten_cli.readers`, errors
name the shard and line) or ``.parquet`` (pyarrow, from the ``ray`` extra). Shards are taken in
sorted path order and each is cut into blocks of :data:`BLOCK_ROWS` consecutive rows, the unit both
engines encode: the same chunks as a local ``fit`` of one file, so the same vectors. A row's id is
the shard's own (an id field or column), else ``SHARD_NAME:LINE``.

A vector folder (``whiten encode`` of sharded input, or ``-o DIR/``) holds ``part-NNNNN.npy``
float32 shards, ``part-NNNNN.ids.jsonl`` (one JSON string per row) and ``manifest.json`` (format,
tool version, model, pooling, pipeline, dim, dtype, count, and each part's file, source and rows).
It is written through :func:`whiten_cli.storage.atomic_directory`: complete or not at all.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from whiten_cli import __version__
from whiten_cli.errors import InputError, WhitenError
from whiten_cli.readers import DEFAULT_ID_NAMES, DEFAULT_TEXT_NAMES, Record, read_records
from whiten_cli.storage import check_folder_target

SHARD_SUFFIXES = (".txt", ".text", ".jsonl", ".ndjson", ".csv", ".tsv", ".tab", ".parquet")
BLOCK_ROWS = 4096  # rows encoded together; fit_pipeline's chunk size, so sharded and single-file fits agree
PART_BLOCKS = 16  # blocks per output part at most (65,536 rows): the writer holds one part at a time
MANIFEST_FILE = "manifest.json"
VECTORS_FORMAT = "whiten-vectors"
VECTORS_FORMAT_VERSION = 1
GLOB_CHARS = "*?["


@dataclass(frozen=True)
class Block:
    """Up to BLOCK_ROWS consecutive records of one shard."""

    shard: int  # the shard's position in :func:`shard_paths` order
    source: str  # the shard's path
    index: int  # the block's position within its shard
    texts: list[str]
    ids: list[str]


def is_sharded(spec: str | os.PathLike[str]) -> bool:
    """Whether ``spec`` names a folder or a glob pattern (rather than one file)."""
    text = str(spec)
    return Path(text).is_dir() or (any(char in text for char in GLOB_CHARS) and not Path(text).is_file())


def shard_paths(spec: str | os.PathLike[str]) -> list[Path]:
    """The shards of ``spec`` in sorted order: a folder's files with a known suffix, a glob's
    matches, or the one file named. No shard is an error."""
    text = str(spec)
    if Path(text).is_dir():
        paths = [path for path in Path(text).iterdir()
                 if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in SHARD_SUFFIXES]
        if not paths:
            raise InputError(text, f"no shards in this folder (files ending {', '.join(SHARD_SUFFIXES)})")
    elif any(char in text for char in GLOB_CHARS) and not Path(text).is_file():
        paths = [Path(name) for name in glob.glob(text, recursive=True) if Path(name).is_file()]
        if not paths:
            raise InputError(text, "no file matches this pattern")
    else:
        return [Path(text)]
    return sorted(paths, key=str)


def read_shard(path: str | os.PathLike[str], *, field: str | None = None, id_field: str | None = None,
               skip_empty: bool = False, sharded: bool = True) -> list[Record]:
    """Every record of one shard; ``sharded`` ids rows without an id of their own ``NAME:LINE``."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        records = _read_parquet(path, field, id_field, skip_empty)
    else:
        records = read_records(path, field=field, id_field=id_field, skip_empty=skip_empty)
    if sharded:
        records = [record if record.id_from_file else Record(record.text, record.line, f"{path.name}:{record.line}")
                   for record in records]
    return records


def iter_blocks(paths: Sequence[str | os.PathLike[str]], *, field: str | None = None, id_field: str | None = None,
                skip_empty: bool = False, sharded: bool = True) -> Iterator[Block]:
    """The blocks of ``paths`` in order, one shard in memory at a time."""
    for number, path in enumerate(paths):
        yield from shard_blocks(number, path, field=field, id_field=id_field, skip_empty=skip_empty, sharded=sharded)


def shard_blocks(number: int, path: str | os.PathLike[str], **options) -> list[Block]:
    records = read_shard(path, **options)
    return [Block(number, str(path), start // BLOCK_ROWS, [r.text for r in records[start:start + BLOCK_ROWS]],
                  [r.id for r in records[start:start + BLOCK_ROWS]])
            for start in range(0, len(records), BLOCK_ROWS)]


def read_all_records(spec: str | os.PathLike[str], **options) -> list[Record]:
    """Every record of a file, folder or glob, in shard order (ids as :func:`read_shard` gives them)."""
    paths = shard_paths(spec)
    sharded = is_sharded(spec)
    return [record for path in paths for record in read_shard(path, sharded=sharded, **options)]


def _read_parquet(path: Path, field: str | None, id_field: str | None, skip_empty: bool) -> list[Record]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise WhitenError(f"{path}: parquet shards need the ray extra: pip install 'whiten[ray]'") from None
    if not path.is_file():
        raise InputError(path, "no such file")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise InputError(path, f"not a readable parquet file ({exc})") from None
    names = table.column_names
    text_name = field or next((name for name in DEFAULT_TEXT_NAMES if name in names), None)
    if text_name is None and len(names) == 1:
        text_name = names[0]
    if text_name not in names:
        wanted = f"column {field!r}" if field else "text column; choose with --field"
        raise InputError(path, f"no {wanted} (columns: {', '.join(names)})")
    id_name = id_field or next((name for name in DEFAULT_ID_NAMES if name in names), None)
    if id_field and id_field not in names:
        raise InputError(path, f"no id column {id_field!r} (columns: {', '.join(names)})")
    texts = table.column(text_name).to_pylist()
    ids = table.column(id_name).to_pylist() if id_name else [None] * len(texts)
    records = []
    for row, (text, ident) in enumerate(zip(texts, ids), start=1):
        if not isinstance(text, str):
            raise InputError(path, f"column {text_name!r} is not a string in row {row}", row)
        if not text.strip():
            if skip_empty:
                continue
            raise InputError(path, "empty text (remove the row, or pass --skip-empty)", row)
        records.append(Record(text, row, str(ident) if id_name else str(row), id_name is not None))
    if not records:
        raise InputError(path, "holds no text")
    return records


# --------------------------------------------------------------------------- vector folders


def wants_folder(input_spec: str | os.PathLike[str], output: str | os.PathLike[str]) -> bool:
    """Whether ``whiten encode`` writes a folder of shards: for sharded input, or an ``-o`` without a
    suffix (``out/vectors``, ``out/vectors/``) or naming a vector folder already there."""
    out = Path(output)
    return is_sharded(input_spec) or not out.suffix or (out / MANIFEST_FILE).is_file()


def check_vector_folder_target(output: str | os.PathLike[str]) -> None:
    """Never replace what is not a vector folder (a mistyped -o, the input folder itself) with one:
    the folder is swapped in whole, so whatever was there would be gone."""
    check_folder_target(output, MANIFEST_FILE, "a vector folder")


class VectorFolderWriter:
    """Writes vector parts into ``folder`` (a temporary folder from atomic_directory), then the manifest.

    Blocks are buffered per source shard and flushed as a part every PART_BLOCKS blocks or when the
    shard changes, so at most one part of vectors is held.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.parts: list[dict] = []
        self.dim: int | None = None
        self.count = 0
        self._source: str | None = None
        self._vectors: list[np.ndarray] = []
        self._ids: list[str] = []

    def add(self, source: str, ids: Sequence[str], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.dim is None:
            self.dim = vectors.shape[1]
        if source != self._source or len(self._vectors) >= PART_BLOCKS:
            self._flush()
            self._source = source
        self._vectors.append(vectors)
        self._ids.extend(ids)

    def _flush(self) -> None:
        if not self._vectors:
            return
        name = f"part-{len(self.parts):05d}"
        vectors = np.concatenate(self._vectors)
        with open(self.folder / f"{name}.npy", "wb") as handle:
            np.save(handle, vectors, allow_pickle=False)
        with open(self.folder / f"{name}.ids.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(ident, ensure_ascii=False) + "\n" for ident in self._ids)
        self.parts.append({"vectors": f"{name}.npy", "ids": f"{name}.ids.jsonl", "source": self._source,
                           "rows": len(vectors)})
        self.count += len(vectors)
        self._vectors, self._ids = [], []

    def finish(self, **info) -> dict:
        """Flush the last part and write manifest.json (``info``: model, pooling, pipeline, ...)."""
        self._flush()
        manifest = {"format": VECTORS_FORMAT, "format_version": VECTORS_FORMAT_VERSION, "tool_version": __version__,
                    **info, "dim": self.dim, "dtype": "float32", "count": self.count, "parts": self.parts}
        (self.folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        return manifest


def read_manifest(folder: str | os.PathLike[str]) -> dict:
    """A vector folder's manifest, checked: known format, parts present, one dimension throughout."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise InputError(folder, f"not a vector folder (no {MANIFEST_FILE})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(path, f"unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != VECTORS_FORMAT or not isinstance(manifest.get("parts"), list):
        raise InputError(path, f"not a {VECTORS_FORMAT} manifest")
    return manifest


def iter_vector_parts(folder: str | os.PathLike[str]) -> Iterator[tuple[list[str], np.ndarray]]:
    """``(ids, vectors)`` of each part of a vector folder, in order; a part whose dimension or row
    count differs from the manifest's is an error naming it."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    dim = manifest.get("dim")
    for part in manifest["parts"]:
        path = folder / str(part.get("vectors"))
        try:
            vectors = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:  # EOFError: an empty file
            raise InputError(path, f"not a .npy array file ({exc})") from None
        if vectors.ndim != 2 or vectors.shape[1] != dim:
            raise InputError(path, f"vectors of shape {vectors.shape}, but the other shards have dimension {dim}")
        if vectors.shape[0] != part.get("rows"):
            raise InputError(path, f"{vectors.shape[0]} rows, the manifest says {part.get('rows')}")
        ids_path = folder / str(part.get("ids"))
        try:
            ids = [json.loads(line) for line in ids_path.read_text(encoding="utf-8").splitlines()]
        except (OSError, ValueError) as exc:
            raise InputError(ids_path, f"unreadable ids ({exc})") from None
        yield ids, vectors


def load_vector_folder(folder: str | os.PathLike[str], ids: Sequence[str] | None = None,
                       dim: int | None = None) -> np.ndarray:
    """All vectors of a vector folder (float32), checked against the corpus's ``ids`` and ``dim`` when given."""
    found: list[str] = []
    arrays = []
    for part_ids, vectors in iter_vector_parts(folder):
        found.extend(part_ids)
        arrays.append(np.asarray(vectors, dtype=np.float32))
    if not arrays:
        raise InputError(folder, "holds no vectors")
    matrix = np.concatenate(arrays)
    if ids is not None and len(ids) != len(found):
        raise InputError(folder, f"{len(found)} vectors for the {len(ids)} texts of the corpus (row i must be text i)")
    if dim is not None and matrix.shape[1] != dim:
        raise InputError(folder, f"vectors of dimension {matrix.shape[1]}, the pipeline gives {dim}")
    if ids is not None and list(ids) != found:
        row = next(i for i, (a, b) in enumerate(zip(ids, found)) if a != b)
        raise InputError(folder, f"row {row + 1} is {found[row]!r}, the corpus's is {ids[row]!r} (encode the same shards)")
    return matrix


# --------------------------------------------------------------------------- engines


ENGINES = ("local", "ray")


@dataclass(frozen=True)
class Engine:
    """Where blocks are encoded: ``local`` (this process) or ``ray`` (a cluster at ``address``, else a
    local Ray with ``workers`` CPUs)."""

    name: str = "local"
    address: str | None = None
    workers: int | None = None

    def __post_init__(self):
        if self.name not in ENGINES:
            raise WhitenError(f"--engine must be one of {', '.join(ENGINES)}, got {self.name!r}")
        if self.name == "local" and self.address is not None:
            raise WhitenError("--ray-address needs --engine ray")


@contextlib.contextmanager
def encoded_blocks(spec: str | os.PathLike[str], encoder, engine: Engine, read_options: dict, command: str,
                   progress=None) -> Iterator[Iterator[tuple[Block, np.ndarray]]]:
    """An iterator of ``(block, pooled vectors)`` over the input, in order, from either engine."""
    paths = shard_paths(spec)
    options = {**read_options, "sharded": is_sharded(spec)}
    if engine.name == "local":
        def local():
            done = 0
            for block in iter_blocks(paths, **options):
                vectors = encoder.encode(block.texts)
                done += len(block.texts)
                if progress:
                    progress(done, done)
                yield block, vectors
        yield local()
        return
    from whiten_cli import engine_ray

    with engine_ray.session(command, engine.address, engine.workers) as workers:
        def count(n: int) -> None:
            encoder.truncated += n

        yield engine_ray.encode_blocks(paths, engine_ray.EncoderSpec.of(encoder, encoder.threads), options, workers,
                                       progress, count)


def encode_to_folder(spec: str | os.PathLike[str], output: str | os.PathLike[str], encoder, transform, engine: Engine,
                     read_options: dict, info: dict, progress=None) -> dict:
    """Encode a file, folder or glob into a vector folder at ``output`` (atomically); the manifest."""
    from whiten_cli.storage import atomic_directory

    check_vector_folder_target(output)
    with encoded_blocks(spec, encoder, engine, read_options, "encode", progress) as blocks:
        with atomic_directory(output) as tmp:
            writer = VectorFolderWriter(tmp)
            for block, raw in blocks:
                writer.add(block.source, block.ids, transform(raw))
            return writer.finish(**info)


def encode_matrix(spec: str | os.PathLike[str], encoder, engine: Engine, read_options: dict, command: str,
                  progress=None) -> tuple[list[str], np.ndarray]:
    """Ids and pooled vectors of a whole input (for an index, which holds them all anyway)."""
    ids: list[str] = []
    arrays = []
    with encoded_blocks(spec, encoder, engine, read_options, command, progress) as blocks:
        for block, raw in blocks:
            ids.extend(block.ids)
            arrays.append(raw)
    return ids, np.concatenate(arrays)


def fit_statistics(spec: str | os.PathLike[str], encoder, engine: Engine, whiten: bool, read_options: dict,
                   progress=None):
    """``(stats, count, truncated)`` of a corpus for ``whiten fit``: the GaussianStats of its pooled
    vectors, accumulated block by block here or each block's on a Ray worker merged in order (None,
    and nothing encoded, without whitening), the number of texts and how many were truncated.
    Empty texts are skipped, as a local fit does."""
    from whiten_cli.stats import GaussianStats

    paths = shard_paths(spec)
    options = {**read_options, "skip_empty": True, "sharded": is_sharded(spec)}
    if not whiten:
        return None, sum(len(read_shard(path, **options)) for path in paths), 0
    if engine.name == "ray":
        from whiten_cli import engine_ray

        with engine_ray.session("fit", engine.address, engine.workers) as workers:
            stats, truncated = engine_ray.block_stats(paths, engine_ray.EncoderSpec.of(encoder, encoder.threads),
                                                      options, workers, encoder.dim, progress)
        return stats, stats.count, truncated
    stats = GaussianStats.empty(encoder.dim)
    before = encoder.truncated
    for block in iter_blocks(paths, **options):
        stats.update(encoder.encode(block.texts))
        if progress:
            progress(stats.count, stats.count)
    return stats, stats.count, encoder.truncated - before
