"""Retrieval with FAISS on whitened vectors: quality on STS-B, cost on synthetic corpora.

Quality. The corpus is every distinct sentence of STS-B (train, dev and test: 15,487). Each pair
scored ≥ 4 (sentence1 ≠ sentence2) makes sentence1 a query and sentence2 a relevant document; a
query's own sentence is left out of its results. MRR@10, recall@1 and recall@10 of exact (flat)
search, for raw vectors, whitening k = 384/256/128/64 (fitted on the corpus), k = 128 with γ = 0.5
and γ = 0 (PCA), and JL projections, with the default model's own (mean) pooling, CLS and
first-last-avg; each 128-d variant against the issue's target, with a paired bootstrap interval of
ΔMRR@10. Then the approximate index kinds on the same real vectors (raw-384, whitened-128 and
PCA-128, mean pooling).

Cost. Vectors drawn from a Gaussian mixture fitted to the corpus's mean-pooled vectors (one
Gaussian, once whitened, is isotropic and has no neighbourhood structure at all; a calibration
step measures how each synthetic source compares with the real vectors for IVF), N = 100k and 1M,
raw-384 (normalized) against whitened-128 and PCA-128: index bytes, build time, queries per
second (one query a call, and 1000 queries in one call) and recall@10 of hnsw/ivf/ivfpq against
flat search of the same vectors. For each approximate index the search knob (efSearch, nprobe) is raised until
recall@10 ≥ 0.95, and the speed is measured there. ivfpq is whiten's default (SQ8); up to
--pq-peer-max, PQ with one sub-quantizer per dimension (the same bytes) is measured beside it.

Figures of earlier runs are kept in CACHE_DIR/results.json, so parts can be run apart
(--skip-quality, --skip-cost, --sizes) and the README section is written from all of them.

Run from the repository root (encodes 15k sentences once, a minute or three on 2 cores, cached):

    python benchmarks/bench_retrieval.py --cache-dir /tmp/whiten-bench --readme README.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's whiten_cli

from whiten_cli import index as ix  # noqa: E402
from whiten_cli.encoder import cpu_description  # noqa: E402
from whiten_cli.pipeline import Pipeline  # noqa: E402
from whiten_cli.projection import RandomProjection  # noqa: E402
from whiten_cli.stats import GaussianStats  # noqa: E402
from whiten_cli.sts import load_dataset  # noqa: E402
from whiten_cli.whitening import Eigenbasis  # noqa: E402

SPLITS = ("stsb-train", "stsb-dev", "stsb")
POOLINGS = ("model", "cls", "first-last-avg")
POOLING_NAMES = {"model": "mean (model's own)", "cls": "CLS", "first-last-avg": "first-last-avg"}
TARGET_RECALL = 0.95
K = 10
# "Equal or better" MRR@10, as a paired non-inferiority test: the lower end of the 95% bootstrap
# interval of (variant − raw), over the same queries, is above −MARGIN. One point of MRR@10.
MARGIN = 0.01
BOOTSTRAP = 4000
PCA = "whitened k=128, γ=0 (PCA)"
PQ_PEER = "ivfpq, PQ(d)"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data


def stsb_task() -> tuple[list[str], list[int], list[set[int]]]:
    """Corpus sentences, query rows and each query's relevant rows."""
    pairs = []
    for name in SPLITS:
        for subset in load_dataset(name).subsets:
            pairs += zip(subset.sentences1, subset.sentences2, subset.scores)
    corpus = list(dict.fromkeys(text for a, b, _ in pairs for text in (a, b)))
    row = {text: i for i, text in enumerate(corpus)}
    relevant: dict[int, set[int]] = {}
    for a, b, score in pairs:
        if score >= 4 and a != b:
            relevant.setdefault(row[a], set()).add(row[b])
    queries = sorted(relevant)
    return corpus, queries, [relevant[q] for q in queries]


def encoded(corpus: list[str], cache: Path, batch_size: int) -> dict[str, np.ndarray]:
    """Pooled vectors of the corpus for each pooling, from one forward pass, cached on disk."""
    from whiten_cli.encoder import Encoder, resolve_model

    source = resolve_model(None)
    key = hashlib.sha256(("\n".join(corpus) + source.fingerprint).encode()).hexdigest()[:16]
    files = {pooling: cache / f"stsb-{pooling}-{key}.npy" for pooling in POOLINGS}
    if all(path.exists() for path in files.values()):
        say(f"using cached vectors {', '.join(str(p) for p in files.values())}")
        return {pooling: np.load(path) for pooling, path in files.items()}
    say(f"encoding {len(corpus)} sentences ({', '.join(POOLINGS)} pooling, one pass) ...")
    encoder = Encoder(None, pooling="model", batch_size=batch_size)
    start = time.perf_counter()

    def progress(done, total):
        if done == total or done % (20 * batch_size) == 0:
            say(f"  {done}/{total} ({time.perf_counter() - start:.0f} s)")

    vectors = encoder.encode_poolings(corpus, POOLINGS, progress=progress)
    cache.mkdir(parents=True, exist_ok=True)
    for pooling, path in files.items():
        np.save(path, vectors[pooling], allow_pickle=False)
    return vectors


