"""Retrieval with FAISS on pipeline vectors: build, append to, search, save and load an index folder.

Vectors are L2-normalized and searched by inner product, so every score is a cosine similarity.

An index folder is self-contained::

    index.faiss        the FAISS index (written with faiss.write_index; nothing is pickled)
    index.json         metadata: format, tool version, pipeline fingerprint, dim, metric, kind,
                       factory string, why it was chosen, count, search defaults, dates
    docs.jsonl         one {"id": ..., "text": ...} object per line, in index row order
    docs.offsets.npy   uint64 byte offset of every line of docs.jsonl, plus its length (n + 1
                       entries); memory-mapped, so a search reads only the rows it returns
    pipeline/          a copy of the pipeline folder (Pipeline.save), so a search needs nothing else

Folders are written through :func:`whiten_cli.storage.atomic_directory`: a build or an append
writes a complete new folder beside the old one and swaps it in at the end, so an error or a
Ctrl-C part-way leaves the previous index exactly as it was.

Index kinds (FAISS ``index_factory`` strings, ``METRIC_INNER_PRODUCT``):

- ``flat``: exact search (``Flat``).
- ``hnsw``: graph search (``HNSW32``); search-time knob ``ef`` (efSearch).
- ``ivf``: inverted lists over k-means cells (``IVF<nlist>,Flat``); knob ``nprobe``.
- ``ivfpq``: inverted lists with compressed codes of ``m`` bytes per vector; knob ``nprobe``. At one
  byte per dimension (the default) 8-bit scalar quantization (``IVF<nlist>,SQ8``): the size of PQ
  with 1-d sub-quantizers, built 7–10× faster and searched 3–5× faster at the same recall
  (README: Retrieval). Below that, product quantization (``IVF<nlist>,PQ<m>``).
- ``auto``: :func:`choose_index` picks one from the corpus size and a memory budget.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from whiten_cli import __version__
from whiten_cli.errors import InputError, WhitenError

FORMAT = "whiten-index"
FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
METADATA_FILE = "index.json"
DOCS_FILE = "docs.jsonl"
OFFSETS_FILE = "docs.offsets.npy"
PIPELINE_DIR = "pipeline"
REQUIRED = (METADATA_FILE, INDEX_FILE, DOCS_FILE, OFFSETS_FILE, PIPELINE_DIR)

KINDS = ("auto", "flat", "hnsw", "ivf", "ivfpq")
METRIC = "inner_product"  # on L2-normalized vectors: cosine similarity

FLAT_LIMIT = 100_000  # auto: exact search below this many vectors
HNSW_M = 32  # links per vector (FAISS: 4 ≤ M ≤ 64)
HNSW_EF_CONSTRUCTION = 40  # FAISS's default
DEFAULT_EF = 128  # efSearch when not tuned
TARGET_RECALL = 0.95  # build-time tuning of nprobe/ef: recall@10 against exact search
TUNE_QUERIES = 256  # corpus vectors used as queries for the tuning
K_TUNE = 10
TRAIN_PER_LIST = 64  # k-means training points per IVF list (FAISS: 30 to 256; at least 39)
MIN_PER_CENTROID = 39  # FAISS warns below this many training points per centroid
PQ_TRAIN_PER_CENTROID = 64  # points per PQ centroid used to train each sub-quantizer
KMEANS_ITERATIONS = 10  # FAISS's IVF default, also used for the PQ sub-quantizers
ID_BYTES = 8  # an IVF list stores a 64-bit id per vector
BLAS_MIN_QUERIES = 8  # from this many queries a call, BLAS beats FAISS's per-query scan (bench_search.py)


# --------------------------------------------------------------------------- choosing an index


@dataclass(frozen=True)
class IndexPlan:
    """A FAISS index to build: its kind, factory string, the reason, and its training details."""

    kind: str
    factory: str
    reason: str
    nlist: int | None = None  # IVF lists
    pq_m: int | None = None  # ivfpq: bytes per vector (PQ sub-quantizers; the dimension for SQ8)
    pq_bits: int | None = None
    hnsw_m: int | None = None
    train_size: int | None = None  # vectors sampled for training (IVF kinds)

    @property
    def scalar(self) -> bool:
        """ivfpq codes are 8-bit scalar quantization (SQ8), not PQ."""
        return self.factory.endswith(",SQ8")

    @property
    def default_nprobe(self) -> int | None:
        """Lists visited per query when not tuned: nlist/8 (at least 1)."""
        return None if self.nlist is None else max(1, self.nlist // 8)

    @property
    def default_ef(self) -> int | None:
        return DEFAULT_EF if self.kind == "hnsw" else None


def ivf_lists(n: int) -> int:
    """Lists for an IVF index of ``n`` vectors: FAISS advises 4·√N to 16·√N, each trained on ≥ 39 points.

    The smallest power of two ≥ 4·√N (so at most 8·√N), cut to n/39 for small corpora.
    """
    target = 1 << max(0, math.ceil(math.log2(max(4 * math.sqrt(n), 1))))
    cap = max(1, n // MIN_PER_CENTROID)
    while target > cap:
        target //= 2
    return max(1, target)


def _train_size(n: int, nlist: int, pq_bits: int | None = None) -> int:
    wanted = TRAIN_PER_LIST * nlist
    if pq_bits is not None:
        wanted = max(wanted, MIN_PER_CENTROID * (1 << pq_bits))
    return min(n, wanted)


def _pq_bits(train_size: int) -> int:
    """8-bit codes when there are enough points to train 256 centroids, else fewer bits."""
    return max(1, min(8, int(math.log2(max(train_size, 1) / MIN_PER_CENTROID)))) if train_size >= 2 * MIN_PER_CENTROID else 0


def _divisors(d: int) -> list[int]:
    return [m for m in range(1, d + 1) if d % m == 0]


def default_pq_m(dim: int) -> int:
    """Bytes per vector for ``ivfpq`` without a budget: one per dimension (SQ8, 4× smaller than flat).

    On the STS-B vectors this keeps recall@10 ≥ 0.95 against flat; dim/2 (8× smaller, PQ) tops out
    near 0.93 on whitened vectors (README). ``--pq-m`` or ``--max-memory`` trade more recall for size.
    """
    return dim


def estimate_bytes(plan: IndexPlan, n: int, dim: int) -> int:
    """Approximate memory (and file size) of the index for ``n`` vectors of ``dim`` floats."""
    if plan.kind == "flat":
        return 4 * n * dim
    if plan.kind == "hnsw":
        return n * (4 * dim + 2 * 4 * (plan.hnsw_m or HNSW_M)) + n * 8  # + upper levels, roughly
    centroids = 4 * (plan.nlist or 1) * dim
    if plan.kind == "ivf":
        return n * (4 * dim + ID_BYTES) + centroids
    codebooks = 2 * 4 * dim if plan.scalar else 4 * (1 << (plan.pq_bits or 8)) * dim  # SQ8: min and range
    code = math.ceil((plan.pq_m or 1) * (plan.pq_bits or 8) / 8)
    return n * (code + ID_BYTES) + centroids + codebooks


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError


def parse_size(text: str) -> int:
    """Bytes from ``"500M"``, ``"2GiB"``, ``"1.5g"``, ``"1000000"`` (K, M, G, T count in 1024s)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]?)(i?b)?\s*", text, re.IGNORECASE)
    if not match:
        raise WhitenError(f"--max-memory {text!r}: expected a size such as 500M, 2G or a number of bytes")
    value = float(match.group(1)) * 1024 ** " kmgt".index(match.group(2).lower() or " ")
    if value < 1:
        raise WhitenError(f"--max-memory {text!r}: must be positive")
    return int(value)


