"""Cold start of one ``whiten search INDEX "query"``: the torch backend against the ONNX backend.

Builds, in a temporary folder, a pipeline (all-MiniLM-L6-v2, fitted on data/corpus.txt, k=128)
and two indexes of data/corpus.jsonl with it: one with ``--backend torch``, one with ``--backend
onnx`` (which stores the graph in the index). Then runs ``whiten search`` on each as a fresh process,
alternating, ``--runs`` times each, and prints the median wall time (process start to exit) and
which heavy modules each run imported. Run from the repository root::

    python benchmarks/bench_search_startup.py            # needs pip install -e ".[onnx]"
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = ("import sys, runpy; sys.argv = ['whiten'] + sys.argv[1:]\n"
         "try:\n    runpy.run_module('whiten_cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
         "print('imported:', ','.join(m for m in ('torch', 'transformers', 'sklearn', 'onnxruntime', 'faiss') "
         "if m in sys.modules), file=sys.stderr)\n")


def whiten(*args, env) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "whiten_cli", *map(str, args)], capture_output=True, text=True,
                            env=env, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"whiten {' '.join(map(str, args))} failed:\n{result.stderr}")
    return result


def timed_search(index: Path, query: str, env) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", PROBE, "search", str(index), query, "-k", "3"],
                            capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    if result.returncode != 0 or "imported:" not in result.stderr:
        sys.exit(f"search failed:\n{result.stderr}")
    return wall, result.stderr.strip().splitlines()[-1].removeprefix("imported: ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--query", default="how do I bake bread")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="embedding cache and ONNX graphs (reused between runs) [default: a fresh temporary one]")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory(prefix="whiten-startup-") as tmp:
        work = Path(tmp)
        env["WHITEN_CACHE_DIR"] = str(args.cache_dir or work / "cache")
        print("building the pipeline and the two indexes ...", file=sys.stderr)
        whiten("fit", "data/corpus.txt", "-o", work / "pipeline", "-k", "128", "-q", env=env)
        indexes = {}
        for backend in ("torch", "onnx"):
            indexes[backend] = work / f"index-{backend}"
            whiten("index", "data/corpus.jsonl", "--pipeline", work / "pipeline", "-o", indexes[backend],
                   "--backend", backend, "-q", env=env)
        times: dict[str, list[float]] = {backend: [] for backend in indexes}
        imported = {}
        for run in range(args.runs):
            for backend in (("torch", "onnx") if run % 2 == 0 else ("onnx", "torch")):
                wall, imported[backend] = timed_search(indexes[backend], args.query, env)
                times[backend].append(wall)
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"load average after the runs: {load}; {os.cpu_count()} cores")
        print("| backend | median wall s | runs (s) | heavy modules imported |")
        print("|---|---:|---|---|")
        for backend, walls in times.items():
            print(f"| {backend} | {statistics.median(walls):.2f} | {', '.join(f'{w:.2f}' for w in walls)} | "
                  f"{imported[backend] or 'none'} |")
        ratio = statistics.median(times["torch"]) / statistics.median(times["onnx"])
        print(f"onnx is {ratio:.1f}× faster to answer one query from a cold start")


if __name__ == "__main__":
    main()
