import json

import numpy as np
import pytest

from conftest import HIDDEN, sample_sentences
from whiten_cli import __version__
from whiten_cli.errors import WhitenError
from whiten_cli.pipeline import ARRAYS_FILE, METADATA_FILE, FitOptions, Pipeline, fit_pipeline
from whiten_cli.projection import RandomProjection
from whiten_cli.stats import GaussianStats
from whiten_cli.whitening import Eigenbasis


def make_pipeline(d: int = 16, k: int = 8, jl: int | None = 4, normalize: bool = True) -> Pipeline:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, d)) @ rng.standard_normal((d, d)) + 1.5
    basis = Eigenbasis.fit(GaussianStats.of(x))
    whitening = basis.whitening(k, beta=1.0, gamma=0.75)
    projection = RandomProjection.create(k, jl, seed=7) if jl else None
    return Pipeline(
        model="some/model", model_fingerprint="0123456789abcdef", pooling="first-last-avg", max_length=64,
        input_dim=d, whitening=whitening, projection=projection, normalize=normalize,
        eigenvalues=basis.eigenvalues, info={"corpus": "corpus.txt", "fitted_on": 200},
    )


def vectors(n: int = 10, d: int = 16) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, d)).astype(np.float32)


@pytest.mark.parametrize("jl", [None, 4])
def test_save_load_roundtrip_gives_identical_transform(tmp_path, jl):
    pipeline = make_pipeline(jl=jl)
    assert pipeline.save(tmp_path / "pipe") == tmp_path / "pipe"
    loaded = Pipeline.load(tmp_path / "pipe")
    np.testing.assert_array_equal(loaded.transform(vectors()), pipeline.transform(vectors()))
    np.testing.assert_array_equal(loaded.whitening.kernel, pipeline.whitening.kernel)
    np.testing.assert_array_equal(loaded.eigenvalues, pipeline.eigenvalues)
    assert (loaded.whitening.beta, loaded.whitening.gamma) == (1.0, 0.75)
    assert loaded.output_dim == pipeline.output_dim == (jl or 8)
    assert (loaded.model, loaded.model_fingerprint, loaded.pooling, loaded.max_length) == (
        "some/model", "0123456789abcdef", "first-last-avg", 64)
    assert loaded.info == pipeline.info
    if jl:
        assert loaded.projection.seed == 7
        np.testing.assert_array_equal(loaded.projection.matrix, pipeline.projection.matrix)


def test_transform_normalizes_and_is_float32():
    out = make_pipeline().transform(vectors())
    assert out.dtype == np.float32 and out.shape == (10, 4)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    raw = make_pipeline(normalize=False).transform(vectors())
    np.testing.assert_allclose(out, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-6, atol=1e-7)
    with pytest.raises(WhitenError, match="dimension 16"):
        make_pipeline().transform(np.zeros((1, 15)))


def test_projection_only_pipeline_roundtrip(tmp_path):
    pipeline = Pipeline(model="m", model_fingerprint="f", pooling="cls", max_length=32, input_dim=16,
                        projection=RandomProjection.create(16, 6, seed=1))
    loaded = Pipeline.load(pipeline.save(tmp_path / "p"))
    assert loaded.whitening is None and loaded.eigenvalues is None
    np.testing.assert_array_equal(loaded.transform(vectors()), pipeline.transform(vectors()))


def test_folder_holds_json_and_safetensors_only(tmp_path):
    folder = make_pipeline().save(tmp_path / "pipe")
    assert sorted(p.name for p in folder.iterdir()) == sorted([METADATA_FILE, ARRAYS_FILE])
    assert (METADATA_FILE, ARRAYS_FILE) == ("pipeline.json", "arrays.safetensors")
    # safetensors: an 8-byte little-endian header length, then a JSON header; no pickle opcodes
    raw = (folder / ARRAYS_FILE).read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    assert set(header) - {"__metadata__"} == {"mean", "kernel", "eigenvalues", "projection"}
    assert not raw.startswith(b"\x80")  # a pickle protocol-2+ stream would start with PROTO
    from safetensors.numpy import load_file

    assert set(load_file(str(folder / ARRAYS_FILE))) == {"mean", "kernel", "eigenvalues", "projection"}
    assert not list(folder.rglob("*.pkl")) and not list(folder.rglob("*.npy"))


