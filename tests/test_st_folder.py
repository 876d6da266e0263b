"""sentence-transformers folders: `whiten encode` gives SentenceTransformer(folder).encode's vectors.

Folders are built here from the tiny BERT, both saved by the installed sentence-transformers (6.x
layout) and hand-written as 3.x–5.x wrote them; the installed sentence-transformers, which reads
both, is the reference.
"""

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import HIDDEN, make_sentence_transformers, quiet_torch, sample_sentences, write
from test_cli import assert_one_line_error
from whiten_cli.cli import app
from whiten_cli.encoder import Encoder

TEXTS = sample_sentences(12) + [
    "The Cat PLAYS the Guitar ☃",
    "a dog runs fast in the cold rain with a red ball and the happy child sings a song on the train ☃",
    " ".join(["the big dog runs fast in the cold rain"] * 6),
    "ü ☃ é — a bird!",
]


@pytest.fixture(scope="module")
def st():
    """The installed sentence-transformers, quiet."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import transformers

    quiet_torch()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return sentence_transformers


def save_with_st(st, plain, folder, modes, *, head=(), max_seq_length=None):
    """A folder saved by the installed sentence-transformers: Transformer → Pooling(modes) → head."""
    import torch
    from sentence_transformers.sentence_transformer.modules import Dense, Dropout, LayerNorm, Normalize, Pooling, Transformer

    torch.manual_seed(3)
    transformer = Transformer(str(plain), max_seq_length=max_seq_length)
    modules = [transformer, Pooling(HIDDEN, pooling_mode=modes)]
    dim = HIDDEN * len(modes)
    for kind, *args in head:
        if kind == "dense":
            out_features, activation, bias, residual = args
            modules.append(Dense(dim, out_features, bias=bias, activation_function=activation, use_residual=residual))
            dim = out_features
        else:
            modules.append({"layernorm": lambda: LayerNorm(dim), "dropout": lambda: Dropout(0.3),
                            "normalize": Normalize}[kind]())
    for module in modules[2:]:  # random, not the initial, values
        for parameter in module.parameters():
            torch.nn.init.normal_(parameter, std=0.3)
    st.SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    return folder


def reference(st, folder, texts=TEXTS):
    return st.SentenceTransformer(str(folder), device="cpu").encode(texts, batch_size=4, convert_to_numpy=True)


def whiten_encode(folder, tmp_path, texts=TEXTS, *options):
    corpus = write(tmp_path / "corpus.txt", "\n".join(texts) + "\n")
    out = tmp_path / "vectors.npy"
    result = CliRunner().invoke(app, ["encode", str(corpus), "-o", str(out), "--model", str(folder), "--no-cache", *options])
    assert result.exit_code == 0, result.output
    return np.load(out, allow_pickle=False)


def assert_same_vectors(ours, theirs):
    assert ours.shape == theirs.shape
    cosines = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cosines.min() > 0.99999, cosines.min()
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), np.linalg.norm(theirs, axis=1), rtol=1e-4)


SAVED_BY_ST = {  # name: (pooling modes, head modules, max_seq_length)
    "mean-normalize": (("mean",), [("normalize",)], None),
    "cls+mean-dense-normalize": (("cls", "mean"), [("dense", 12, None, True, False), ("normalize",)], None),
    "lasttoken-dense-nobias": (("lasttoken",), [("dense", 8, None, False, False)], None),
    "weightedmean+max-dense-layernorm-dropout-normalize": (
        ("weightedmean", "max"), [("dense", 16, "relu", True, True), ("layernorm",), ("dropout",), ("normalize",)], None),
    "mean_sqrt_len-12-tokens": (("mean_sqrt_len_tokens",), [("dense", 32, "tanh", True, True)], 12),
}


@pytest.mark.parametrize("name", SAVED_BY_ST)
def test_folders_saved_by_the_installed_version(st, tiny_model, tmp_path, name):
    import torch

    modes, head, max_seq_length = SAVED_BY_ST[name]
    activations = {None: None, "relu": torch.nn.ReLU(), "tanh": torch.nn.Tanh()}
    head = [(kind, *args[:1], activations[args[1]], *args[2:]) if kind == "dense" else (kind,) for kind, *args in head]
    folder = save_with_st(st, tiny_model, tmp_path / name, modes, head=head, max_seq_length=max_seq_length)
    assert "pooling_mode" in json.loads((folder / "1_Pooling" / "config.json").read_text())  # the 6.x layout
    expected = reference(st, folder)
    assert_same_vectors(whiten_encode(folder, tmp_path), expected)
    encoder = Encoder(str(folder))
    assert encoder.pooling == "model" and encoder.dim == expected.shape[1]
    assert encoder.max_length == (max_seq_length or 256)  # tiny BERT: 256 positions
    np.testing.assert_allclose(encoder.encode(TEXTS[:3]), expected[:3], atol=2e-5)


@pytest.mark.parametrize("dense_file", ["model.safetensors", "pytorch_model.bin"])
def test_hand_written_3x_folder_with_dense_and_max_seq_length(st, tiny_model, tmp_path, dense_file):
    folder = make_sentence_transformers(tiny_model, tmp_path / "st3", mode="mean", dense=(8, "torch.nn.modules.activation.Tanh"),
                                        dense_file=dense_file, max_seq_length=10)
    expected = reference(st, folder)
    assert expected.shape == (len(TEXTS), 8)
    assert_same_vectors(whiten_encode(folder, tmp_path), expected)
    encoder = Encoder(str(folder))
    assert (encoder.dim, encoder.max_length, encoder.normalizes) == (8, 10, True)
    # --max-length wins over the folder's max_seq_length
    longer = whiten_encode(folder, tmp_path, TEXTS, "--max-length", "40")
    model = st.SentenceTransformer(str(folder), device="cpu")
    model.max_seq_length = 40
    assert_same_vectors(longer, model.encode(TEXTS, convert_to_numpy=True))


def test_hand_written_3x_folder_concatenates_in_fixed_order(st, tiny_model, tmp_path):
    folder = make_sentence_transformers(tiny_model, tmp_path / "st3", mode="lasttoken+mean+cls", normalize=False)
    expected = reference(st, folder)
    assert expected.shape == (len(TEXTS), 3 * HIDDEN)
    ours = whiten_encode(folder, tmp_path)
    assert_same_vectors(ours, expected)
    cls = Encoder(str(tiny_model), pooling="cls").encode(TEXTS)
    np.testing.assert_allclose(ours[:, :HIDDEN], cls, atol=2e-5)  # cls first, whatever the order written


def test_do_lower_case(st, tiny_model, tmp_path):
    """sentence_bert_config.json do_lower_case lowercases texts a cased tokenizer would not."""
    import transformers

    cased = tmp_path / "cased"
    shutil.copytree(tiny_model, cased)
    transformers.BertTokenizerFast(str(cased / "vocab.txt"), do_lower_case=False).save_pretrained(cased)
    folder = make_sentence_transformers(cased, tmp_path / "st", do_lower_case=True)
    texts = ["The CAT Plays.", "A DOG RUNS", "the cat plays."]
    ours = whiten_encode(folder, tmp_path, texts)
    assert_same_vectors(ours, reference(st, folder, texts))
    np.testing.assert_allclose(ours[0], ours[2], atol=1e-6)


def test_mixed_poolings_have_their_own_dimensions(st, tiny_model, tmp_path):
    folder = make_sentence_transformers(tiny_model, tmp_path / "st", dense=(8, "torch.nn.modules.linear.Identity"))
    vectors = Encoder(str(folder)).encode_poolings(TEXTS[:4], ["model", "cls"])
    assert vectors["model"].shape == (4, 8) and vectors["cls"].shape == (4, HIDDEN)
    assert_same_vectors(vectors["model"], reference(st, folder, TEXTS[:4]))


@pytest.mark.parametrize("hidden_states", [True, False])
def test_weighted_layer_pooling_as_sentence_transformers_runs_it(st, tiny_model, tmp_path, hidden_states):
    """sentence-transformers feeds WeightedLayerPooling the hidden states only when config.json has
    output_hidden_states; without it the module passes the last hidden state on unchanged (mean of
    the last layer here), and whiten weighting the layers anyway gave other vectors, silently."""
    import torch
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer, WeightedLayerPooling

    folder = tmp_path / "wlp"
    layers = WeightedLayerPooling(HIDDEN, num_hidden_layers=2, layer_start=1,
                                  layer_weights=torch.nn.Parameter(torch.tensor([0.3, 1.7])))
    st.SentenceTransformer(modules=[Transformer(str(tiny_model)), layers, Pooling(HIDDEN, "mean")], device="cpu").save(str(folder))
    config = json.loads((folder / "config.json").read_text())
    write(folder / "config.json", json.dumps({**config, "output_hidden_states": hidden_states}))
    expected = reference(st, folder)
    assert_same_vectors(whiten_encode(folder, tmp_path), expected)
    last_layer_mean = Encoder(str(tiny_model), pooling="last-avg").encode(TEXTS)
    assert np.allclose(expected, last_layer_mean, atol=1e-5) != hidden_states


def unsupported_folders(tiny_model, root):
    """Folders whose modules whiten cannot reproduce, with what the error must name."""
    cases = {}

    def folder(name, **options):
        cases[name] = make_sentence_transformers(tiny_model, root / name, **options)
        return cases[name]

    def add_module(path, type_path, config=None):
        modules = json.loads((path / "modules.json").read_text())
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": f"{len(modules)}_X", "type": type_path})
        write(path / "modules.json", json.dumps(modules))
        write(path / f"{len(modules) - 1}_X" / "config.json", json.dumps(config or {}))

    add_module(folder("cnn"), "sentence_transformers.models.CNN")
    add_module(folder("custom"), "my_package.modules.Pooling")
    add_module(folder("router", normalize=False), "sentence_transformers.base.modules.router.Router")
    folder("activation", dense=(8, "torch.nn.modules.activation.Softplus"))
    write(folder("prompt") / "config_sentence_transformers.json",
          json.dumps({"prompts": {"query": "query: "}, "default_prompt_name": "query"}))
    lstm = folder("lstm-first")
    modules = json.loads((lstm / "modules.json").read_text())
    modules.insert(1, {"idx": 9, "name": "9", "path": "9_LSTM", "type": "sentence_transformers.models.LSTM"})
    write(lstm / "modules.json", json.dumps(modules))
    return cases, {"cnn": "sentence_transformers.models.CNN", "custom": "my_package.modules.Pooling",
                   "router": "Router", "activation": "Softplus", "prompt": "prompt 'query'", "lstm-first": "LSTM"}


def test_unsupported_modules_are_refused_by_name(tiny_model, tmp_path):
    folders, names = unsupported_folders(tiny_model, tmp_path / "models")
    corpus = write(tmp_path / "corpus.txt", "a dog.\n")
    for case, folder in folders.items():
        out = tmp_path / f"{case}.npy"
        result = CliRunner().invoke(app, ["encode", str(corpus), "-o", str(out), "--model", str(folder)])
        assert_one_line_error(result, str(folder), names[case])
        assert not out.exists()