def variants(raw: np.ndarray, pooling: str) -> list[tuple[str, Pipeline]]:
    """Pipelines compared: raw, whitening-k, JL projections (fitted on the corpus)."""
    basis = Eigenbasis.fit(GaussianStats.of(raw))
    common = dict(model="all-MiniLM-L6-v2", model_fingerprint="bench", pooling=pooling, max_length=128,
                  input_dim=raw.shape[1])
    out = [("raw", Pipeline(**common))]
    for k in (384, 256, 128, 64):
        out.append((f"whitened k={k}", Pipeline(**common, whitening=basis.whitening(k))))
    out.append(("whitened k=128, γ=0.5", Pipeline(**common, whitening=basis.whitening(128, gamma=0.5))))
    out.append((PCA, Pipeline(**common, whitening=basis.whitening(128, gamma=0.0))))
    for n in (256, 128):
        out.append((f"JL {n} (no whitening)", Pipeline(**common, projection=RandomProjection.create(raw.shape[1], n, 0))))
    out.append(("whitened k=128 → JL 64", Pipeline(**common, whitening=basis.whitening(128),
                                                   projection=RandomProjection.create(128, 64, 0))))
    return out


# --------------------------------------------------------------------------- measures


def per_query(found: np.ndarray, queries: list[int], relevant: list[set[int]]) -> dict[str, np.ndarray]:
    """From each query's found rows (−1 padded): the reciprocal rank of its first relevant document
    in the top K (0 if none), recall@1 and recall@10; the query's own sentence is skipped."""
    rr, r1, r10 = [], [], []
    for q, rel, rows in zip(queries, relevant, found):
        ranked = [int(row) for row in rows if row != q and row >= 0][:K]
        first = next((i for i, row in enumerate(ranked) if row in rel), None)
        rr.append(0.0 if first is None else 1.0 / (first + 1))
        r1.append(len(rel & set(ranked[:1])) / len(rel))
        r10.append(len(rel & set(ranked)) / len(rel))
    return {"mrr10": np.array(rr), "r1": np.array(r1), "r10": np.array(r10)}


def retrieval_scores(per: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: float(values.mean()) for name, values in per.items()}


def paired_interval(variant: np.ndarray, baseline: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Mean of variant − baseline over the same queries, and its 95% bootstrap interval."""
    diff = np.asarray(variant) - np.asarray(baseline)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (BOOTSTRAP, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)


def verdict(low: float) -> str:
    """From the lower end of the interval of (variant − raw) MRR@10: 'better' (above 0), 'equal'
    (non-inferior: above −MARGIN) or 'worse'."""
    if low > 0:
        return "better"
    return "equal" if low >= -MARGIN else "worse"


def qps_single(index, queries: np.ndarray, budget_s: float = 2.0, **knobs) -> float:
    """Queries per second, one query per call, for about ``budget_s`` seconds (at least 10 queries)."""
    ix.faiss_search(index, queries[:1], K, **knobs)  # warm-up
    done, start = 0, time.perf_counter()
    while done < len(queries) and (done < 10 or time.perf_counter() - start < budget_s):
        ix.faiss_search(index, queries[done : done + 1], K, **knobs)
        done += 1
    return done / (time.perf_counter() - start)


def qps_batch(index, queries: np.ndarray, repeats: int = 3, **knobs) -> float:
    """Queries per second, all queries in one call (best of ``repeats``)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        ix.faiss_search(index, queries, K, **knobs)
        best = min(best, time.perf_counter() - start)
    return len(queries) / best


def interleaved_qps(targets: list[tuple], budget_s: float, rounds: int) -> list[tuple[float, float]]:
    """(single, batched) queries per second of each ``(index, queries, knobs)``, timed in ``rounds``
    alternating rounds, the median round of each: a slow spell on shared cores then slows every
    index compared, not one row, so ratios between rows hold."""
    single = [[] for _ in targets]
    batch = [[] for _ in targets]
    for r in range(rounds):
        order = range(len(targets)) if r % 2 == 0 else reversed(range(len(targets)))
        for i in order:
            index, queries, knobs = targets[i]
            single[i].append(qps_single(index, queries, budget_s=budget_s / rounds, **knobs))
            batch[i].append(qps_batch(index, queries, repeats=1, **knobs))
    return [(float(np.median(s)), float(np.median(b))) for s, b in zip(single, batch)]


def without_self(rows: np.ndarray, queries: list[int]) -> np.ndarray:
    """Each query's top K rows other than its own sentence (−1 padded)."""
    out = np.full((len(rows), K), -1, dtype=np.int64)
    for i, (row, q) in enumerate(zip(rows, queries)):
        kept = row[row != q][:K]
        out[i, : len(kept)] = kept
    return out


def recall_against(rows: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a[a >= 0]) & set(b[b >= 0])) / max(1, (b >= 0).sum()) for a, b in zip(rows, truth)]))