def test_metadata_contents(tmp_path):
    folder = make_pipeline().save(tmp_path / "pipe")
    meta = json.loads((folder / METADATA_FILE).read_text(encoding="utf-8"))
    assert meta["format"] == "whiten-pipeline" and meta["format_version"] == 1
    assert meta["tool_version"] == __version__
    assert meta["model"] == {"name": "some/model", "fingerprint": "0123456789abcdef"}
    assert meta["pooling"] == "first-last-avg" and meta["max_length"] == 64
    assert (meta["input_dim"], meta["output_dim"]) == (16, 4)
    assert meta["whitening"] == {"k": 8, "beta": 1.0, "gamma": 0.75}
    assert meta["projection"] == {"kind": "gaussian-jl", "n": 4, "seed": 7}
    assert meta["normalize"] is True
    assert meta["info"] == {"corpus": "corpus.txt", "fitted_on": 200}


def test_load_missing_folder(tmp_path):
    with pytest.raises(WhitenError, match="does not exist") as info:
        Pipeline.load(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)


@pytest.mark.parametrize("missing", [METADATA_FILE, ARRAYS_FILE])
def test_load_folder_missing_a_file(tmp_path, missing):
    folder = make_pipeline().save(tmp_path / "pipe")
    (folder / missing).unlink()
    with pytest.raises(WhitenError) as info:
        Pipeline.load(folder)
    assert str(folder) in str(info.value) and missing in str(info.value)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid pipeline metadata"),
        (b"\xff\xfe\x00garbage", "not valid pipeline metadata"),
        ('{"format": "something-else", "format_version": 1}', "not a whiten pipeline"),
        ('["a", "list"]', "not a whiten pipeline"),
        ('{"format": "whiten-pipeline", "format_version": 99}', "newer"),
        ('{"format": "whiten-pipeline", "format_version": "1"}', "not valid pipeline metadata"),
        ('{"format": "whiten-pipeline", "format_version": 1, "whitening": 3}', "incomplete"),
        ('{"format": "whiten-pipeline", "format_version": 1}', "incomplete"),
    ],
)
def test_load_bad_metadata(tmp_path, content, message):
    folder = make_pipeline().save(tmp_path / "pipe")
    target = folder / METADATA_FILE
    target.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(WhitenError, match=message) as info:
        Pipeline.load(folder)
    assert str(folder) in str(info.value)


def test_load_corrupt_arrays(tmp_path):
    folder = make_pipeline().save(tmp_path / "pipe")
    (folder / ARRAYS_FILE).write_bytes(b"\x00" * 5)
    with pytest.raises(WhitenError, match="unreadable") as info:
        Pipeline.load(folder)
    assert str(folder) in str(info.value)


