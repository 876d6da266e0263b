"""The encoder's speed options change how it computes, not what: dtypes, batching, threads, lazy loading.

Behaviour only: no timing is asserted here (benchmarks/bench_encode.py measures speed).
"""

import numpy as np
import pytest

from conftest import quiet_torch, sample_sentences
from whiten_cli.encoder import Encoder, _autocast, _batches
from whiten_cli.errors import ParameterError, WhitenError

TEXTS = sample_sentences(40, seed=7) + [" ".join(["the big dog runs fast in the cold rain"] * 6)]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def reference(tiny_model):
    return Encoder(str(tiny_model), pooling="first-last-avg").encode_poolings(TEXTS, ["first-last-avg", "cls"])


@pytest.mark.parametrize("dtype, least", [("bfloat16", 0.99), ("float16", 0.99), ("int8", 0.9)])
def test_reduced_precision_is_close_to_float32(tiny_model, reference, dtype, least):
    encoder = Encoder(str(tiny_model), pooling="first-last-avg", dtype=dtype)
    out = encoder.encode_poolings(TEXTS, ["first-last-avg", "cls"])
    for pooling, vectors in out.items():
        assert vectors.dtype == np.float32 and vectors.shape == reference[pooling].shape
        assert np.isfinite(vectors).all()
        assert cosines(vectors, reference[pooling]).min() > least, (dtype, pooling)


def test_bfloat16_on_cpu_casts_the_weights(tiny_model):
    import torch

    encoder = Encoder(str(tiny_model), pooling="cls", dtype="bfloat16")
    encoder.encode(TEXTS[:2])
    assert next(encoder._model.parameters()).dtype == torch.bfloat16
    assert isinstance(_autocast("cpu", "bfloat16"), type(_autocast("cpu", "float32")))  # no autocast on top


def test_autocast_where_weights_stay_float32():
    import torch

    assert isinstance(_autocast("cpu", "float16"), torch.autocast)
    assert not isinstance(_autocast("cpu", "int8"), torch.autocast)


def test_int8_quantizes_linear_layers(tiny_model):
    import torch

    encoder = Encoder(str(tiny_model), pooling="cls", dtype="int8")
    encoder.encode(TEXTS[:2])
    kinds = {type(module).__name__ for module in encoder._model.modules()}
    assert "Linear" in kinds and not any(isinstance(m, torch.nn.Linear) and type(m) is torch.nn.Linear
                                         for m in encoder._model.modules())



def test_int8_without_a_quantized_engine_is_one_line(tiny_model, monkeypatch):
    import torch

    monkeypatch.setattr(torch._C, "_supported_qengines", lambda: [0])  # 0 is the "none" engine
    assert torch.backends.quantized.supported_engines == ["none"]
    with pytest.raises(WhitenError, match="--dtype int8: this CPU .* has no quantized engine"):
        Encoder(str(tiny_model), pooling="cls", dtype="int8").encode(TEXTS[:2])


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_batching_does_not_change_vectors(tiny_model, reference, batch_size):
    vectors = Encoder(str(tiny_model), pooling="first-last-avg", batch_size=batch_size).encode(TEXTS)
    np.testing.assert_allclose(vectors, reference["first-last-avg"], atol=1e-5)


def test_batches_respect_text_and_token_limits():
    lengths = np.array([100, 90, 50, 20, 10, 10, 10, 10, 3])
    batches = list(_batches(lengths, batch_size=4, max_tokens=200))
    assert [(b.start, b.stop) for b in batches] == [(0, 2), (2, 6), (6, 9)]
    # A text longer than the budget still goes, alone.
    assert [(b.start, b.stop) for b in _batches(np.array([500, 5]), 8, 100)] == [(0, 1), (1, 2)]


def test_many_texts_in_chunks_keep_order(tiny_model, monkeypatch):
    import whiten_cli.encoder as encoder_module

    monkeypatch.setattr(encoder_module, "_CHUNK", 7)
    texts = sample_sentences(30, seed=2) * 2
    encoder = Encoder(str(tiny_model), pooling="last-avg", batch_size=4)
    chunked = encoder.encode(texts)
    monkeypatch.setattr(encoder_module, "_CHUNK", 10_000)
    whole = Encoder(str(tiny_model), pooling="last-avg").encode(texts)
    np.testing.assert_allclose(chunked, whole, atol=1e-5)
    assert encoder.encoded == 30  # duplicates encoded once


def test_progress_counts_distinct_texts(tiny_model):
    calls = []
    Encoder(str(tiny_model), pooling="cls", batch_size=5).encode(TEXTS + TEXTS, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (len(TEXTS), len(TEXTS))
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_threads_option(tiny_model):
    import torch

    before = torch.get_num_threads()
    try:
        Encoder(str(tiny_model), pooling="cls", threads=1).encode(TEXTS[:3])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
        quiet_torch()
    with pytest.raises(WhitenError, match="threads"):
        Encoder(str(tiny_model), threads=0)


def test_model_loads_only_when_needed(tiny_model):
    encoder = Encoder(str(tiny_model), pooling="cls")
    assert encoder._loaded is None and encoder.dim == 32  # dim from config.json
    assert encoder.encode([]).shape == (0, 32) and encoder._loaded is None
    encoder.encode(["the cat plays."])
    assert encoder._loaded is not None


def test_device_errors(tiny_model):
    import torch

    with pytest.raises(WhitenError, match="CPU only"):
        Encoder(str(tiny_model), device="cuda", dtype="int8")
    with pytest.raises(ParameterError, match="^device no-such-device: ") as caught:  # the Python parameter
        Encoder(str(tiny_model), device="no-such-device")
    assert caught.value.naming("--device").startswith("--device no-such-device: ")  # what the CLI prints
    if not torch.cuda.is_available():
        with pytest.raises(WhitenError, match="CUDA is not available"):
            Encoder(str(tiny_model), device="cuda", dtype="bfloat16")


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="no CUDA device here")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_cuda_autocast_matches_cpu(tiny_model, reference, dtype):
    encoder = Encoder(str(tiny_model), pooling="first-last-avg", device="cuda", dtype=dtype)
    out = encoder.encode_poolings(TEXTS, ["first-last-avg", "cls"])
    for pooling, vectors in out.items():
        assert cosines(vectors, reference[pooling]).min() > 0.99


@pytest.mark.slow
def test_default_model_bfloat16_and_int8_keep_meaning():
    """The real default model: bfloat16 vectors are float32's (cosine > 0.99); int8 stays close."""
    quiet_torch()
    texts = [
        "A man is playing a guitar on the stage.",
        "On stage, a man plays the guitar.",
        "The recipe needs two cups of flour and an egg.",
        "Stocks fell sharply after the announcement of new tariffs.",
    ]
    exact = Encoder(None).encode(texts)
    for dtype, least in (("bfloat16", 0.99), ("int8", 0.8)):
        vectors = Encoder(None, dtype=dtype).encode(texts)
        assert cosines(vectors, exact).min() > least, dtype
        assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
