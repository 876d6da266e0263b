"""Scale-out on one machine: ``whiten encode`` with the local engine against ``--engine ray``.

Measures, each command in a child process (what a user runs, start-up included):

1. sentences/s of ``whiten encode SHARDS -o DIR`` (default model, ``--dtype auto``, no cache) with
   ``--engine local`` and ``--engine ray --workers 1`` / ``--workers 2``, alternating the three in
   each round (medians over the rounds), on N sentences (default 20,480, from STS-B and SICK with
   the deterministic variations of bench_memory.py) in 8 shards;
2. Ray's own start-up: ``ray.init`` and the first round trip of a task, in a fresh process;
3. peak memory for a 1M-line input (100 shards): the driver's peak RSS (``wait4``) and the largest
   peak RSS of any Ray worker (``VmHWM`` of every ``ray::`` process, polled), with the local
   engine's peak beside them. For minutes rather than hours this uses ``--model-1m`` (default: the
   tests' tiny random 32-d BERT); the driver's memory must not grow with the input either way.

Run from the repository root (needs ``pip install -e '.[ray]'``; about 15 minutes on 2 cores)::

    python benchmarks/bench_scale.py
    python benchmarks/bench_scale.py --rounds 1 --sentences 20480 --skip-1m
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_memory import corpus  # noqa: E402


def write_shards(folder: Path, texts: list[str], shards: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    step = -(-len(texts) // shards)
    for number, start in enumerate(range(0, len(texts), step)):
        (folder / f"shard-{number:04d}.txt").write_text("\n".join(texts[start:start + step]) + "\n", encoding="utf-8")
    return folder


def ray_peaks(stop: threading.Event, peaks: dict) -> None:
    """Poll every ``ray::`` process's VmHWM (its peak RSS so far) until ``stop``."""
    while not stop.is_set():
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                if not name.startswith("ray::"):
                    continue
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peaks[name] = max(peaks.get(name, 0), int(line.split()[1]) / 1024)
            except OSError:
                continue
        stop.wait(0.5)


def run(command: list[str], watch_ray: bool = False) -> dict:
    """Run a command; wall seconds, the process's peak RSS (MB) and, with ``watch_ray``, the largest
    peak RSS of a Ray worker."""
    peaks: dict = {}
    stop = threading.Event()
    watcher = threading.Thread(target=ray_peaks, args=(stop, peaks), daemon=True) if watch_ray else None
    if watcher:
        watcher.start()
    start = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    stop.set()
    if watcher:
        watcher.join()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.stderr.write(output.decode(errors="replace"))
        raise SystemExit(f"failed: {' '.join(command)}")
    workers = {name: mb for name, mb in peaks.items() if "Map" in name or "FlatMap" in name}
    return {"wall_s": wall, "driver_mb": usage.ru_maxrss / 1024,
            "worker_mb": max(workers.values()) if workers else None, "ray_processes_mb": peaks}


def ray_startup() -> dict:
    code = ("import time; t0 = time.perf_counter(); import ray; t1 = time.perf_counter(); "
            "ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level='ERROR'); "
            "t2 = time.perf_counter(); ray.get(ray.remote(lambda: 1).remote()); t3 = time.perf_counter(); "
            "ray.shutdown(); print(t1 - t0, t2 - t1, t3 - t2)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return {"import_s": float(out[0]), "init_s": float(out[1]), "first_task_s": float(out[2])}


def encode_command(shards: Path, out: Path, engine: str, workers: int | None, extra: list[str]) -> list[str]:
    command = [sys.executable, "-m", "whiten_cli", "encode", str(shards), "-o", str(out), "--no-cache", "-q",
               "--engine", engine, *extra]
    if workers is not None:
        command += ["--workers", str(workers)]
    return command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=20480)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--lines-1m", type=int, default=1_000_000)
    parser.add_argument("--model-1m", default="tiny", help="model for the 1M-line memory run: tiny (random 32-d BERT) or a model")
    parser.add_argument("--skip-1m", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true", help="only the start-up and the 1M-line memory run")
    parser.add_argument("--output", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    results: dict = {"cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(": \t"),
                     "cores": os.cpu_count(), "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="whiten-scale-") as tmp:
        tmp = Path(tmp)
        texts = corpus(args.sentences)
        shards = write_shards(tmp / "shards", texts, 8)
        results["startup"] = ray_startup()
        print(f"ray start-up: {results['startup']}", flush=True)
        modes = {"local": ("local", None), "ray, 1 worker": ("ray", 1), "ray, 2 workers": ("ray", 2)}
        walls: dict = {name: [] for name in modes}
        for round_ in range(0 if args.skip_throughput else args.rounds):
            for name, (engine, workers) in modes.items():
                out = tmp / f"out-{round_}-{engine}-{workers}"
                figures = run(encode_command(shards, out, engine, workers, []))
                walls[name].append(figures["wall_s"])
                print(f"round {round_ + 1} {name}: {figures['wall_s']:.1f} s, {len(texts) / figures['wall_s']:.0f}/s "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
        results["throughput"] = {name: {"sentences": len(texts), "wall_s": statistics.median(w),
                                        "per_s": len(texts) / statistics.median(w)} for name, w in walls.items() if w}
        if not args.skip_1m:
            model = args.model_1m
            if model == "tiny":
                sys.path.insert(0, str(ROOT / "tests"))
                from conftest import tiny_bert

                model = str(tiny_bert(tmp / "tiny-bert"))
            big = [texts[i % len(texts)] for i in range(args.lines_1m)]
            write_shards(tmp / "big", big, 100)
            del big
            extra = ["--model", model, "--max-length", "32"]
            memory = {}
            for name, engine, workers in (("local", "local", None), ("ray, 2 workers", "ray", 2)):
                figures = run(encode_command(tmp / "big", tmp / f"big-{engine}", engine, workers, extra),
                              watch_ray=engine == "ray")
                memory[name] = {key: figures[key] for key in ("wall_s", "driver_mb", "worker_mb")}
                print(f"{args.lines_1m:,} lines, {name}: {memory[name]}", flush=True)
            results["memory_1m"] = {"lines": args.lines_1m, "model": args.model_1m, "max_length": 32, **memory}
    results["load_after"] = os.getloadavg()
    print(json.dumps(results, indent=2))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