def index_bytes(index) -> int:
    import faiss

    return int(faiss.serialize_index(index).size)


def knob_name(kind: str) -> str | None:
    return {"hnsw": "ef", "ivf": "nprobe", "ivfpq": "nprobe"}.get(kind)


def tune(index, plan: ix.IndexPlan, queries: np.ndarray, truth: np.ndarray) -> tuple[int, float]:
    """The smallest knob (powers of two) reaching TARGET_RECALL: (knob, recall).

    When recall stops growing first (PQ codes cap it: doubling the knob adds < 0.002), the knob
    where it stopped.
    """
    name = knob_name(plan.kind)
    values = [16 << i for i in range(9)] if name == "ef" else [1 << i for i in range(int(np.log2(plan.nlist)) + 1)]
    previous = None
    for value in values:
        recall = recall_against(ix.faiss_search(index, queries, K, **{name: value})[1], truth)
        if recall >= TARGET_RECALL:
            return value, recall
        if previous is not None and recall - previous[1] < 0.002:
            return previous
        previous = (value, recall)
    return previous


# --------------------------------------------------------------------------- quality


def quality(vectors: dict[str, np.ndarray], corpus, queries, relevant, args) -> dict:
    """Flat search for every pooling and variant. Each row carries its MRR@10 difference to raw
    vectors of the same pooling (``delta``) and to the model's own raw vectors (``delta_default``),
    with 95% paired bootstrap intervals over the queries."""
    docs = [ix.Document(str(i), text) for i, text in enumerate(corpus)]
    results = {"rows": [], "ann": []}
    default_rr = None
    for pooling in POOLINGS:
        raw = vectors[pooling]
        raw_rr = None
        rows, timed = [], []
        for name, pipe in variants(raw, pooling):
            x = pipe.transform(raw)
            index = ix.VectorIndex.build(x, docs, pipe, kind="flat")
            q = ix.normalized(x[queries])
            per = per_query(ix.faiss_search(index.faiss_index, q, K + 1)[1], queries, relevant)
            if name == "raw":
                raw_rr = per["mrr10"]
                default_rr = raw_rr if pooling == "model" else default_rr
            row = {"pooling": pooling, "variant": name, "dim": pipe.output_dim,
                   "bytes": index_bytes(index.faiss_index), **retrieval_scores(per),
                   "delta": paired_interval(per["mrr10"], raw_rr),
                   "delta_default": paired_interval(per["mrr10"], default_rr)}
            rows.append(row)
            timed.append((index.faiss_index, q, {}))
        for row, (single, batch) in zip(rows, interleaved_qps(timed, args.single_budget, args.rounds)):
            row.update(qps_single=single, qps_batch=batch)
            results["rows"].append(row)
            say(f"  {pooling:5} {row['variant']:24} MRR@10 {row['mrr10']:.4f} ({interval(row['delta'])}) "
                f"R@1 {row['r1']:.4f} R@10 {row['r10']:.4f} {single:7.0f} q/s single {batch:8.0f} q/s batch")
    # approximate kinds on the real vectors (mean pooling), default knobs
    raw = vectors["model"]
    for name, pipe in variants(raw, "model"):
        if name not in ("raw", "whitened k=128", PCA):
            continue
        x = pipe.transform(raw)
        q = ix.normalized(x[queries])
        flat = ix.VectorIndex.build(x, docs, pipe, kind="flat")
        truth = without_self(ix.faiss_search(flat.faiss_index, q, K + 1)[1], queries)
        rows, timed = [], []
        for kind, options in (("flat", {}), ("hnsw", {}), ("ivf", {}), ("ivfpq", {}), ("ivfpq", {"pq_m": x.shape[1] // 2})):
            start = time.perf_counter()
            index = flat if kind == "flat" else ix.VectorIndex.build(x, docs, pipe, kind=kind, seed=0, **options)
            build = time.perf_counter() - start  # includes the tuning of nprobe/ef
            defaults = index.metadata["search"]
            knobs = {"nprobe": defaults.get("nprobe"), "ef": defaults.get("ef")}
            found = ix.faiss_search(index.faiss_index, q, K + 1, **knobs)[1]
            scores = retrieval_scores(per_query(found, queries, relevant))
            rows.append({"variant": name, "kind": kind, "factory": index.factory, "dim": pipe.output_dim,
                         "knob": ", ".join(f"{k}={v}" for k, v in knobs.items() if v is not None) or "exact",
                         "bytes": index_bytes(index.faiss_index), "build_s": build, **scores,
                         "recall_vs_flat": recall_against(without_self(found, queries), truth)})
            timed.append((index.faiss_index, q, knobs))
        for row, (single, batch) in zip(rows, interleaved_qps(timed, args.single_budget, args.rounds)):
            row.update(qps_single=single, qps_batch=batch)
            results["ann"].append(row)
            say(f"  {name:16} {row['factory']:16} {row['knob']:11} recall@10 vs flat {row['recall_vs_flat']:.3f} "
                f"MRR@10 {row['mrr10']:.4f} {single:7.0f} q/s single")
    return results


# --------------------------------------------------------------------------- cost


@dataclass(frozen=True)
class Mixture:
    """A Gaussian mixture fitted to real vectors: k-means centres, their weights, and the pooled
    within-cluster covariance (as its Cholesky factor). One component is the fitted Gaussian."""

    centres: np.ndarray
    weights: np.ndarray
    factor: np.ndarray

    @classmethod
    def fit(cls, raw: np.ndarray, components: int, seed: int = 1) -> Mixture:
        import faiss

        x = np.ascontiguousarray(raw, dtype=np.float32)
        if components == 1:
            centres, labels = x.mean(axis=0, keepdims=True), np.zeros(len(x), dtype=np.int64)
        else:
            kmeans = faiss.Kmeans(x.shape[1], components, niter=20, seed=seed, max_points_per_centroid=1024)
            kmeans.cp.min_points_per_centroid = 1
            kmeans.train(x)
            centres, labels = kmeans.centroids, kmeans.index.search(x, 1)[1][:, 0]
        residuals = x - centres[labels]
        covariance = np.cov(residuals.T.astype(np.float64)) + 1e-9 * np.eye(x.shape[1])
        weights = np.bincount(labels, minlength=len(centres)) / len(x)
        return cls(centres.astype(np.float32), weights, np.linalg.cholesky(covariance).astype(np.float32))

    def draw(self, n: int, seed: int, chunk: int = 100_000) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.centres.shape[1]), dtype=np.float32)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            component = rng.choice(len(self.centres), m, p=self.weights)
            z = rng.standard_normal((m, self.centres.shape[1]), dtype=np.float32)
            out[start : start + m] = self.centres[component] + z @ self.factor.T
        return out


def transform_chunked(pipe: Pipeline, x: np.ndarray, chunk: int = 100_000) -> np.ndarray:
    out = np.empty((len(x), pipe.output_dim), dtype=np.float32)
    for start in range(0, len(x), chunk):
        out[start : start + chunk] = pipe.transform(x[start : start + chunk])
    return out


def cost_pipelines(raw_real: np.ndarray) -> list[tuple[str, Pipeline]]:
    basis = Eigenbasis.fit(GaussianStats.of(raw_real))
    common = dict(model="all-MiniLM-L6-v2", model_fingerprint="bench", pooling="model", max_length=128,
                  input_dim=raw_real.shape[1])
    return [("raw 384", Pipeline(**common)), ("whitened 128", Pipeline(**common, whitening=basis.whitening(128))),
            ("PCA 128", Pipeline(**common, whitening=basis.whitening(128, gamma=0.0)))]


def calibration(raw_real: np.ndarray, args) -> list[dict]:
    """How hard each synthetic model is for IVF, against the real vectors at the same size.

    1000 held-out vectors query the other ~14.5k; recall@10 of IVF against flat for a few nprobe.
    """
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(raw_real))
    sources = [("real STS-B vectors", raw_real[perm])]
    for components in sorted({1, args.components}):
        name = "one Gaussian" if components == 1 else f"mixture of {components} Gaussians"
        sources.append((name, Mixture.fit(raw_real, components).draw(len(raw_real), seed=3)))
    rows = []
    for rep, pipe in cost_pipelines(raw_real):
        for name, x in sources:
            v = ix.normalized(pipe.transform(x))
            q, base = v[:1000], v[1000:]
            truth = ix.faiss_search(ix.build_faiss(base, ix.plan_index("flat", len(base), v.shape[1])), q, K)[1]
            plan = ix.plan_index("ivf", len(base), v.shape[1])
            index = ix.build_faiss(base, plan)
            recalls = {p: recall_against(ix.faiss_search(index, q, K, nprobe=p)[1], truth) for p in (4, 8, 16, 32)}
            rows.append({"rep": rep, "source": name, "factory": plan.factory, "recall": recalls})
            say(f"  calibration {rep:12} {name:28} {plan.factory} "
                + " ".join(f"nprobe={p}: {r:.3f}" for p, r in recalls.items()))
    return rows


