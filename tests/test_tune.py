"""`whiten tune`: candidates scored in numpy, the paired bootstrap, the choice rule, the written pipeline."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import HIDDEN, sample_sentences, write
from test_cli import assert_nothing_written, assert_one_line_error
from whiten_cli.cli import app
from whiten_cli.errors import WhitenError
from whiten_cli.evaluate import cosine_similarity_pairs, spearman
from whiten_cli.pipeline import Pipeline
from whiten_cli.tune import (
    Candidate,
    abtt_skips,
    bootstrap_spearman,
    corpus_texts,
    dimension_grid,
    ledoit_wolf_intensity,
    resample_counts,
)

runner = CliRunner()


def run(*args):
    return runner.invoke(app, ["tune", *map(str, args)])


def pairs_file(path, first, second, scores):
    lines = ["sentence1\tsentence2\tscore"] + [f"{a}\t{b}\t{s:.6f}" for a, b, s in zip(first, second, scores)]
    return write(path, "\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def sentences():
    return sample_sentences(400, seed=11)


@pytest.fixture(scope="module")
def dev_file(tmp_path_factory, sentences):
    scores = [(i * 7) % 6 for i in range(60)]
    return pairs_file(tmp_path_factory.mktemp("tune") / "dev.tsv", sentences[:60], sentences[60:120], scores)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory, sentences):
    return write(tmp_path_factory.mktemp("tune") / "corpus.txt", "\n".join(sentences[120:]) + "\n")


# --- numerics ------------------------------------------------------------------------------------


def test_bootstrap_spearman_equals_spearman_of_the_resampled_pairs():
    rng = np.random.default_rng(0)
    similarity = rng.standard_normal(50)
    similarity[5] = similarity[9]  # a tie in the similarities too
    gold = rng.integers(0, 6, 50).astype(float)  # many ties, as STS gold scores
    counts = resample_counts([50], 20, seed=1)[0]
    fast = bootstrap_spearman(similarity, gold, counts)
    for row, value in zip(counts, fast):
        drawn = np.repeat(np.arange(50), row.astype(int))
        assert value == pytest.approx(100 * spearman(similarity[drawn], gold[drawn]), abs=1e-9)


def test_ledoit_wolf_intensity_matches_the_formula_written_out():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 5)) * np.array([3.0, 1.0, 1.0, 0.5, 0.2])
    centred = x - x.mean(0)
    n, d = x.shape
    sample = centred.T @ centred / n
    m = np.trace(sample) / d
    delta = np.sum((sample - m * np.eye(d)) ** 2)
    beta_bar = sum(np.sum((np.outer(row, row) - sample) ** 2) for row in centred) / n**2
    assert ledoit_wolf_intensity(x) == pytest.approx(min(beta_bar, delta) / delta, rel=1e-10)
    # Many samples of an anisotropic Gaussian: little shrinkage; few of an isotropic one: a lot.
    assert ledoit_wolf_intensity(rng.standard_normal((5000, 5)) * [3, 1, 1, 0.5, 0.2]) < 0.01
    assert ledoit_wolf_intensity(rng.standard_normal((6, 5))) > 0.5


def test_grids():
    assert dimension_grid(128) == [8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128]
    assert dimension_grid(20) == [8, 16, 20] and dimension_grid(5) == [5]
    assert dimension_grid(384)[-3:] == [320, 352, 384]
    assert abtt_skips(384) == [1, 2, 3, 4, 8, 12] and abtt_skips(32) == [1, 2, 3]


def test_simplicity_order():
    names, poolings = ["target", "c"], ["cls"]
    pca = Candidate("pca", "cls", "c", 16)
    assert Candidate("raw", "cls", None, 32).simplicity(names, poolings) < pca.simplicity(names, poolings)
    assert pca.simplicity(names, poolings) < Candidate("whitening", "cls", "target", 16, 0.5).simplicity(names, poolings)
    assert Candidate("pca", "cls", "c", 24).simplicity(names, poolings) < pca.simplicity(names, poolings)


def test_corpus_texts_from_a_pairs_file_and_a_text_file(dev_file, corpus_file, sentences, tmp_path):
    assert corpus_texts(str(dev_file)).texts == sentences[:120]  # its distinct sentences
    assert corpus_texts(str(corpus_file)).texts == sentences[120:]
    twice = write(tmp_path / "twice.tsv", "sentence1\tsentence2\tscore\na b\ta b\t1\na b\tc d\t2\n")
    assert corpus_texts(str(twice)).texts == ["a b", "c d"]
    jsonl = write(tmp_path / "texts.jsonl", '{"text": "a b"}\n{"text": "c d"}\n')
    assert corpus_texts(str(jsonl)).texts == ["a b", "c d"]  # no pairs fields: texts
    assert corpus_texts(str(twice), field="sentence2").texts == ["a b", "c d"]  # a column named: that column
    assert corpus_texts(str(twice), field="sentence1").texts == ["a b", "a b"]


@pytest.mark.parametrize("name, content, line", [
    ("pairs.txt", "a b\tc d\t1\ne f\tg h\t2\ni j\tk l\tlots\n", 3),  # headerless pairs, a bad score
    ("pairs.jsonl", '{"sentence1": "a", "sentence2": "b", "score": 1}\n{"text": "c d"}\n', 2),
], ids=["headerless-bad-score", "jsonl-row-without-pairs"])
def test_a_broken_pairs_file_is_an_error_not_a_text_corpus(tmp_path, name, content, line):
    """Its lines were read as texts (tabs and scores in them), silently, when one was bad."""
    path = write(tmp_path / name, content)
    with pytest.raises(WhitenError, match=rf"{name}:{line}: "):
        corpus_texts(str(path))


# --- choosing ------------------------------------------------------------------------------------


def test_tiny_dev_ties_everything_and_the_simplest_is_written(tiny_model, dev_file, corpus_file, tmp_path):
    """60 pairs cannot tell candidates apart: raw vectors win when they fit the budget, PCA when not."""
    result = run(dev_file, "-o", tmp_path / "all", "--model", tiny_model, "--pooling", "cls", "--fit-on",
                 f"{corpus_file},target", "--json", "-q")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)["record"]
    assert record["chosen"]["family"] == "raw"
    pipe = Pipeline.load(tmp_path / "all")
    assert pipe.whitening is None and pipe.projection is None and pipe.output_dim == HIDDEN
    assert pipe.info["tune"]["chosen"] == record["chosen"]

    result = run(dev_file, "-o", tmp_path / "24", "--model", tiny_model, "--pooling", "cls", "--fit-on",
                 f"{corpus_file},target", "--max-dim", "24", "--json", "-q")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    chosen = report["record"]["chosen"]
    assert (chosen["family"], chosen["k"], chosen["corpus"]) == ("pca", 24, str(corpus_file))
    assert chosen["difference_to_best"][1] >= 0  # tied with the best
    pipe = Pipeline.load(tmp_path / "24")
    assert pipe.output_dim == 24 and pipe.whitening.gamma == 0 and pipe.eigenvectors.shape == (HIDDEN, HIDDEN)
    families = {row["family"] for row in report["per_family"]}
    assert families == {"pca", "jl", "whitening", "finer-gamma", "beta", "shrinkage", "abtt", "union"}
    assert {row["corpus"] for row in report["corpora"]} == {str(corpus_file), "target", "union"}
    assert all(c["k"] <= 24 for c in report["candidates"])


def encode(tiny_model, texts, pooling="last-avg"):
    from whiten_cli.encoder import Encoder

    return Encoder(str(tiny_model), pooling=pooling).encode(texts).astype(np.float64)


def test_a_clear_winner_is_chosen_and_its_pipeline_reproduces_its_dev_score(tiny_model, sentences, corpus_file,
                                                                           tmp_path):
    """Gold scores made from one candidate's cosines: that candidate is best by more than chance,
    is written, and the pipeline scores exactly its DEV figure."""
    from whiten_cli.stats import GaussianStats
    from whiten_cli.whitening import Eigenbasis

    first, second = sentences[:150], sentences[150:300]
    corpus = sentences[120:]
    basis = Eigenbasis.fit(GaussianStats.of(encode(tiny_model, corpus)))
    whitening = basis.whitening(16, 1.0, 1.0)
    gold = cosine_similarity_pairs(whitening.transform(encode(tiny_model, first)),
                                   whitening.transform(encode(tiny_model, second)))
    dev = pairs_file(tmp_path / "dev.tsv", first, second, gold)
    result = run(dev, "-o", tmp_path / "out", "--model", tiny_model, "--pooling", "last-avg", "--fit-on", corpus_file,
                 "--max-dim", "24", "--json", "-q")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)["record"]
    chosen = record["chosen"]
    assert (chosen["family"], chosen["k"], chosen["gamma"], chosen["beta"]) == ("whitening", 16, 1.0, 1.0)
    assert chosen["dev"] == pytest.approx(100, abs=1e-6) and record["whitening_beats_raw"]
    pipe = Pipeline.load(tmp_path / "out")
    np.testing.assert_allclose(pipe.whitening.kernel, whitening.kernel, atol=1e-9)
    vectors = pipe.transform(encode(tiny_model, first + second))
    assert 100 * spearman(cosine_similarity_pairs(vectors[:150], vectors[150:]), gold) == pytest.approx(100, abs=1e-4)


def test_all_but_the_top_scores_as_the_projection_it_stands_for(tiny_model, sentences, corpus_file, tmp_path):
    """An abtt candidate's DEV score is that of (x − μ)(I − U_D U_Dᵀ), the d × d map it stands for."""
    from whiten_cli.stats import GaussianStats
    from whiten_cli.whitening import Eigenbasis

    first, second = sentences[:100], sentences[100:200]
    dev = pairs_file(tmp_path / "dev.tsv", first, second, [(i * 5) % 7 for i in range(100)])
    result = run(dev, "-o", tmp_path / "out", "--model", tiny_model, "--pooling", "last-avg", "--fit-on", corpus_file,
                 "--json", "-q")
    assert result.exit_code == 0, result.output
    candidates = json.loads(result.stdout)["candidates"]
    basis = Eigenbasis.fit(GaussianStats.of(encode(tiny_model, sentences[120:])))
    u, v = encode(tiny_model, first), encode(tiny_model, second)
    for skip in (1, 3):
        top = basis.eigenvectors[:, :skip]
        projector = np.eye(HIDDEN) - top @ top.T
        expected = 100 * spearman(cosine_similarity_pairs((u - basis.mean) @ projector, (v - basis.mean) @ projector),
                                  [(i * 5) % 7 for i in range(100)])
        found = [c for c in candidates if c["family"] == "abtt" and c["skip"] == skip and c["k"] == HIDDEN - skip]
        assert found and found[0]["dev"] == pytest.approx(expected, abs=1e-6)


