"""whiten export: the exported sentence-transformers folder and FAISS transform give the pipeline's
vectors; bad inputs are one line; an existing export is replaced only with --force, atomically."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_sentence_transformers, sample_sentences, write
from test_cli import assert_one_line_error, run
from whiten_cli.export import METADATA_FILE, export, linear_map
from whiten_cli.pipeline import Pipeline


def least_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


def st_encode(folder: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu").encode(texts, batch_size=32)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return sample_sentences(120, seed=3)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, texts) -> Path:
    return write(tmp_path_factory.mktemp("export") / "corpus.txt", "\n".join(texts) + "\n")


@pytest.fixture(scope="module")
def st_dense_model(tmp_path_factory, tiny_model) -> Path:
    """A sentence-transformers folder whose own chain is mean → Dense(32→24, tanh) → Normalize."""
    return make_sentence_transformers(tiny_model, tmp_path_factory.mktemp("models") / "st-dense",
                                      dense=(24, "torch.nn.modules.activation.Tanh"), max_seq_length=40)


def fit(tmp: Path, corpus: Path, model: Path, *flags) -> Path:
    out = tmp / "pipe"
    result = run("fit", corpus, "-o", out, "--model", model, "-q", *flags)
    assert result.exit_code == 0, result.output
    return out


def encode(tmp: Path, corpus: Path, *flags) -> np.ndarray:
    out = tmp / f"vectors{len(list(tmp.glob('vectors*')))}.npy"
    result = run("encode", corpus, "-o", out, "-q", "--no-cache", *flags)
    assert result.exit_code == 0, result.output
    return np.load(out)


# --- sentence-transformers: equal to `whiten encode --pipeline` ---------------------------------------

CASES = [
    ("cls", ["-k", "16", "--max-length", "24"]),
    ("last-avg", ["-k", "16", "--jl-dim", "12"]),
    ("last-avg", ["--gamma", "0.5", "--beta", "0.5", "--no-normalize"]),
    ("first-last-avg", ["-k", "20"]),
    ("last2avg", ["-k", "12", "--jl-dim", "8", "--no-normalize"]),
    ("model", ["-k", "16"]),
    ("model", ["--no-whiten", "--jl-dim", "10"]),
]


@pytest.mark.parametrize("pooling,flags", CASES, ids=[f"{p}{''.join(f)}" for p, f in CASES])
def test_sentence_transformers_export_equals_whiten_encode(tmp_path, corpus, texts, tiny_model, st_dense_model,
                                                           pooling, flags):
    model = st_dense_model if pooling == "model" else tiny_model
    pipe = fit(tmp_path, corpus, model, "--pooling", pooling, *flags)
    result = run("export", pipe, "-o", tmp_path / "st")
    assert result.exit_code == 0, result.output
    expected = encode(tmp_path, corpus, "--pipeline", pipe)
    got = st_encode(tmp_path / "st", texts)
    assert got.shape == expected.shape
    assert least_cosine(got, expected) > 0.99999
    if "--no-normalize" not in flags:  # the Normalize module is there exactly when the pipeline normalizes
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # whiten reads the export as a sentence-transformers folder and gives the same vectors.
    again = encode(tmp_path, corpus, "--model", tmp_path / "st", "--pooling", "model")
    assert least_cosine(again, expected) > 0.99999
    max_length = json.loads((tmp_path / "st" / "sentence_bert_config.json").read_text())["max_seq_length"]
    assert max_length == Pipeline.load(pipe).max_length


def test_link_model_symlinks_the_weights(tmp_path, corpus, texts, tiny_model):
    pipe = fit(tmp_path, corpus, tiny_model, "--pooling", "cls", "-k", "8")
    result = run("export", pipe, "-o", tmp_path / "st", "--link-model")
    assert result.exit_code == 0, result.output
    weights = tmp_path / "st" / "model.safetensors"
    assert weights.is_symlink() and weights.resolve() == (tiny_model / "model.safetensors").resolve()
    assert least_cosine(st_encode(tmp_path / "st", texts), encode(tmp_path, corpus, "--pipeline", pipe)) > 0.99999


def test_export_metadata(tmp_path, corpus, tiny_model):
    from whiten_cli import __version__
    from whiten_cli.index import pipeline_fingerprint

    pipe = fit(tmp_path, corpus, tiny_model, "--pooling", "cls", "-k", "8", "--jl-dim", "6")
    for fmt in ("sentence-transformers", "faiss"):
        assert run("export", pipe, "-o", tmp_path / fmt, "--format", fmt).exit_code == 0
        meta = json.loads((tmp_path / fmt / METADATA_FILE).read_text())
        assert meta["export_format"] == fmt and meta["tool_version"] == __version__
        assert meta["pipeline_fingerprint"] == pipeline_fingerprint(Pipeline.load(pipe))
        assert meta["model"]["fingerprint"] == Pipeline.load(pipe).model_fingerprint
        assert (meta["pooling"], meta["input_dim"], meta["output_dim"]) == ("cls", 32, 6)


# --- FAISS -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [["-k", "16"], ["-k", "20", "--beta", "0.5", "--gamma", "0.5", "--jl-dim", "12"],
                                   ["--no-whiten", "--jl-dim", "10"]])
def test_faiss_transform_on_raw_vectors_equals_the_pipeline(tmp_path, corpus, tiny_model, flags):
    import faiss

    pipe = fit(tmp_path, corpus, tiny_model, "--pooling", "last-avg", *flags)
    result = run("export", pipe, "-o", tmp_path / "fx", "--format", "faiss")
    assert result.exit_code == 0, result.output
    raw = encode(tmp_path, corpus, "--model", tiny_model, "--pooling", "last-avg")
    expected = encode(tmp_path, corpus, "--pipeline", pipe)
    transform = faiss.read_VectorTransform(str(tmp_path / "fx" / "transform.faiss"))
    got = transform.apply(np.ascontiguousarray(raw, dtype=np.float32))
    assert least_cosine(got, expected) > 0.99999
    # Inside an IndexPreTransform the index whitens raw vectors itself: the nearest neighbours agree.
    index = faiss.IndexPreTransform(transform, faiss.IndexFlatL2(transform.d_out))
    index.add(raw)
    _, ids = index.search(raw[:5], 1)
    assert ids[:, 0].tolist() == list(range(5))


def test_linear_map_is_the_pipeline_before_normalization(tmp_path, corpus, tiny_model):
    pipe = Pipeline.load(fit(tmp_path, corpus, tiny_model, "--pooling", "cls", "-k", "12", "--beta", "0.3",
                             "--jl-dim", "9", "--no-normalize"))
    raw = np.random.default_rng(0).standard_normal((7, 32))
    a, b = linear_map(pipe)
    np.testing.assert_allclose(raw @ a + b, pipe.transform(raw), rtol=1e-4, atol=1e-5)


# --- ONNX: dispatched to whiten_cli.onnx_export ------------------------------------------------------


def test_onnx_format_writes_the_graph_and_its_int8_twin(tmp_path, corpus, texts, tiny_model):
    """`whiten export --format onnx --quantize int8`: the graph, run in onnxruntime with the exported
    tokenizer, gives `whiten encode --pipeline`'s vectors; the int8 graph is written and reported."""
    pytest.importorskip("onnxruntime")
    from test_onnx import run_graph

    pipe = fit(tmp_path, corpus, tiny_model, "--pooling", "first-last-avg", "-k", "16")
    result = run("export", pipe, "-o", tmp_path / "onnx", "--format", "onnx", "--quantize", "int8")
    assert result.exit_code == 0, result.output
    assert "int8" in result.stdout
    folder = tmp_path / "onnx"
    assert (folder / "model.onnx").is_file() and (folder / "model.int8.onnx").is_file()
    meta = json.loads((folder / METADATA_FILE).read_text())
    assert meta["export_format"] == "onnx"
    # the graph is written in a temporary folder, then swapped in: neither the report nor the record names that one
    assert ".tmp" not in result.stdout and meta.get("path", str(folder)) == str(folder)
    expected = encode(tmp_path, corpus, "--pipeline", pipe)
    assert least_cosine(run_graph(folder, texts), expected) > 0.9999


