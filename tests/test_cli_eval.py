"""`whiten eval` through typer's runner, on a tiny random model and small pair files."""

import json

import pytest
from typer.testing import CliRunner

from conftest import HIDDEN, sample_sentences, write
from whiten_cli.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    sentences = sample_sentences(80, seed=3)
    lines = ["sentence1\tsentence2\tscore"]
    lines += [f"{a}\t{b}\t{(i * 7) % 6}" for i, (a, b) in enumerate(zip(sentences[:40], sentences[40:]))]
    return write(tmp_path_factory.mktemp("eval") / "pairs.tsv", "\n".join(lines) + "\n")


def run(*args):
    result = runner.invoke(app, ["eval", *map(str, args)])
    return result, result.output


def report_of(stdout):
    """The --json report, from stdout alone: warnings go to stderr."""
    report = json.loads(stdout)
    return report, {(row["pooling"], row["variant"]): row for row in report["rows"]}


def test_sweep_encodes_once_and_reports_every_variant(tiny_model, pairs_file, tmp_path):
    result, output = run(pairs_file, "--model", tiny_model, "--pooling", "cls,last-avg", "-k", "all,8",
                         "--gamma", "1", "--gamma", "0.5", "--json", "--output", tmp_path / "r.json",
                         "--plot", tmp_path / "r.png")
    assert result.exit_code == 0, output
    report, rows = report_of(result.stdout)
    assert json.loads((tmp_path / "r.json").read_text()) == report
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    variants = {"raw", "k=all", "k=all γ=0.5", "k=8", "k=8 γ=0.5"}
    assert set(rows) == {(p, v) for p in ("cls", "last-avg") for v in variants}
    for row in report["rows"]:
        assert row["pairs"] == 40 and -100 <= row["spearman"] <= 100
    assert report["model"]["fingerprint"]


def test_table_output_names_dataset_pooling_and_variants(tiny_model, pairs_file):
    result, output = run(pairs_file, "--model", tiny_model, "--pooling", "cls", "-k", "8")
    assert result.exit_code == 0, output
    assert "pairs · cls pooling" in output
    assert "raw" in output and "k=8" in output


def test_whitening_all_dims_with_gamma_zero_is_a_rotation(tiny_model, pairs_file):
    """γ=0, β=0, k=all only rotates: cosine similarities, hence Spearman, are unchanged."""
    result, output = run(pairs_file, "--model", tiny_model, "--pooling", "cls", "--gamma", "0", "--beta", "0", "--json")
    assert result.exit_code == 0, output
    _, rows = report_of(result.stdout)
    assert rows[("cls", "k=all γ=0 β=0")]["spearman"] == pytest.approx(rows[("cls", "raw")]["spearman"], abs=1e-9)


def test_fit_on_corpus_and_pipeline(tiny_model, pairs_file, tmp_path):
    corpus = write(tmp_path / "corpus.txt", "\n".join(sample_sentences(60, seed=9)) + "\n")
    result, output = run(pairs_file, "--model", tiny_model, "--pooling", "cls", "--fit-on", corpus, "-k", "16", "--json")
    assert result.exit_code == 0, output
    _, on_corpus = report_of(result.stdout)

    fit = runner.invoke(app, ["fit", str(corpus), "-o", str(tmp_path / "pipe"), "--model", str(tiny_model),
                              "--pooling", "cls", "-k", "16"])
    assert fit.exit_code == 0, fit.output
    result, output = run(pairs_file, "--pipeline", tmp_path / "pipe", "--json")
    assert result.exit_code == 0, output
    report, rows = report_of(result.stdout)
    assert set(rows) == {("cls", "raw"), ("cls", "pipeline")}
    # the saved pipeline is the same whitening as fitting on the corpus inside eval
    assert rows[("cls", "pipeline")]["spearman"] == pytest.approx(on_corpus[("cls", "k=16")]["spearman"], abs=1e-6)


def test_fit_on_a_pairs_file_or_dataset_uses_its_distinct_sentences(tiny_model, pairs_file, tmp_path):
    lines = pairs_file.read_text().splitlines()[1:]
    distinct = dict.fromkeys(text for line in lines for text in line.split("\t")[:2])
    as_texts = write(tmp_path / "distinct.txt", "\n".join(distinct) + "\n")
    scores = []
    for corpus in (pairs_file, as_texts):
        result, output = run(pairs_file, "--model", tiny_model, "--pooling", "cls", "--fit-on", corpus, "-k", "16", "--json")
        assert result.exit_code == 0, output
        scores.append(report_of(result.stdout)[1][("cls", "k=16")]["spearman"])
    assert scores[0] == pytest.approx(scores[1], abs=1e-9)