def test_when_no_whitening_beats_raw_it_says_so_and_writes_the_best_in_budget(tiny_model, sentences, corpus_file,
                                                                           tmp_path):
    first, second = sentences[:150], sentences[150:300]
    gold = cosine_similarity_pairs(encode(tiny_model, first), encode(tiny_model, second))  # raw is perfect
    dev = pairs_file(tmp_path / "dev.tsv", first, second, gold)
    result = run(dev, "-o", tmp_path / "out", "--model", tiny_model, "--pooling", "last-avg", "--fit-on", corpus_file,
                 "--max-dim", "24", "-q")
    assert result.exit_code == 0, result.output
    assert "NOTE: no whitening beats the raw 32d vectors on DEV (100.00); written: " in result.stdout
    assert "the choice within the budget of 24 dims" in result.stdout
    info = Pipeline.load(tmp_path / "out").info["tune"]
    assert not info["whitening_beats_raw"] and "no whitening beats" in info["note"]
    assert Pipeline.load(tmp_path / "out").output_dim <= 24


def test_plot_and_table(tiny_model, dev_file, tmp_path):
    pytest.importorskip("matplotlib")
    result = run(dev_file, "-o", tmp_path / "out", "--model", tiny_model, "--pooling", "cls,last-avg",
                 "--max-dim", "16", "--plot", tmp_path / "tune.png", "-q")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tune.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for line in ("best of each family", "best per dimension budget", "chosen: ", "fit corpora against the DEV"):
        assert line in result.stdout
    assert f"wrote {tmp_path / 'out'}" in result.stdout


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["two-pairs", "constant", "max-dim-0", "max-dim-high", "one-sentence", "empty",
                                  "plot-under-a-file", "one-sentence-twice"])
