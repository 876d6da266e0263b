"""--engine ray against the local engine, on one local Ray instance started once for the module."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import sample_sentences, write
from whiten_cli.cli import app
from whiten_cli.pipeline import Pipeline
from whiten_cli.shards import MANIFEST_FILE, load_vector_folder

ray = pytest.importorskip("ray")
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def ok(*args):
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for every test here: `whiten` commands find it running and use it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two text shards and a JSONL one; 4096 + 300 rows in the first, so it spans two blocks."""
    folder = tmp_path_factory.mktemp("ray") / "shards"
    texts = sample_sentences(600, seed=5)
    write(folder / "a.txt", "\n".join((texts * 8)[:4396]) + "\n")
    write(folder / "b.txt", "\n".join(texts[:200]) + "\n")
    write(folder / "c.jsonl", "".join(json.dumps({"id": f"c{i}", "text": t}) + "\n" for i, t in enumerate(texts[200:300])))
    return folder


def least_cosine(a, b):
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def test_ray_encode_equals_local(tiny_model, corpus, tmp_path):
    common = ["--model", tiny_model, "--no-cache", "--dtype", "float32", "--pooling", "last-avg"]
    ok("encode", corpus, "-o", tmp_path / "local", *common)
    result = ok("encode", corpus, "-o", tmp_path / "ray", "--engine", "ray", "--workers", "2", *common)
    assert "wrote 4696 vectors of dimension 32" in result.output
    local = json.loads((tmp_path / "local" / MANIFEST_FILE).read_text())
    remote = json.loads((tmp_path / "ray" / MANIFEST_FILE).read_text())
    assert [p["rows"] for p in remote["parts"]] == [p["rows"] for p in local["parts"]]
    ids = [json.loads(line) for p in local["parts"] for line in (tmp_path / "local" / p["ids"]).read_text().splitlines()]
    assert ids[0] == "a.txt:1" and ids[-1] == "c99"
    a, b = load_vector_folder(tmp_path / "local", ids, 32), load_vector_folder(tmp_path / "ray", ids, 32)
    assert a.dtype == b.dtype == np.float32
    assert least_cosine(a, b) > 1 - 1e-5
    # A single file through Ray is still one .npy, equal to the local one.
    ok("encode", corpus / "b.txt", "-o", tmp_path / "b.npy", "--engine", "ray", *common)
    assert least_cosine(np.load(tmp_path / "b.npy"), a[4396:4596]) > 1 - 1e-5


def test_ray_fit_equals_local(tiny_model, corpus, tmp_path):
    common = ["--model", tiny_model, "--no-cache", "--dtype", "float32", "-k", "16", "--gamma", "0.5"]
    ok("fit", corpus / "a.txt", "-o", tmp_path / "local", *common)
    ok("fit", corpus / "a.txt", "-o", tmp_path / "ray", "--engine", "ray", *common)
    a, b = Pipeline.load(tmp_path / "local"), Pipeline.load(tmp_path / "ray")
    assert a.info["fitted_on"] == b.info["fitted_on"] == 4396
    for name in ("mean", "kernel"):
        x, y = getattr(a.whitening, name), getattr(b.whitening, name)
        assert np.abs(x - y).max() <= 1e-6 * np.abs(x).max(), name
    top = a.eigenvalues[:16]
    assert np.abs(top - b.eigenvalues[:16]).max() <= 1e-6 * top.max()


def top10(index_dir, queries):
    from whiten_cli.index import VectorIndex

    index = VectorIndex.load(index_dir)
    return [[hit.id for hit in hits] for hits in index.search(queries, 10)]


def test_ray_index_returns_the_local_top10(tiny_model, corpus, tmp_path):
    ok("fit", corpus / "b.txt", "-o", tmp_path / "pipe", "--model", tiny_model, "--no-cache", "-k", "16")
    ok("encode", corpus, "--pipeline", tmp_path / "pipe", "-o", tmp_path / "vectors", "--no-cache")
    queries = np.random.default_rng(0).standard_normal((20, 16)).astype(np.float32)
    # IVF: trained on the driver, shards added by Ray tasks and merged.
    ivf = ["--pipeline", tmp_path / "pipe", "--vectors", tmp_path / "vectors", "--kind", "ivf", "--nlist", "16",
           "--nprobe", "4"]
    ok("index", corpus, "-o", tmp_path / "local-ivf", *ivf)
    ok("index", corpus, "-o", tmp_path / "ray-ivf", "--engine", "ray", "--workers", "2", *ivf)
    assert top10(tmp_path / "ray-ivf", queries) == top10(tmp_path / "local-ivf", queries)
    # Flat, encoded on the fly by the actor pool.
    ok("index", corpus, "-o", tmp_path / "local-flat", "--pipeline", tmp_path / "pipe", "--vectors", tmp_path / "vectors",
       "--kind", "flat")
    ok("index", corpus, "-o", tmp_path / "ray-flat", "--pipeline", tmp_path / "pipe", "--kind", "flat", "--engine", "ray",
       "--no-cache")
    assert top10(tmp_path / "ray-flat", queries) == top10(tmp_path / "local-flat", queries)


def test_a_killed_worker_is_restarted_and_the_result_is_the_same(tiny_model, corpus, tmp_path, monkeypatch):
    """The first actor call to find the marker file removes it and kills its own process (as the
    OOM killer or a lost node would); Ray restarts the actor and retries the block."""
    from whiten_cli import engine_ray

    marker = tmp_path / "kill-once"
    marker.write_text("")

    class DiesOnce(engine_ray.EncodeActor):
        def __call__(self, batch):
            try:
                os.remove(marker)
            except FileNotFoundError:
                return super().__call__(batch)
            os._exit(9)

    common = ["--model", tiny_model, "--no-cache", "--dtype", "float32"]
    ok("encode", corpus, "-o", tmp_path / "local", *common)
    monkeypatch.setattr(engine_ray, "_actor_class", lambda: DiesOnce)
    ok("encode", corpus, "-o", tmp_path / "ray", "--engine", "ray", *common)
    assert not marker.exists()  # a worker did die
    a, b = load_vector_folder(tmp_path / "local"), load_vector_folder(tmp_path / "ray")
    assert least_cosine(a, b) > 1 - 1e-5


def test_bad_shard_on_a_worker_is_one_line_and_nothing_is_written(tiny_model, corpus, tmp_path):
    import shutil

    folder = tmp_path / "shards"
    shutil.copytree(corpus, folder)
    write(folder / "d.jsonl", '{"text": "fine"}\n{"text": broken\n')
    result = run("encode", folder, "-o", tmp_path / "out", "--engine", "ray", "--model", tiny_model, "--no-cache")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "d.jsonl:2: invalid JSON" in lines[0] and "Traceback" not in result.output, result.stderr
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_unreachable_ray_address_is_one_line(tiny_model, tmp_path):
    """In a fresh process (here Ray is already running, and would be reused)."""
    write(tmp_path / "t.txt", "a cat\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "whiten_cli", "encode", str(tmp_path / "t.txt"), "-o",
                             str(tmp_path / "v.npy"), "--model", str(tiny_model), "--engine", "ray",
                             "--ray-address", "127.0.0.1:1"], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: --ray-address 127.0.0.1:1: no Ray cluster answers there (Connection refused)"]
    assert not (tmp_path / "v.npy").exists()