@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-k", str(HIDDEN + 1)], "-k must be between 1 and"),
        (["-k", "ten"], "-k: 'ten' is not an integer"),
        (["--gamma", "2"], "gamma must be in [0, 1]"),
        (["--pooling", "median"], "unknown pooling 'median'"),
        (["--fit-on", "missing-corpus.txt"], "missing-corpus.txt: no such file"),
    ],
)
def test_bad_options_give_one_line_errors(tiny_model, pairs_file, args, message):
    result, output = run(pairs_file, "--model", tiny_model, "--pooling", "cls", *args) if "--pooling" not in args \
        else run(pairs_file, "--model", tiny_model, *args)
    assert result.exit_code == 2
    assert message in output
    assert "Traceback" not in output and output.count("\n") == 1


def test_fit_on_identical_texts_names_the_corpus(tiny_model, pairs_file, tmp_path):
    """Two copies of one text gave 'the vectors do not vary' without naming the file."""
    corpus = write(tmp_path / "twice.txt", "one text\none text\n")
    result, output = run(pairs_file, "--model", tiny_model, "--pooling", "cls", "--fit-on", corpus)
    assert result.exit_code == 2 and output.count("\n") == 1
    assert f"{corpus}: 1 text (repeats counted once); whitening is fitted on at least 2" in output


def test_pipeline_with_sweep_options_is_refused(tiny_model, pairs_file, tmp_path):
    corpus = write(tmp_path / "corpus.txt", "\n".join(sample_sentences(60)) + "\n")
    runner.invoke(app, ["fit", str(corpus), "-o", str(tmp_path / "pipe"), "--model", str(tiny_model), "--pooling", "cls"])
    result, output = run(pairs_file, "--pipeline", tmp_path / "pipe", "-k", "8")
    assert result.exit_code == 2 and "drop -k" in output
    result, output = run(pairs_file, "--pipeline", tmp_path / "pipe", "--pooling", "last-avg")
    assert result.exit_code == 2 and "fitted with cls pooling" in output


@pytest.mark.parametrize(
    ("content", "where"),
    [
        ("sentence1\tsentence2\tscore\na b\tc d\tfive\n", ":2:"),
        ("sentence1\tsentence2\tscore\na b\tc d\n", ":2:"),
        ("", "bad.tsv"),
    ],
)
def test_bad_dataset_files_name_file_and_line(tiny_model, tmp_path, content, where):
    bad = write(tmp_path / "bad.tsv", content)
    result, output = run(bad, "--model", tiny_model, "--pooling", "cls")
    assert result.exit_code == 2
    assert "bad.tsv" in output and where in output and "Traceback" not in output


def test_output_is_not_written_when_eval_fails(tiny_model, pairs_file, tmp_path):
    result, _ = run(pairs_file, "--model", tiny_model, "--pooling", "cls", "-k", "999", "--output", tmp_path / "r.json")
    assert result.exit_code == 2
    assert not (tmp_path / "r.json").exists()


def test_table_can_show_pearson(tiny_model, pairs_file):
    result, output = run(pairs_file, "--model", tiny_model, "--pooling", "cls", "--json")
    _, rows = report_of(result.stdout)
    result, table = run(pairs_file, "--model", tiny_model, "--pooling", "cls", "--metric", "pearson")
    assert result.exit_code == 0, table
    assert "Pearson × 100" in table
    assert f"{rows[('cls', 'raw')]['pearson']:.2f}" in table
    result, output = run(pairs_file, "--model", tiny_model, "--metric", "kendall")
    assert result.exit_code == 2 and "--metric must be spearman or pearson" in output


def test_plot_without_matplotlib_is_a_one_line_error(tiny_model, pairs_file, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    result, output = run(pairs_file, "--model", tiny_model, "--pooling", "cls", "--plot", tmp_path / "r.png")
    assert result.exit_code == 2
    assert "--plot needs matplotlib" in output and "Traceback" not in output
    assert not (tmp_path / "r.png").exists()


@pytest.mark.parametrize("flag", ["--output", "--plot"])
def test_an_output_that_cannot_be_written_is_refused_before_the_model_loads(pairs_file, tmp_path, flag):
    if flag == "--plot":
        pytest.importorskip("matplotlib")
    blocker = write(tmp_path / "notafolder", "")
    result, output = run(pairs_file, "--model", tmp_path / "no-model-here", flag, blocker / "r.out")
    assert result.exit_code == 2 and "Traceback" not in output
    assert f"{blocker / 'r.out'}: cannot be written: {blocker} is a file, not a folder" in output
