"""FAISS operations on L2-normalized vectors: build and train an index, tune its search knob, search."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from whiten_cli.errors import WhitenError
from whiten_cli.index_plan import IndexPlan

HNSW_EF_CONSTRUCTION = 40  # FAISS's default
TARGET_RECALL = 0.95  # build-time tuning of nprobe/ef: recall@10 against exact search
TUNE_QUERIES = 256  # corpus vectors used as queries for the tuning
K_TUNE = 10
PQ_TRAIN_PER_CENTROID = 64  # points per PQ centroid used to train each sub-quantizer
KMEANS_ITERATIONS = 10  # FAISS's IVF default, also used for the PQ sub-quantizers
BLAS_MIN_QUERIES = 8  # from this many queries a call, BLAS beats FAISS's per-query scan (bench_search.py)


def normalized(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32, C-contiguous."""
    x = np.array(vectors, dtype=np.float32, copy=True, order="C")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x /= np.maximum(norms, np.finfo(np.float32).tiny)
    return x


def build_faiss(vectors: np.ndarray, plan: IndexPlan, *, seed: int = 0, centroids: np.ndarray | None = None,
                timings: dict | None = None, add: bool = True):
    """A trained FAISS index of ``plan`` holding ``vectors`` (already L2-normalized, float32).

    ``centroids`` (nlist, dim) reuses the coarse k-means of another IVF index of the same vectors
    instead of training it again. ``timings``, when given, receives ``train_s`` and ``add_s``.
    ``add=False`` returns it trained but empty (for vectors added elsewhere and merged).
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
    if not add:
        return index
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