def choose_index(n: int, dim: int, max_memory: int | None = None) -> tuple[str, str]:
    """The FAISS factory string ``auto`` picks for ``n`` vectors of ``dim``, and why.

    Follows FAISS's guidelines: exact ``Flat`` when the corpus is small (< 100,000 vectors);
    above that IVF with about 4·√N lists (``IVF<nlist>,Flat``); compressed codes when uncompressed
    vectors would not fit ``max_memory`` bytes: ``IVF<nlist>,SQ8`` (a byte per dimension) if that
    fits, else product quantization (``IVF<nlist>,PQ<m>``).
    """
    plan = plan_index("auto", n, dim, max_memory=max_memory)
    return plan.factory, plan.reason


def plan_index(
    kind: str,
    n: int,
    dim: int,
    *,
    max_memory: int | None = None,
    nlist: int | None = None,
    pq_m: int | None = None,
    hnsw_m: int | None = None,
) -> IndexPlan:
    """The index to build for ``kind`` (one of :data:`KINDS`), ``n`` vectors and ``dim``."""
    if kind not in KINDS:
        raise WhitenError(f"unknown index kind {kind!r} (choose from {', '.join(KINDS)})")
    if n < 1:
        raise WhitenError("empty corpus: nothing to index")
    if nlist is not None and nlist < 1:
        raise WhitenError(f"--nlist must be positive, got {nlist}")
    if pq_m is not None and (pq_m < 1 or dim % pq_m):
        raise WhitenError(f"--pq-m must divide the vector dimension {dim}, got {pq_m}")
    if hnsw_m is not None and not 2 <= hnsw_m <= 256:
        raise WhitenError(f"--hnsw-m must be between 2 and 256, got {hnsw_m}")
    if kind == "auto":
        return _auto(n, dim, max_memory)
    if kind == "flat":
        return IndexPlan("flat", "Flat", "flat: exact search, as asked")
    if kind == "hnsw":
        m = hnsw_m or HNSW_M
        return IndexPlan("hnsw", f"HNSW{m}", f"hnsw: graph with {m} links per vector, as asked", hnsw_m=m)
    lists = nlist or ivf_lists(n)
    if lists * MIN_PER_CENTROID > n:
        raise WhitenError(f"{kind}: {n} vectors are too few to train {lists} lists (FAISS wants ≥ {MIN_PER_CENTROID} "
                          f"per list; lower --nlist, or use --kind flat)")
    if kind == "ivf":
        return IndexPlan("ivf", f"IVF{lists},Flat", f"ivf: {lists} lists, as asked", nlist=lists,
                         train_size=_train_size(n, lists))
    m = pq_m or default_pq_m(dim)
    codes = f"8-bit scalar quantization ({m} bytes per vector)" if m == dim else f"PQ with {m} sub-quantizers"
    return _ivfpq(n, dim, lists, m, f"ivfpq: {lists} lists, {codes}, as asked")


