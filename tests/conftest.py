"""Shared fixtures: tiny randomly initialised models written to temporary folders, built once per session.

The models are real Hugging Face folders (config.json + model.safetensors + tokenizer files), so the
encoder loads them exactly as it loads a downloaded model, but they are small enough that the whole
suite runs in seconds on a CPU.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run, so a CI run passes or fails on the code alone;
# HYPOTHESIS_PROFILE=explore draws fresh ones (run it now and then: it found the near-constant case).
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

HIDDEN = 32  # the tiny models' vector dimension

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "the a an is are was on in of to and with at by for it this that "
    "cat dog bird man woman child team game ball plays sings runs eats cooks reads writes "
    "guitar piano song music food soup bread rain snow sun weather cold hot warm city train "
    "car fast slow computer code phone book sky blue red green big small happy sad"
).split()
LETTERS = list("abcdefghijklmnopqrstuvwxyz")
PUNCT = list(".,!?'-")


def write(path: Path, content: str | bytes) -> Path:
    """Write text (UTF-8, exactly as given) or bytes to ``path``, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_bytes(content.encode("utf-8"))
    return path


def quiet_torch() -> None:
    """One intra-op thread: the tiny models gain nothing from more, and on a busy machine
    several threads fighting over the cores make each small matmul a thousand times slower."""
    import torch

    torch.set_num_threads(1)


def tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-dim BERT with random weights and a ~150-token WordPiece vocabulary."""
    import torch
    import transformers

    quiet_torch()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    folder.mkdir(parents=True, exist_ok=True)
    vocab = SPECIALS + WORDS + LETTERS + ["##" + c for c in LETTERS] + PUNCT
    vocab_file = write(folder / "vocab.txt", "\n".join(vocab) + "\n")
    # Positional: ``vocab_file`` in transformers 4, ``vocab`` (a path or a dict) in transformers 5.
    tokenizer = transformers.BertTokenizerFast(str(vocab_file), do_lower_case=True)
    config = transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=256,
    )
    torch.manual_seed(seed)
    transformers.BertModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


LEGACY_POOLING_FLAGS = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens", "mean": "pooling_mode_mean_tokens",
                        "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
                        "weightedmean": "pooling_mode_weightedmean_tokens", "lasttoken": "pooling_mode_lasttoken"}


def make_sentence_transformers(plain: Path, folder: Path, mode: str = "mean", normalize: bool = True, *,
                               dense: tuple[int, str] | None = None, dense_file: str = "model.safetensors",
                               max_seq_length: int | None = None, do_lower_case: bool | None = None) -> Path:
    """Copy a plain HF folder and add sentence-transformers modules as 3.x–5.x wrote them by hand:
    Pooling (``mode``, several joined by "+"), an optional Dense (out_features, activation class path;
    random weights in ``dense_file``), an optional Normalize, and sentence_bert_config.json settings."""
    shutil.copytree(plain, folder)
    modes = mode.split("+")
    types = [("", "Transformer"), ("1_Pooling", "Pooling")]
    if dense:
        types.append(("2_Dense", "Dense"))
    if normalize:
        types.append((f"{len(types)}_Normalize", "Normalize"))
        (folder / types[-1][0]).mkdir()
    modules = [{"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
               for i, (path, kind) in enumerate(types)]
    write(folder / "modules.json", json.dumps(modules, indent=2))
    pooling = {"word_embedding_dimension": HIDDEN, **{flag: name in modes for name, flag in LEGACY_POOLING_FLAGS.items()}}
    write(folder / "1_Pooling" / "config.json", json.dumps(pooling, indent=2))
    if dense:
        import torch

        out_features, activation = dense
        in_features = HIDDEN * len(modes)
        write(folder / "2_Dense" / "config.json", json.dumps({"in_features": in_features, "out_features": out_features,
                                                              "bias": True, "activation_function": activation}))
        generator = torch.Generator().manual_seed(7)
        weights = {"linear.weight": torch.randn(out_features, in_features, generator=generator) / in_features ** 0.5,
                   "linear.bias": torch.randn(out_features, generator=generator) * 0.1}
        if dense_file == "model.safetensors":
            from safetensors.torch import save_file

            save_file(weights, str(folder / "2_Dense" / dense_file))
        else:
            torch.save(weights, folder / "2_Dense" / dense_file)
    settings = {key: value for key, value in (("max_seq_length", max_seq_length), ("do_lower_case", do_lower_case))
                if value is not None}
    if settings:
        write(folder / "sentence_bert_config.json", json.dumps(settings))
    return folder


CHINESE_CHARS = "今天天气很好我们去公园散步明天会下雨吗他喜欢吃苹果和香蕉猫在睡觉狗跑得快音乐好听的了是不"
CHINESE_WORDS = ["今天", "天气", "我们", "公园", "散步", "明天", "下雨", "喜欢", "苹果", "香蕉", "睡觉", "音乐", "好听"]


def tiny_roformer(folder: Path, seed: int = 0) -> Path:
    """A 2-layer RoFormer with random weights and a small Chinese vocabulary (jieba pre-tokenizer)."""
    import torch
    import transformers

    quiet_torch()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    folder.mkdir(parents=True, exist_ok=True)
    vocab = SPECIALS + list(dict.fromkeys(CHINESE_CHARS)) + CHINESE_WORDS + list("，。！？")
    write(folder / "vocab.txt", "\n".join(vocab) + "\n")
    try:  # transformers 5: built from the vocabulary
        tokenizer = transformers.RoFormerTokenizerFast(vocab={token: i for i, token in enumerate(vocab)})
    except TypeError:  # transformers 4: built from vocab.txt
        tokenizer = transformers.RoFormerTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    config = transformers.RoFormerConfig(
        vocab_size=len(vocab), embedding_size=HIDDEN, hidden_size=HIDDEN, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, max_position_embeddings=256,
    )
    torch.manual_seed(seed)
    transformers.RoFormerModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session", autouse=True)
def private_embedding_cache(tmp_path_factory):
    """Every test's embedding cache (the CLI's default one) is a temporary folder, never ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WHITEN_CACHE_DIR", str(tmp_path_factory.mktemp("embedding-cache")))
        yield


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert", seed=0)


@pytest.fixture(scope="session")
def other_tiny_model(tmp_path_factory) -> Path:
    """Same architecture and vocabulary as ``tiny_model``, other weights (another fingerprint)."""
    return tiny_bert(tmp_path_factory.mktemp("models") / "other-bert", seed=1)


@pytest.fixture(scope="session")
def tiny_st_model(tmp_path_factory, tiny_model) -> Path:
    """``tiny_model`` as a sentence-transformers folder: mean pooling, then Normalize."""
    return make_sentence_transformers(tiny_model, tmp_path_factory.mktemp("models") / "tiny-st")


@pytest.fixture(scope="session")
def tiny_roformer_model(tmp_path_factory) -> Path:
    pytest.importorskip("rjieba")
    return tiny_roformer(tmp_path_factory.mktemp("models") / "tiny-roformer")


def sample_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct short sentences from the tiny vocabulary (deterministic)."""
    import random

    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "the man", "a woman", "the child", "the team", "a bird"]
    verbs = ["plays", "sings", "reads", "eats", "cooks", "writes", "runs"]
    objects = ["the guitar", "a song", "the book", "hot soup", "warm bread", "the ball", "the piano", "music"]
    tails = ["", " in the city", " on the train", " in the rain", " in the sun", " with a phone", " at the game"]
    seen: list[str] = []
    while len(seen) < n:
        sentence = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}{rng.choice(tails)}."
        if sentence not in seen:
            seen.append(sentence)
    return seen
