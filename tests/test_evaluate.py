import warnings

import numpy as np
import pytest

from whiten_cli.errors import ParameterError, WhitenError
from whiten_cli.evaluate import (
    Score, aggregate, cosine_similarity_pairs, pearson, rankdata, score_dataset, score_pairs, spearman,
)


def test_rankdata_averages_ties():
    # sorted: 1 (rank 1), 2 2 (ranks 2,3 -> 2.5), 3 (4), 5 5 5 (5,6,7 -> 6)
    assert rankdata([5, 2, 3, 5, 1, 2, 5]).tolist() == [6.0, 2.5, 4.0, 6.0, 1.0, 2.5, 6.0]
    assert rankdata([]).tolist() == []


def test_spearman_and_pearson_known_values():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert spearman(x, [1, 4, 9, 16, 100]) == pytest.approx(1.0)
    assert spearman(x, [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    assert pearson(x, [2, 4, 6, 8, 10]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(0.9819805060619657)
    # ties: rho = pearson of average ranks [1, 2.5, 2.5, 4] and [1, 2, 3, 4]
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(pearson([1, 2.5, 2.5, 4], [1, 2, 3, 4]))
    assert isinstance(spearman(x, x), float)


@pytest.mark.parametrize(
    "a, b",
    [([1.0], [2.0]), ([1, 1, 1], [1, 2, 3]), ([1, 2, 3], [1, 2]), ([1, np.nan, 3], [1, 2, 3])],
)
def test_correlation_rejects_degenerate_input(a, b):
    for correlation in (spearman, pearson):
        with pytest.raises(WhitenError):
            correlation(a, b)



@pytest.mark.parametrize(
    "a, b, message",
    [(np.arange(4.0).reshape(2, 2), [1, 2, 3, 4], r"a must be one sequence of values \(1-D\), got shape \(2, 2\)"),
     ([1, 2, 3], "abc", "b must hold real numbers"),
     ([1, 2, 3], ["x", "y", "z"], "b must hold real numbers"),
     ([True, False, True], [1, 2, 3], "a must hold real numbers, got dtype bool")],
)
def test_correlation_takes_two_sequences_of_numbers(a, b, message):
    """A 2-D array was correlated flattened, without a word; strings failed inside numpy."""
    for correlation in (spearman, pearson):
        with pytest.raises(ParameterError, match=message):
            correlation(a, b)

def test_cosine_similarity_pairs_rows_and_zero_vectors():
    u = np.array([[1, 0], [1, 1], [0, 0], [3, 4]], dtype=np.float32)
    v = np.array([[0, 2], [2, 2], [1, 1], [-3, -4]], dtype=np.float32)
    similarities = cosine_similarity_pairs(u, v)
    assert similarities.dtype == np.float64
    np.testing.assert_allclose(similarities, [0.0, 1.0, 0.0, -1.0])
    with pytest.raises(WhitenError):
        cosine_similarity_pairs(u, v[:3])


@pytest.mark.parametrize("dim", [7, 33, 384])
def test_identical_vectors_have_cosine_exactly_one(dim):
    """A pair of identical sentences (65 of STS12 SMTeuroparl's pairs) must score exactly 1, so that such
    pairs tie: at 1 ± an ulp they were ranked by rounding noise (Spearman × 100 off by 0.08 there)."""
    u = np.random.default_rng(dim).standard_normal((500, dim)).astype(np.float32) * 3
    assert (cosine_similarity_pairs(u, u.copy()) == 1.0).all()
    gold = np.r_[np.linspace(0, 5, 250), np.full(250, 5.0)]
    v = np.r_[np.random.default_rng(1).standard_normal((250, dim)).astype(np.float32), u[250:]]
    expected = np.r_[cosine_similarity_pairs(u[:250], v[:250]), np.ones(250)]
    assert score_pairs(u, v, gold).spearman == 100 * spearman(expected, gold)


def test_score_pairs_scales_by_100():
    u = np.array([[1.0, 0.0]] * 4)
    v = np.array([[1.0, 0.0], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]])  # cosine decreasing
    score = score_pairs(u, v, [4, 3, 2, 1])
    assert score.spearman == pytest.approx(100.0)
    assert score.pearson == pytest.approx(100 * pearson(cosine_similarity_pairs(u, v), [4, 3, 2, 1]))
    reversed_score = score_pairs(u, v, [1, 2, 3, 4])
    assert reversed_score.spearman == pytest.approx(-100.0)
    assert reversed_score.pairs == 4
    with pytest.raises(WhitenError):
        score_pairs(u, v, [1, 2, 3])


def test_aggregate_names_each_figure():
    scores = {"a": Score(80.0, 0.0, 100), "b": Score(60.0, 0.0, 300)}
    assert aggregate(scores, Score(70.5, 0.0, 400)) == {"all": 70.5, "mean": 70.0, "wmean": 65.0}
    assert aggregate(scores, None) == {"mean": 70.0, "wmean": 65.0}
    with pytest.raises(WhitenError):
        aggregate({}, None)


def test_spearman_matches_scipy_with_ties():
    """Average ranks for ties, as scipy.stats.spearmanr: 0/1 labels (ATEC, BQ, LCQMC, PAWSX) and
    integer scores (STS-B-zh) tie heavily."""
    stats = pytest.importorskip("scipy.stats")
    from hypothesis import example, given, settings, strategies as st

    values = st.one_of(st.integers(0, 1), st.integers(0, 5), st.floats(-1, 1, allow_nan=False))

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(values, values), min_size=2, max_size=60))
    @example(pairs=[(0, 1), (1, 1 - 2**-53)])  # found by CI: a near-constant column, skipped for Pearson
    def check(pairs):
        x, y = (np.array(column, dtype=np.float64) for column in zip(*pairs))
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            return  # no correlation defined: an error here (test_correlation_rejects_degenerate_input)
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-9)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            expected = stats.pearsonr(x, y).statistic
        if any(issubclass(w.category, stats.NearConstantInputWarning) for w in caught):
            return  # values a few ulps apart ([1, 1 − 2⁻⁵³]): no Pearson is accurate there, scipy's included
        assert pearson(x, y) == pytest.approx(expected, abs=1e-9)

    check()