def test_load_arrays_not_matching_metadata(tmp_path):
    folder = make_pipeline().save(tmp_path / "pipe")
    meta = json.loads((folder / METADATA_FILE).read_text())
    meta["output_dim"] = 5
    (folder / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(WhitenError, match="do not match") as info:
        Pipeline.load(folder)
    assert str(folder) in str(info.value)


def _rewrite_arrays(folder, change) -> None:
    from safetensors.numpy import load_file, save_file

    arrays = load_file(str(folder / ARRAYS_FILE))
    change(arrays)
    save_file(arrays, str(folder / ARRAYS_FILE))


def _set(name, value):
    return lambda arrays: arrays.__setitem__(name, value)


def _poison(name, value):
    def change(arrays):
        arrays[name] = arrays[name].copy()
        arrays[name].flat[3] = value
    return change


@pytest.mark.parametrize(
    "change, message",
    [
        (_poison("kernel", np.nan), "'kernel' holds NaN or infinite"),
        (_poison("mean", np.inf), "'mean' holds NaN or infinite"),
        (_poison("projection", -np.inf), "'projection' holds NaN or infinite"),
        (_poison("eigenvalues", np.nan), "'eigenvalues' holds NaN or infinite"),
        (_set("mean", np.zeros(10)), "'mean' has shape (10,)"),  # mean and kernel disagree
        (_set("kernel", np.zeros((16, 5))), "'kernel' has shape (16, 5)"),  # kernel and projection disagree
        (_set("projection", np.zeros((8, 3), dtype=np.float32)), "'projection' has shape (8, 3)"),
        (_set("kernel", np.zeros((16, 8), dtype=np.int64)), "'kernel' is int64, not floating point"),
        (lambda arrays: arrays.pop("projection"), "no 'projection' array"),
    ],
)
def test_load_refuses_arrays_that_are_not_finite_or_disagree(tmp_path, change, message):
    folder = make_pipeline().save(tmp_path / "pipe")
    _rewrite_arrays(folder, change)
    with pytest.raises(WhitenError) as info:
        Pipeline.load(folder)
    assert str(info.value).startswith(f"{folder / ARRAYS_FILE}: ") and message in str(info.value)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("input_dim", 12, "'mean' has shape (16,), but pipeline.json (input_dim 12) gives (12,)"),
        ("input_dim", "16", "input_dim is '16', not a positive integer"),
        ("max_length", "64", "max_length is '64', not a positive integer"),
        ("max_length", True, "max_length is True, not a positive integer"),
        ("normalize", "false", "normalize is 'false', not true or false"),
        ("pooling", 3, "pooling is 3, not a string"),
        ("model", "some/model", "model is 'some/model', not an object"),
        ("whitening", {"k": 8, "beta": "1", "gamma": 0.75}, "whitening.beta is '1', not a number in [0, 1]"),
        ("whitening", {"k": 8, "beta": 1.0}, "missing 'whitening.gamma'"),
        ("projection", {"kind": "gaussian-jl", "n": 4, "seed": 7.5}, "projection.seed is 7.5, not an integer"),
        ("projection", [4], "projection is [4], not an object or null"),
        ("info", ["corpus.txt"], "info is ['corpus.txt'], not an object"),
    ],
)
def test_load_refuses_metadata_of_the_wrong_type(tmp_path, field, value, message):
    folder = make_pipeline().save(tmp_path / "pipe")
    meta = json.loads((folder / METADATA_FILE).read_text())
    meta[field] = value
    (folder / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(WhitenError) as info:
        Pipeline.load(folder)
    assert message in str(info.value)
    named = ARRAYS_FILE if "has shape" in message else METADATA_FILE
    assert str(info.value).startswith(f"{folder / named}: ")


def test_check_model_refuses_other_weights():
    pipeline = make_pipeline()
    pipeline.check_model("0123456789abcdef", "anything")  # same weights under another name: fine
    with pytest.raises(WhitenError, match="not the model this pipeline was fitted on") as info:
        pipeline.check_model("fedcba9876543210", "other/model")
    assert "other/model" in str(info.value) and "some/model" in str(info.value)


def test_failed_save_leaves_previous_folder_untouched(tmp_path, monkeypatch):
    import safetensors.numpy

    folder = make_pipeline(jl=None).save(tmp_path / "pipe")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def broken_save_file(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", broken_save_file)
    with pytest.raises(RuntimeError, match="disk full"):
        make_pipeline(jl=4).save(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]  # no temporary folders left behind
    assert Pipeline.load(folder).projection is None


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.numpy

    monkeypatch.setattr(safetensors.numpy, "save_file", lambda *a, **k: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        make_pipeline().save(tmp_path / "pipe")
    assert list(tmp_path.iterdir()) == []


def test_save_replaces_existing_folder(tmp_path):
    folder = make_pipeline(jl=None).save(tmp_path / "pipe")
    (folder / "stray.txt").write_text("left over")
    make_pipeline(jl=4).save(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted([METADATA_FILE, ARRAYS_FILE])
    assert Pipeline.load(folder).output_dim == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


# --- fitting with a real (tiny) encoder -----------------------------------------------------------


@pytest.fixture(scope="module")
def encoder(tiny_model):
    from whiten_cli.encoder import Encoder

    return Encoder(str(tiny_model), pooling="first-last-avg")


def test_fit_pipeline_streams_chunks_like_one_pass(encoder):
    texts = sample_sentences(80)
    options = FitOptions(n_components=12, gamma=1.0)
    seen = []
    chunked = fit_pipeline(texts, encoder, options, chunk_size=7, progress=lambda done, total: seen.append((done, total)))
    whole = fit_pipeline(texts, encoder, options)
    assert seen == sorted(seen) and seen[-1] == (80, 80)
    assert {done for done, _ in seen} == {min(7 * i, 80) for i in range(1, 13)}
    np.testing.assert_allclose(chunked.whitening.kernel, whole.whitening.kernel, rtol=1e-6, atol=1e-8)
    assert chunked.info["fitted_on"] == 80
    assert (chunked.model, chunked.model_fingerprint) == (encoder.source.name, encoder.source.fingerprint)
    assert (chunked.pooling, chunked.input_dim, chunked.output_dim) == ("first-last-avg", HIDDEN, 12)
    y = whole.whitening.transform(encoder.encode(texts))
    np.testing.assert_allclose(np.cov(y, rowvar=False), np.eye(12), atol=1e-4)


def test_fit_pipeline_reports_progress_batch_by_batch_within_a_chunk(tiny_model):
    from whiten_cli.encoder import Encoder

    small_batches = Encoder(str(tiny_model), pooling="first-last-avg", batch_size=8)
    seen = []
    fit_pipeline(sample_sentences(40), small_batches, FitOptions(n_components=4), chunk_size=4096,
                 progress=lambda done, total: seen.append((done, total)))
    assert [done for done, _ in seen][:5] == [8, 16, 24, 32, 40] and {total for _, total in seen} == {40}


def test_fit_pipeline_options(encoder):
    texts = sample_sentences(40)
    projected = fit_pipeline(texts, encoder, FitOptions(n_components=8, jl_dim=4, seed=3))
    assert projected.projection.input_dim == 8 and projected.output_dim == 4
    jl_only = fit_pipeline(texts, encoder, FitOptions(whiten=False, jl_dim=6))
    assert jl_only.whitening is None and jl_only.projection.input_dim == HIDDEN
    with pytest.raises(WhitenError, match="nothing to fit"):
        FitOptions(whiten=False)  # refused when made, before any encoding
    with pytest.raises(WhitenError, match="^n_components must be at least 1"):
        FitOptions(n_components=0)
    with pytest.raises(WhitenError, match="^n_components must be between 1"):
        fit_pipeline(texts, encoder, FitOptions(n_components=HIDDEN + 1))


def test_pipeline_encoder_checks_the_model(tmp_path, encoder, tiny_model, other_tiny_model):
    pipeline = fit_pipeline(sample_sentences(40), encoder, FitOptions(n_components=8))
    loaded = Pipeline.load(pipeline.save(tmp_path / "pipe"))
    again = loaded.encoder()
    assert again.pooling == "first-last-avg" and again.source.fingerprint == encoder.source.fingerprint
    texts = ["the cat plays the guitar.", "a dog eats bread."]
    np.testing.assert_allclose(loaded.encode(texts, again), pipeline.transform(encoder.encode(texts)), atol=1e-6)
    with pytest.raises(WhitenError, match="not the model this pipeline was fitted on"):
        loaded.encoder(str(other_tiny_model))


def test_save_refuses_to_replace_other_things(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("precious")
    with pytest.raises(WhitenError, match="not a pipeline") as info:
        make_pipeline().save(data)
    assert str(data) in str(info.value)
    assert [p.name for p in data.iterdir()] == ["notes.txt"]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a sentence\n")
    with pytest.raises(WhitenError, match="not a folder"):
        make_pipeline().save(corpus)
    assert corpus.read_text() == "a sentence\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert Pipeline.load(make_pipeline().save(empty)).output_dim == 4  # an empty folder is fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "data", "empty"]


def test_saved_files_get_ordinary_permissions(tmp_path):
    import os
    import stat

    from whiten_cli.storage import save_npy

    mask = os.umask(0o022)
    try:
        folder = make_pipeline().save(tmp_path / "pipe")
        npy = save_npy(tmp_path / "v.npy", np.zeros((2, 3), dtype=np.float32))
    finally:
        os.umask(mask)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755  # not mkdtemp's 0700
    for path in (*folder.iterdir(), npy):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path  # not mkstemp's 0600
