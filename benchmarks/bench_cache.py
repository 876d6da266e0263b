"""The embedding cache: a second ``whiten eval`` on the same data against the first.

Each round starts an empty cache folder, runs ``whiten eval DATASET --cache-dir FOLDER`` (every
sentence encoded and stored), then the same command again (every sentence read back: the model
is not even loaded), each a fresh process timed from start to exit, and checks that both print
the same figures. Run from the repository root::

    python benchmarks/bench_cache.py                    # stsb, 3 rounds
    python benchmarks/bench_cache.py --dataset sick --rounds 2 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"{' '.join(command)} failed (exit {done.returncode})")
    return seconds, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="stsb")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dtype", default=None)
    args = parser.parse_args()

    base = [sys.executable, "-m", "whiten_cli", "eval", args.dataset, "-k", "all,128"]
    if args.threads:
        base += ["--threads", str(args.threads)]
    if args.dtype:
        base += ["--dtype", args.dtype]
    firsts, seconds = [], []
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="whiten-cache-bench-") as folder:
            first, out1 = timed(base + ["--cache-dir", folder])
            second, out2 = timed(base + ["--cache-dir", folder])
        if out1 != out2:
            raise SystemExit(f"the cached run printed other figures:\n{out1}\n---\n{out2}")
        firsts.append(first)
        seconds.append(second)
        print(f"round {r + 1}: first {first:.2f} s, second {second:.2f} s, {first / second:.1f}x", file=sys.stderr, flush=True)
    print(out1)
    print("| `whiten eval " + args.dataset + "` | wall time (median) |")
    print("|---|---:|")
    print(f"| first run (encodes, fills the cache) | {statistics.median(firsts):.2f} s |")
    print(f"| second run (from the cache) | {statistics.median(seconds):.2f} s |")
    print(f"| speed-up (median of rounds) | {statistics.median(a / b for a, b in zip(firsts, seconds)):.1f}x |")


if __name__ == "__main__":
    main()