def test_bad_input_is_one_line_and_writes_nothing(tiny_model, dev_file, sentences, tmp_path, case):
    dev, extra, fragments = dev_file, [], []
    if case == "two-pairs":
        dev = pairs_file(tmp_path / "dev.tsv", sentences[:2], sentences[2:4], [1, 2])
        fragments = [str(dev), "2 scored pairs; tuning needs at least 3"]
    elif case == "constant":
        dev = pairs_file(tmp_path / "dev.tsv", sentences[:5], sentences[5:10], [3] * 5)
        fragments = [str(dev), "every gold score is 3"]
    elif case == "max-dim-0":
        extra, fragments = ["--max-dim", "0"], ["--max-dim must be between 1 and the vectors' dimension 32, got 0"]
    elif case == "max-dim-high":
        extra, fragments = ["--max-dim", "33"], ["--max-dim", "got 33"]
    elif case == "one-sentence":
        corpus = write(tmp_path / "one.txt", "a single sentence\n\n")
        extra, fragments = ["--fit-on", corpus], [str(corpus), "1 distinct text; a fit corpus needs at least 2"]
    elif case == "one-sentence-twice":  # identical texts: identical vectors, no covariance (was not named)
        corpus = write(tmp_path / "twice.txt", "a single sentence\na single sentence\n")
        extra, fragments = ["--fit-on", corpus], [f"{corpus}: the vectors do not vary"]
    elif case == "plot-under-a-file":  # found before the tune runs, not after the pipeline is written
        pytest.importorskip("matplotlib")
        blocker = write(tmp_path / "notafolder", "")
        extra, fragments = ["--plot", blocker / "tune.png"], [str(blocker / "tune.png"), f"{blocker} is a file"]
    else:
        corpus = write(tmp_path / "empty.txt", "")
        extra, fragments = ["--fit-on", corpus], [str(corpus)]
    out = tmp_path / "out"
    assert_one_line_error(run(dev, "-o", out, "--model", tiny_model, "--pooling", "cls", *extra, "-q"), *fragments)
    assert_nothing_written(out)


