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


# --- texts, encoders and fitting -------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder(tiny_model):
    from whiten_cli.encoder import Encoder

    return Encoder(str(tiny_model), pooling="cls", dtype="float32", batch_size=8)


@pytest.mark.parametrize("option, value", [("batch_size", 2.5), ("batch_size", True), ("batch_size", "8"),
                                           ("max_length", 10.5), ("threads", 1.5)])
def test_encoder_counts_must_be_integers(tiny_model, option, value):
    """batch_size=2.5 made an encoder whose batches were sliced by a float; threads=1.5 failed in torch."""
    from whiten_cli.encoder import Encoder

    with pytest.raises(ParameterError, match=rf"^{option} must be an integer, got {value!r}"):
        Encoder(str(tiny_model), **{option: value})


def test_encoder_takes_a_path_object_and_names_a_bad_model(tiny_model, encoder):
    from whiten_cli.encoder import Encoder

    assert Encoder(tiny_model, pooling="cls").source.fingerprint == encoder.source.fingerprint  # was an AttributeError
    with pytest.raises(ParameterError, match=r"^model must be a folder, a hub id or None, got 123"):
        Encoder(123)


def test_encoder_device_is_named_as_a_parameter(tiny_model):
    """The library said '--device bogus', a flag a Python caller never gave; the command line still does."""
    from whiten_cli.encoder import Encoder

    with pytest.raises(ParameterError, match=r"^device bogus: ") as caught:
        Encoder(str(tiny_model), device="bogus")
    assert caught.value.naming("--device").startswith("--device bogus: ")


@pytest.mark.parametrize("texts", [{"the cat", "a dog"}, {"the cat": 1, "a dog": 2}, frozenset({"the cat"})])
def test_unordered_texts_are_refused(encoder, texts):
    """A set has no order for the rows to follow, and a dict gave its keys' vectors."""
    with pytest.raises(ParameterError, match=r"^texts must be a str or a sequence of str, not"):
        encoder.encode(texts)


def test_one_pooling_given_as_a_str_is_not_split_into_letters(encoder):
    """poolings="cls" was read as the poolings 'c', 'l', 's': "unknown pooling 'c'"."""
    vectors = encoder.encode_poolings(["the cat"], "cls")
    np.testing.assert_array_equal(vectors["cls"], encoder.encode(["the cat"]))


def test_fit_pipeline_texts(encoder):
    """A str was cut into chunks of characters and failed as 'expected vectors of dimension 32, got
    shape (32,)'; a generator failed as 'object of type generator has no len()'."""
    from whiten_cli.pipeline import fit_pipeline

    texts = sample_sentences(30)
    with pytest.raises(ParameterError, match=r"^texts must be a sequence of texts, got a single str"):
        fit_pipeline("the cat sat on the mat", encoder, FitOptions())
    expected = fit_pipeline(texts, encoder, FitOptions(n_components=4))
    from_generator = fit_pipeline((text for text in texts), encoder, FitOptions(n_components=4))
    np.testing.assert_array_equal(from_generator.whitening.kernel, expected.whitening.kernel)


@pytest.mark.parametrize("keywords, message", [
    ({"chunk_size": 0}, r"^chunk_size must be at least 1, got 0"),  # was range()'s ValueError
    ({"chunk_size": -1}, r"^chunk_size must be at least 1, got -1"),  # fitted on nothing: 'got 0 vectors'
    ({"chunk_size": 2.5}, r"^chunk_size must be an integer"),
    ({"options": {"n_components": 4}}, r"^options must be FitOptions, got dict"),  # was an AttributeError
    ({"encoder": None}, r"^encoder must be an Encoder, got NoneType"),  # was an AttributeError
    ({"info": ["corpus.txt"]}, r"^info must be a dict, got list"),  # was a TypeError at saving
])
def test_fit_pipeline_arguments(encoder, keywords, message):
    from whiten_cli.pipeline import fit_pipeline

    arguments = {"encoder": encoder, "options": FitOptions(), **keywords}
    with pytest.raises(ParameterError, match=message):
        fit_pipeline(sample_sentences(10), **arguments)


def test_pipeline_encode_refuses_an_encoder_of_another_model_or_pooling(encoder, other_tiny_model):
    """Vectors of another model (same dimension) or pooling were whitened with this pipeline's kernel
    without a word: a wrong result."""
    from whiten_cli.encoder import Encoder
    from whiten_cli.pipeline import fit_pipeline

    pipeline = fit_pipeline(sample_sentences(30), encoder, FitOptions(n_components=4))
    assert pipeline.encode(["the cat"], encoder).shape == (1, 4)
    other = Encoder(str(other_tiny_model), pooling="cls", dtype="float32")
    with pytest.raises(WhitenError, match=r"is not the model this pipeline was fitted on"):
        pipeline.encode(["the cat"], other)
    mean_pooled = Encoder(encoder.source.path, pooling="last-avg", dtype="float32")
    with pytest.raises(ParameterError, match=r"^encoder pools with 'last-avg', but this pipeline was fitted on 'cls'"):
        pipeline.encode(["the cat"], mean_pooled)


