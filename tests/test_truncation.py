"""Texts longer than max_length are cut by the tokenizer's own truncation, and counted."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import WORDS
from whiten_cli.encoder import Encoder

# Known words, unknown characters ([UNK] for the tiny vocabulary), pieces the tokenizer splits.
PIECES = WORDS[:20] + ["☃", "ü", "é", "中", "🙂", "—", "[UNK]", "[SEP]", "Dog", "CATS", "##a", "x7", ".", "!?", "rainsnow"]
ODD_TEXTS = st.lists(st.sampled_from(PIECES), max_size=30).flatmap(
    lambda pieces: st.lists(st.sampled_from([" ", "", "  ", "\t"]), min_size=len(pieces), max_size=len(pieces)).map(
        lambda gaps: "".join(gap + piece for gap, piece in zip(gaps, pieces))))
MAX_LENGTHS = (2, 3, 5, 8, 16)


@pytest.fixture(scope="module")
def encoders(tiny_model):
    return {length: Encoder(str(tiny_model), pooling="cls", max_length=length) for length in MAX_LENGTHS}


def tokenizer_reference(encoder, texts):
    """The tokenizer's own truncation, and whether each text had more tokens than max_length."""
    tokenizer = encoder._tokenizer
    cut = tokenizer(texts, truncation=True, max_length=encoder.max_length)["input_ids"]
    whole = tokenizer(texts)["input_ids"]
    return cut, [len(ids) > encoder.max_length for ids in whole]


def test_unknown_last_character_is_not_kept_past_the_cut(encoders):
    encoder = encoders[5]
    text = "the cat plays the guitar ☃"  # [CLS] the cat plays the guitar [UNK] [SEP]
    ids, cut = encoder._tokenize_ids([text])
    assert encoder._tokenizer.convert_ids_to_tokens(ids[0]) == ["[CLS]", "the", "cat", "plays", "[SEP]"]
    assert cut.tolist() == [True]
    np.testing.assert_allclose(encoder.encode([text]), encoder.encode(["the cat plays"]), atol=1e-6)


@pytest.mark.parametrize("max_length", MAX_LENGTHS)
@settings(max_examples=60, deadline=None)
@given(texts=st.lists(ODD_TEXTS, min_size=1, max_size=6))
def test_same_tokens_as_the_tokenizers_truncation(encoders, max_length, texts):
    encoder = encoders[max_length]
    ids, cut = encoder._tokenize_ids(texts)
    expected_ids, expected_cut = tokenizer_reference(encoder, texts)
    assert ids == expected_ids
    assert cut.tolist() == expected_cut

