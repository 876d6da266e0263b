import numpy as np
import pytest

from whiten_cli.errors import WhitenError
from whiten_cli.evaluate import Score, aggregate, cosine_similarity_pairs, pearson, rankdata, score_pairs, spearman


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


def test_cosine_similarity_pairs_rows_and_zero_vectors():
    u = np.array([[1, 0], [1, 1], [0, 0], [3, 4]], dtype=np.float32)
    v = np.array([[0, 2], [2, 2], [1, 1], [-3, -4]], dtype=np.float32)
    similarities = cosine_similarity_pairs(u, v)
    assert similarities.dtype == np.float64
    np.testing.assert_allclose(similarities, [0.0, 1.0, 0.0, -1.0])
    with pytest.raises(WhitenError):
        cosine_similarity_pairs(u, v[:3])


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
