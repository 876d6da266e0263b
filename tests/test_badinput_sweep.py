"""Bad inputs found by a sweep of every command: each is one ``error:`` line, exit code 2, nothing written.

Before their fixes these were internal errors (exit 1), silent garbage (exit 0: random weights, an
empty tokenizer) or an input overwritten by the output.
"""

import json
import shutil

import pytest
from typer.testing import CliRunner

from conftest import sample_sentences, write
from whiten_cli.cli import app

from test_cli import assert_nothing_written, assert_one_line_error

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write(tmp_path_factory.mktemp("sweep") / "corpus.txt", "\n".join(sample_sentences(24)) + "\n")


def encode(corpus, model, output, *extra):
    return run("encode", corpus, "-o", output, "-m", model, "-p", "cls", "--no-cache", "-q", *extra)


# --- options the model cannot run with ------------------------------------------------------------


def test_max_length_above_the_models_positions_is_refused(tiny_model, tmp_path):
    """The tiny BERT has 256 positions: a longer text at --max-length 1000 failed inside the forward pass."""
    long_text = write(tmp_path / "long.txt", "the cat sings " * 200 + "\n")
    out = tmp_path / "v.npy"
    assert_one_line_error(encode(long_text, tiny_model, out, "--max-length", 1000), "--max-length", "at most 256", "1000")
    assert_nothing_written(out)
    assert encode(long_text, tiny_model, out, "--max-length", 256).exit_code == 0


def test_a_pipeline_max_length_above_the_models_positions_names_pipeline_json(tiny_model, corpus, tmp_path):
    """Not the --max-length flag, which the user did not give: the value is the pipeline's."""
    pipe = tmp_path / "pipe"
    assert run("fit", corpus, "-o", pipe, "-m", tiny_model, "-p", "cls", "-k", "4", "-q").exit_code == 0
    meta = json.loads((pipe / "pipeline.json").read_text())
    (pipe / "pipeline.json").write_text(json.dumps({**meta, "max_length": 1000}))
    line = assert_one_line_error(run("encode", corpus, "--pipeline", pipe, "-o", tmp_path / "v.npy"),
                                 f"{pipe / 'pipeline.json'}: max_length must be at most 256", "got 1000")
    assert "--max-length" not in line


