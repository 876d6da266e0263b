"""No traceback from any input or machine state: a full disk, no memory, a damaged file or database.

Each fault is injected where it would arise (numpy / safetensors / FAISS writes, the encoder, the
reader) and must come out as one ``error:`` line with exit code 2 and nothing half-written; a bug
is one ``error: internal error`` line with exit code 1. A real full disk (a 64 KiB tmpfs) is tried
too where this machine lets the test mount one.
"""

import contextlib
import errno
import os
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import HIDDEN, sample_sentences, write
from whiten_cli import cli
from whiten_cli.cli import app
from whiten_cli.encoder import Encoder
from whiten_cli.errors import WhitenError
from whiten_cli.pipeline import Pipeline

from test_cli import assert_nothing_written, assert_one_line_error

runner = CliRunner()
DISK_FULL = OSError(errno.ENOSPC, "No space left on device")


def run(*args):
    return runner.invoke(app, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write(tmp_path_factory.mktemp("faults") / "corpus.txt", "\n".join(sample_sentences(24)) + "\n")


@pytest.fixture(scope="module")
def pipeline_dir(tiny_model, corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults") / "pipe"
    assert run("fit", corpus, "-o", folder, "-m", tiny_model, "-p", "cls", "-k", 8, "--no-cache").exit_code == 0
    return folder


def encode_args(corpus, tiny_model, output, *extra):
    return ("encode", corpus, "-o", output, "-m", tiny_model, "-p", "cls", "--no-cache", *extra)


def fail_with(error):
    def broken(*args, **kwargs):
        raise error
    return broken


# --- a full disk while writing each kind of file ----------------------------------------------------


def test_disk_full_writing_npy(tiny_model, corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(np, "save", fail_with(DISK_FULL))
    out = tmp_path / "v.npy"
    assert_one_line_error(run(*encode_args(corpus, tiny_model, out)), f"{out}: cannot be written", "No space left")
    assert_nothing_written(out)


def test_disk_full_on_the_second_output_changes_neither(tiny_model, corpus, tmp_path, monkeypatch):
    out, raw = write(tmp_path / "v.npy", b"old vectors"), write(tmp_path / "raw.npy", b"old raw")
    real_save, calls = np.save, []

    def save_then_fill_the_disk(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise DISK_FULL
        real_save(*args, **kwargs)

    monkeypatch.setattr(np, "save", save_then_fill_the_disk)
    result = run(*encode_args(corpus, tiny_model, out, "--raw-output", raw))
    assert_one_line_error(result, f"{raw}: cannot be written", "No space left")
    assert out.read_bytes() == b"old vectors" and raw.read_bytes() == b"old raw"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.npy", "v.npy"]


@pytest.mark.parametrize("error", [DISK_FULL, "safetensors"])
def test_disk_full_writing_safetensors(tiny_model, corpus, tmp_path, monkeypatch, error):
    import safetensors.numpy
    from safetensors import SafetensorError

    if error == "safetensors":  # what safetensors raises on a full disk
        error = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr(safetensors.numpy, "save_file", fail_with(error))
    out = tmp_path / "pipe"
    result = run("fit", corpus, "-o", out, "-m", tiny_model, "-p", "cls", "--no-cache")
    assert_one_line_error(result, f"{out}: cannot be written", "No space left on device")
    assert_nothing_written(out)


# FAISS reports a full disk as a RuntimeError naming its C++ source; the OS's words end it.
FAISS_DISK_FULL = RuntimeError(
    "Error in void faiss::write_index(const Index*, IOWriter*, int) at /project/faiss/impl/index_write.cpp:499: "
    "Error: 'ret == (size * 4)' failed: write error in /x/.ix.tmp/index.faiss: 65491 != 128000 (No space left on device)"
)


@pytest.mark.parametrize("error", [DISK_FULL, FAISS_DISK_FULL])
def test_disk_full_writing_the_index(pipeline_dir, corpus, tmp_path, monkeypatch, error):
    import faiss

    raw = tmp_path / "raw.npy"
    np.save(raw, np.random.default_rng(0).standard_normal((24, HIDDEN)).astype(np.float32))
    monkeypatch.setattr(faiss, "write_index", fail_with(error))
    out = tmp_path / "ix"
    result = run("index", corpus, "-o", out, "--pipeline", pipeline_dir, "--raw-vectors", raw, "--kind", "flat")
    line = assert_one_line_error(result, f"{out}: cannot be written (No space left on device)")
    assert "faiss::" not in line
    assert_nothing_written(out)


@contextlib.contextmanager
def tmpfs(folder: Path, options: str):
    """A tmpfs mounted at ``folder``, where this machine lets the test mount one (root, mount allowed)."""
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs, filled up."""
    with tmpfs(tmp_path / "full", "size=64k") as folder:
        with open(folder / "filler", "wb") as filler:
            try:
                filler.write(b"\0" * (1 << 20))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        yield folder


@pytest.mark.parametrize("command", ["encode", "fit"])
def test_real_full_disk(tiny_model, corpus, full_disk, command):
    out = full_disk / ("v.npy" if command == "encode" else "pipe")
    args = encode_args(corpus, tiny_model, out) if command == "encode" else (
        "fit", corpus, "-o", out, "-m", tiny_model, "-p", "cls", "--no-cache")
    line = assert_one_line_error(run(*args), f"{out}: cannot be written")
    assert "No space left on device" in line or "disk full" in line
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


@pytest.fixture
def read_only_folder(tmp_path):
    """A read-only tmpfs (root ignores permission bits, not a read-only mount)."""
    with tmpfs(tmp_path / "ro", "size=64k,ro") as folder:
        yield folder


@pytest.mark.parametrize("command", ["encode", "encode-folder", "fit", "index", "eval", "tune", "export"])
def test_a_read_only_output_is_refused_before_the_model_loads(corpus, pipeline_dir, read_only_folder, tmp_path,
                                                              command):
    """No model at that path: the output check has to come first (it came after the encoding)."""
    model, out = tmp_path / "no-model-here", read_only_folder / "sub" / "out"
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("a b\tb c\t1\nc d\td e\t2\ne f\tf g\t3\n")
    args = {
        "encode": ("encode", corpus, "-o", out.with_suffix(".npy"), "-m", model),
        "encode-folder": ("encode", corpus.parent, "-o", out, "-m", model),
        "fit": ("fit", corpus, "-o", out, "-m", model),
        "index": ("index", corpus, "-o", out, "--pipeline", pipeline_dir, "-m", model),
        "eval": ("eval", pairs, "-m", model, "-o", out.with_suffix(".json")),
        "tune": ("tune", pairs, "-o", out, "-m", model),
        "export": ("export", pipeline_dir, "-o", out),
    }[command]
    line = assert_one_line_error(run(*args), f"{read_only_folder} is not writable (read-only file system)")
    assert "sub" in line and "no-model-here" not in line


def test_an_unwritable_folder_is_named(tmp_path, monkeypatch):
    from whiten_cli import storage

    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(WhitenError, match=f"{tmp_path / 'a' / 'x.npy'}: cannot be written: {tmp_path} is not writable"):
        storage.check_file_target(tmp_path / "a" / "x.npy")


# --- every other kind of fault, at the edge of the command ------------------------------------------


@pytest.mark.parametrize(
    "error, fragments",
    [
        (MemoryError(), ["out of memory", "--batch-size"]),
        ("torch-oom", ["out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)"]),
        (PermissionError(errno.EACCES, "Permission denied", "/data/model.bin"), ["/data/model.bin: Permission denied"]),
        (OSError(errno.EIO, "Input/output error"), ["Input/output error"]),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), ["not valid Unicode"]),
        (sqlite3.OperationalError("database or disk is full"), ["database error (database or disk is full)"]),
        (RuntimeError("Error in faiss::Index::search at x.cpp:12: Error: 'k > 0' failed:\nbad k"), ["FAISS: bad k"]),
        (WhitenError("first line\n  second line"), ["first line second line"]),
    ],
)
def test_faults_are_one_line_and_exit_2(tiny_model, corpus, tmp_path, monkeypatch, error, fragments):
    if error == "torch-oom":
        import torch

        error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nGPU 0 has a total capacity")
    monkeypatch.setattr(Encoder, "encode", fail_with(error))
    assert_one_line_error(run(*encode_args(corpus, tiny_model, tmp_path / "v.npy")), *fragments)
    assert_nothing_written(tmp_path / "v.npy")


def test_a_bug_is_one_internal_error_line_and_exit_1(tiny_model, corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(Encoder, "encode", fail_with(ValueError("operands could not be broadcast\ntogether")))
    monkeypatch.delenv("WHITEN_DEBUG", raising=False)
    result = run(*encode_args(corpus, tiny_model, tmp_path / "v.npy"))
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.stderr.splitlines()[-1] == ("error: internal error (ValueError: operands could not be broadcast "
                                              "together); set WHITEN_DEBUG=1 for the traceback")
    assert [line for line in result.stderr.splitlines() if line.startswith("error")] == [result.stderr.splitlines()[-1]]


def test_whiten_debug_reraises_for_the_traceback(tiny_model, corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(Encoder, "encode", fail_with(ValueError("a bug")))
    monkeypatch.setenv("WHITEN_DEBUG", "1")
    result = run(*encode_args(corpus, tiny_model, tmp_path / "v.npy"))
    assert isinstance(result.exception, ValueError) and str(result.exception) == "a bug"


def test_warnings_with_line_breaks_are_one_line(tiny_model, corpus, tmp_path, monkeypatch):
    import warnings

    real_encode = Encoder.encode

    def warn_then_encode(self, *args, **kwargs):
        warnings.warn("the cache is slow\non this disk")
        return real_encode(self, *args, **kwargs)

    monkeypatch.setattr(Encoder, "encode", warn_then_encode)
    result = run(*encode_args(corpus, tiny_model, tmp_path / "v.npy"))
    assert result.exit_code == 0, result.output
    assert "warning: the cache is slow on this disk" in result.stderr.splitlines()


@pytest.mark.filterwarnings("error")
def test_a_warning_made_an_error_is_one_line_not_an_internal_error(tiny_model, corpus, tmp_path):
    """python -W error or PYTHONWARNINGS=error: the warning is the error, in one line, exit 2."""
    few = write(tmp_path / "few.txt", "\n".join(sample_sentences(6)) + "\n")  # 6 texts span 5 of 32 directions
    result = run("fit", few, "-o", tmp_path / "pipe", "-m", tiny_model, "-p", "cls", "--no-cache")
    assert_one_line_error(result, "rank-deficient")
    assert "internal error" not in result.stderr


# --- progress in logs ---------------------------------------------------------------------------------


class FakeClock:
    """Each reading is ``step`` seconds after the one before."""

    def __init__(self, step: float):
        self.now, self.step = -step, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_progress_line_has_counts_and_rate(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_clock", FakeClock(10.0))  # created at 0 s, then 10 s (the model loaded), 20 s
    with cli._ProgressBar("encoding") as bar:
        bar(6_400, 50_000)
        bar(12_800, 50_000)
    assert capsys.readouterr().err.splitlines() == ["encoding: 6,400/50,000 texts",
                                                    "encoding: 12,800/50,000 texts (640/s)"]


@pytest.mark.parametrize("quiet", [False, True])
def test_encode_prints_progress_to_a_log_unless_quiet(tiny_model, corpus, tmp_path, monkeypatch, quiet):
    monkeypatch.setattr(cli, "_clock", FakeClock(4.0))  # a batch every 4 s: a line every third batch
    result = run(*encode_args(corpus, tiny_model, tmp_path / "v.npy", "--batch-size", 4, *(["-q"] if quiet else [])))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("encoding: ")]
    if quiet:
        assert lines == []
        return
    assert len(lines) >= 2 and lines[-1].startswith("encoding: 24/24 texts (")
    counts = [int(line.split()[1].split("/")[0]) for line in lines]
    assert counts == sorted(counts) and counts[0] < 24


def test_a_short_run_prints_no_progress(tiny_model, corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "_clock", FakeClock(0.001))
    result = run(*encode_args(corpus, tiny_model, tmp_path / "v.npy", "--batch-size", 4))
    assert result.exit_code == 0 and "encoding:" not in result.stderr


@pytest.mark.parametrize("command", ["fit", "eval", "index"])
def test_every_encoding_command_prints_progress_unless_quiet(tiny_model, corpus, pipeline_dir, tmp_path, monkeypatch,
                                                               command):
    monkeypatch.setattr(cli, "_clock", FakeClock(30.0))
    pairs = write(tmp_path / "pairs.tsv", "sentence1\tsentence2\tscore\n" + "".join(
        f"{a}\t{b}\t{i % 5}\n" for i, (a, b) in enumerate(zip(sample_sentences(12), sample_sentences(12, seed=1)))))
    args = {
        "fit": ("fit", corpus, "-o", tmp_path / "p", "-m", tiny_model, "-p", "cls"),
        "eval": ("eval", pairs, "-m", tiny_model, "-p", "cls"),
        "index": ("index", corpus, "-o", tmp_path / "ix", "--pipeline", pipeline_dir, "--kind", "flat"),
    }[command]
    for quiet in (False, True):
        result = run(*args, "--no-cache", "--batch-size", 8, *(["--quiet"] if quiet else []))
        assert result.exit_code == 0, result.output
        assert ("encoding: " in result.stderr) is not quiet, result.stderr


# --- input that used to end in a traceback or in a wrong file -----------------------------------------


@pytest.mark.parametrize("alias", ["same", "dot", "symlink", "hardlink"])
def test_encode_refuses_one_file_for_both_outputs(tiny_model, corpus, tmp_path, monkeypatch, alias):
    out = write(tmp_path / "v.npy", b"old")
    other = {"same": out, "dot": tmp_path / "." / "v.npy", "symlink": tmp_path / "link.npy",
             "hardlink": tmp_path / "hard.npy"}[alias]
    if alias == "symlink":
        other.symlink_to(out)
    if alias == "hardlink":
        os.link(out, other)
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run(*encode_args(corpus, tiny_model, out, "--raw-output", other)), "the same file as -o")
    assert out.read_bytes() == b"old"


def test_encode_raw_output_must_be_npy(tiny_model, corpus, tmp_path):
    assert_one_line_error(run(*encode_args(corpus, tiny_model, tmp_path / "v.npy", "--raw-output", tmp_path / "r.txt")),
                          f"{tmp_path / 'r.txt'}: the output must be a .npy file")
    assert list(tmp_path.iterdir()) == []


def test_encode_with_a_pipeline_holding_nan_is_refused(tiny_model, corpus, pipeline_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    import shutil

    broken = shutil.copytree(pipeline_dir, tmp_path / "pipe")
    arrays = load_file(str(broken / "arrays.safetensors"))
    arrays["kernel"][2, 3] = np.nan
    save_file(arrays, str(broken / "arrays.safetensors"))
    result = run("encode", corpus, "-o", tmp_path / "v.npy", "--pipeline", broken, "--no-cache")
    assert_one_line_error(result, f"{broken / 'arrays.safetensors'}: 'kernel' holds NaN or infinite values")
    assert_nothing_written(tmp_path / "v.npy")
    assert Pipeline.load(pipeline_dir).whitening is not None  # the original is fine


@pytest.mark.parametrize("flag, dim", [("--raw-vectors", HIDDEN), ("--vectors", 8)])
def test_index_refuses_precomputed_vectors_holding_nan(pipeline_dir, corpus, tmp_path, flag, dim):
    vectors = np.ones((24, dim), dtype=np.float32)
    vectors[5, 1] = np.inf
    np.save(tmp_path / "v.npy", vectors)
    result = run("index", corpus, "-o", tmp_path / "ix", "--pipeline", pipeline_dir, flag, tmp_path / "v.npy")
    assert_one_line_error(result, f"{tmp_path / 'v.npy'}: holds NaN or infinite values")
    assert_nothing_written(tmp_path / "ix")


def test_fit_on_one_text_names_the_corpus(tiny_model, tmp_path):
    one = write(tmp_path / "one.txt", "the cat plays.\n\n")
    assert_one_line_error(run("fit", one, "-o", tmp_path / "p", "-m", tiny_model), f"{one}: 1 text", "at least 2")
    assert_nothing_written(tmp_path / "p")


def test_eval_fit_on_one_text_names_the_corpus(tiny_model, tmp_path):
    pairs = write(tmp_path / "pairs.tsv", "sentence1\tsentence2\tscore\na cat\ta dog\t1\nthe sun\tthe rain\t3\n")
    one = write(tmp_path / "one.txt", "the cat plays.\n")
    assert_one_line_error(run("eval", pairs, "-m", tiny_model, "--fit-on", one), f"{one}: 1 text", "at least 2")


@pytest.mark.parametrize(
    "rows, message",
    [
        ("a cat\ta dog\t1\n", "1 scored sentence pair; a correlation needs at least 2"),
        ("a cat\ta dog\t2\nthe sun\tthe rain\t2\n", "every gold score is 2; a correlation needs scores that vary"),
    ],
)
def test_eval_names_the_dataset_file_that_cannot_be_correlated(tiny_model, tmp_path, rows, message):
    pairs = write(tmp_path / "pairs.tsv", "sentence1\tsentence2\tscore\n" + rows)
    assert_one_line_error(run("eval", pairs, "-m", tiny_model, "--no-cache"), f"{pairs}: {message}")


def test_constant_similarities_name_the_subset(tmp_path):
    from whiten_cli.sts import Dataset, PairSet
    from whiten_cli.evaluate import score_dataset

    source = tmp_path / "STS.input.MSRpar.txt"
    subset = PairSet("MSRpar", ["a", "b", "c"], ["d", "e", "f"], np.array([1.0, 2.0, 3.0]), source)
    same = np.ones((6, 4), dtype=np.float32)  # every sentence the same vector: every cosine is 1
    with pytest.raises(WhitenError) as info:
        score_dataset(Dataset("sts12", [subset]), same)
    assert str(info.value) == f"{source}: every cosine similarity is 1: a correlation needs values that vary"