def pq_peer_plan(n: int, d: int) -> ix.IndexPlan:
    """PQ with one 1-d sub-quantizer per dimension: the same bytes as the SQ8 that ``ivfpq`` builds
    by default (and what it built before), measured beside it as its peer."""
    half = ix.plan_index("ivfpq", n, d, pq_m=d // 2)
    return replace(half, factory=f"IVF{half.nlist},PQ{d}", pq_m=d)


def cost(raw_real: np.ndarray, args) -> list[dict]:
    mixture = Mixture.fit(raw_real, args.components)
    rows = []
    for n in args.sizes:
        say(f"cost at N = {n:,}: drawing vectors ...")
        x = mixture.draw(n, seed=1)
        xq = mixture.draw(args.queries, seed=2)
        for rep, pipe in cost_pipelines(raw_real):
            v = transform_chunked(pipe, x)
            q = ix.normalized(pipe.transform(xq))
            d = v.shape[1]
            kinds = ["flat", "ivf", "ivfpq"] + (["hnsw"] if n <= args.hnsw_max else [])
            kinds += [PQ_PEER] if n <= args.pq_peer_max else []
            truth = centroids = None
            for label in kinds:
                plan = pq_peer_plan(n, d) if label == PQ_PEER else ix.plan_index(label, n, d)
                kind = plan.kind
                start = time.perf_counter()
                timings: dict = {}
                index = ix.build_faiss(v, plan, centroids=centroids if kind == "ivfpq" else None, timings=timings)
                build = time.perf_counter() - start
                if kind == "ivf":
                    centroids, coarse_s = ix.ivf_centroids(index), timings["train_s"]
                if kind == "flat":
                    knob, recall, knobs = None, 1.0, {}
                    truth = ix.faiss_search(index, q, K)[1]
                else:
                    knob, recall = tune(index, plan, q, truth)
                    knobs = {knob_name(kind): knob}
                if kind == "ivfpq":  # its coarse k-means is the IVF index's (same vectors, same seed),
                    build += coarse_s  # trained once: count that training time here too
                row = {"n": n, "rep": rep, "dim": d, "kind": label, "factory": plan.factory,
                       "bytes": index_bytes(index), "build_s": build,
                       "knob": f"{knob_name(kind)}={knob}" if knob else "exact", "recall": recall,
                       "qps_single": qps_single(index, q, budget_s=args.single_budget, **knobs),
                       "qps_batch": qps_batch(index, q, repeats=2, **knobs)}
                rows.append(row)
                say(f"  {rep:12} {plan.factory:16} {row['bytes'] / 2**20:8.1f} MiB build {build:6.1f} s "
                    f"{row['knob']:11} recall@10 {recall:.3f} "
                    f"{row['qps_single']:8.0f} q/s single {row['qps_batch']:8.0f} q/s batch")
                del index
            del v
        del x
    return rows


# --------------------------------------------------------------------------- report


def interval(delta: list[float] | tuple[float, float, float]) -> str:
    mean, low, high = delta
    return f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]"


def mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def report(quality_results: dict | None, calibration_rows: list[dict] | None, cost_rows: list[dict] | None,
           args, seconds: float, runs: list[dict] | None = None) -> str:
    lines = ["### Retrieval", ""]
    lines += [
        f"Measured by `benchmarks/bench_retrieval.py` on {cpu_description()} (2 shared cores; other jobs ran at "
        f"the same time, so timings carry some noise), faiss {faiss_version()}, one FAISS thread unless a run's "
        f"command below sets `--threads`. "
        f"Reproduce everything with `{args.command}` (about {seconds / 60:.0f} minutes here); the figures come "
        "from these runs, whose results the script merges:",
        "",
    ]
    for run in runs or []:
        lines.append(f"- `{run['command']}` ({run['seconds'] / 60:.0f} min)")
    lines += [
        "",
        "Queries per second count the index search only (encoding a query with the model adds a few ms). "
        "Ratios are measured within one run; the STS-B indexes of one table block are timed in alternating "
        "rounds (median round shown), so a slow spell on the shared cores slows every row compared.",
        "",
    ]
    if quality_results:
        lines += [
            "**Quality on STS-B.** Corpus: every distinct sentence of STS-B train+dev+test (15,487). Each pair "
            "scored ≥ 4 makes sentence1 a query and sentence2 its relevant document (1,924 queries); the "
            "query's own sentence is left out of its results. Exact (flat) search; whitening and JL fitted "
            "on the corpus; the 384-d raw vectors of each pooling are its baseline. ΔMRR@10: the mean "
            "difference to that baseline over the same queries, with its 95% paired bootstrap interval "
            f"({BOOTSTRAP:,} resamples of the queries).",
            "",
            "| pooling | vectors | dim | index | MRR@10 | ΔMRR@10 vs raw [95%] | R@1 | R@10 | q/s single | q/s batch |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in quality_results["rows"]:
            delta = "—" if row["variant"] == "raw" else interval(row["delta"])
            lines.append(f"| {POOLING_NAMES[row['pooling']]} | {row['variant']} | {row['dim']} | {mib(row['bytes'])} | "
                         f"{row['mrr10']:.4f} | {delta} | {row['r1']:.4f} | {row['r10']:.4f} | "
                         f"{row['qps_single']:,.0f} | {row['qps_batch']:,.0f} |")
        lines += ["", *target_lines(quality_results), ""]
        lines += [
            "**Approximate indexes on the same real vectors** (mean pooling; the search knob is the one "
            "`whiten index` tunes at build time, for recall@10 ≥ 0.95 on 256 corpus sentences as queries; "
            "build time includes that tuning; recall@10 against flat search of the same vectors, "
            "for the 1,924 STS-B queries):",
            "",
            "| vectors | index | knob | bytes | build s | recall@10 vs flat | MRR@10 | q/s single | q/s batch |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in quality_results["ann"]:
            lines.append(f"| {row['variant']} | `{row['factory']}` | {row['knob']} | {mib(row['bytes'])} | "
                         f"{row['build_s']:.1f} | {row['recall_vs_flat']:.3f} | {row['mrr10']:.4f} | "
                         f"{row['qps_single']:,.0f} | {row['qps_batch']:,.0f} |")
        lines.append("")
    if calibration_rows:
        lines += [
            f"**Synthetic vectors.** Vectors drawn from one Gaussian fitted to the corpus are isotropic once "
            f"whitened: no neighbourhood structure, far harder for approximate search than real sentences. The "
            f"cost side therefore draws from a mixture of {args.components} Gaussians fitted to the corpus's "
            "mean-pooled vectors (k-means centres, pooled within-cluster covariance). How hard each is for IVF "
            "at the real corpus's size (recall@10 against flat, 1,000 held-out vectors as queries):",
            "",
            "| vectors | source | index | " + " | ".join(f"nprobe={p}" for p in calibration_rows[0]["recall"]) + " |",
            "|---|---|---|" + "---:|" * len(calibration_rows[0]["recall"]),
        ]
        for row in calibration_rows:
            lines.append(f"| {row['rep']} | {row['source']} | `{row['factory']}` | "
                         + " | ".join(f"{r:.3f}" for r in row["recall"].values()) + " |")
        lines += ["", "The mixture is close to real data for raw and PCA vectors and harder than real data for "
                  "whitened ones, so it does not flatter whitening.", ""]
    if cost_rows:
        sizes = sorted({row["n"] for row in cost_rows})
        peer = [row["n"] for row in cost_rows if row["kind"] == PQ_PEER]
        lines += [
            f"**Cost at N = {' and '.join(f'{n:,}' for n in sizes)}** (mixture draws; {args.queries} queries "
            f"drawn the same way). Knob: the smallest power of two giving recall@10 ≥ {TARGET_RECALL} against "
            "flat search of the same vectors, or where recall stops growing (PQ codes cap it). Bytes: the "
            "serialized FAISS index. The ivfpq build time includes the coarse k-means, which the benchmark "
            "trains once for ivf and ivfpq (same vectors, same seed). `ivfpq` is what `whiten index --kind "
            "ivfpq` builds by default (SQ8, a byte per dimension)"
            + (f"; up to N = {max(peer):,} PQ with one sub-quantizer per dimension (the same bytes, and "
               "what it built before) is measured beside it." if peer else "."),
            "",
            "| N | vectors | index | bytes | build s | knob | recall@10 | q/s single | q/s batch |",
            "|---:|---|---|---:|---:|---|---:|---:|---:|",
        ]
        for row in cost_rows:
            lines.append(f"| {row['n']:,} | {row['rep']} | `{row['factory']}` | {mib(row['bytes'])} | "
                         f"{row['build_s']:.1f} | {row['knob']} | {row['recall']:.3f} | "
                         f"{row['qps_single']:,.0f} | {row['qps_batch']:,.0f} |")
        lines += ["", *cost_ratio_lines(cost_rows), *knob_lines(cost_rows, quality_results)]
        unmeasured = [n for n in sizes if not any(r["n"] == n and r["kind"] == "hnsw" for r in cost_rows)]
        if unmeasured:
            lines.append(f"- HNSW was not built at N = {', '.join(f'{n:,}' for n in unmeasured)} (`--hnsw-max`).")
        lines.append("")
    return "\n".join(lines)


def target_lines(results: dict) -> list[str]:
    """The issue's target for each pooling's 128-d variants against that pooling's raw-384 vectors
    (flat search): ≥ 2.5× smaller, ≥ 2× faster, and MRR@10 equal or better (see MARGIN)."""
    rows = {(r["pooling"], r["variant"]): r for r in results["rows"]}
    out = [f"Target: whitened-128 ≥ 2.5× smaller and ≥ 2× faster than raw-384 (flat), at equal or better MRR@10. "
           f"\"Equal or better\" is read as a paired non-inferiority test: the lower end of the 95% interval of "
           f"the MRR@10 difference is above −{MARGIN} (one point); \"better\" when it is above 0.", ""]
    for pooling in POOLINGS:
        raw = rows[(pooling, "raw")]
        for name in ("whitened k=128", "whitened k=128, γ=0.5", PCA):
            w = rows.get((pooling, name))
            if w is None:
                continue
            smaller = raw["bytes"] / w["bytes"]
            single, batch = w["qps_single"] / raw["qps_single"], w["qps_batch"] / raw["qps_batch"]
            outcome = verdict(w["delta"][1])
            met = smaller >= 2.5 and min(single, batch) >= 2 and outcome != "worse"
            text = (f"- {POOLING_NAMES[pooling]} pooling, {name}: {smaller:.2f}× smaller, {single:.2f}× faster one "
                    f"query at a time, {batch:.2f}× batched; MRR@10 {w['mrr10']:.4f} against {raw['mrr10']:.4f}, "
                    f"{interval(w['delta'])}: {outcome} — **{'met' if met else 'not met'}**")
            if pooling != "model":
                text += (f" (against the model's own raw vectors, {rows[('model', 'raw')]['mrr10']:.4f}: "
                         f"{interval(w['delta_default'])}, {verdict(w['delta_default'][1])})")
            out.append(text + ".")
    return out


def cost_ratio_lines(rows: list[dict]) -> list[str]:
    out = []
    for n in sorted({r["n"] for r in rows}):
        flat = {r["rep"]: r for r in rows if r["n"] == n and r["kind"] == "flat"}
        raw = flat.get("raw 384")
        for rep, w in flat.items():
            if raw is None or rep == "raw 384":
                continue
            out.append(f"- N = {n:,}, flat: {rep} is {raw['bytes'] / w['bytes']:.2f}× smaller, "
                       f"{w['qps_single'] / raw['qps_single']:.2f}× faster one query at a time and "
                       f"{w['qps_batch'] / raw['qps_batch']:.2f}× batched than raw-384.")
    return out


def knob_lines(rows: list[dict], quality_results: dict | None) -> list[str]:
    """What the approximate indexes needed at recall@10 ≥ TARGET_RECALL, per representation."""
    out = []
    by = {(r["n"], r["rep"], r["kind"]): r for r in rows}
    reps = list(dict.fromkeys(r["rep"] for r in rows))
    for n in sorted({r["n"] for r in rows}):
        for kind in ("hnsw", "ivf", "ivfpq"):
            found = [(rep, by[(n, rep, kind)]) for rep in reps if (n, rep, kind) in by]
            if len(found) > 1:
                out.append(f"- N = {n:,}, {kind}: " + "; ".join(
                    f"{rep} {r['knob']}, {r['qps_single']:,.0f} q/s, {r['build_s']:.0f} s to build" for rep, r in found) + ".")
        for rep in reps:
            sq, pq = by.get((n, rep, "ivfpq")), by.get((n, rep, PQ_PEER))
            if sq and pq:
                out.append(f"- N = {n:,}, {rep}, one byte per dimension: `{sq['factory']}` against `{pq['factory']}` "
                           f"({sq['bytes'] / pq['bytes']:.2f}× the bytes): built {pq['build_s'] / sq['build_s']:.1f}× "
                           f"faster ({sq['build_s']:.0f} s against {pq['build_s']:.0f} s), recall@10 {sq['recall']:.3f} "
                           f"at {sq['knob']} against {pq['recall']:.3f} at {pq['knob']}, {sq['qps_single']:,.0f} against "
                           f"{pq['qps_single']:,.0f} q/s.")
    if quality_results:
        ivf = [r for r in quality_results["ann"] if r["kind"] == "ivf"]
        if len(ivf) > 1:
            out.append("- On the real STS-B vectors IVF needs " + ", ".join(f"{r['knob']} ({r['variant']})" for r in ivf)
                       + " for the same recall: whitening (γ=1) spreads vectors evenly over the sphere, which "
                       "partition and graph indexes find harder, while PCA (γ=0) keeps the raw vectors' "
                       "neighbourhoods; the mixture exaggerates this for whitened vectors (calibration table), "
                       "so their synthetic knobs are pessimistic.")
    return out


def faiss_version() -> str:
    import faiss

    return faiss.__version__


def write_readme(path: Path, section: str) -> None:
    """Replace (or add) the '### Retrieval' section under '## Benchmarks' of the README."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if "## Benchmarks" not in text:
        text = text.rstrip("\n") + ("\n\n" if text else "") + "## Benchmarks\n"
    start = text.find("### Retrieval")
    if start >= 0:
        rest = text[start + len("### Retrieval"):]
        ends = [i for i in (rest.find("\n### "), rest.find("\n## ")) if i >= 0]
        end = start + len("### Retrieval") + min(ends) + 1 if ends else len(text)
        text = text[:start] + section.rstrip("\n") + ("\n\n" if end < len(text) else "\n") + text[end:]
    else:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    path.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/whiten-bench"),
                        help="where encoded STS-B vectors are kept between runs (outside the repository)")
    parser.add_argument("--sizes", default="100000,1000000", help="corpus sizes of the cost benchmark")
    parser.add_argument("--hnsw-max", type=int, default=1_000_000, help="largest N at which HNSW is built")
    parser.add_argument("--queries", type=int, default=1000, help="synthetic queries (batched search)")
    parser.add_argument("--single-budget", type=float, default=2.0, help="seconds spent timing one-query calls")
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternating timing rounds of the STS-B indexes (median round reported)")
    parser.add_argument("--pq-peer-max", type=int, default=100_000,
                        help="largest N at which PQ with one sub-quantizer per dimension is built beside SQ8")
    parser.add_argument("--threads", type=int, default=1, help="FAISS (OpenMP) threads")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--readme", type=Path, help="write the results into this README's '### Retrieval' section")
    parser.add_argument("--components", type=int, default=64, help="Gaussians in the synthetic mixture")
    parser.add_argument("--fresh", action="store_true", help="forget figures saved by earlier runs")
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.command = "python benchmarks/bench_retrieval.py --cache-dir /tmp/whiten-bench --readme README.md"
    args.argv = "python benchmarks/bench_retrieval.py " + " ".join(sys.argv[1:])
    if args.fresh and (args.cache_dir / "results.json").exists():
        (args.cache_dir / "results.json").unlink()

    import faiss

    faiss.omp_set_num_threads(args.threads)
    store = args.cache_dir / "results.json"
    saved = json.loads(store.read_text()) if store.exists() else {}
    started = time.perf_counter()
    corpus, queries, relevant = stsb_task()
    say(f"STS-B: {len(corpus)} distinct sentences, {len(queries)} queries with a relevant document")
    vectors = encoded(corpus, args.cache_dir, args.batch_size)
    if not args.skip_quality:
        saved["quality"] = quality(vectors, corpus, queries, relevant, args)
    if not args.skip_cost:
        saved["calibration"] = calibration(vectors["model"], args)
        rows = cost(vectors["model"], args)
        saved["cost"] = [row for row in saved.get("cost", []) if row["n"] not in args.sizes] + rows
        saved["cost"].sort(key=lambda row: row["n"])
    elapsed = time.perf_counter() - started
    saved["seconds"] = saved.get("seconds", 0.0) + elapsed
    if not (args.skip_quality and args.skip_cost):
        saved.setdefault("runs", []).append({"command": args.argv, "seconds": round(elapsed)})
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    store.write_text(json.dumps(saved, indent=2))
    section = report(saved.get("quality"), saved.get("calibration"), saved.get("cost"), args, saved["seconds"],
                     saved.get("runs"))
    print(section)
    if args.readme:
        write_readme(args.readme, section)
        say(f"wrote the Retrieval section of {args.readme}")


if __name__ == "__main__":
    main()
