"""The one-object Python API: whiten_cli.load(dir).encode(texts), .dim, .save(); what IDEs see; the
library's errors are ValueErrors naming Python parameters, while the CLI names flags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import whiten_cli
from conftest import HIDDEN, sample_sentences, write
from test_cli import assert_one_line_error, run
from whiten_cli.errors import ParameterError, WhitenError
from whiten_cli.pipeline import FitOptions, Pipeline, fit_pipeline


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory, tiny_model) -> Path:
    folder = tmp_path_factory.mktemp("api")
    corpus = write(folder / "corpus.txt", "\n".join(sample_sentences(60)) + "\n")
    result = run("fit", corpus, "-o", folder / "pipe", "--model", tiny_model, "--pooling", "cls", "-k", "12", "-q")
    assert result.exit_code == 0, result.output
    return folder / "pipe"


def test_load_encode_without_an_encoder(pipeline_dir):
    texts = sample_sentences(9, seed=4)
    pipeline = whiten_cli.load(pipeline_dir)
    assert isinstance(pipeline, Pipeline) and pipeline.dim == 12
    vectors = pipeline.encode(texts, batch_size=4, dtype="float32")
    assert vectors.shape == (9, 12) and vectors.dtype == np.float32
    expected = pipeline.transform(pipeline.encoder(dtype="float32").encode(texts))
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    one = pipeline.encode(texts[3], batch_size=4, dtype="float32")
    assert one.shape == (12,)
    np.testing.assert_allclose(one, expected[3], atol=1e-5)
    # The encoder is built once and kept: the second call reused the first one's.
    (encoder,) = pipeline._encoders.values()
    assert encoder.encoded == len(texts) + 1


def test_encode_with_an_encoder_still_works(pipeline_dir):
    pipeline = whiten_cli.load(pipeline_dir)
    encoder = pipeline.encoder(dtype="float32")
    texts = sample_sentences(3)
    np.testing.assert_allclose(pipeline.encode(texts, encoder), pipeline.transform(encoder.encode(texts)))
    assert not pipeline._encoders


def test_save_round_trip(tmp_path, pipeline_dir):
    pipeline = whiten_cli.load(pipeline_dir)
    pipeline.save(tmp_path / "copy")
    again = whiten_cli.load(tmp_path / "copy")
    assert again.dim == pipeline.dim
    np.testing.assert_array_equal(again.whitening.kernel, pipeline.whitening.kernel)


def test_names_for_ides_and_type_checkers():
    assert {"load", "Pipeline", "Encoder", "fit_pipeline", "WhitenError", "__version__"} <= set(whiten_cli.__all__)
    assert set(dir(whiten_cli)) >= set(whiten_cli.__all__)
    for name in whiten_cli.__all__:
        assert getattr(whiten_cli, name) is not None
    package = Path(whiten_cli.__file__).parent
    assert (package / "py.typed").is_file()  # the wheel ships the whole package folder


def test_library_error_is_a_value_error():
    assert issubclass(WhitenError, ValueError) and issubclass(ParameterError, WhitenError)
    with pytest.raises(ValueError):
        whiten_cli.load("/nonexistent/pipeline")


def test_library_messages_name_parameters_and_the_cli_names_flags(tmp_path, tiny_model):
    from whiten_cli.encoder import Encoder
    from whiten_cli.projection import RandomProjection

    encoder = Encoder(str(tiny_model), pooling="cls", dtype="float32")
    texts = sample_sentences(20)
    with pytest.raises(ParameterError, match=rf"^n_components must be between 1 and the model's dimension {HIDDEN}"):
        fit_pipeline(texts, encoder, FitOptions(n_components=HIDDEN + 1))
    with pytest.raises(ParameterError, match="^jl_dim must be positive"):
        fit_pipeline(texts, encoder, FitOptions(jl_dim=0))
    with pytest.raises(ParameterError, match="^n_components must be positive"):
        RandomProjection.create(8, 0)
    with pytest.raises(ParameterError, match="^batch_size must be positive"):
        Encoder(str(tiny_model), batch_size=0)
    corpus = write(tmp_path / "corpus.txt", "\n".join(texts) + "\n")
    for flags, message in ((["-k", str(HIDDEN + 1)], "-k/--dim must be between 1"), (["--jl-dim", "0"], "--jl-dim must be positive"),
                           (["-k", "8", "--jl-dim", "9"], "--jl-dim must be at most the 8 dimensions it projects from"),
                           (["--no-whiten", "--jl-dim", str(HIDDEN + 1)], f"at most the {HIDDEN} dimensions"),
                           (["--batch-size", "0"], "--batch-size must be positive")):
        result = run("fit", corpus, "-o", tmp_path / "p", "--model", tiny_model, "--pooling", "cls", *flags)
        error = assert_one_line_error(result, message)
        assert "n_components" not in error and "batch_size" not in error and "jl_dim" not in error
