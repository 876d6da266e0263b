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
writes a complete new folder beside the old one (fsynced) and swaps it in with one rename-exchange,
so an error, a Ctrl-C, a SIGTERM or a SIGKILL part-way leaves a complete index at the path, the
previous one or the new one. Writers lock the folder (flock on the folder itself): an append
reloads the latest index under the lock, so concurrent appends all land; readers take a shared
lock while they open the files, so they never mix two versions.

The code is split along its seams: :mod:`whiten_cli.index_plan` (which index to build),
:mod:`whiten_cli.index_faiss` (FAISS operations), :mod:`whiten_cli.index_docs` (the document
store) and :mod:`whiten_cli.index_folder` (:class:`VectorIndex` and the folder). This module
re-exports their public names.

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

from whiten_cli.index_docs import DOCS_FILE, OFFSETS_FILE, Document, Hit, documents, records_to_documents
from whiten_cli.index_faiss import (
    BLAS_MIN_QUERIES,
    HNSW_EF_CONSTRUCTION,
    K_TUNE,
    KMEANS_ITERATIONS,
    PQ_TRAIN_PER_CENTROID,
    TARGET_RECALL,
    TUNE_QUERIES,
    Tuning,
    blas_for_batches,
    build_faiss,
    faiss_search,
    ivf_centroids,
    normalized,
    tune_search,
)
from whiten_cli.index_folder import (
    FORMAT,
    FORMAT_VERSION,
    INDEX_FILE,
    METADATA_FILE,
    METRIC,
    PIPELINE_DIR,
    REQUIRED,
    IndexHeader,
    VectorIndex,
    append_records,
    append_to_index,
    check_pipeline,
    check_search_options,
    check_target,
    pipeline_fingerprint,
    read_header,
    read_metadata,
)
from whiten_cli.index_plan import (
    DEFAULT_EF,
    FLAT_LIMIT,
    HNSW_M,
    ID_BYTES,
    KINDS,
    MIN_PER_CENTROID,
    TRAIN_PER_LIST,
    IndexPlan,
    choose_index,
    default_pq_m,
    estimate_bytes,
    ivf_lists,
    parse_size,
    plan_index,
)

__all__ = [
    "BLAS_MIN_QUERIES", "DEFAULT_EF", "DOCS_FILE", "FLAT_LIMIT", "FORMAT", "FORMAT_VERSION", "HNSW_EF_CONSTRUCTION",
    "HNSW_M", "ID_BYTES", "INDEX_FILE", "IndexHeader", "KINDS", "KMEANS_ITERATIONS", "K_TUNE", "METADATA_FILE", "METRIC",
    "MIN_PER_CENTROID", "OFFSETS_FILE", "PIPELINE_DIR", "PQ_TRAIN_PER_CENTROID", "REQUIRED", "TARGET_RECALL",
    "TRAIN_PER_LIST", "TUNE_QUERIES", "Document", "Hit", "IndexPlan", "Tuning", "VectorIndex", "append_records",
    "append_to_index", "blas_for_batches", "build_faiss", "check_pipeline", "check_search_options", "check_target", "choose_index",
    "default_pq_m", "documents", "estimate_bytes", "faiss_search", "ivf_centroids", "ivf_lists", "normalized",
    "parse_size", "pipeline_fingerprint", "plan_index", "read_header", "read_metadata", "records_to_documents", "tune_search",
]