def test_pearson_of_near_constant_values_is_exact():
    """Two points correlate ±1; centring around a rounded mean made [1, 1 − 2⁻⁵³] look like 0.71."""
    assert pearson([0.0, 1.0], [1.0, 1.0 - 2**-53]) == -1.0
    assert pearson([1e9, 1e9 + 1, 1e9 + 2], [5.0, 5.0 + 2**-50, 5.0 + 2**-49]) == pytest.approx(1.0, abs=1e-12)


def test_vectors_with_nan_are_refused_not_scored_as_orthogonal():
    u = np.array([[1.0, 0.0], [np.nan, 1.0], [1.0, 1.0]])
    v = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, np.inf]])
    with pytest.raises(WhitenError, match="2 of 3 pairs have a vector with NaN or infinite values"):
        cosine_similarity_pairs(u, v)


def test_zero_vectors_score_as_cosine_zero_and_are_reported():
    from whiten_cli.sts import Dataset, PairSet

    pairs = PairSet("set", ["a", "b", "c", "d"], ["e", "f", "g", "h"], np.array([4.0, 3.0, 2.0, 1.0]))
    dataset = Dataset("set", [pairs])
    u = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 0.0], [0.0, 1.0]])
    v = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    with pytest.warns(UserWarning, match=r"set: 1 of 4 pairs have a zero vector; their cosine is taken as 0"):
        scores = score_dataset(dataset, np.concatenate([u, v]))
    # cosines 1, 0.995, 0 (zero vector), 0: the tie between the last two is averaged
    assert scores["set"].spearman == pytest.approx(100 * spearman([1, 0.995, 0, 0], [4, 3, 2, 1]))
