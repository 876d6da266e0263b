"""Batched exact search: whiten's ``faiss_search`` against a plain FAISS ``index.search`` call.

FAISS 1.15 computes exact inner products with BLAS only once queries × dimension reaches its
``distance_compute_blas_threshold``; below that it scans the corpus once per query. whiten lowers
the threshold for calls of ``BLAS_MIN_QUERIES`` queries or more (``index.blas_for_batches``). This
script measures both paths on the same index and queries, in alternating rounds, for flat indexes
at the dimensions whiten produces and for an IVF index (whose coarse step is a flat search), and
checks that both return the same rows.

    python benchmarks/bench_search.py            # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's whiten_cli

from whiten_cli import index as ix  # noqa: E402
from whiten_cli.encoder import cpu_description  # noqa: E402

K = 10


def seconds_per_query(search, queries: np.ndarray, min_seconds: float = 0.2) -> float:
    """Mean seconds per query over repeated calls with the whole batch (at least ``min_seconds``)."""
    search(queries)  # warm-up
    calls, start = 0, time.perf_counter()
    while calls == 0 or time.perf_counter() - start < min_seconds:
        search(queries)
        calls += 1
    return (time.perf_counter() - start) / (calls * len(queries))


def measure(index, queries: np.ndarray, rounds: int, **knobs) -> tuple[float, float, bool]:
    """(plain FAISS, whiten) median seconds per query, and whether both found the same rows."""
    import faiss

    params = faiss.SearchParametersIVF(nprobe=knobs["nprobe"]) if "nprobe" in knobs else None

    def plain(q):
        return index.search(q, K, params=params) if params else index.search(q, K)

    def whiten(q):
        return ix.faiss_search(index, q, K, **knobs)

    times = {plain: [], whiten: []}
    for r in range(rounds):
        for search in (plain, whiten) if r % 2 == 0 else (whiten, plain):
            times[search].append(seconds_per_query(search, queries))
    same = bool(np.array_equal(plain(queries)[1], whiten(queries)[1]))
    return float(np.median(times[plain])), float(np.median(times[whiten])), same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=int, default=20_000, help="vectors in the flat indexes")
    parser.add_argument("--ivf-corpus", type=int, default=100_000, help="vectors in the IVF index")
    parser.add_argument("--batches", default="1,8,64,256,1024", help="queries per call")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="FAISS (OpenMP) threads")
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    rng = np.random.default_rng(0)
    print(f"{cpu_description()}, load average {os.getloadavg()[0]:.2f} at the start; faiss {faiss.__version__}, "
          f"{args.threads} thread(s), distance_compute_blas_threshold {faiss.cvar.distance_compute_blas_threshold}; "
          f"µs per query, median of {args.rounds} alternating rounds")
    print(f"{'index':28} {'dim':>4} {'queries':>7} {'plain FAISS':>12} {'whiten':>10} {'speed-up':>9}  same rows")
    setups = []
    for dim in (64, 128, 384):
        corpus = ix.normalized(rng.standard_normal((args.corpus, dim)).astype(np.float32))
        flat = faiss.IndexFlatIP(dim)
        flat.add(corpus)
        setups.append((f"Flat, N={args.corpus:,}", flat, dim, {}))
    dim = 128
    corpus = ix.normalized(rng.standard_normal((args.ivf_corpus, dim)).astype(np.float32))
    ivf = faiss.index_factory(dim, "IVF1024,Flat", faiss.METRIC_INNER_PRODUCT)
    ivf.train(corpus[: 64 * 1024])
    ivf.add(corpus)
    setups.append((f"IVF1024,Flat, N={args.ivf_corpus:,}", ivf, dim, {"nprobe": 16}))
    for name, index, dim, knobs in setups:
        for batch in batches:
            queries = ix.normalized(rng.standard_normal((batch, dim)).astype(np.float32))
            plain, whiten, same = measure(index, queries, args.rounds, **knobs)
            print(f"{name:28} {dim:>4} {batch:>7} {plain * 1e6:>12,.0f} {whiten * 1e6:>10,.0f} "
                  f"{plain / whiten:>8.2f}×  {'yes' if same else 'NO'}", flush=True)


if __name__ == "__main__":
    main()
