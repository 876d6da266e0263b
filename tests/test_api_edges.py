"""Bad values at the edge of the Python API: each is refused with a ParameterError (a ValueError and a
TypeError) naming the parameter, instead of a silent wrong result or a numpy/FAISS error from deep inside."""

from __future__ import annotations

import json

import numpy as np
import pytest

import whiten_cli
from conftest import sample_sentences
from whiten_cli.errors import ParameterError, WhitenError
from whiten_cli.pipeline import FitOptions, Pipeline
from whiten_cli.projection import RandomProjection
from whiten_cli.stats import GaussianStats
from whiten_cli.whitening import Eigenbasis

D = 6


@pytest.fixture(scope="module")
def fitted():
    """Statistics, whitening and a model-free pipeline (whitening to 4, projection to 3) of random vectors."""
    x = np.random.default_rng(0).standard_normal((40, D))
    stats = GaussianStats.of(x)
    whitening = Eigenbasis.fit(stats).whitening(4)
    projection = RandomProjection.create(4, 3, seed=1)
    pipeline = Pipeline(model="m", model_fingerprint="0" * 16, pooling="cls", max_length=16, input_dim=D,
                        whitening=whitening, projection=projection)
    return stats, whitening, projection, pipeline


def _stages(fitted):
    stats, whitening, projection, pipeline = fitted
    return {
        "GaussianStats.of": (GaussianStats.of, D),
        "GaussianStats.update": (lambda x: GaussianStats.empty(D).update(x), D),
        "Whitening.transform": (whitening.transform, D),
        "RandomProjection.transform": (projection.transform, 4),
        "Pipeline.transform": (pipeline.transform, D),
    }


STAGES = ["GaussianStats.of", "GaussianStats.update", "Whitening.transform", "RandomProjection.transform",
          "Pipeline.transform"]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_vectors_that_are_not_finite_are_refused(fitted, stage, bad):
    """A NaN used to flow through: NaN statistics (every later whitening NaN), NaN output vectors."""
    call, dim = _stages(fitted)[stage]
    x = np.ones((3, dim))
    x[2, 1] = bad
    with pytest.raises(ParameterError, match=r"^vectors holds NaN or infinite values \(first in row 2\)"):
        call(x)


def test_float32_overflow_is_refused(fitted):
    """1e39 is finite in float64 but infinite once the pipeline casts it to float32."""
    with pytest.raises(ParameterError, match=r"float32 overflows"):
        fitted[3].transform(np.full((2, D), 1e39))


@pytest.mark.parametrize("stage", STAGES)
def test_vectors_must_hold_real_numbers(fitted, stage):
    """Complex values lost their imaginary part with only a numpy warning; strings failed as 'could not
    convert string to float'. Integers, float16, Fortran order and nested lists are taken."""
    call, dim = _stages(fitted)[stage]
    x = np.random.default_rng(1).standard_normal((5, dim))
    for bad in (x + 1j, x.astype(str), np.full(x.shape, "a", dtype=object), x > 0):
        with pytest.raises(ParameterError, match=r"^vectors must hold real numbers, got dtype"):
            call(bad)
    for fine in (x.astype(np.int64), x.astype(np.float16), np.asfortranarray(x), x.tolist(), x.astype(object)):
        call(fine)


def test_one_vector_instead_of_rows_is_named():
    with pytest.raises(ParameterError, match=r"^vectors must have shape \(n, d\), got \(6,\)"):
        GaussianStats.of(np.ones(D))  # was an IndexError


def test_statistics_shift_and_dim_are_checked():
    with pytest.raises(ParameterError, match=r"^shift holds NaN"):
        GaussianStats.empty(D, np.full(D, np.nan))  # made every statistic NaN
    with pytest.raises(ParameterError, match=r"^dim must be at least 1, got -1"):
        GaussianStats.empty(-1)
    with pytest.raises(ParameterError, match=r"^dim must be an integer, got 2\.5"):
        GaussianStats.empty(2.5)
    with pytest.raises(ParameterError, match=r"^other must be GaussianStats, got ndarray"):
        GaussianStats.empty(D).merge(np.ones((2, D)))


