import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import HIDDEN, sample_sentences, write
from whiten_cli.cli import app
from whiten_cli.pipeline import ARRAYS_FILE, METADATA_FILE, Pipeline

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(arg) for arg in args])


def assert_one_line_error(result, *fragments: str) -> str:
    """Exit code 2, a single `error: ...` line on stderr naming ``fragments``, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert lines[-1] == errors[0]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def assert_nothing_written(path: Path) -> None:
    assert not path.exists()
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")]
    assert not leftovers, leftovers


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write(tmp_path_factory.mktemp("cli") / "corpus.txt", "\n".join(sample_sentences(60)) + "\n")


@pytest.fixture(scope="module")
def fitted(tiny_model, corpus, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("cli") / "pipe"
    result = run("fit", corpus, "-o", out, "--model", tiny_model, "--pooling", "cls", "-k", 16)
    return out, result


# --- fit / encode --------------------------------------------------------------------------------


def test_fit_writes_loadable_pipeline_and_prints_summary(fitted, tiny_model, corpus):
    out, result = fitted
    assert result.exit_code == 0, result.output
    assert "fitted on 60 texts" in result.stdout
    assert "cls pooling" in result.stdout and f"{HIDDEN}d" in result.stdout and "k=16" in result.stdout
    assert f"wrote {out}" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted([METADATA_FILE, ARRAYS_FILE])
    pipeline = Pipeline.load(out)
    assert (pipeline.pooling, pipeline.input_dim, pipeline.output_dim) == ("cls", HIDDEN, 16)
    assert pipeline.model == str(tiny_model) and pipeline.info["fitted_on"] == 60
    assert pipeline.info["corpus"] == str(corpus)


def test_fit_with_projection_prints_jl_bound(tiny_model, corpus, tmp_path):
    result = run("fit", corpus, "-o", tmp_path / "p", "--model", tiny_model, "--pooling", "cls", "-k", 16,
                 "--jl-dim", 8, "--seed", 5, "--gamma", 0.5)
    assert result.exit_code == 0, result.output
    assert "JL projection to 8d (seed 5)" in result.stdout and "JL lemma" in result.stdout
    assert "within 1 ± 0.1 needs n ≥ 3510" in result.stdout  # ⌈4 ln 60 / (0.1²/2 − 0.1³/3)⌉
    pipeline = Pipeline.load(tmp_path / "p")
    assert pipeline.output_dim == 8 and pipeline.projection.seed == 5 and pipeline.whitening.gamma == 0.5


def test_encode_raw_vectors(tiny_model, corpus, tmp_path):
    out = tmp_path / "vectors.npy"
    result = run("encode", corpus, "-o", out, "--model", tiny_model, "--pooling", "cls")
    assert result.exit_code == 0, result.output
    vectors = np.load(out, allow_pickle=False)
    assert vectors.dtype == np.float32 and vectors.shape == (60, HIDDEN)
    assert f"wrote 60 vectors of dimension {HIDDEN}" in result.stdout
    from whiten_cli.encoder import Encoder

    np.testing.assert_allclose(vectors[:3], Encoder(str(tiny_model), pooling="cls").encode(sample_sentences(60)[:3]),
                               atol=1e-6)


def test_encode_through_pipeline(fitted, corpus, tmp_path):
    pipe_dir, _ = fitted
    out, raw = tmp_path / "white.npy", tmp_path / "raw.npy"
    result = run("encode", corpus, "-o", out, "--pipeline", pipe_dir, "--raw-output", raw)
    assert result.exit_code == 0, result.output
    vectors = np.load(out)
    assert vectors.dtype == np.float32 and vectors.shape == (60, 16)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, Pipeline.load(pipe_dir).transform(np.load(raw)), atol=1e-6)


def test_encode_jsonl_field_and_skip_empty(tiny_model, tmp_path):
    data = write(tmp_path / "docs.jsonl", '{"id": 1, "body": "the cat plays."}\n{"id": 2, "body": ""}\n'
                                          '{"id": 3, "body": "a dog runs."}\n')
    out = tmp_path / "v.npy"
    result = run("encode", data, "-o", out, "--model", tiny_model, "--pooling", "cls", "--field", "body")
    assert_one_line_error(result, f"{data}:2:", "empty")
    assert_nothing_written(out)
    result = run("encode", data, "-o", out, "--model", tiny_model, "--pooling", "cls", "--field", "body", "--skip-empty")
    assert result.exit_code == 0, result.output
    assert np.load(out).shape == (2, HIDDEN)


def test_encode_with_pipeline_of_another_model_is_refused(fitted, other_tiny_model, corpus, tmp_path):
    pipe_dir, _ = fitted
    out = tmp_path / "v.npy"
    result = run("encode", corpus, "-o", out, "--pipeline", pipe_dir, "--model", other_tiny_model)
    assert_one_line_error(result, "not the model this pipeline was fitted on", str(other_tiny_model))
    assert_nothing_written(out)


def test_encode_with_pipeline_refuses_other_pooling(fitted, corpus, tmp_path):
    pipe_dir, _ = fitted
    result = run("encode", corpus, "-o", tmp_path / "v.npy", "--pipeline", pipe_dir, "--pooling", "last-avg")
    assert_one_line_error(result, str(pipe_dir), "cls")
    assert_nothing_written(tmp_path / "v.npy")


def test_fit_with_preset_and_toml_config(tiny_model, corpus, tmp_path):
    config = write(tmp_path / "mine.toml", 'description = "mine"\nk = 8\ngamma = 0.5\npooling = "last-avg"\n')
    result = run("fit", corpus, "-o", tmp_path / "p", "--model", tiny_model, "--config", config, "--gamma", 0.25)
    assert result.exit_code == 0, result.output
    pipeline = Pipeline.load(tmp_path / "p")
    assert pipeline.output_dim == 8 and pipeline.pooling == "last-avg"
    assert pipeline.whitening.gamma == 0.25  # flags override the file


def test_every_shipped_preset_loads():
    from whiten_cli.config import load_config, preset_names

    names = preset_names()
    assert {"default", "paper", "soft", "compact", "retrieval"} <= set(names)
    settings = {name: load_config(name) for name in names}
    assert settings["retrieval"]["k"] == 128 and settings["retrieval"]["gamma"] == 0.0


def test_retrieval_preset_fits_pca(tiny_model, corpus, tmp_path):
    result = run("fit", corpus, "-o", tmp_path / "p", "--model", tiny_model, "--config", "retrieval", "-k", 8)
    assert result.exit_code == 0, result.output
    pipeline = Pipeline.load(tmp_path / "p")
    assert pipeline.output_dim == 8 and pipeline.whitening.gamma == 0.0 and pipeline.whitening.beta == 1.0


# --- bad input: exit 2, one line, nothing written ----------------------------------------------


def fit_args(tiny_model, corpus, out, *extra):
    return ("fit", corpus, "-o", out, "--model", tiny_model, "--pooling", "cls", *extra)



def test_fit_on_a_dataset_by_name_is_its_distinct_sentences(tiny_model, tmp_path, monkeypatch):
    """As tune --fit-on and eval --fit-on take it (it was "no such file")."""
    monkeypatch.setenv("WHITEN_STS_DIR", str(tmp_path / "sts"))
    sentences = sample_sentences(24, seed=5)
    rows = [f"{i}\tmain-captions\tMSRvid\t2012test\t{i:04d}\tnone\tnone\t{a}\t{b}\t{i % 5}.0"
            for i, (a, b) in enumerate(zip(sentences[:12], sentences[12:]))]
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    write(tmp_path / "sts" / "STS-B" / "train.tsv", "\n".join([header, *rows, rows[0]]) + "\n")  # a pair twice
    as_text = write(tmp_path / "distinct.txt", "\n".join(dict.fromkeys(sentences)) + "\n")
    for corpus, out in (("stsb-train", tmp_path / "by-name"), (as_text, tmp_path / "by-file")):
        result = run(*fit_args(tiny_model, corpus, out, "-k", "4"))
        assert result.exit_code == 0, result.output
    assert "fitted on 24 texts" in result.output
    by_name, by_file = Pipeline.load(tmp_path / "by-name"), Pipeline.load(tmp_path / "by-file")
    assert by_name.info["corpus"] == "stsb-train"
    np.testing.assert_allclose(by_name.whitening.kernel, by_file.whitening.kernel, rtol=1e-6, atol=1e-7)

def test_fit_missing_corpus(tiny_model, tmp_path):
    missing, out = tmp_path / "missing.txt", tmp_path / "p"
    assert_one_line_error(run(*fit_args(tiny_model, missing, out)), str(missing), "no such file")
    assert_nothing_written(out)


def test_fit_empty_corpus(tiny_model, tmp_path):
    empty, out = write(tmp_path / "empty.txt", ""), tmp_path / "p"
    assert_one_line_error(run(*fit_args(tiny_model, empty, out)), str(empty), "no text")
    assert_nothing_written(out)


def test_fit_non_utf8_corpus(tiny_model, tmp_path):
    bad, out = write(tmp_path / "latin1.txt", b"the cat plays.\na dog runs.\ncaf\xe9 au lait\n"), tmp_path / "p"
    assert_one_line_error(run(*fit_args(tiny_model, bad, out)), f"{bad}:3:", "UTF-8")
    assert_nothing_written(out)


def test_encode_non_utf8_input(tiny_model, tmp_path):
    bad, out = write(tmp_path / "latin1.txt", b"ok\n\xff\n"), tmp_path / "v.npy"
    assert_one_line_error(run("encode", bad, "-o", out, "--model", tiny_model, "--pooling", "cls"), f"{bad}:2:")
    assert_nothing_written(out)


def test_fit_k_larger_than_dimension(tiny_model, corpus, tmp_path):
    out = tmp_path / "p"
    assert_one_line_error(run(*fit_args(tiny_model, corpus, out, "-k", HIDDEN + 1)), "-k", str(HIDDEN))
    assert_nothing_written(out)


@pytest.mark.parametrize("extra, named", [(("--beta", "1.5"), "--beta"), (("--gamma", "-1"), "--gamma"), (("-k", "0"), "-k"),
                                          (("--jl-dim", "0"), "--jl-dim"), (("--no-whiten",), "--jl-dim")])
def test_fit_bad_whitening_options(tiny_model, corpus, tmp_path, extra, named):
    out = tmp_path / "p"
    assert_one_line_error(run(*fit_args(tiny_model, corpus, out, *extra)), named)
    assert_nothing_written(out)


@pytest.mark.parametrize("extra", [("--gamma", "2"), ("--jl-dim", "0")])
def test_fit_options_are_checked_before_the_model_is_loaded(corpus, tmp_path, extra):
    """A bad value is refused at once, not after encoding the corpus: the model here does not even exist."""
    result = run(*fit_args(tmp_path / "no-such-model", corpus, tmp_path / "p", *extra))
    assert_one_line_error(result, extra[0])
    assert "no-such-model" not in result.output


def test_failed_fit_keeps_previous_pipeline(fitted, tiny_model, corpus):
    pipe_dir, _ = fitted
    before = {p.name: p.read_bytes() for p in pipe_dir.iterdir()}
    assert_one_line_error(run(*fit_args(tiny_model, corpus, pipe_dir, "-k", 999)))
    assert {p.name: p.read_bytes() for p in pipe_dir.iterdir()} == before


def test_fit_refuses_to_overwrite_non_pipeline_paths(tiny_model, corpus, tmp_path):
    data = tmp_path / "data"
    write(data / "notes.txt", "precious")
    assert_one_line_error(run(*fit_args(tiny_model, corpus, data)), str(data), "not a pipeline")
    assert [p.name for p in data.iterdir()] == ["notes.txt"]
    copy = write(tmp_path / "corpus.txt", corpus.read_text())
    assert_one_line_error(run(*fit_args(tiny_model, copy, copy)), str(copy))
    assert copy.read_text() == corpus.read_text()  # the corpus is still there, not replaced by a folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "data"]


@pytest.mark.parametrize("missing", [METADATA_FILE, ARRAYS_FILE])
def test_encode_pipeline_folder_missing_a_file(fitted, corpus, tmp_path, missing):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(fitted[0], broken)
    (broken / missing).unlink()
    out = tmp_path / "v.npy"
    assert_one_line_error(run("encode", corpus, "-o", out, "--pipeline", broken), str(broken), missing)
    assert_nothing_written(out)


def test_encode_pipeline_folder_missing(corpus, tmp_path):
    out = tmp_path / "v.npy"
    assert_one_line_error(run("encode", corpus, "-o", out, "--pipeline", tmp_path / "nope"), str(tmp_path / "nope"))
    assert_nothing_written(out)


@pytest.mark.parametrize("command", ["fit", "encode"])
def test_model_folder_that_does_not_exist(corpus, tmp_path, command):
    model, out = tmp_path / "no-model", tmp_path / ("p" if command == "fit" else "v.npy")
    assert_one_line_error(run(command, corpus, "-o", out, "--model", model, "--pooling", "cls"), str(model),
                          "does not exist")
    assert_nothing_written(out)


def test_unknown_config_name(tiny_model, corpus, tmp_path):
    out = tmp_path / "p"
    assert_one_line_error(run(*fit_args(tiny_model, corpus, out, "--config", "no-such-preset")), "no-such-preset",
                          "paper")  # lists the presets
    assert_nothing_written(out)


@pytest.mark.parametrize(
    "content, message",
    [("k = [unclosed\n", "invalid TOML"), ("k = 8\nwhat = 1\n", "unknown setting 'what'"),
     ('k = "eight"\n', "must be a int"), ("gamma = 5\n", "setting 'gamma' must be in [0, 1], got 5"),
     ("batch_size = 0\n", "setting 'batch_size' must be at least 1, got 0")],
)
def test_bad_toml_config(tiny_model, corpus, tmp_path, content, message):
    config, out = write(tmp_path / "bad.toml", content), tmp_path / "p"
    assert_one_line_error(run(*fit_args(tiny_model, corpus, out, "--config", config)), str(config), message)
    assert_nothing_written(out)


def test_encode_output_must_be_npy(tiny_model, corpus, tmp_path):
    assert_one_line_error(run("encode", corpus, "-o", tmp_path / "v.txt", "--model", tiny_model), ".npy")
    assert_nothing_written(tmp_path / "v.txt")


def test_encode_output_that_cannot_be_written(tiny_model, corpus, tmp_path):
    folder = tmp_path / "vectors.npy"
    folder.mkdir()
    assert_one_line_error(run("encode", corpus, "-o", folder, "--model", tiny_model, "--pooling", "cls"),
                          str(folder), "folder")
    assert folder.is_dir() and not any(folder.iterdir())
    under_file = tmp_path / "corpus.txt" / "v.npy"
    write(tmp_path / "corpus.txt", "x\n")
    assert_one_line_error(run("encode", corpus, "-o", under_file, "--model", tiny_model, "--pooling", "cls"),
                          str(under_file))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "vectors.npy"]


def test_unknown_pooling(tiny_model, corpus, tmp_path):
    assert_one_line_error(run("encode", corpus, "-o", tmp_path / "v.npy", "--model", tiny_model, "--pooling", "avg"),
                          "unknown pooling")


def test_model_pooling_on_plain_model(tiny_model, corpus, tmp_path):
    assert_one_line_error(run("encode", corpus, "-o", tmp_path / "v.npy", "--model", tiny_model, "--pooling", "model"),
                          "sentence-transformers")


# --- the command itself --------------------------------------------------------------------------


def test_help():
    result = run("--help")
    assert result.exit_code == 0
    assert "fit" in result.output and "encode" in result.output
    for command in ("fit", "encode"):
        result = run(command, "--help")
        assert result.exit_code == 0 and "--output" in result.output


def test_help_and_import_do_not_load_heavy_libraries():
    code = (
        "import sys, whiten_cli.cli\n"
        "heavy = [m for m in ('torch', 'transformers', 'faiss', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "try:\n"
        "    whiten_cli.cli.main()\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'faiss', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "encode" in result.stdout


@pytest.mark.parametrize("args", [("search", "ix", "q", "-k", "abc"), ("fit", "c.txt", "-o", "p", "--gamma", "strong"),
                                  ("nosuchcommand",)])
def test_usage_errors_are_clicks_own(args):
    """A value of the wrong type is a usage error (exit 2, the option named), not an internal error."""
    result = subprocess.run([sys.executable, "-m", "whiten_cli", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert "Error:" in result.stderr


def test_cli_runs_without_the_click_package():
    """typer 0.2x carries its own click: the CLI must not need the click package (it is not a dependency)."""
    code = "import sys; sys.modules['click'] = None\nimport whiten_cli.cli\nwhiten_cli.cli.main()\n"
    result = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "encode" in result.stdout


def test_python_dash_m():
    result = subprocess.run([sys.executable, "-m", "whiten_cli", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "fit" in result.stdout
