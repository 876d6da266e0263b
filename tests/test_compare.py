"""`whiten compare` and the closed-form Gaussian distances in whiten_cli.compare."""

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import HIDDEN, sample_sentences, write
from test_cli import assert_one_line_error
from whiten_cli.cli import app
from whiten_cli.compare import EPSILON, Gaussian, distances, load_source
from whiten_cli.pipeline import ARRAYS_FILE, Pipeline

runner = CliRunner()


def run(*args):
    return runner.invoke(app, ["compare", *map(str, args)])


def random_gaussian(d: int, seed: int) -> Gaussian:
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((d, d))
    return Gaussian(rng.standard_normal(d), mixing @ mixing.T + 0.3 * np.eye(d), 100)


def test_a_gaussian_against_itself_is_zero():
    a = random_gaussian(6, 0)
    result = distances(a, a)
    for value in (result.kl_ab, result.kl_ba, result.bhattacharyya, result.wasserstein):
        assert value == pytest.approx(0, abs=1e-7)


def test_bhattacharyya_and_w2_are_symmetric_and_kl_is_not():
    a, b = random_gaussian(5, 1), random_gaussian(5, 2)
    ab, ba = distances(a, b), distances(b, a)
    assert ab.bhattacharyya == pytest.approx(ba.bhattacharyya, rel=1e-10)
    assert ab.wasserstein == pytest.approx(ba.wasserstein, rel=1e-10)
    assert ab.kl_ab == pytest.approx(ba.kl_ba, rel=1e-10) and ab.kl_ab != pytest.approx(ab.kl_ba, rel=1e-3)


def one_d(m1, s1, m2, s2):
    """Textbook formulas for N(m1, s1²), N(m2, s2²): KL(1‖2), Bhattacharyya, W₂."""
    kl = math.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
    bhatt = (m1 - m2) ** 2 / (4 * (s1**2 + s2**2)) + 0.5 * math.log((s1**2 + s2**2) / (2 * s1 * s2))
    w2 = math.sqrt((m1 - m2) ** 2 + (s1 - s2) ** 2)
    return kl, bhatt, w2


def test_one_dimension_matches_hand_formulas():
    a = Gaussian(np.array([0.5]), np.array([[4.0]]), 10)
    b = Gaussian(np.array([-1.0]), np.array([[0.25]]), 10)
    kl, bhatt, w2 = one_d(0.5, 2.0, -1.0, 0.5)
    result = distances(a, b)
    assert result.kl_ab == pytest.approx(kl, rel=1e-12)
    assert result.kl_ba == pytest.approx(one_d(-1.0, 0.5, 0.5, 2.0)[0], rel=1e-12)
    assert result.bhattacharyya == pytest.approx(bhatt, rel=1e-12)
    assert result.wasserstein == pytest.approx(w2, rel=1e-12)
    assert result.wasserstein_mean == pytest.approx(1.5) and result.kl_ab_mean == pytest.approx(1.5**2 / (2 * 0.25))


def test_diagonal_covariances_add_up_dimension_by_dimension():
    m1, s1 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 0.5, 3.0])
    m2, s2 = np.array([1.0, 1.0, 0.0]), np.array([2.0, 0.5, 1.0])
    result = distances(Gaussian(m1, np.diag(s1**2), 5), Gaussian(m2, np.diag(s2**2), 5))
    parts = np.array([one_d(*values) for values in zip(m1, s1, m2, s2)])
    assert result.kl_ab == pytest.approx(parts[:, 0].sum(), rel=1e-12)
    assert result.bhattacharyya == pytest.approx(parts[:, 1].sum(), rel=1e-12)
    assert result.wasserstein == pytest.approx(math.sqrt((parts[:, 2] ** 2).sum()), rel=1e-12)


def test_kl_agrees_with_a_monte_carlo_estimate():
    a, b = random_gaussian(4, 3), random_gaussian(4, 4)
    rng = np.random.default_rng(5)
    x = rng.multivariate_normal(a.mean, a.covariance, size=200_000)

    def log_density(g):
        inverse = np.linalg.inv(g.covariance)
        centred = x - g.mean
        return -0.5 * np.einsum("ij,jk,ik->i", centred, inverse, centred) - 0.5 * np.linalg.slogdet(g.covariance)[1]

    samples = log_density(a) - log_density(b)
    error = samples.std() / math.sqrt(samples.size)
    assert abs(distances(a, b).kl_ab - samples.mean()) < 4 * error