def _ivfpq(n: int, dim: int, lists: int, m: int, reason: str) -> IndexPlan:
    if m == dim:  # one byte per dimension: scalar quantization, no codebooks to train
        return IndexPlan("ivfpq", f"IVF{lists},SQ8", reason, nlist=lists, pq_m=m, pq_bits=8,
                         train_size=_train_size(n, lists))
    bits = _pq_bits(_train_size(n, lists, 8))
    if bits < 4:
        raise WhitenError(f"ivfpq: {n} vectors are too few to train product quantization (need at least "
                          f"{MIN_PER_CENTROID * 16}); use --kind flat or ivf")
    suffix = "" if bits == 8 else f"x{bits}"
    return IndexPlan("ivfpq", f"IVF{lists},PQ{m}{suffix}", reason, nlist=lists, pq_m=m, pq_bits=bits,
                     train_size=_train_size(n, lists, bits))


def _auto(n: int, dim: int, max_memory: int | None) -> IndexPlan:
    size = f"{n:,} vectors of {dim} dimensions"
    flat = IndexPlan("flat", "Flat", "")
    budget = f", within --max-memory {_human(max_memory)}" if max_memory is not None else ""
    fits = max_memory is None or estimate_bytes(flat, n, dim) <= max_memory
    if n < FLAT_LIMIT and fits:
        why = (f"flat: {size} is fewer than {FLAT_LIMIT:,}, so exact search is fast enough "
               f"({_human(estimate_bytes(flat, n, dim))}{budget})")
        return IndexPlan("flat", "Flat", why)
    lists = ivf_lists(n)
    cells = (f"{lists} lists (FAISS: 4·√N to 16·√N = {4 * math.sqrt(n):,.0f} to {16 * math.sqrt(n):,.0f}, "
             f"cut to N/{MIN_PER_CENTROID} for training)" if lists < 4 * math.sqrt(n) else
             f"{lists} lists (FAISS: 4·√N to 16·√N = {4 * math.sqrt(n):,.0f} to {16 * math.sqrt(n):,.0f})")
    ivf = IndexPlan("ivf", f"IVF{lists},Flat", "", nlist=lists, train_size=_train_size(n, lists))
    ivf_bytes = estimate_bytes(ivf, n, dim)
    if max_memory is None or ivf_bytes <= max_memory:
        why = (f"ivf: {size} is at least {FLAT_LIMIT:,}, so inverted lists beat exact search; {cells}, "
               f"trained on {ivf.train_size:,} sampled vectors ({_human(ivf_bytes)}{budget})")
        return replace(ivf, reason=why)
    if n < MIN_PER_CENTROID * 16:
        raise WhitenError(f"--max-memory {_human(max_memory)} is less than the {_human(ivf_bytes)} that {n:,} "
                          f"uncompressed vectors need, and too few vectors to train product quantization")
    for m in sorted(_divisors(dim), reverse=True):
        plan = _ivfpq(n, dim, lists, m, "")
        need = estimate_bytes(plan, n, dim)
        if need <= max_memory:
            why = (f"ivfpq: uncompressed vectors need {_human(ivf_bytes)}, more than --max-memory "
                   f"{_human(max_memory)}; {cells} with {m}-byte {'SQ8' if plan.scalar else 'PQ'} codes instead of {4 * dim} bytes "
                   f"({_human(need)})")
            return replace(plan, reason=why)
    smallest = estimate_bytes(_ivfpq(n, dim, lists, 1, ""), n, dim)
    raise WhitenError(f"--max-memory {_human(max_memory)} is too small for {n:,} vectors: the smallest index "
                      f"(IVF{lists},PQ1) needs {_human(smallest)}")


