"""Which weights a model is: fingerprints of every file it loads, corrupt files refused in one line,
cache keys that follow the software, and a pipeline that finds its model again after a move."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import sample_sentences, write
from whiten_cli import encoder as enc
from whiten_cli.cli import app
from whiten_cli.encoder import Encoder, model_fingerprint, resolve_model
from whiten_cli.errors import WhitenError
from whiten_cli.pipeline import METADATA_FILE, Pipeline

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def state_dict(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def sharded_bin_copy(plain: Path, folder: Path) -> Path:
    """``plain`` with its weights as two ``pytorch_model-0000i-of-00002.bin`` shards and their index."""
    import torch

    shutil.copytree(plain, folder)
    state = state_dict(folder)
    (folder / "model.safetensors").unlink()
    names = sorted(state)
    weight_map = {}
    for number, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :]), 1):
        shard = f"pytorch_model-{number:05d}-of-00002.bin"
        torch.save({name: state[name] for name in part}, folder / shard)
        weight_map.update(dict.fromkeys(part, shard))
    write(folder / "pytorch_model.bin.index.json", json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def change_shard(folder: Path, shard: str) -> None:
    import torch

    state = torch.load(folder / shard)
    name = sorted(state)[0]
    state[name] = state[name] + 1
    torch.save(state, folder / shard)


def test_sharded_bin_weights_are_fingerprinted_shard_by_shard(tiny_model, tmp_path):
    folder = sharded_bin_copy(tiny_model, tmp_path / "sharded")
    before = model_fingerprint(folder)
    encoded = Encoder(str(folder), pooling="cls").encode(["the cat plays"])
    assert np.allclose(encoded, Encoder(str(tiny_model), pooling="cls").encode(["the cat plays"]), atol=1e-6)
    change_shard(folder, "pytorch_model-00002-of-00002.bin")
    assert model_fingerprint(folder) != before


def test_a_missing_shard_is_named(tiny_model, tmp_path):
    folder = sharded_bin_copy(tiny_model, tmp_path / "sharded")
    (folder / "pytorch_model-00001-of-00002.bin").unlink()
    with pytest.raises(WhitenError, match="pytorch_model-00001-of-00002.bin listed in the index is missing"):
        model_fingerprint(folder)


def sentence_transformers_with_dense(plain: Path, folder: Path) -> Path:
    """A sentence-transformers folder laid out as the hub has many: the transformer in
    ``0_Transformer/``, pooling in ``1_Pooling/``, a ``2_Dense/`` layer with its own weights."""
    from safetensors.torch import save_file
    import torch

    shutil.copytree(plain, folder / "0_Transformer")
    modules = [{"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]
    write(folder / "modules.json", json.dumps(modules))
    write(folder / "1_Pooling" / "config.json", json.dumps({"pooling_mode_mean_tokens": True}))
    (folder / "2_Dense").mkdir()
    save_file({"linear.weight": torch.ones(4, 32)}, str(folder / "2_Dense" / "model.safetensors"))
    return folder


def test_transformer_subfolder_and_dense_weights_are_fingerprinted(tiny_model, tmp_path):
    from safetensors.torch import save_file
    import torch

    folder = sentence_transformers_with_dense(tiny_model, tmp_path / "st")
    names = {file.relative_to(folder).as_posix() for file in enc.weight_files(folder)}
    assert names == {"0_Transformer/model.safetensors", "2_Dense/model.safetensors"}
    before = model_fingerprint(folder)
    save_file({"linear.weight": torch.full((4, 32), 2.0)}, str(folder / "2_Dense" / "model.safetensors"))
    assert model_fingerprint(folder) != before


def test_weights_are_hashed_once_across_processes(tiny_model, tmp_path, monkeypatch):
    """The second fingerprint comes from model-hashes.json (a fresh process has an empty memory cache);
    a file that changed is hashed again."""
    monkeypatch.setenv("WHITEN_CACHE_DIR", str(tmp_path / "cache"))
    folder = shutil.copytree(tiny_model, tmp_path / "model")
    first = model_fingerprint(folder)
    assert (tmp_path / "cache" / "model-hashes.json").is_file()
    hashed = []
    real_hash = enc._hash_file.__wrapped__
    monkeypatch.setattr(enc, "_hash_file", lambda *args: hashed.append(args[0]) or real_hash(*args))
    assert model_fingerprint(folder) == first and hashed == []
    state = state_dict(folder)
    from safetensors.torch import save_file

    save_file({name: tensor + 1 for name, tensor in state.items()}, str(folder / "model.safetensors"))
    assert model_fingerprint(folder) != first and len(hashed) == 1


def corrupt_copy(tiny_model: Path, folder: Path, kind: str) -> Path:
    shutil.copytree(tiny_model, folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    if kind == "header too large":
        weights.write_bytes(struct.pack("<Q", 1 << 40) + data[8:])
    elif kind == "truncated safetensors":
        weights.write_bytes(data[: len(data) // 2])
    else:  # a truncated pytorch_model.bin
        import torch

        weights.unlink()
        torch.save(state_dict(tiny_model), folder / "pytorch_model.bin")
        raw = (folder / "pytorch_model.bin").read_bytes()
        (folder / "pytorch_model.bin").write_bytes(raw[: len(raw) // 2])
    return folder


@pytest.mark.parametrize("kind, file", [("header too large", "model.safetensors"),
                                        ("truncated safetensors", "model.safetensors"),
                                        ("truncated bin", "pytorch_model.bin")])
def test_corrupt_weights_are_one_line_exit_2(tiny_model, tmp_path, kind, file):
    folder = corrupt_copy(tiny_model, tmp_path / "broken", kind)
    write(tmp_path / "texts.txt", "the cat plays\n")
    result = run("encode", tmp_path / "texts.txt", "-o", tmp_path / "out.npy", "--model", folder, "--pooling", "cls")
    assert_one_line_error(result, str(folder / file), "corrupt")
    assert not (tmp_path / "out.npy").exists()


def test_cache_key_follows_the_software_versions(tiny_model, tmp_path, monkeypatch):
    """A vector cached under another transformers version is encoded again, not served."""
    texts = ["the cat plays", "a dog runs"]
    Encoder(str(tiny_model), pooling="cls", cache=tmp_path).encode(texts)
    again = Encoder(str(tiny_model), pooling="cls", cache=tmp_path)
    again.encode(texts)
    assert again.encoded == 0
    versions = tuple(v if not v.startswith("transformers=") else "transformers=99.0" for v in enc.software_versions())
    monkeypatch.setattr(enc, "software_versions", lambda: versions)
    upgraded = Encoder(str(tiny_model), pooling="cls", cache=tmp_path)
    upgraded.encode(texts)
    assert upgraded.encoded == 2
    assert "transformers=99.0" in upgraded.cache_namespace("cls")


def test_pipeline_finds_its_model_moved_beside_it_from_another_cwd(tiny_model, tmp_path, monkeypatch):
    project = tmp_path / "project"
    shutil.copytree(tiny_model, project / "models" / "tiny")
    write(project / "corpus.txt", "\n".join(sample_sentences(40)) + "\n")
    monkeypatch.chdir(project)
    result = run("fit", "corpus.txt", "-o", "pipe", "--model", "models/tiny", "--pooling", "cls", "-k", 8)
    assert result.exit_code == 0, result.output
    model = json.loads((project / "pipe" / METADATA_FILE).read_text())["model"]
    assert model["name"] == "models/tiny" and model["path"] == str((project / "models" / "tiny").resolve())
    assert model["relative_path"] == "../models/tiny"
    expected = Pipeline.load(project / "pipe").encoder().encode(["the cat plays"])
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    os.rename(project, moved)  # the model folder is gone from its stored path; it is beside the pipeline
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "q.txt", "the cat plays\n")
    result = run("encode", "q.txt", "-o", "q.npy", "--pipeline", moved / "pipe", "--raw-output", "raw.npy")
    assert result.exit_code == 0, result.output
    assert np.allclose(np.load(tmp_path / "raw.npy"), expected, atol=1e-6)


def test_pipeline_of_an_older_version_still_loads_and_encodes(tiny_model, tmp_path, monkeypatch):
    """pipeline.json with the model's name and fingerprint only (the sha256 of its one weight file, as
    older versions computed it): the name is resolved as before, and the fingerprint still matches."""
    import hashlib

    write(tmp_path / "corpus.txt", "\n".join(sample_sentences(40)) + "\n")
    assert run("fit", tmp_path / "corpus.txt", "-o", tmp_path / "pipe", "--model", tiny_model, "--pooling", "cls",
               "-k", 8).exit_code == 0
    meta_file = tmp_path / "pipe" / METADATA_FILE
    meta = json.loads(meta_file.read_text())
    old_fingerprint = hashlib.sha256((tiny_model / "model.safetensors").read_bytes()).hexdigest()[:16]
    meta["model"] = {"name": str(tiny_model), "fingerprint": old_fingerprint}
    meta_file.write_text(json.dumps(meta))
    pipeline = Pipeline.load(tmp_path / "pipe")
    assert pipeline.model_path is None
    assert pipeline.encoder().encode(["the cat plays"]).shape == (1, 32)


def test_pipeline_of_an_older_version_matches_its_old_multi_format_fingerprint(tiny_model, tmp_path):
    """Older versions hashed every top-level weight file together (model.safetensors + pytorch_model.bin
    of a cloned hub folder); such a pipeline still accepts the same folder."""
    import torch

    folder = shutil.copytree(tiny_model, tmp_path / "clone")
    torch.save(state_dict(folder), folder / "pytorch_model.bin")
    old = enc.legacy_fingerprint(folder)
    assert old != model_fingerprint(folder)
    pipeline = Pipeline(model=str(folder), model_fingerprint=old, pooling="cls", max_length=32, input_dim=32)
    assert pipeline.encoder().source.path == folder.resolve()
    with pytest.raises(WhitenError, match="not the model this pipeline was fitted on"):
        Pipeline(model=str(folder), model_fingerprint="0" * 16, pooling="cls", max_length=32, input_dim=32).encoder()


def test_hub_model_stores_id_and_revision(tiny_model, tmp_path, monkeypatch):
    """A hub id resolves to its cached snapshot; the pipeline keeps id + commit and finds that commit
    again when the stored snapshot path is gone."""
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny"
    shutil.copytree(tiny_model, repo / "snapshots" / commit)
    write(repo / "refs" / "main", commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    source = resolve_model("acme/tiny")
    assert (source.hub_id, source.revision) == ("acme/tiny", commit)
    encoder = Encoder("acme/tiny", pooling="cls")
    pipeline = Pipeline(model="acme/tiny", model_fingerprint=source.fingerprint, pooling="cls", max_length=32,
                        input_dim=32, model_path=str(tmp_path / "gone"), model_revision=commit,
                        model_hub_id="acme/tiny")
    pipeline.save(tmp_path / "pipe")
    meta = json.loads((tmp_path / "pipe" / METADATA_FILE).read_text())["model"]
    assert (meta["hub_id"], meta["revision"]) == ("acme/tiny", commit)
    write(repo / "refs" / "main", "f" * 40)  # a newer main must not be picked: the stored commit is
    assert Pipeline.load(tmp_path / "pipe").encoder().source.path == source.path
    assert encoder.source.path == source.path


@pytest.mark.parametrize("edit, named", [
    ("pooling", "1_Pooling/config.json"),  # mean pooling became CLS pooling
    ("vocab", "vocab.txt"),
    ("tokenizer-gone", "tokenizer.json"),
])
def test_a_model_whose_tokenizer_or_pooling_changed_after_fitting_is_refused(tiny_model, tmp_path, edit, named):
    """The weights' fingerprint alone let the old whitening apply to other vectors, exit 0."""
    from conftest import make_sentence_transformers

    from whiten_cli.pipeline import FitOptions, fit_pipeline

    model = make_sentence_transformers(tiny_model, tmp_path / "st", mode="mean")
    texts = sample_sentences(40, seed=2)
    pipeline = fit_pipeline(texts, Encoder(str(model)), FitOptions(n_components=8))
    pipeline.save(tmp_path / "pipe")
    assert "1_Pooling/config.json" in json.loads((tmp_path / "pipe" / METADATA_FILE).read_text())["model"]["files"]
    Pipeline.load(tmp_path / "pipe").encode(texts[:2])  # unchanged: fine
    if edit == "pooling":
        config = json.loads((model / "1_Pooling" / "config.json").read_text())
        config.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
        write(model / "1_Pooling" / "config.json", json.dumps(config))
    elif edit == "vocab":
        vocab = (model / "vocab.txt").read_text().split("\n")
        write(model / "vocab.txt", "\n".join([vocab[0], vocab[2], vocab[1], *vocab[3:]]))
    else:
        (model / "tokenizer.json").unlink()
    with pytest.raises(WhitenError, match=rf"st/{named}: (differs from the one this pipeline was fitted with|is gone)"):
        Pipeline.load(tmp_path / "pipe").encode(texts[:2])
