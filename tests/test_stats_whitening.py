import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from whiten_cli.errors import WhitenError
from whiten_cli.projection import RandomProjection, jl_distortion, jl_min_dim
from whiten_cli.stats import GaussianStats
from whiten_cli.whitening import Eigenbasis, Whitening


def correlated(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Anisotropic, correlated data with a non-zero mean, like pooled BERT vectors."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((d, d)) * np.linspace(3.0, 0.3, d)
    return rng.standard_normal((n, d)) @ mixing.T + rng.normal(2.0, 1.0, d)


def covariance(x: np.ndarray) -> np.ndarray:
    return np.cov(np.asarray(x, dtype=np.float64), rowvar=False)


# --- statistics ----------------------------------------------------------------------------------


def test_stats_match_numpy():
    x = correlated(500, 12)
    stats = GaussianStats.of(x)
    assert stats.count == 500 and stats.dim == 12
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats.covariance, covariance(x), rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(stats.covariance, stats.covariance.T)


def test_merged_shards_equal_whole_corpus():
    x = correlated(1000, 16, seed=1)
    whole = GaussianStats.of(x)
    shards = [GaussianStats.of(part) for part in np.array_split(x, [123, 400, 401, 777])]
    merged = shards[0]
    for shard in shards[1:]:
        merged = merged.merge(shard)
    assert merged.count == whole.count == 1000
    for name in ("mean", "covariance"):
        a, b = getattr(merged, name), getattr(whole, name)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * float(np.abs(b).max()), err_msg=name)
    # merge returns a new object and leaves its inputs alone
    assert shards[0].count == 123


def test_update_in_chunks_equals_at_once():
    x = correlated(300, 8, seed=2)
    once = GaussianStats.of(x)
    chunked = GaussianStats.empty(8)
    for start in range(0, 300, 7):
        assert chunked.update(x[start : start + 7]) is chunked
    assert chunked.count == once.count
    np.testing.assert_allclose(chunked.mean, once.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(chunked.covariance, once.covariance, rtol=1e-12, atol=1e-12)


def test_stats_accumulate_float32_input_in_float64():
    x = correlated(50, 4).astype(np.float32)
    stats = GaussianStats.of(x)
    assert stats.shifted_sum.dtype == np.float64 and stats.shifted_outer.dtype == np.float64
    assert stats.mean.dtype == np.float64 and stats.covariance.dtype == np.float64


# Property tests: data far from the origin, against a reference that cannot cancel (np.cov of the
# data with its mean subtracted first, in float64), compared entry by entry on the scale of the
# two variances involved: |C_ij − R_ij| ≤ tol · sqrt(R_ii R_jj).

def offset_data(seed: int, n: int, d: int, offset: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    spread = np.geomspace(10.0, 0.1, d)  # anisotropic: variances over four decades
    x = (rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) / np.sqrt(d)) * spread
    return x + offset * rng.uniform(0.5, 1.5, d) * spread


def assert_covariance_close(actual: np.ndarray, reference: np.ndarray, tol: float) -> None:
    scale = np.sqrt(np.outer(np.diag(reference), np.diag(reference)))
    worst = float(np.max(np.abs(actual - reference) / scale))
    assert worst <= tol, f"covariance off by {worst:.1e} of the variances' scale"


sizes = st.tuples(st.integers(0, 2**32 - 1), st.integers(3, 400), st.integers(1, 12))


@settings(max_examples=40, deadline=None)
@given(sizes, st.sampled_from([1e3, 1e6, 1e8]))
def test_covariance_is_exact_far_from_the_origin(shape, offset):
    seed, n, d = shape
    x = offset_data(seed, n, d, offset)
    reference = np.atleast_2d(np.cov(x - x.mean(0), rowvar=False))
    stats = GaussianStats.of(x)
    assert_covariance_close(stats.covariance, reference, 1e-9)
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-14)