# --------------------------------------------------------------------------- FAISS helpers


def normalized(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32, C-contiguous."""
    x = np.array(vectors, dtype=np.float32, copy=True, order="C")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x /= np.maximum(norms, np.finfo(np.float32).tiny)
    return x


def build_faiss(vectors: np.ndarray, plan: IndexPlan, *, seed: int = 0, centroids: np.ndarray | None = None,
                timings: dict | None = None):
    """A trained FAISS index of ``plan`` holding ``vectors`` (already L2-normalized, float32).

    ``centroids`` (nlist, dim) reuses the coarse k-means of another IVF index of the same vectors
    instead of training it again. ``timings``, when given, receives ``train_s`` and ``add_s``.
    """
    import time

    import faiss

    n, dim = vectors.shape
    index = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    if plan.kind == "hnsw":
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    if plan.nlist is not None:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.cp.niter = KMEANS_ITERATIONS
        ivf.cp.seed = seed
        if plan.pq_m is not None and not plan.scalar:
            ivf.do_polysemous_training = False  # slow, and only useful for Hamming filtering
            ivf.pq.cp.niter = KMEANS_ITERATIONS
            ivf.pq.cp.max_points_per_centroid = PQ_TRAIN_PER_CENTROID
            ivf.pq.cp.seed = seed
        if centroids is not None:
            if centroids.shape != (plan.nlist, dim):
                raise WhitenError(f"centroids must have shape ({plan.nlist}, {dim}), got {centroids.shape}")
            ivf.quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
        sample = vectors
        if plan.train_size is not None and plan.train_size < n:
            rows = np.sort(np.random.default_rng(seed).choice(n, plan.train_size, replace=False))
            sample = vectors[rows]
        start = time.perf_counter()
        index.train(sample)
        if timings is not None:
            timings["train_s"] = time.perf_counter() - start
    start = time.perf_counter()
    index.add(vectors)
    if timings is not None:
        timings["add_s"] = time.perf_counter() - start
    return index


def ivf_centroids(index) -> np.ndarray | None:
    """The coarse centroids of an IVF index (for :func:`build_faiss`), None for other kinds."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)


@dataclass(frozen=True)
class Tuning:
    """The search knob chosen at build time and the recall@10 it gave on a sample of the corpus."""

    knob: str  # "nprobe" or "ef"
    value: int
    recall: float
    queries: int
    target: float

    def describe(self) -> str:
        reached = "" if self.recall >= self.target else f", the most this index reaches (target {self.target})"
        return (f"{self.knob}={self.value}: recall@10 {self.recall:.3f} against exact search on {self.queries} "
                f"sampled documents as queries{reached}")


def tune_search(index, vectors: np.ndarray, plan: IndexPlan, *, target: float = TARGET_RECALL,
                queries: int = TUNE_QUERIES, seed: int = 0) -> Tuning | None:
    """The smallest power of two for ``nprobe`` (IVF) or ``ef`` (HNSW) reaching recall@10 ≥ ``target``.

    Queries are ``queries`` sampled corpus vectors (each one's own row left out of both result
    lists), compared against exact search. When no setting reaches the target (PQ codes cap the
    recall), the smallest setting within 0.005 of the best recall seen is kept.
    """
    import faiss

    if plan.kind == "hnsw":
        knob, values = "ef", [16 << i for i in range(7)]  # 16 .. 1024
    elif plan.nlist is not None:
        knob, values = "nprobe", [1 << i for i in range(int(math.log2(plan.nlist)) + 1)]
        if values[-1] != plan.nlist:
            values.append(plan.nlist)
    else:
        return None
    n = len(vectors)
    rows = np.sort(np.random.default_rng(seed + 1).choice(n, min(n, queries), replace=False))
    sample = np.ascontiguousarray(vectors[rows])
    k = min(K_TUNE + 1, n)
    with blas_for_batches(len(sample)):
        _, exact = faiss.knn(sample, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    truth = _drop_self(exact, rows, k - 1)
    seen: list[tuple[int, float]] = []
    for value in values:
        found = _drop_self(faiss_search(index, sample, k, **{knob: value})[1], rows, k - 1)
        recall = float(np.mean([len(set(a[a >= 0]) & set(b[b >= 0])) / max(1, int((b >= 0).sum()))
                                for a, b in zip(found, truth)]))
        seen.append((value, recall))
        if recall >= target:
            return Tuning(knob, value, recall, len(rows), target)
    best = max(recall for _, recall in seen)
    value, recall = next((v, r) for v, r in seen if r >= best - 0.005)
    return Tuning(knob, value, recall, len(rows), target)



def _drop_self(found: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    out = np.full((len(found), k), -1, dtype=np.int64)
    for i, (hits, own) in enumerate(zip(found, rows)):
        kept = hits[hits != own][:k]
        out[i, : len(kept)] = kept
    return out


def _search_params(index, nprobe: int | None, ef: int | None):
    """SearchParameters for this index type, or None for defaults."""
    import faiss

    if nprobe is None and ef is None:
        return None
    if not isinstance(index, (faiss.IndexHNSW, faiss.IndexIVF)):  # indexes FAISS made are downcast already
        index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexHNSW) and ef is not None:
        return _cached_params("ef", int(ef))
    if isinstance(index, faiss.IndexIVF) and nprobe is not None:
        return _cached_params("nprobe", int(nprobe))
    return None


@functools.lru_cache(maxsize=128)
def _cached_params(knob: str, value: int):
    """Made once per value: building the SWIG object takes a large share of a small search."""
    import faiss

    return faiss.SearchParametersHNSW(efSearch=value) if knob == "ef" else faiss.SearchParametersIVF(nprobe=value)


@contextmanager
def blas_for_batches(n_queries: int) -> Iterator[None]:
    """Let FAISS compute a batch's exact inner products (flat search, IVF's coarse step) with BLAS.

    FAISS 1.15 takes BLAS only once queries × dimension reaches ``distance_compute_blas_threshold``
    (128,000), so a batch of 300 queries at 384 dimensions, or 1,900 at 64, is scanned one query
    at a time, an order of magnitude slower. From ``BLAS_MIN_QUERIES`` queries the threshold is
    lowered for the call and restored after (a FAISS global: not for concurrent searches from
    several Python threads).
    """
    import faiss

    if n_queries < BLAS_MIN_QUERIES:
        yield
        return
    saved = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 0
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = saved


def faiss_search(index, queries: np.ndarray, k: int, *, nprobe: int | None = None, ef: int | None = None):
    """``(scores, rows)`` of the ``k`` best rows per query; rows are −1 where fewer were found."""
    params = _search_params(index, nprobe, ef)
    with blas_for_batches(len(queries)):
        if params is None:
            return index.search(queries, k)
        return index.search(queries, k, params=params)


# --------------------------------------------------------------------------- pipeline identity


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


# --------------------------------------------------------------------------- documents


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
    """Documents from texts (ids numbered ``start + 1``, ``start + 2``, ...) or Documents as they are."""
    docs = []
    for number, item in enumerate(texts, start=start + 1):
        docs.append(item if isinstance(item, Document) else Document(str(number), str(item)))
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


class _DocFile:
    """``docs.jsonl`` of a saved index, read row by row through its memory-mapped offsets."""

    def __init__(self, folder: Path):
        self.docs_path = folder / DOCS_FILE
        self.offsets_path = folder / OFFSETS_FILE
        try:
            self.offsets = np.load(self.offsets_path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise WhitenError(f"{self.offsets_path}: unreadable ({exc})") from None
        if self.offsets.ndim != 1 or self.offsets.dtype != np.uint64 or len(self.offsets) < 1:
            raise WhitenError(f"{self.offsets_path}: not a document offsets file")
        if int(self.offsets[-1]) != self.docs_path.stat().st_size:
            raise WhitenError(f"{self.docs_path}: does not match {OFFSETS_FILE} (the folder was modified)")
        self._handle = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get(self, row: int) -> Document:
        if self._handle is None:
            self._handle = open(self.docs_path, "rb")
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        self._handle.seek(start)
        raw = self._handle.read(end - start)
        try:
            item = json.loads(raw)
            return Document(str(item["id"]), str(item["text"]))
        except (ValueError, KeyError, TypeError):
            raise WhitenError(f"{self.docs_path}: row {row} is damaged") from None

    def ids(self) -> Iterator[str]:
        with open(self.docs_path, "rb") as handle:
            for line in handle:
                yield str(json.loads(line)["id"])

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


# --------------------------------------------------------------------------- the index


class VectorIndex:
    """A FAISS index over pipeline vectors, with its documents and the pipeline that made them.

    >>> index = VectorIndex.build(vectors, ["first text", "second text"], pipeline, kind="flat")
    >>> index.save("my-index")
    >>> hits = VectorIndex.load("my-index").search(query_vectors, k=5)   # one list of Hits per query
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
    ) -> VectorIndex:
        """Index ``vectors`` (rows = ``docs``; output of ``pipeline``) with a FAISS index of ``kind``.

        ``docs`` are texts (ids 1, 2, ... by position) or :class:`Document` objects with their own
        ids, which must be unique. ``nprobe``/``ef`` set the search defaults stored with the index;
        unset, an approximate index is tuned (:func:`tune_search`) to recall@10 ≥ 0.95 against
        exact search, or uses nlist/8 and 128 when ``tune`` is false.
        """
        x = _check_vectors(vectors, pipeline.output_dim)
        docs = documents(docs)
        if len(docs) != len(x):
            raise WhitenError(f"{len(x)} vectors for {len(docs)} documents")
        _check_unique([doc.id for doc in docs])
        plan = plan_index(kind, len(x), x.shape[1], max_memory=max_memory, nlist=nlist, pq_m=pq_m, hnsw_m=hnsw_m)
        _check_knobs(nprobe, ef)
        faiss_index = build_faiss(x, plan, seed=seed)
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
    def load(cls, path: str | os.PathLike[str]) -> VectorIndex:
        """Open a saved index; refuses a folder with missing files or a pipeline that does not match."""
        import faiss

        from whiten_cli.pipeline import Pipeline

        folder = Path(path)
        if not folder.is_dir():
            raise WhitenError(f"{folder}: index folder does not exist (build one with `whiten index`)")
        for name in REQUIRED:
            if not (folder / name).exists():
                raise WhitenError(f"{folder}: not a complete index folder ({name} is missing)")
        metadata = read_metadata(folder)
        pipeline = Pipeline.load(folder / PIPELINE_DIR)
        check_pipeline(metadata, pipeline, f"{folder / PIPELINE_DIR}", folder)
        try:
            faiss_index = faiss.read_index(str(folder / INDEX_FILE))
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
            raise WhitenError(f"{folder / INDEX_FILE}: not a readable FAISS index ({reason})") from None
        stored = _DocFile(folder)
        if not faiss_index.ntotal == len(stored) == metadata["count"] or faiss_index.d != metadata["dim"]:
            raise WhitenError(f"{folder}: files disagree ({faiss_index.ntotal} vectors of dimension {faiss_index.d}, "
                              f"{len(stored)} documents, metadata says {metadata['count']} of {metadata['dim']})")
        return cls(faiss_index, pipeline, metadata, stored=stored)

    # -- properties

    def __len__(self) -> int:
        return int(self._faiss.ntotal)

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
        if not 0 <= row < len(self):
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

        from whiten_cli.storage import atomic_directory

        target = Path(path)
        check_target(target)
        with atomic_directory(target) as tmp:
            self.pipeline.save(tmp / PIPELINE_DIR)
            offsets = self._write_docs(tmp)
            np.save(tmp / OFFSETS_FILE, offsets, allow_pickle=False)
            faiss.write_index(self._faiss, str(tmp / INDEX_FILE))
            (tmp / METADATA_FILE).write_text(json.dumps(self.metadata, indent=2, ensure_ascii=False) + "\n",
                                             encoding="utf-8")
        if self._stored is not None:
            self._stored.close()
        self._stored, self._pending = _DocFile(target), []
        return target

    def _write_docs(self, folder: Path) -> np.ndarray:
        """docs.jsonl in ``folder``: the stored documents (copied as bytes) then the new ones."""
        offsets = [np.zeros(1, dtype=np.uint64)]
        position = 0
        if self._stored is not None:
            shutil.copyfile(self._stored.docs_path, folder / DOCS_FILE)
            offsets = [np.asarray(self._stored.offsets, dtype=np.uint64)]
            position = int(offsets[0][-1])
        new = np.empty(len(self._pending), dtype=np.uint64)
        with open(folder / DOCS_FILE, "ab") as handle:
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
        if k < 1:
            raise WhitenError(f"-k must be at least 1, got {k}")
        _check_knobs(nprobe, ef)
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

    def encode(self, texts: Sequence[str], **options) -> np.ndarray:
        """Pipeline vectors of ``texts`` (for queries or new documents)."""
        return self.pipeline.transform(self.encoder(**options).encode(list(texts)))

    def search_texts(self, texts: Sequence[str], k: int = 10, **options) -> list[list[Hit]]:
        """Encode ``texts`` through the index's pipeline and :meth:`search` them."""
        if k < 1:
            raise WhitenError(f"-k must be at least 1, got {k}")
        return self.search(self.encode(texts), k, **options)


def append_to_index(path: str | os.PathLike[str], vectors: np.ndarray, docs: Sequence[str | Document]) -> VectorIndex:
    """Load the index at ``path``, add documents, and swap the result in atomically."""
    index = VectorIndex.load(path)
    index.add(vectors, docs)
    index.save(path)
    return index


# --------------------------------------------------------------------------- checks


def read_metadata(folder: Path) -> dict:
    meta_file = folder / METADATA_FILE
    try:
        metadata = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WhitenError(f"{meta_file}: not valid index metadata ({exc})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise WhitenError(f"{meta_file}: not a whiten index (format is not {FORMAT!r})")
    if metadata.get("format_version", 0) > FORMAT_VERSION:
        raise WhitenError(f"{meta_file}: written by a newer whiten (format {metadata['format_version']}); upgrade whiten")
    for key in ("pipeline", "dim", "count", "kind", "factory"):
        if key not in metadata:
            raise WhitenError(f"{meta_file}: incomplete index metadata (no {key!r})")
    if not isinstance(metadata["pipeline"], dict) or "fingerprint" not in metadata["pipeline"]:
        raise WhitenError(f"{meta_file}: incomplete index metadata (no pipeline fingerprint)")
    return metadata


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
    if nprobe is not None and nprobe < 1:
        raise WhitenError(f"--nprobe must be at least 1, got {nprobe}")
    if ef is not None and ef < 1:
        raise WhitenError(f"--ef must be at least 1, got {ef}")


def check_target(target: Path) -> None:
    """Never replace a folder that is not a whiten index (a mistyped -o must not delete data)."""
    if target.exists() and not target.is_dir():
        raise WhitenError(f"{target}: exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not (target / METADATA_FILE).is_file():
        raise WhitenError(f"{target}: exists and is not a whiten index; refusing to replace it")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