def test_onnx_format_without_the_exporter_is_one_line(tmp_path, corpus, tiny_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "whiten_cli.onnx_export", None)  # as if the module were not there
    pipe = fit(tmp_path, corpus, tiny_model, "--pooling", "cls", "-k", "8")
    assert_one_line_error(run("export", pipe, "-o", tmp_path / "onnx", "--format", "onnx"), "onnx")
    assert not (tmp_path / "onnx").exists()


# --- bad input: one line, exit 2, nothing written ------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory, corpus, tiny_model) -> Path:
    return fit(tmp_path_factory.mktemp("export"), corpus, tiny_model, "--pooling", "cls", "-k", "8")


def no_leftovers(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], list(folder.iterdir())


def test_missing_pipeline(tmp_path):
    assert_one_line_error(run("export", tmp_path / "nope", "-o", tmp_path / "out"), "nope", "does not exist")
    assert not (tmp_path / "out").exists()


def test_damaged_pipeline_json(tmp_path, pipeline_dir):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(pipeline_dir, damaged)
    (damaged / "pipeline.json").write_text('{"format": "whiten-pipeline", "model": ')
    assert_one_line_error(run("export", damaged, "-o", tmp_path / "out"), "pipeline.json", "not valid")
    assert not (tmp_path / "out").exists()


def test_unsupported_pooling_is_refused_naming_the_alternatives(tmp_path, corpus, tiny_model):
    pipe = fit(tmp_path, corpus, tiny_model, "--pooling", "pooler", "-k", "8")
    assert_one_line_error(run("export", pipe, "-o", tmp_path / "out"), "pooler", "--pooling cls or last-avg")
    assert not (tmp_path / "out").exists()
    no_leftovers(tmp_path)
    assert run("export", pipe, "-o", tmp_path / "fx", "--format", "faiss").exit_code == 0  # any pooling