@settings(max_examples=40, deadline=None)
@given(sizes, st.sampled_from([1e3, 1e6, 1e8]), st.data())
def test_shards_merged_in_any_order_equal_the_whole(shape, offset, data):
    seed, n, d = shape
    x = offset_data(seed, n, d, offset)
    cuts = sorted(data.draw(st.lists(st.integers(1, n - 1), min_size=1, max_size=5), label="cuts"))
    shards = [GaussianStats.of(part) for part in np.split(x, cuts) if len(part)]
    order = data.draw(st.permutations(range(len(shards))), label="order")
    merged = GaussianStats.empty(d)
    for index in order:
        merged = merged.merge(shards[index])
    whole = GaussianStats.of(x)
    assert merged.count == n
    assert_covariance_close(merged.covariance, whole.covariance, 1e-12)
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-14)


@settings(max_examples=40, deadline=None)
@given(sizes, st.sampled_from([1e3, 1e6, 1e8]), st.data())
def test_update_in_batches_of_any_sizes_equals_one_update(shape, offset, data):
    seed, n, d = shape
    x = offset_data(seed, n, d, offset)
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=6), label="cuts"))  # empty batches too
    batched = GaussianStats.empty(d)
    for batch in np.split(x, cuts):
        batched.update(batch)
    once = GaussianStats.of(x)
    assert batched.count == n
    assert_covariance_close(batched.covariance, once.covariance, 1e-12)
    np.testing.assert_allclose(batched.mean, once.mean, rtol=1e-14)


def test_merge_of_shards_with_one_shift_is_their_sum():
    """Shards given the same shift merge by adding their sums: the concatenation's own sums."""
    x = offset_data(3, 500, 6, 1e6)
    shift = x[:50].mean(0)
    shards = [GaussianStats.empty(6, shift=shift).update(part) for part in np.array_split(x, 3)]
    merged = shards[0].merge(shards[1]).merge(shards[2])
    together = GaussianStats.empty(6, shift=shift).update(x)
    np.testing.assert_array_equal(merged.shift, shift)
    np.testing.assert_allclose(merged.shifted_sum, together.shifted_sum, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(merged.shifted_outer, together.shifted_outer, rtol=1e-12)
    # an empty input changes nothing, the chosen shift included
    np.testing.assert_array_equal(GaussianStats.empty(6, shift=shift).merge(GaussianStats.empty(6)).shift, shift)
    with pytest.raises(WhitenError, match=r"shape \(6,\)"):
        GaussianStats.empty(6, shift=np.zeros(5))


def test_stats_dimension_mismatch():
    stats = GaussianStats.empty(4)
    with pytest.raises(WhitenError, match="dimension 4"):
        stats.update(np.zeros((3, 5)))
    with pytest.raises(WhitenError):
        stats.update(np.zeros(4))  # one vector must be a (1, d) row
    with pytest.raises(WhitenError, match="4 and 5"):
        stats.merge(GaussianStats.empty(5))


def test_stats_too_few_vectors():
    with pytest.raises(WhitenError):
        GaussianStats.empty(3).mean
    with pytest.raises(WhitenError, match="at least 2"):
        GaussianStats.of(np.ones((1, 3))).covariance


# --- whitening -----------------------------------------------------------------------------------


def test_whitened_data_has_identity_covariance_and_zero_mean():
    x = correlated(2000, 24, seed=3)
    whitening = Whitening.fit(GaussianStats.of(x))
    y = whitening.transform(x)
    assert y.dtype == np.float32 and y.shape == (2000, 24)
    np.testing.assert_allclose(covariance(y), np.eye(24), rtol=0, atol=1e-6)
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-6)


def test_first_k_columns_are_white():
    x = correlated(1500, 20, seed=4)
    basis = Eigenbasis.fit(GaussianStats.of(x))
    assert np.all(np.diff(basis.eigenvalues) <= 0)  # descending
    for k in (1, 5, 19):
        whitening = basis.whitening(k)
        assert whitening.n_components == k and whitening.input_dim == 20
        y = whitening.transform(x)
        np.testing.assert_allclose(np.atleast_2d(covariance(y)), np.eye(k), rtol=0, atol=1e-6)
        # the k kept columns are the first k columns of the full whitening
        np.testing.assert_allclose(y, basis.whitening().transform(x)[:, :k], rtol=1e-6, atol=1e-5)