def test_several_dev_sets_are_averaged_not_pooled(tiny_model, sentences, tmp_path):
    """Each DEV set keeps its own scale: the DEV score is the mean of their Spearmans."""
    first, second = sentences[:80], sentences[80:160]
    scores_a = [(i * 7) % 6 for i in range(40)]
    scores_b = [10 + (i * 3) % 5 for i in range(40)]  # another scale, as SICK against STS-B
    dev_a = pairs_file(tmp_path / "a.tsv", first[:40], second[:40], scores_a)
    dev_b = pairs_file(tmp_path / "b.tsv", first[40:], second[40:], scores_b)
    result = run(dev_a, dev_b, "-o", tmp_path / "out", "--model", tiny_model, "--pooling", "cls", "--json", "-q")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)["record"]
    assert record["dev"] == ["a", "b"]
    u, v = encode(tiny_model, first, "cls"), encode(tiny_model, second, "cls")
    cosines = cosine_similarity_pairs(u, v)
    expected = 50 * (spearman(cosines[:40], scores_a) + spearman(cosines[40:], scores_b))
    assert record["raw"]["dev"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("resamples, seed, message", [(9, 0, "^resamples must be at least 10"),
                                                      (1000, -1, "^seed must be at least 0")])
def test_bootstrap_options_are_checked_in_the_library(resamples, seed, message):
    from whiten_cli.errors import ParameterError
    from whiten_cli.tune import check_bootstrap

    with pytest.raises(ParameterError, match=message):
        check_bootstrap(resamples, seed)