@pytest.mark.parametrize("config, limit", [
    ({"model_type": "bert", "max_position_embeddings": 512}, 512),
    ({"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}, 512),
    ({"model_type": "mpnet", "max_position_embeddings": 514}, 512),
    ({"model_type": "bert"}, None),
])
def test_position_limit_leaves_out_the_padding_offset(tmp_path, config, limit):
    """RoBERTa-style models number positions from pad_token_id + 1: 514 embeddings hold 512 tokens."""
    from whiten_cli.encoder import _position_limit

    write(tmp_path / "config.json", json.dumps(config))
    assert _position_limit(tmp_path) == limit


def test_device_meta_is_refused(tiny_model, corpus, tmp_path):
    out = tmp_path / "v.npy"
    assert_one_line_error(encode(corpus, tiny_model, out, "--device", "meta"), "--device meta")
    assert_nothing_written(out)


# --- model folders that load, or half load, wrongly -----------------------------------------------


def broken_model(tiny_model, folder, remove=(), **replace):
    shutil.copytree(tiny_model, folder)
    for name in remove:
        (folder / name).unlink()
    for name, content in replace.items():
        write(folder / name.replace("__", "."), content)
    return folder


@pytest.mark.parametrize("remove, replace, fragment", [
    # transformers 5 builds a tokenizer of special tokens alone: every word became [UNK], exit 0.
    (("tokenizer.json", "tokenizer_config.json", "vocab.txt"), {}, "tokenizer knows only its special tokens"),
    # A GPT-2 config.json over BERT weights: every weight random, exit 0.
    ((), {"config__json": json.dumps({"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2,
                                      "vocab_size": 200})}, "weights do not fit the model config.json describes"),
    ((), {"tokenizer_config__json": "[1, 2]"}, "cannot load the model"),  # was an AttributeError
    (("model.safetensors",), {"pytorch_model__bin": "not a checkpoint"}, "cannot load the model"),  # UnpicklingError
])
def test_broken_model_folder_is_one_line(tiny_model, corpus, tmp_path, remove, replace, fragment):
    model = broken_model(tiny_model, tmp_path / "model", remove, **replace)
    out = tmp_path / "v.npy"
    assert_one_line_error(encode(corpus, model, out), str(model), fragment)
    assert_nothing_written(out)


# --- an output that is one of the inputs ----------------------------------------------------------


def test_encode_refuses_to_write_over_its_input(tiny_model, tmp_path):
    texts = write(tmp_path / "texts.npy", "\n".join(sample_sentences(8)) + "\n")  # a text file, oddly named
    before = texts.read_bytes()
    assert_one_line_error(encode(texts, tiny_model, texts), str(texts), "also an input")
    assert_one_line_error(encode(texts, tiny_model, tmp_path / "v.npy", "--raw-output", texts), "also an input")
    assert texts.read_bytes() == before


@pytest.mark.parametrize("flag", ["--output", "--plot"])
def test_eval_refuses_to_write_over_a_dataset(tiny_model, tmp_path, flag):
    sentences = sample_sentences(24)
    rows = "".join(f"{a}\t{b}\t{i % 5}\n" for i, (a, b) in enumerate(zip(sentences[:12], sentences[12:])))
    pairs = write(tmp_path / "pairs.tsv", "sentence1\tsentence2\tscore\n" + rows)
    before = pairs.read_bytes()
    result = run("eval", pairs, "-m", tiny_model, "-p", "cls", "--no-cache", "-q", flag, pairs)
    assert_one_line_error(result, str(pairs), "also an input")
    assert pairs.read_bytes() == before


# --- damaged artifacts ----------------------------------------------------------------------------


def test_pipeline_with_an_unknown_pooling_names_its_metadata(tiny_model, corpus, tmp_path):
    pipe = tmp_path / "pipe"
    assert run("fit", corpus, "-o", pipe, "-m", tiny_model, "-p", "cls", "-k", 4, "--no-cache", "-q").exit_code == 0
    meta = json.loads((pipe / "pipeline.json").read_text())
    write(pipe / "pipeline.json", json.dumps({**meta, "pooling": "bogus"}))
    out = tmp_path / "v.npy"
    result = run("encode", corpus, "-o", out, "--pipeline", pipe, "--no-cache", "-q")
    assert_one_line_error(result, str(pipe / "pipeline.json"), "pooling is 'bogus'")
    assert_nothing_written(out)


def test_compare_an_empty_npy_file(tmp_path):
    empty = write(tmp_path / "empty.npy", b"")
    assert_one_line_error(run("compare", empty, empty), str(empty), "not a .npy array file")


def test_pipeline_with_a_model_path_of_the_wrong_type_names_it(tiny_model, corpus, tmp_path):
    pipe = tmp_path / "pipe"
    assert run("fit", corpus, "-o", pipe, "-m", tiny_model, "-p", "cls", "-k", 4, "--no-cache", "-q").exit_code == 0
    meta = json.loads((pipe / "pipeline.json").read_text())
    write(pipe / "pipeline.json", json.dumps({**meta, "model": {**meta["model"], "path": 5}}))
    result = run("export", pipe, "-o", tmp_path / "out", "--format", "faiss")
    assert_one_line_error(result, str(pipe / "pipeline.json"), "model.path is 5, not a string or null")


def test_compare_an_npz_archive_named_npy(tmp_path):
    import numpy as np

    archive = tmp_path / "vectors.npy"
    with open(archive, "wb") as handle:
        np.savez(handle, a=np.ones((4, 3), dtype=np.float32))
    assert_one_line_error(run("compare", archive, archive), str(archive), "a .npz archive")


# --- option values the libraries underneath refuse with a bare ValueError -------------------------


def test_negative_seed_is_refused_before_encoding(tiny_model, corpus, tmp_path):
    out = tmp_path / "pipe"
    result = run("fit", corpus, "-o", out, "-m", tiny_model, "--jl-dim", 4, "--seed", -1, "--no-cache", "-q")
    assert_one_line_error(result, "--seed must be at least 0, got -1")
    assert_nothing_written(out)
    pairs = write(tmp_path / "pairs.tsv", "sentence1\tsentence2\tscore\na\tb\t1\nc\td\t2\ne\tf\t3\n")
    assert_one_line_error(run("tune", pairs, "-o", out, "-m", tiny_model, "--seed", -1), "--seed must be at least 0")
    assert_nothing_written(out)


@pytest.fixture(scope="module")
def index_dir(tiny_model, corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    assert run("fit", corpus, "-o", folder / "pipe", "-m", tiny_model, "-p", "cls", "-k", 8, "-q").exit_code == 0
    assert run("index", corpus, "--pipeline", folder / "pipe", "-o", folder / "index", "-q").exit_code == 0
    return folder / "index"


def test_search_threshold_nan_is_refused(index_dir):
    """A NaN threshold dropped every hit without a word."""
    assert_one_line_error(run("search", index_dir, "the cat", "--threshold", "nan"), "--threshold")


@pytest.mark.parametrize("stdin, fragment", [(b"the cat\n\xff\xfe sings\n", "<stdin>:2: not valid UTF-8"),
                                             (b"the cat\x00\n", "<stdin>:1: a NUL byte")])
def test_search_queries_on_stdin_that_are_not_text(index_dir, stdin, fragment):
    """Undecodable stdin reached the tokenizer as surrogates: an internal TypeError."""
    assert_one_line_error(runner.invoke(app, ["search", str(index_dir)], input=stdin), fragment)



def test_index_with_an_empty_offsets_file_names_it(index_dir, tmp_path):
    damaged = tmp_path / "index"
    shutil.copytree(index_dir, damaged)
    write(damaged / "docs.offsets.npy", b"")
    assert_one_line_error(run("search", damaged, "the cat"), str(damaged / "docs.offsets.npy"), "unreadable")


def test_vector_folder_with_an_empty_shard_names_it(tiny_model, tmp_path):
    shards = tmp_path / "shards"
    for part in range(2):
        write(shards / f"part{part}.txt", "\n".join(sample_sentences(6, seed=part)) + "\n")
    vectors = tmp_path / "vectors"
    assert run("encode", shards, "-o", vectors, "-m", tiny_model, "-p", "cls", "--no-cache", "-q").exit_code == 0
    pipe = tmp_path / "pipe"
    # k=5: 6 texts span 5 directions. The pipeline reads raw vectors, so the folder's are the right width.
    fit = run("fit", shards / "part0.txt", "-o", pipe, "-m", tiny_model, "-p", "cls", "-k", "5", "--no-cache", "-q")
    assert fit.exit_code == 0, fit.output
    # One shard is emptied.
    shard = sorted(vectors.glob("*.npy"))[0]
    write(shard, b"")
    result = run("index", shards / "part0.txt", "--pipeline", pipe, "-o", tmp_path / "index", "--vectors", vectors, "-q")
    assert_one_line_error(result, str(shard), "not a .npy array file")
    assert_nothing_written(tmp_path / "index")


@pytest.mark.parametrize("flag, value", [("--gamma", "2"), ("--gamma", "nan"), ("--beta", "-1")])
def test_eval_checks_beta_and_gamma_before_the_model(tmp_path, flag, value):
    """They were checked when the first variant was fitted, after every sentence was encoded: here the
    missing model shows which comes first."""
    pairs = write(tmp_path / "pairs.tsv", "sentence1\tsentence2\tscore\na\tb\t1\nc\td\t2\n")
    result = run("eval", pairs, "-m", tmp_path / "no-model", flag, value)
    assert_one_line_error(result, f"{flag} must be in [0, 1]")


def test_fit_on_texts_that_do_not_vary_names_the_corpus(tiny_model, tmp_path):
    same = write(tmp_path / "same.txt", "the cat sings\n" * 10)
    out = tmp_path / "pipe"
    result = run("fit", same, "-o", out, "-m", tiny_model, "--no-cache", "-q")
    assert_one_line_error(result, f"{same}: the vectors do not vary")
    assert_nothing_written(out)


def test_tune_plot_refuses_to_write_over_the_dev_pairs(tiny_model, tmp_path):
    sentences = sample_sentences(24)
    rows = "".join(f"{a}\t{b}\t{i % 5}\n" for i, (a, b) in enumerate(zip(sentences[:12], sentences[12:])))
    pairs = write(tmp_path / "dev.tsv", "sentence1\tsentence2\tscore\n" + rows)
    before = pairs.read_bytes()
    result = run("tune", pairs, "-o", tmp_path / "pipe", "-m", tiny_model, "--resamples", 10, "--plot", pairs)
    assert_one_line_error(result, str(pairs), "also an input")
    assert pairs.read_bytes() == before


@pytest.mark.parametrize("target", ["input", "other"])
def test_encode_shards_never_replace_a_folder_that_is_not_a_vector_folder(tiny_model, tmp_path, target):
    """`encode shards/ -o shards/` swapped the vector folder in over the input texts, deleting them."""
    shards = tmp_path / "shards"
    for part in range(2):
        write(shards / f"part{part}.txt", "\n".join(sample_sentences(4, seed=part)) + "\n")
    output = shards if target == "input" else write(tmp_path / "notes" / "keep.txt", "mine\n").parent
    kept = sorted(p.name for p in output.iterdir())
    result = run("encode", shards, "-o", output, "-m", tiny_model, "-p", "cls", "--no-cache", "-q")
    assert_one_line_error(result, str(output), "not a vector folder")
    assert sorted(p.name for p in output.iterdir()) == kept


def test_search_into_a_closed_pipe_stops_quietly(index_dir):
    """`whiten search ... | head`: the reader leaves early. It was "error: Broken pipe", exit 2."""
    import subprocess
    import sys

    queries = "".join(f"query number {i}\n" for i in range(300))  # ~300 × k lines: more than a pipe holds
    process = subprocess.Popen([sys.executable, "-m", "whiten_cli.cli", "search", str(index_dir), "-k", "50"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdin.write(queries.encode())
    process.stdin.close()
    assert process.stdout.readline()  # the first hit, then the reader goes away
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait() == 141, stderr
    assert "error" not in stderr and "Traceback" not in stderr and "Exception ignored" not in stderr


@pytest.mark.parametrize("command", [["encode", "{corpus}", "-o", "-"], ["fit", "{corpus}", "-o", "-"],
                                     ["encode", "{corpus}", "-o", "{tmp}/v.npy", "--raw-output", "-"],
                                     ["eval", "{corpus}", "--plot", "-"]])
def test_dash_is_not_taken_for_a_file_named_dash(command, corpus, tmp_path, monkeypatch):
    """`-o -` wrote a folder of shards named "-" (or a pipeline folder); no output goes to stdout here."""
    monkeypatch.chdir(tmp_path)
    args = [arg.format(corpus=corpus, tmp=tmp_path) for arg in command]
    flag = args[args.index("-") - 1]
    assert_one_line_error(run(*args), f"{flag} -: not standard output here")
    assert not (tmp_path / "-").exists()