def test_kernel_is_reproducible_including_signs():
    x = correlated(800, 16, seed=5)
    first = Whitening.fit(GaussianStats.of(x))
    second = Whitening.fit(GaussianStats.of(x.copy()))
    np.testing.assert_array_equal(first.kernel, second.kernel)
    permuted = Whitening.fit(GaussianStats.of(x[np.random.default_rng(0).permutation(len(x))]))
    np.testing.assert_allclose(permuted.kernel, first.kernel, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(permuted.mean, first.mean, rtol=1e-12)
    # the convention: the largest-magnitude entry of each eigenvector is positive
    vectors = Eigenbasis.fit(GaussianStats.of(x)).eigenvectors
    pivots = np.abs(vectors).argmax(axis=0)
    assert np.all(vectors[pivots, np.arange(16)] > 0)


def test_signs_do_not_depend_on_the_sign_of_the_data():
    # flipping every vector leaves the covariance unchanged, so the kernel must stay the same
    x = correlated(600, 10, seed=6)
    np.testing.assert_allclose(Whitening.fit(GaussianStats.of(-x)).kernel, Whitening.fit(GaussianStats.of(x)).kernel,
                               rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "kwargs",
    [{"n_components": 9}, {"n_components": 0}, {"n_components": -1}, {"beta": -0.1}, {"beta": 1.5},
     {"gamma": -0.5}, {"gamma": 1.01}],
)
def test_bad_whitening_parameters(kwargs):
    basis = Eigenbasis.fit(GaussianStats.of(correlated(100, 8)))
    with pytest.raises(WhitenError):
        basis.whitening(**kwargs)


def test_fewer_rows_than_dims_warns_and_still_fits():
    x = correlated(10, 32, seed=7)
    basis = Eigenbasis.fit(GaussianStats.of(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        whitening = basis.whitening(5)  # k within the rank: no warning
    y = whitening.transform(x)
    assert np.all(np.isfinite(whitening.kernel)) and np.all(np.isfinite(y))
    np.testing.assert_allclose(covariance(y), np.eye(5), rtol=0, atol=1e-4)
    with pytest.warns(UserWarning, match="rank-deficient"):
        full = basis.whitening()  # near-zero eigenvalues are floored, not divided by
    assert np.all(np.isfinite(full.transform(x)))


@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_near_null_directions_are_floored_at_a_millionth_of_the_largest(gamma):
    # 16-d vectors of rank 6, plenty of rows: ten eigenvalues are rounding noise around 1e-30·λ₁
    rng = np.random.default_rng(11)
    x = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 16)) + 5.0
    basis = Eigenbasis.fit(GaussianStats.of(x))
    assert basis.eigenvalues[6] < 1e-12 * basis.eigenvalues[0]
    with pytest.warns(UserWarning, match=r"10 of the k=16 kept directions .* lower k to 6") as caught:
        whitening = basis.whitening(gamma=gamma)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    scales = np.linalg.norm(whitening.kernel, axis=0)
    assert np.all(np.isfinite(scales))
    assert scales.max() <= (1e-6 * basis.eigenvalues[0]) ** (-gamma / 2) * (1 + 1e-12)
    # the kept real directions are whitened as before, and keeping only them does not warn
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        real = basis.whitening(6, gamma=gamma)
    np.testing.assert_array_equal(real.kernel, whitening.kernel[:, :6])


def test_constant_vectors_cannot_be_whitened():
    basis = Eigenbasis.fit(GaussianStats.of(np.ones((20, 4))))
    with pytest.raises(WhitenError, match="do not vary"):
        basis.whitening()


def test_enough_rows_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Eigenbasis.fit(GaussianStats.of(correlated(50, 8))).whitening()


def test_gamma_zero_is_a_rotation():
    x = correlated(400, 12, seed=8)
    whitening = Whitening.fit(GaussianStats.of(x), gamma=0.0)
    np.testing.assert_allclose(whitening.kernel.T @ whitening.kernel, np.eye(12), atol=1e-10)
    y = whitening.transform(x)
    centered = x - x.mean(0)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.linalg.norm(centered, axis=1), rtol=1e-5)
    # PCA: the output covariance is diagonal with the eigenvalues, in descending order
    cov = covariance(y)
    np.testing.assert_allclose(cov, np.diag(np.diag(cov)), atol=1e-4 * cov.max())
    assert np.all(np.diff(np.diag(cov)) <= 1e-6)


