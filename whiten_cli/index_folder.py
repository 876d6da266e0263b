"""The index folder: :class:`VectorIndex` (build, add, search), its files, locking and checks."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from whiten_cli import __version__, checks
from whiten_cli.errors import InputError, ParameterError, WhitenError
from whiten_cli.index_docs import (DOCS_FILE, OFFSETS_FILE, Document, Hit, _doc_line, _DocFile, documents,
                                  records_to_documents)
from whiten_cli.index_faiss import build_faiss, faiss_search, normalized, tune_search
from whiten_cli.index_plan import KINDS, plan_index
from whiten_cli.storage import atomic_directory, check_folder_target, locked, reading, reads_one_version

if TYPE_CHECKING:
    from whiten_cli.pipeline import Pipeline

FORMAT = "whiten-index"
FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
METADATA_FILE = "index.json"
PIPELINE_DIR = "pipeline"
ONNX_DIR = "onnx"  # the pipeline's ONNX graph, in an index built with --backend onnx
REQUIRED = (METADATA_FILE, INDEX_FILE, DOCS_FILE, OFFSETS_FILE, PIPELINE_DIR)
METRIC = "inner_product"  # on L2-normalized vectors: cosine similarity


def pipeline_fingerprint(pipeline) -> str:
    """sha256 (16 hex digits) of what the pipeline computes: model weights, pooling, arrays.

    Independent of where or when the pipeline was saved (tool version and provenance are left
    out), so a copy of a pipeline folder has the same fingerprint as the original.
    """
    spec = {
        "model_fingerprint": pipeline.model_fingerprint,
        "pooling": pipeline.pooling,
        "max_length": pipeline.max_length,
        "input_dim": pipeline.input_dim,
        "output_dim": pipeline.output_dim,
        "normalize": pipeline.normalize,
        "whitening": None,
        "projection": None,
    }
    arrays = []
    if pipeline.whitening is not None:
        w = pipeline.whitening
        spec["whitening"] = {"k": w.n_components, "beta": float(w.beta), "gamma": float(w.gamma)}
        arrays += [np.asarray(w.mean, dtype=np.float64), np.asarray(w.kernel, dtype=np.float64)]
    if pipeline.projection is not None:
        spec["projection"] = {"n": pipeline.projection.n_components, "seed": pipeline.projection.seed}
        arrays.append(np.asarray(pipeline.projection.matrix, dtype=np.float32))
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode("utf-8"))
    for array in arrays:
        digest.update(str(array.shape).encode("ascii"))
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


class VectorIndex:
    """A FAISS index over pipeline vectors, with its documents and the pipeline that made them.

    >>> index = VectorIndex.build(vectors, ["first text", "second text"], pipeline, kind="flat")
    >>> index.save("my-index")
    >>> with VectorIndex.load("my-index") as index:   # closes the documents' file
    ...     hits = index.search(query_vectors, k=5)     # one list of Hits per query
    """

    def __init__(self, faiss_index, pipeline, metadata: dict, stored: _DocFile | None = None,
                 pending: list[Document] | None = None):
        self._faiss = faiss_index
        self.pipeline = pipeline
        self.metadata = metadata
        self._stored = stored  # documents already on disk (rows 0 .. len(stored) − 1)
        self._pending = pending or []  # documents added in memory after them
        self._ids: set[str] | None = None
        self._encoder = None
        self.onnx_graph: Path | None = None  # a graph folder (onnx_export) saved with the index when set

    # -- construction

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        docs: Sequence[str | Document],
        pipeline,
        *,
        kind: str = "auto",
        max_memory: int | None = None,
        nlist: int | None = None,
        pq_m: int | None = None,
        hnsw_m: int | None = None,
        nprobe: int | None = None,
        ef: int | None = None,
        tune: bool = True,
        seed: int = 0,
        builder=build_faiss,
    ) -> VectorIndex:
        """Index ``vectors`` (rows = ``docs``; output of ``pipeline``) with a FAISS index of ``kind``.

        ``docs`` are texts (ids 1, 2, ... by position) or :class:`Document` objects with their own
        ids, which must be unique. ``nprobe``/``ef`` set the search defaults stored with the index;
        unset, an approximate index is tuned (:func:`tune_search`) to recall@10 ≥ 0.95 against
        exact search, or uses nlist/8 and 128 when ``tune`` is false. ``builder`` builds the FAISS
        index (:func:`build_faiss`, or the Ray engine's parallel one).
        """
        seed = checks.seed(seed)  # FAISS's k-means seed is a C int; numpy's sampling takes no negative one
        x = _check_vectors(vectors, pipeline.output_dim)
        docs = documents(docs)
        if len(docs) != len(x):
            raise WhitenError(f"{len(x)} vectors for {len(docs)} documents")
        _check_unique([doc.id for doc in docs])
        plan = plan_index(kind, len(x), x.shape[1], max_memory=max_memory, nlist=nlist, pq_m=pq_m, hnsw_m=hnsw_m)
        _check_knobs(nprobe, ef)
        faiss_index = builder(x, plan, seed=seed)
        search = {"nprobe": nprobe or plan.default_nprobe, "ef": ef or plan.default_ef}
        reason = plan.reason
        tuning = None
        if tune and nprobe is None and ef is None:
            tuning = tune_search(faiss_index, x, plan, seed=seed)
        if tuning is not None:
            search[tuning.knob] = tuning.value
            search["tuned"] = {"recall": round(tuning.recall, 4), "target": tuning.target, "queries": tuning.queries}
            reason += f"; search {tuning.describe()}"
        now = _now()
        metadata = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tool_version": __version__,
            "pipeline": {
                "fingerprint": pipeline_fingerprint(pipeline),
                "model": pipeline.model,
                "model_fingerprint": pipeline.model_fingerprint,
                "pooling": pipeline.pooling,
                "output_dim": pipeline.output_dim,
            },
            "dim": int(x.shape[1]),
            "metric": METRIC,
            "normalized": True,
            "kind": plan.kind,
            "factory": plan.factory,
            "reason": reason,
            "nlist": plan.nlist,
            "search": search,
            "count": len(x),
            "created": now,
            "updated": now,
        }
        index = cls(faiss_index, pipeline, metadata, pending=docs)
        index._ids = {doc.id for doc in docs}
        return index

    @classmethod
    @reads_one_version
    def load(cls, path: str | os.PathLike[str]) -> VectorIndex:
        """Open a saved index; refuses a folder with missing files or a pipeline that does not match.

        Every file is opened under a shared lock on the folder, so what is loaded is one version
        even while another process replaces the index; documents are read later through the
        handles opened here.
        """
        import faiss

        folder = Path(path)
        metadata, pipeline, stored, graph = _open_parts(folder)
        try:
            faiss_index = faiss.read_index(str(folder / INDEX_FILE))
        except RuntimeError as exc:
            stored.close()
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
            raise WhitenError(f"{folder / INDEX_FILE}: not a readable FAISS index ({reason})") from None
        if not faiss_index.ntotal == len(stored) == metadata["count"] or faiss_index.d != metadata["dim"]:
            stored.close()
            raise WhitenError(f"{folder}: files disagree ({faiss_index.ntotal} vectors of dimension {faiss_index.d}, "
                              f"{len(stored)} documents, metadata says {metadata['count']} of {metadata['dim']})")
        index = cls(faiss_index, pipeline, metadata, stored=stored)
        index.onnx_graph = graph
        return index

    # -- properties

    def __len__(self) -> int:
        return int(self._faiss.ntotal)

    def close(self) -> None:
        """Close the saved documents' file (the index is usable again only through :meth:`load`)."""
        if self._stored is not None:
            self._stored.close()

    def __enter__(self) -> VectorIndex:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def dim(self) -> int:
        return int(self._faiss.d)

    @property
    def kind(self) -> str:
        return self.metadata["kind"]

    @property
    def factory(self) -> str:
        return self.metadata["factory"]

    @property
    def faiss_index(self):
        """The underlying FAISS index (for measurements; changing it breaks the documents' alignment)."""
        return self._faiss

    def document(self, row: int) -> Document:
        if not 0 <= checks.integer(row, "row") < len(self):
            raise WhitenError(f"row {row} is not in the index (0 to {len(self) - 1})")
        stored = len(self._stored) if self._stored is not None else 0
        return self._stored.get(row) if row < stored else self._pending[row - stored]

    def ids(self) -> set[str]:
        """Every document id (read once from disk for a loaded index)."""
        if self._ids is None:
            self._ids = set(self._stored.ids()) if self._stored is not None else set()
            self._ids.update(doc.id for doc in self._pending)
        return self._ids

    # -- changes

    def add(self, vectors: np.ndarray, docs: Sequence[str | Document]) -> None:
        """Append documents with their pipeline vectors; nothing already indexed is re-encoded.

        Texts without ids are numbered after the existing documents. Ids must be new. Save to
        make the change permanent (an index loaded from a folder is replaced there atomically).
        """
        x = _check_vectors(vectors, self.dim)
        docs = documents(docs, start=len(self))
        if len(docs) != len(x):
            raise WhitenError(f"{len(x)} vectors for {len(docs)} documents")
        _check_unique([doc.id for doc in docs])
        clash = next((doc.id for doc in docs if doc.id in self.ids()), None)
        if clash is not None:
            raise WhitenError(f"id {clash!r} is already in the index")
        self._faiss.add(x)
        self._pending.extend(docs)
        self._ids.update(doc.id for doc in docs)
        self.metadata["count"] = len(self)
        self.metadata["updated"] = _now()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the index folder atomically (a crash or Ctrl-C leaves what was there untouched)."""
        import faiss

        target = Path(path)
        check_target(target)
        with atomic_directory(target) as tmp:
            self.pipeline.save(tmp / PIPELINE_DIR)
            if self.onnx_graph is not None:
                from whiten_cli.onnx_export import copy_graph_folder

                copy_graph_folder(self.onnx_graph, tmp / ONNX_DIR)
            offsets = self._write_docs(tmp)
            np.save(tmp / OFFSETS_FILE, offsets, allow_pickle=False)
            faiss.write_index(self._faiss, str(tmp / INDEX_FILE))
            (tmp / METADATA_FILE).write_text(json.dumps(self.metadata, indent=2, ensure_ascii=False) + "\n",
                                             encoding="utf-8")
            saved = _DocFile(tmp, shown=target)  # opened before the swap: this version, whatever comes later
        if self._stored is not None:
            self._stored.close()
        self._stored, self._pending = saved, []
        if self.onnx_graph is not None:
            self.onnx_graph = target / ONNX_DIR
        return target

    def _write_docs(self, folder: Path) -> np.ndarray:
        """docs.jsonl in ``folder``: the stored documents (copied as bytes) then the new ones."""
        offsets = [np.zeros(1, dtype=np.uint64)]
        position = 0
        new = np.empty(len(self._pending), dtype=np.uint64)
        with open(folder / DOCS_FILE, "wb") as handle:
            if self._stored is not None:
                self._stored.copy_to(handle)
                offsets = [np.asarray(self._stored.offsets, dtype=np.uint64)]
                position = int(offsets[0][-1])
            for i, doc in enumerate(self._pending):
                line = _doc_line(doc)
                handle.write(line)
                position += len(line)
                new[i] = position
        return np.concatenate([*offsets, new])

    # -- search

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        nprobe: int | None = None,
        ef: int | None = None,
        threshold: float | None = None,
    ) -> list[list[Hit]]:
        """The ``k`` nearest documents of each query vector (pipeline output), best first.

        ``k`` larger than the index returns every document; ``threshold`` drops hits whose
        cosine score is below it. ``nprobe``/``ef`` default to the values stored at build time.
        """
        check_search_options(k, nprobe, ef, threshold)
        k = int(k)  # FAISS takes no numpy integer
        q = _check_vectors(queries, self.dim, what="query vectors")
        defaults = self.metadata.get("search", {})
        scores, rows = faiss_search(self._faiss, q, min(k, len(self)),
                                    nprobe=nprobe or defaults.get("nprobe"), ef=ef or defaults.get("ef"))
        results = []
        for query_scores, query_rows in zip(scores, rows):
            hits = []
            for score, row in zip(query_scores, query_rows):
                if row < 0 or (threshold is not None and score < threshold):
                    continue
                doc = self.document(int(row))
                hits.append(Hit(len(hits) + 1, float(score), doc.id, doc.text, int(row)))
            results.append(hits)
        return results

    def encoder(self, model: str | None = None, **options):
        """The pipeline's encoder (loaded once); ``model`` relocates the model, same weights only."""
        if self._encoder is None:
            self._encoder = self.pipeline.encoder(model, **options)
        return self._encoder

    def encode(self, texts: str | Sequence[str], **options) -> np.ndarray:
        """Pipeline vectors of ``texts`` (for queries or new documents); one ``str`` gives one vector, as
        :meth:`Pipeline.encode <whiten_cli.pipeline.Pipeline.encode>` does."""
        return self.pipeline.encode(texts, self.encoder(**options))

    def search_texts(self, texts: str | Sequence[str], k: int = 10, **options) -> list[list[Hit]]:
        """Encode ``texts`` through the index's pipeline and :meth:`search` them; one ``str`` is one
        query (one list of hits, as a single query vector gives)."""
        check_search_options(k, **options)  # before the queries are encoded
        return self.search(self.encode(texts), k, **options)


def _open_parts(folder: Path):
    """index.json, the pipeline and the document file of an index folder, checked; not its vectors."""
    from whiten_cli.pipeline import Pipeline

    if not folder.is_dir():
        raise WhitenError(f"{folder}: index folder does not exist (build one with `whiten index`)")
    for name in REQUIRED:
        if not (folder / name).exists():
            raise WhitenError(f"{folder}: not a complete index folder ({name} is missing)")
    metadata = read_metadata(folder)
    pipeline = Pipeline.load(folder / PIPELINE_DIR)
    check_pipeline(metadata, pipeline, f"{folder / PIPELINE_DIR}", folder)
    graph = folder / ONNX_DIR if (folder / ONNX_DIR).is_dir() else None
    return metadata, pipeline, _DocFile(folder), graph


@dataclass(frozen=True)
class IndexHeader:
    """An index folder's metadata, pipeline, ONNX graph and document ids, without its vectors: what an
    append checks and encodes with before it loads the index itself (once, under the lock)."""

    folder: Path
    metadata: dict
    pipeline: Pipeline
    onnx_graph: Path | None
    ids: frozenset[str]

    def __len__(self) -> int:
        return int(self.metadata["count"])


def read_header(path: str | os.PathLike[str]) -> IndexHeader:
    """The :class:`IndexHeader` of the index at ``path`` (its FAISS file is not read)."""
    folder = Path(path)
    with reading(folder):
        metadata, pipeline, stored, graph = _open_parts(folder)
        try:
            if len(stored) != metadata["count"]:
                raise WhitenError(f"{folder}: files disagree ({len(stored)} documents, metadata says "
                                  f"{metadata['count']})")
            ids = frozenset(stored.ids())
        finally:
            stored.close()
    return IndexHeader(folder, metadata, pipeline, graph, ids)


def append_to_index(path: str | os.PathLike[str], vectors: np.ndarray, docs: Sequence[str | Document], *,
                    pipeline=None) -> VectorIndex:
    """Add documents to the index at ``path`` and swap the result in atomically.

    The latest saved index is loaded under the folder's lock, so appends running at the same time
    all land, one after the other: texts without ids are numbered after the documents there at
    that moment and ids are checked against them. ``pipeline``, when given, is the one that made
    ``vectors``: it must still be the index's (another process may have rebuilt it meanwhile).
    """
    return _append(Path(path), vectors, lambda index: docs, pipeline)


def append_records(path: str | os.PathLike[str], vectors: np.ndarray, records, source: str | os.PathLike[str],
                   pipeline) -> VectorIndex:
    """:func:`append_to_index` for :class:`whiten_cli.readers.Record` rows read from ``source``.

    Ids and numbering are settled under the lock (:func:`records_to_documents`); an id already in
    the index is reported at its line of ``source``.
    """
    return _append(Path(path), vectors, lambda index: records_to_documents(
        records, source, start=len(index), existing_ids=index.ids()), pipeline)


def _append(path: Path, vectors: np.ndarray, make_docs, pipeline) -> VectorIndex:
    with locked(path):
        index = VectorIndex.load(path)
        try:
            if pipeline is not None and pipeline_fingerprint(pipeline) != index.metadata["pipeline"]["fingerprint"]:
                raise WhitenError(f"{path}: the index was rebuilt with another pipeline while these documents were "
                                  f"encoded; run the append again")
            index.add(vectors, make_docs(index))
            index.save(path)
        except BaseException:
            index.close()
            raise
    return index


# --------------------------------------------------------------------------- checks


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def read_metadata(folder: Path) -> dict:
    """index.json, with every field the index reads checked for its type and range."""
    meta_file = folder / METADATA_FILE
    try:
        metadata = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(meta_file, f"not valid index metadata ({exc})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise InputError(meta_file, f"not a whiten index (format is not {FORMAT!r})")
    version = metadata.get("format_version")
    if not _positive_int(version):
        raise InputError(meta_file, f"'format_version' must be a positive integer, got {_short(version)}")
    if version > FORMAT_VERSION:
        raise InputError(meta_file, f"written by a newer whiten (format {version}); upgrade whiten")
    for key in ("pipeline", "dim", "count", "kind", "factory", "search"):
        if key not in metadata:
            raise InputError(meta_file, f"incomplete index metadata (no {key!r})")
    pipeline, search = metadata["pipeline"], metadata["search"]
    checks = [
        ("pipeline", isinstance(pipeline, dict), "an object"),
        ("pipeline.fingerprint", isinstance(pipeline, dict) and isinstance(pipeline.get("fingerprint"), str),
         "a string"),
        ("dim", _positive_int(metadata["dim"]), "a positive integer"),
        ("count", _positive_int(metadata["count"]), "a positive integer"),
        ("kind", metadata["kind"] in KINDS[1:], f"one of {', '.join(KINDS[1:])}"),
        ("factory", isinstance(metadata["factory"], str), "a string"),
        ("nlist", metadata.get("nlist") is None or _positive_int(metadata["nlist"]), "a positive integer or null"),
        ("search", isinstance(search, dict), "an object"),
    ]
    checks += [(f"search.{knob}", not isinstance(search, dict) or search.get(knob) is None
                or _positive_int(search[knob]), "a positive integer or null") for knob in ("nprobe", "ef")]
    for key, ok, expected in checks:
        if not ok:
            value = metadata
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            raise InputError(meta_file, f"{key!r} must be {expected}, got {_short(value)}")
    return metadata


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def check_pipeline(metadata: dict, pipeline, where: str, folder: Path | str) -> None:
    """Refuse a pipeline whose fingerprint is not the one the index was built with."""
    expected = metadata["pipeline"].get("fingerprint")
    actual = pipeline_fingerprint(pipeline)
    if actual != expected:
        raise WhitenError(f"{where}: pipeline {actual} is not the pipeline index {folder} was built with "
                          f"({expected}); rebuild the index with this pipeline")


def _check_vectors(vectors, dim: int, what: str = "vectors") -> np.ndarray:
    x = np.asarray(vectors)
    if x.ndim == 1 and what == "query vectors":
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != dim:
        raise WhitenError(f"{what} must have shape (n, {dim}), got {x.shape}")
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise WhitenError(f"{what} must be numbers, got dtype {x.dtype}")
    if len(x) == 0:
        raise WhitenError("empty corpus: nothing to index" if what == "vectors" else "no query")
    if not np.isfinite(x).all():
        raise WhitenError(f"{what} contain NaN or infinite values")
    return normalized(x)


def _check_unique(ids: list[str]) -> None:
    seen: dict[str, int] = {}
    for row, doc_id in enumerate(ids):
        if doc_id in seen:
            raise WhitenError(f"duplicate id {doc_id!r} (documents {seen[doc_id] + 1} and {row + 1})")
        seen[doc_id] = row


def _check_knobs(nprobe: int | None, ef: int | None) -> None:
    if nprobe is not None and checks.integer(nprobe, "nprobe") < 1:
        raise ParameterError("nprobe", f"must be at least 1, got {nprobe}")
    if ef is not None and checks.integer(ef, "ef") < 1:
        raise ParameterError("ef", f"must be at least 1, got {ef}")


def check_search_options(k: int, nprobe: int | None = None, ef: int | None = None,
                         threshold: float | None = None) -> None:
    """What :meth:`VectorIndex.search` refuses, checkable before the queries are encoded."""
    if checks.integer(k, "k") < 1:
        raise ParameterError("k", f"must be at least 1, got {k}")
    _check_knobs(nprobe, ef)
    if threshold is not None:  # every comparison with NaN is False: no hit at all
        checks.real(threshold, "threshold")


def check_target(target: Path) -> None:
    """Never replace a folder that is not a whiten index (a mistyped -o must not delete data)."""
    check_folder_target(target, METADATA_FILE, "a whiten index")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