@pytest.mark.parametrize("make, name", [
    (lambda stats, v: Eigenbasis.fit(stats).whitening(v), "n_components"),
    (lambda stats, v: RandomProjection.create(D, v), "n_components"),
    (lambda stats, v: RandomProjection.create(v, 3), "input_dim"),
    (lambda stats, v: RandomProjection.create(D, 3, seed=v), "seed"),
    (lambda stats, v: FitOptions(n_components=v), "n_components"),
    (lambda stats, v: FitOptions(jl_dim=v), "jl_dim"),
    (lambda stats, v: FitOptions(seed=v), "seed"),
])
@pytest.mark.parametrize("value", [2.5, 4.0, True, "4", float("nan")])
def test_counts_and_seeds_must_be_integers(fitted, make, name, value):
    """2.5 failed as a slice or in numpy's generator, True counted as 1, '4' failed comparing str with int."""
    with pytest.raises(ParameterError, match=rf"^{name} must be an integer, got {value!r}"):
        make(fitted[0], value)


def test_numpy_integers_are_counts_and_are_saved_as_json_ints(tmp_path, fitted):
    """np.int64(3) is a fine seed, but json could not write it: the pipeline folder failed to save."""
    stats, whitening, _, _ = fitted
    options = FitOptions(n_components=np.int64(4), jl_dim=np.int32(3), seed=np.int64(3))
    assert (type(options.n_components), type(options.jl_dim), type(options.seed)) == (int, int, int)
    projection = RandomProjection.create(np.int64(4), np.int64(3), seed=np.int64(3))
    pipeline = Pipeline(model="m", model_fingerprint="0" * 16, pooling="cls", max_length=16, input_dim=D,
                        whitening=Eigenbasis.fit(stats).whitening(np.int64(4)), projection=projection)
    pipeline.save(tmp_path / "pipe")
    assert whiten_cli.load(tmp_path / "pipe").projection.seed == 3


@pytest.mark.parametrize("seed", [None, -1])
def test_projection_seed_is_required_and_not_negative(seed):
    """seed=None drew an unseeded matrix whose pipeline.json (seed null) could not be loaded again."""
    with pytest.raises(ParameterError, match=r"^seed must be"):
        RandomProjection.create(D, 3, seed=seed)


@pytest.mark.parametrize("value", ["0.5", None, True])
def test_beta_and_gamma_must_be_numbers(fitted, value):
    basis = Eigenbasis.fit(fitted[0])
    for make in (lambda: basis.whitening(4, beta=value), lambda: FitOptions(beta=value)):
        with pytest.raises(ParameterError, match=rf"^beta must be a number in \[0, 1\], got {value!r}"):
            make()
    with pytest.raises(ParameterError, match=r"^gamma must be a number in \[0, 1\]"):
        FitOptions(gamma=value)


@pytest.mark.parametrize("name", ["whiten", "normalize"])
def test_switches_must_be_bools(name):
    """normalize="no" is a true string: the pipeline normalized anyway."""
    with pytest.raises(ParameterError, match=rf"^{name} must be True or False, got 'no'"):
        FitOptions(**{name: "no", "jl_dim": 2})


def _tampered(tmp_path, fitted, edit):
    folder = fitted[3].save(tmp_path / "pipe")
    meta = json.loads((folder / "pipeline.json").read_text())
    edit(meta)
    (folder / "pipeline.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.parametrize("edit, message", [
    (lambda meta: meta.update(format_version=-1), r"format_version -1"),
    (lambda meta: meta["projection"].update(kind="sparse-jl"), r"projection\.kind is 'sparse-jl'"),
])
def test_tampered_pipeline_json_is_refused(tmp_path, fitted, edit, message):
    """A projection of another kind was loaded as a Gaussian one; a negative format version was taken."""
    folder = _tampered(tmp_path, fitted, edit)
    with pytest.raises(WhitenError, match=rf"pipeline\.json: not valid pipeline metadata \({message}"):
        whiten_cli.load(folder)