def test_w2_of_a_shifted_copy_is_the_shift_norm_and_all_mean_only():
    a = random_gaussian(5, 6)
    shift = np.array([3.0, -4.0, 0.0, 1.0, 2.0])
    result = distances(a, Gaussian(a.mean + shift, a.covariance, 100))
    assert result.wasserstein == pytest.approx(np.linalg.norm(shift), rel=1e-9)
    assert result.wasserstein_mean == pytest.approx(np.linalg.norm(shift), rel=1e-12)
    assert result.kl_ab == pytest.approx(result.kl_ab_mean, rel=1e-9)
    assert result.bhattacharyya == pytest.approx(result.bhattacharyya_mean, rel=1e-9)


def test_singular_covariance_is_regularised_with_a_stated_epsilon():
    rng = np.random.default_rng(7)
    few = rng.standard_normal((3, 6))  # 3 vectors in 6 dimensions: rank 2
    with pytest.warns(UserWarning, match=f"ε = {EPSILON:g} × mean eigenvalue"):
        result = distances(Gaussian.of(few), random_gaussian(6, 8))
    assert all(np.isfinite(v) for v in (result.kl_ab, result.kl_ba, result.bhattacharyya, result.wasserstein))


def test_epsilon_sets_the_ridge_of_a_singular_covariance_only():
    rng = np.random.default_rng(9)
    few, full = Gaussian.of(rng.standard_normal((3, 6))), random_gaussian(6, 10)
    with pytest.warns(UserWarning):
        small, large = distances(few, full, epsilon=1e-8), distances(few, full, epsilon=1e-2)
    assert small.kl_ba > large.kl_ba  # KL(full‖few) grows as the degenerate directions get thinner
    assert small.wasserstein == pytest.approx(large.wasserstein, rel=0.1)
    regular = random_gaussian(6, 11)
    assert distances(regular, full, epsilon=1e-8) == distances(regular, full, epsilon=1e-2)


def test_different_dimensions_are_refused():
    with pytest.raises(Exception, match="B: vectors of dimension 3, but A has dimension 4"):
        distances(random_gaussian(4, 0), random_gaussian(3, 0))


# --- the command -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compare")
    first = write(folder / "a.txt", "\n".join(sample_sentences(120, seed=1)) + "\n")
    second = write(folder / "b.txt", "\n".join(sample_sentences(120, seed=2)) + "\n")
    return first, second