@pytest.mark.parametrize("args,fragments", [
    (["--format", "tflite"], ["--format", "sentence-transformers, onnx, faiss"]),
    (["--quantize", "int8"], ["--quantize", "onnx"]),
])
def test_bad_options(tmp_path, pipeline_dir, args, fragments):
    assert_one_line_error(run("export", pipeline_dir, "-o", tmp_path / "out", *args), *fragments)
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_force_and_is_replaced_whole(tmp_path, pipeline_dir):
    out = tmp_path / "out"
    assert run("export", pipeline_dir, "-o", out).exit_code == 0
    before = sorted(p.name for p in out.iterdir())
    assert_one_line_error(run("export", pipeline_dir, "-o", out, "--format", "faiss"), str(out), "--force")
    assert sorted(p.name for p in out.iterdir()) == before
    result = run("export", pipeline_dir, "-o", out, "--format", "faiss", "--force")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["transform.faiss", METADATA_FILE]  # nothing of the old one
    no_leftovers(tmp_path)


def test_force_never_replaces_what_is_not_an_export(tmp_path, pipeline_dir):
    (tmp_path / "mine").mkdir()
    write(tmp_path / "mine" / "notes.txt", "keep me")
    write(tmp_path / "file", "keep me too")
    assert_one_line_error(run("export", pipeline_dir, "-o", tmp_path / "mine", "--force"), "not a whiten export")
    assert_one_line_error(run("export", pipeline_dir, "-o", tmp_path / "file", "--force"), "not a folder")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert (tmp_path / "file").read_text() == "keep me too"


def test_a_failed_export_with_force_leaves_the_previous_one(tmp_path, pipeline_dir, monkeypatch):
    from whiten_cli import export as export_module

    out = tmp_path / "out"
    export(Pipeline.load(pipeline_dir), out, "faiss")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def fail_half_way(pipeline, folder):
        (folder / "transform.faiss").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_module, "_write_faiss", fail_half_way)
    assert_one_line_error(run("export", pipeline_dir, "-o", out, "--format", "faiss", "--force"), str(out),
                          "No space left on device")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    no_leftovers(tmp_path)


def test_library_messages_name_parameters(tmp_path, pipeline_dir):
    from whiten_cli.errors import ParameterError

    pipeline = Pipeline.load(pipeline_dir)
    with pytest.raises(ParameterError, match=r"^format must be one of"):
        export(pipeline, tmp_path / "out", "tflite")
    export(pipeline, tmp_path / "out", "faiss")
    with pytest.raises(ValueError, match=r"already exists; pass force to replace it$"):
        export(pipeline, tmp_path / "out", "faiss")


# --- the default model on STS-B sentences --------------------------------------------------------------


@pytest.fixture(scope="module")
def sts_sentences() -> list[str]:
    from whiten_cli.sts import load_dataset, sts_dir

    if not (sts_dir() / "STSBenchmark" / "sts-test.csv").is_file():
        pytest.skip(f"shared STS data not found under {sts_dir()}")
    return list(dict.fromkeys(load_dataset("stsb").sentences))[:240]


@pytest.fixture(scope="module")
def minilm_raw(sts_sentences):
    from whiten_cli.encoder import Encoder

    encoder = Encoder(pooling="model", dtype="float32")
    return encoder, encoder.encode_poolings(sts_sentences, ["cls", "last-avg", "model"])


MINILM_CASES = [("cls", 128, 1.0, None, True), ("last-avg", 128, 0.5, 64, True), ("model", 128, 1.0, None, True),
                ("model", 96, 0.5, 48, False)]


@pytest.mark.slow
@pytest.mark.parametrize("pooling,k,gamma,jl,normalize", MINILM_CASES,
                         ids=[f"{c[0]}-k{c[1]}-g{c[2]}-jl{c[3]}-{'norm' if c[4] else 'raw'}" for c in MINILM_CASES])
def test_default_model_on_sts_sentences(tmp_path, sts_sentences, minilm_raw, pooling, k, gamma, jl, normalize):
    """SentenceTransformer(export).encode equals the pipeline's vectors on 240 STS-B sentences."""
    from whiten_cli.projection import RandomProjection
    from whiten_cli.stats import GaussianStats
    from whiten_cli.whitening import Eigenbasis

    encoder, raw = minilm_raw
    stats = GaussianStats.empty(raw[pooling].shape[1])
    stats.update(raw[pooling])
    whitening = Eigenbasis.fit(stats).whitening(k, 1.0, gamma)
    pipeline = Pipeline(model=encoder.source.name, model_fingerprint=encoder.source.fingerprint, pooling=pooling,
                        max_length=encoder.max_length, input_dim=raw[pooling].shape[1], whitening=whitening,
                        projection=RandomProjection.create(k, jl, seed=1) if jl else None, normalize=normalize,
                        model_path=str(encoder.source.path))
    export(pipeline, tmp_path / "st", link_model=True)
    assert least_cosine(st_encode(tmp_path / "st", sts_sentences), pipeline.transform(raw[pooling])) > 0.99999
