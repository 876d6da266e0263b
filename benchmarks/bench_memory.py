"""Peak memory of ``whiten fit`` on 10k against 100k sentences: fitting must stream.

Builds two corpora in a temporary folder (never in the repository) from the distinct sentences of
all STS-B and SICK splits, with simple deterministic variations ("In other words, ...", "...
That is what happened.", ...) so that every line is distinct, then runs ``whiten fit`` on each in
a child process and reads the child's peak resident set size (``os.wait4``). The embedding cache
is on (the default behaviour) in a fresh temporary folder, so each text is really encoded.

Run from the repository root (100k sentences take a few minutes on 2 cores)::

    python benchmarks/bench_memory.py                       # 10k and 100k, --dtype auto
    python benchmarks/bench_memory.py --sizes 10000,100000 --dtype float32 --threads 1
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's whiten_cli

from whiten_cli.sts import load_dataset  # noqa: E402

SPLITS = ("stsb-train", "stsb-dev", "stsb", "sick-train", "sick-trial", "sick")
VARIATIONS = (
    "{}",
    "In other words, {}",
    "{} That is what happened.",
    "Reportedly, {}",
    "It is said that {}",
    "{} Nobody disputes this.",
    "According to the report, {}",
    "{} Or so they say.",
)


def corpus(size: int) -> list[str]:
    base = list(dict.fromkeys(t.strip() for name in SPLITS for t in load_dataset(name).sentences if t.strip()))
    if size > len(base) * len(VARIATIONS):
        raise SystemExit(f"at most {len(base) * len(VARIATIONS)} distinct sentences can be built")
    return [VARIATIONS[i // len(base)].format(base[i % len(base)]) for i in range(size)]


def peak_rss_mb(command: list[str]) -> tuple[float, float, int]:
    """Run ``command``; its peak RSS in MB, wall seconds and exit status."""
    start = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        sys.stderr.write(output.decode(errors="replace"))
    return usage.ru_maxrss / 1024, time.perf_counter() - start, child.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--dtype", default="auto", help="whiten --dtype (memory, not speed, is measured)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="where corpora, cache and pipelines go [default: a temp folder]")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="whiten-memory-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        path = workdir / f"corpus-{size}.txt"
        path.write_text("\n".join(corpus(size)) + "\n", encoding="utf-8")
        command = [sys.executable, "-m", "whiten_cli", "fit", str(path), "-o", str(workdir / f"pipe-{size}"),
                   "--dtype", args.dtype, "--cache-dir", str(workdir / f"cache-{size}"), "-k", "128"]
        if args.threads:
            command += ["--threads", str(args.threads)]
        print(f"fit on {size} sentences ...", file=sys.stderr, flush=True)
        rss, seconds, status = peak_rss_mb(command)
        if status != 0:
            raise SystemExit(f"whiten fit failed on {size} sentences (exit {status})")
        rows.append((size, rss, seconds))
        print(f"  peak RSS {rss:.0f} MB, {seconds:.0f} s ({size / seconds:.0f} sentences/s)", file=sys.stderr, flush=True)
    print("| sentences | peak RSS of `whiten fit` | wall time |")
    print("|---:|---:|---:|")
    for size, rss, seconds in rows:
        print(f"| {size:,} | {rss:.0f} MB | {seconds:.0f} s |")
    if len(rows) > 1:
        print(f"\nlargest minus smallest: {rows[-1][1] - rows[0][1]:+.0f} MB")


if __name__ == "__main__":
    main()
