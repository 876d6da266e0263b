"""Sharded inputs and vector folders with the local engine (no Ray needed)."""

import json
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import sample_sentences, write
from whiten_cli.cli import app
from whiten_cli.errors import InputError
from whiten_cli.pipeline import Pipeline
from whiten_cli.shards import MANIFEST_FILE, load_vector_folder, read_all_records, shard_paths

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def one_line_error(result, *fragments):
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def nothing_written(path):
    assert not path.exists()
    assert not [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")]


@pytest.fixture
def shards(tmp_path):
    """Three shards of three formats, 40 sentences in all, and the same texts as one file."""
    texts = sample_sentences(40, seed=3)
    folder = tmp_path / "shards"
    write(folder / "a.txt", "\n".join(texts[:15]) + "\n")
    write(folder / "b.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in texts[15:30]))
    write(folder / "c.csv", "text\n" + "".join(f'"{t}"\n' for t in texts[30:]))
    write(folder / "notes.md", "not a shard\n")
    write(tmp_path / "all.txt", "\n".join(texts) + "\n")
    return folder, texts


def test_shards_are_read_in_sorted_order_with_stable_ids(shards):
    folder, texts = shards
    assert [p.name for p in shard_paths(folder)] == ["a.txt", "b.jsonl", "c.csv"]
    assert [p.name for p in shard_paths(f"{folder}/*.txt")] == ["a.txt"]
    records = read_all_records(folder)
    assert [r.text for r in records] == texts
    assert records[0].id == "a.txt:1" and records[15].id == "b.jsonl:1" and records[30].id == "c.csv:2"


def test_parquet_shard(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["x", "y"], "sentence": ["a cat", "a dog"]}), tmp_path / "p.parquet")
    records = read_all_records(f"{tmp_path}/*.parquet")
    assert [(r.id, r.text) for r in records] == [("x", "a cat"), ("y", "a dog")]
    write(tmp_path / "bad.parquet", "not parquet")
    with pytest.raises(InputError, match="bad.parquet: not a readable parquet file"):
        read_all_records(tmp_path / "bad.parquet")


def test_encode_folder_of_shards_equals_one_file(tiny_model, shards, tmp_path):
    folder, texts = shards
    result = run("encode", folder, "-o", tmp_path / "vectors", "--model", tiny_model, "--no-cache", "--dtype", "float32")
    assert result.exit_code == 0, result.output
    assert "wrote 40 vectors of dimension 32" in result.output and "(3 shards)" in result.output
    manifest = json.loads((tmp_path / "vectors" / MANIFEST_FILE).read_text())
    assert manifest["count"] == 40 and manifest["dim"] == 32 and manifest["dtype"] == "float32"
    assert [part["rows"] for part in manifest["parts"]] == [15, 15, 10]
    assert run("encode", tmp_path / "all.txt", "-o", tmp_path / "all.npy", "--model", tiny_model, "--no-cache",
               "--dtype", "float32").exit_code == 0
    vectors = load_vector_folder(tmp_path / "vectors", [r.id for r in read_all_records(folder)], 32)
    single = np.load(tmp_path / "all.npy")
    cosine = (vectors * single).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(single, axis=1)
    assert vectors.dtype == single.dtype and cosine.min() > 1 - 1e-5
    # -o DIR (no suffix) with one file writes a folder too.
    assert run("encode", tmp_path / "all.txt", "-o", f"{tmp_path}/one/", "--model", tiny_model, "--no-cache").exit_code == 0
    assert (tmp_path / "one" / MANIFEST_FILE).is_file()


def test_fit_on_shards_equals_fit_on_one_file(tiny_model, shards, tmp_path):
    folder, _ = shards
    common = ["--model", tiny_model, "--no-cache", "--dtype", "float32", "-k", "8"]
    assert run("fit", folder, "-o", tmp_path / "p1", *common).exit_code == 0
    assert run("fit", tmp_path / "all.txt", "-o", tmp_path / "p2", *common).exit_code == 0
    a, b = Pipeline.load(tmp_path / "p1"), Pipeline.load(tmp_path / "p2")
    assert a.info["fitted_on"] == b.info["fitted_on"] == 40
    np.testing.assert_allclose(a.whitening.mean, b.whitening.mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, rtol=1e-4, atol=1e-6 * b.eigenvalues.max())
    np.testing.assert_allclose(a.whitening.kernel, b.whitening.kernel, rtol=1e-3, atol=1e-4 * np.abs(b.whitening.kernel).max())


def test_index_accepts_a_vector_folder_and_refuses_mixed_dimensions(tiny_model, shards, tmp_path):
    folder, _ = shards
    assert run("fit", folder, "-o", tmp_path / "pipe", "--model", tiny_model, "--no-cache", "-k", "8").exit_code == 0
    assert run("encode", folder, "--pipeline", tmp_path / "pipe", "-o", tmp_path / "vectors", "--no-cache").exit_code == 0
    result = run("index", folder, "--pipeline", tmp_path / "pipe", "--vectors", tmp_path / "vectors", "-o", tmp_path / "ix")
    assert result.exit_code == 0, result.output
    assert "wrote 40 documents of dimension 8" in result.output
    part = tmp_path / "vectors" / "part-00001.npy"
    np.save(part, np.zeros((15, 7), dtype=np.float32))
    result = run("index", folder, "--pipeline", tmp_path / "pipe", "--vectors", tmp_path / "vectors", "-o", tmp_path / "ix2")
    one_line_error(result, "part-00001.npy", "dimension 8")
    nothing_written(tmp_path / "ix2")


def test_bad_shard_and_empty_glob_are_one_line_and_write_nothing(tiny_model, shards, tmp_path):
    folder, _ = shards
    write(folder / "d.jsonl", '{"text": "fine"}\n{"text": broken\n')
    result = run("encode", folder, "-o", tmp_path / "out", "--model", tiny_model, "--no-cache")
    one_line_error(result, "d.jsonl:2", "invalid JSON")
    nothing_written(tmp_path / "out")
    result = run("encode", f"{tmp_path}/nothing-*.txt", "-o", tmp_path / "out", "--model", tiny_model)
    one_line_error(result, "nothing-*.txt", "no file matches")
    nothing_written(tmp_path / "out")
    result = run("fit", f"{tmp_path}/nothing-*.txt", "-o", tmp_path / "out", "--model", tiny_model)
    one_line_error(result, "no file matches")
    nothing_written(tmp_path / "out")


def test_engine_ray_without_the_extra_is_one_line(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    write(tmp_path / "t.txt", "a cat\n")
    result = run("encode", tmp_path / "t.txt", "-o", tmp_path / "v.npy", "--engine", "ray", "--model", tiny_model)
    one_line_error(result, "whiten encode --engine ray needs the ray extra: pip install 'whiten[ray]'")
    nothing_written(tmp_path / "v.npy")
    result = run("encode", tmp_path / "t.txt", "-o", tmp_path / "v.npy", "--ray-address", "localhost:6379")
    one_line_error(result, "--ray-address needs --engine ray")