def test_beta_controls_the_mean_removed():
    x = correlated(300, 6, seed=9)
    stats = GaussianStats.of(x)
    full = Whitening.fit(stats, beta=1.0)
    none = Whitening.fit(stats, beta=0.0)
    np.testing.assert_allclose(none.kernel, full.kernel)
    np.testing.assert_allclose(none.transform(x), (x @ full.kernel).astype(np.float32), rtol=1e-5, atol=1e-5)


def test_soft_whitening_scales_by_eigenvalue_power():
    x = correlated(500, 6, seed=10)
    basis = Eigenbasis.fit(GaussianStats.of(x))
    half = basis.whitening(gamma=0.5)
    np.testing.assert_allclose(np.linalg.norm(half.kernel, axis=0), basis.eigenvalues ** -0.25, rtol=1e-10)


def test_transform_dimension_mismatch():
    whitening = Whitening.fit(GaussianStats.of(correlated(100, 8)))
    with pytest.raises(WhitenError, match="dimension 8"):
        whitening.transform(np.zeros((2, 7)))


# --- projection ----------------------------------------------------------------------------------


def test_projection_is_seeded():
    a = RandomProjection.create(64, 16, seed=3)
    b = RandomProjection.create(64, 16, seed=3)
    c = RandomProjection.create(64, 16, seed=4)
    np.testing.assert_array_equal(a.matrix, b.matrix)
    assert not np.allclose(a.matrix, c.matrix)
    assert a.matrix.dtype == np.float32 and a.matrix.shape == (64, 16)
    assert (a.input_dim, a.n_components, a.seed) == (64, 16, 3)


def test_projection_entries_are_normal_with_variance_one_over_n():
    n = 50
    matrix = RandomProjection.create(400, n, seed=0).matrix.astype(np.float64)
    assert abs(matrix.mean()) < 0.01
    assert matrix.var() == pytest.approx(1 / n, rel=0.03)  # 20 000 entries: sd of the estimate ≈ 1 %
    # fourth moment of a normal: 3σ⁴
    assert np.mean(matrix**4) == pytest.approx(3 / n**2, rel=0.1)


def test_projection_preserves_norms_on_average():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 300)).astype(np.float32)
    y = RandomProjection.create(300, 256, seed=2).transform(x)
    ratios = np.linalg.norm(y, axis=1) / np.linalg.norm(x, axis=1)
    assert ratios.mean() == pytest.approx(1.0, abs=0.03)


def test_projection_errors():
    with pytest.raises(WhitenError):
        RandomProjection.create(8, 0)
    with pytest.raises(WhitenError, match="dimension 8"):
        RandomProjection.create(8, 4).transform(np.zeros((1, 9)))


@pytest.mark.parametrize("n_samples", [2, 10, 1000, 10**6])
@pytest.mark.parametrize("eps", [0.05, 0.1, 0.25, 0.5, 0.9])
def test_jl_min_dim_and_distortion_agree(n_samples, eps):
    n = jl_min_dim(n_samples, eps)
    assert n >= 1
    distortion = jl_distortion(n_samples, n)
    assert distortion is not None and distortion <= eps
    # one dimension fewer than the minimum does not reach eps
    smaller = jl_distortion(n_samples, n - 1) if n > 1 else None
    assert smaller is None or smaller > eps


def test_jl_known_values_and_limits():
    # sklearn's johnson_lindenstrauss_min_dim uses the same bound: 4 ln n / (eps²/2 − eps³/3)
    assert jl_min_dim(1000, 0.1) == math.ceil(4 * math.log(1000) / (0.1**2 / 2 - 0.1**3 / 3))
    assert jl_min_dim(10**6, 0.5) < jl_min_dim(10**6, 0.1)
    assert jl_distortion(1000, 10) is None  # far too few dimensions: no guarantee
    assert jl_distortion(1000, 10**6) < jl_distortion(1000, 10**4) < 1
    for eps in (0.0, 1.0, -0.1):
        with pytest.raises(WhitenError):
            jl_min_dim(100, eps)