def test_cli_two_npy_files_as_json(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 4))
    np.save(tmp_path / "a.npy", x)
    np.save(tmp_path / "b.npy", x + np.array([1.0, 0, 0, 0]))
    result = run(tmp_path / "a.npy", tmp_path / "b.npy", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dim"] == 4 and report["counts"] == [400, 400]
    assert report["wasserstein"] == pytest.approx(1.0, rel=1e-9)
    assert report["kl_ab"] == pytest.approx(report["kl_ab_mean"], rel=1e-9)


def test_cli_text_files_are_encoded_and_a_table_printed(tiny_model, corpora):
    result = run(*corpora, "--model", tiny_model, "--pooling", "cls", "-q")
    assert result.exit_code == 0, result.output
    for name in ("KL(A‖B)", "KL(B‖A)", "Bhattacharyya", "W₂", "mean shift alone"):
        assert name in result.stdout
    assert f"dimension {HIDDEN}" in result.stdout


@pytest.mark.parametrize("case", ["dims", "one-row", "empty-text", "one-text", "epsilon"])
def test_cli_bad_inputs_are_one_line(tmp_path, tiny_model, case):
    a = tmp_path / "a.npy"
    np.save(a, np.random.default_rng(0).standard_normal((20, 4)))
    if case == "dims":
        np.save(tmp_path / "b.npy", np.zeros((20, 5)))
        b, fragment = tmp_path / "b.npy", "b.npy: vectors of dimension 5, but"
    elif case == "one-row":
        np.save(tmp_path / "b.npy", np.zeros((1, 4)))
        b, fragment = tmp_path / "b.npy", "b.npy: 1 vector;"
    elif case == "empty-text":
        b, fragment = write(tmp_path / "b.txt", ""), "b.txt"
    elif case == "one-text":
        b, fragment = write(tmp_path / "b.txt", "only one sentence\n"), "b.txt: 1 text;"
    else:
        b, fragment = a, "--epsilon must be in (0, 1), got 0"
    extra = ["--epsilon", "0"] if case == "epsilon" else []
    assert_one_line_error(run(a, b, "--model", tiny_model, *extra), fragment)


def fitted_pipeline(tmp_path, tiny_model, corpus, *extra):
    out = tmp_path / "pipe"
    result = runner.invoke(app, ["fit", str(corpus), "-o", str(out), "--model", str(tiny_model), "--pooling", "cls",
                                 "-q", *extra])
    assert result.exit_code == 0, result.output
    return out


def test_fit_stores_the_full_eigenbasis(tmp_path, tiny_model, corpora):
    pipe = Pipeline.load(fitted_pipeline(tmp_path, tiny_model, corpora[0], "-k", "8"))
    assert pipe.eigenvectors.shape == (HIDDEN, HIDDEN)
    u, values = pipe.eigenvectors, pipe.eigenvalues
    # The stored basis reproduces the kernel's columns: U[:, :k]·Λ^(−1/2) (floored as fit floors).
    np.testing.assert_allclose(pipe.whitening.kernel, u[:, :8] * np.maximum(values[:8], 1e-6 * values[0]) ** -0.5)


def test_pipeline_against_its_own_corpus_and_a_new_one(tmp_path, tiny_model, corpora):
    folder = fitted_pipeline(tmp_path, tiny_model, corpora[0], "-k", "8")
    same = run(folder, corpora[0], "--json", "-q")
    assert same.exit_code == 0, same.output
    report = json.loads(same.stdout)
    # The pipeline's μ, Σ are those of its corpus: every distance is 0, and under its whitening
    # (β = γ = 1) the corpus is N(0, I).
    assert report["wasserstein"] == pytest.approx(0, abs=1e-6) and report["kl_ab"] == pytest.approx(0, abs=1e-6)
    assert report["drift"]["reference_is_identity"]
    assert report["drift"]["kl_ab"] == pytest.approx(0, abs=1e-6)
    assert report["drift"]["variance_ratios"] == pytest.approx([1, 1], abs=1e-6)
    other = run(folder, corpora[1], "-q")
    assert other.exit_code == 0, other.output
    assert "B under A's whitening (8 dims), against N(0, I)" in other.stdout


def test_pipeline_without_full_statistics_is_refused(tmp_path, tiny_model, corpora):
    from safetensors.numpy import load_file, save_file

    folder = fitted_pipeline(tmp_path, tiny_model, corpora[0])
    arrays = load_file(str(folder / ARRAYS_FILE))
    del arrays["eigenvectors"]  # as written by an older version
    save_file(arrays, str(folder / ARRAYS_FILE))
    assert Pipeline.load(folder).eigenvectors is None  # still loads
    assert_one_line_error(run(folder, corpora[1], "-q"), str(folder), "does not carry the full statistics")


def test_wrongly_shaped_eigenvectors_are_refused(tmp_path, tiny_model, corpora):
    from safetensors.numpy import load_file, save_file

    from whiten_cli.errors import WhitenError

    folder = fitted_pipeline(tmp_path, tiny_model, corpora[0])
    arrays = load_file(str(folder / ARRAYS_FILE))
    arrays["eigenvectors"] = np.zeros((HIDDEN, 3))
    save_file(arrays, str(folder / ARRAYS_FILE))
    with pytest.raises(WhitenError, match=r"'eigenvectors' has shape \(32, 3\)"):
        Pipeline.load(folder)


def test_a_pairs_file_side_is_its_distinct_sentences(tmp_path):
    pairs = write(tmp_path / "dev.tsv", "sentence1\tsentence2\tscore\na b\tc d\t1\nc d\te f\t2\n")
    assert load_source(str(pairs)).texts == ["a b", "c d", "e f"]