@pytest.mark.parametrize("keywords, message", [
    ({"n_components": 0}, r"^n_components must be at least 1, got 0"),  # refused only after encoding
    ({"n_components": 2.5}, r"^n_components must be an integer"),
    ({"gamma": "1"}, r"^gamma must be a number in \[0, 1\]"),
])
def test_evaluation_variants_are_checked_when_made(keywords, message):
    from whiten_cli.evaluate import Variant

    with pytest.raises(ParameterError, match=message):
        Variant(**keywords)


def test_tune_max_dim_is_a_parameter_checked_before_encoding(encoder):
    """The library named the flag --max-dim, after encoding every text."""
    from whiten_cli.tune import tune

    class Dev:
        name = "dev"
        sentences = ["never encoded"] * 6
        subsets = [type("Subset", (), {"scores": np.array([0.0, 1.0, 2.0]), "path": None})()]

    encoded = encoder.encoded
    with pytest.raises(ParameterError, match=r"^max_dim must be between 1 and the vector dimension 32, got 33"):
        tune([Dev()], [], encoder, ["cls"], 33)
    assert encoder.encoded == encoded


def test_load_dataset_takes_a_path_object(tmp_path):
    from whiten_cli.sts import load_dataset

    file = tmp_path / "pairs.tsv"
    file.write_text("sentence1\tsentence2\tscore\nthe cat\ta cat\t4\nthe dog\ta car\t1\n", encoding="utf-8")
    assert load_dataset(file).pairs == 2  # was AttributeError: 'PosixPath' object has no attribute 'strip'
    with pytest.raises(ParameterError, match=r"^spec must be a dataset name or a path, got None"):
        load_dataset(None)


# --- the vector index ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def index(encoder):
    from whiten_cli.index import VectorIndex
    from whiten_cli.pipeline import fit_pipeline

    texts = sample_sentences(30)
    pipeline = fit_pipeline(texts, encoder, FitOptions(n_components=4))
    return VectorIndex.build(pipeline.encode(texts, encoder), texts, pipeline, kind="flat")


def test_one_query_text_is_not_split_into_letters(index):
    """search_texts("the cat") searched the 7 queries 't', 'h', 'e', ...; encode("the cat") gave 7 vectors."""
    hits = index.search_texts("the cat", 3)
    assert len(hits) == 1 and hits == index.search_texts(["the cat"], 3)
    np.testing.assert_array_equal(index.encode("the cat"), index.encode(["the cat"])[0])


@pytest.mark.parametrize("docs, message", [
    ("one doc", r"^docs must be a sequence of texts or Documents, got a single str"),  # 7 documents, one per letter
    (["fine", None], r"^docs\[1\] is NoneType, not str or Document"),  # indexed as the text 'None'
    (["fine", 5], r"^docs\[1\] is int, not str or Document"),
])
def test_documents_must_be_texts(index, docs, message):
    from whiten_cli.index import VectorIndex

    n = 1 if isinstance(docs, str) else len(docs)
    vectors = np.ones((n, index.dim))
    with pytest.raises(ParameterError, match=message):
        VectorIndex.build(vectors, docs, index.pipeline, kind="flat")
    with pytest.raises(ParameterError, match=message):
        index.add(vectors, docs)


@pytest.mark.parametrize("options, message", [
    ({"k": 2.5}, r"^k must be an integer, got 2\.5"),  # FAISS: 'float' object cannot be interpreted as an integer
    ({"k": True}, r"^k must be an integer, got True"),
    ({"k": None}, r"^k must be an integer, got None"),
    ({"ef": 2.5}, r"^ef must be an integer, got 2\.5"),  # was truncated to 2 without a word
    ({"threshold": "0.5"}, r"^threshold must be a number, got '0\.5'"),
])
def test_search_options_must_be_of_their_type(index, options, message):
    queries = index.encode(["the cat"])
    with pytest.raises(ParameterError, match=message):
        index.search(queries, **{"k": 3, **options})
    with pytest.raises(ParameterError, match=message):
        index.search_texts(["the cat"], **{"k": 3, **options})


def test_a_numpy_integer_k_is_a_k(index):
    """FAISS's SWIG wrapper refused np.int64 ('Wrong number or type of arguments')."""
    queries = index.encode(["the cat"])
    assert index.search(queries, np.int64(3)) == index.search(queries, 3)


@pytest.mark.parametrize("options, message", [
    ({"nlist": 2.5}, r"^nlist must be an integer, got 2\.5"),  # "too few vectors to train 2.5 lists"
    ({"nprobe": 2.5}, r"^nprobe must be an integer, got 2\.5"),  # stored; the saved index did not load
    ({"max_memory": "1G"}, r"^max_memory must be an integer, got '1G'"),
    ({"seed": -1}, r"^seed must be between 0 and 2147483647, got -1"),
    ({"seed": 2**40}, r"^seed must be between 0 and 2147483647"),  # FAISS: OverflowError
])
def test_build_options_must_be_of_their_type_and_range(index, options, message):
    from whiten_cli.index import VectorIndex

    vectors = index.encode(sample_sentences(30))
    with pytest.raises(ParameterError, match=message):
        VectorIndex.build(vectors, sample_sentences(30), index.pipeline, kind="flat", **options)


def test_document_row_must_be_an_integer(index):
    with pytest.raises(ParameterError, match=r"^row must be an integer, got 2\.5"):
        index.document(2.5)
