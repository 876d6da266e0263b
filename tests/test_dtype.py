"""``--dtype auto`` picks by what the CPU can do and what a probe measures, never by promise; an explicit
bfloat16 on a CPU that emulates it warns with the measured cost. Capability and probe are patched:
no test here times anything."""

from __future__ import annotations

import warnings

import pytest
from typer.testing import CliRunner

from conftest import sample_sentences, write
from whiten_cli import encoder as enc
from whiten_cli.cli import app
from whiten_cli.encoder import Encoder, choose_dtype
from whiten_cli.pipeline import FitOptions, fit_pipeline

AVX2 = ("AMD EPYC 7B13", frozenset({"avx", "avx2", "fma"}))
AVX512_BF16 = ("AMD EPYC 9R14", frozenset({"avx2", "avx512f", "avx512_bf16"}))
AMX = ("Intel Xeon Platinum 8488C", frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}))
ARM_BF16 = ("", frozenset({"fp", "asimd", "bf16", "i8mm"}))  # an aarch64 /proc/cpuinfo: Features, no model name


@pytest.fixture
def cpu(monkeypatch):
    """Set the CPU's flags and the probe's bfloat16 speed-up; records whether the probe ran."""
    probed = []

    def set_cpu(flags, speedup=None):
        monkeypatch.setattr(enc, "cpu_flags", lambda: flags)

        def probe():
            probed.append(True)
            if speedup is None:
                raise AssertionError("the probe must not run on this CPU")
            return speedup

        monkeypatch.setattr(enc, "bfloat16_speedup", probe)
        return probed

    return set_cpu


def test_auto_is_float32_on_avx2_without_probing(cpu):
    probed = cpu(AVX2)
    choice = choose_dtype("auto", "cpu")
    assert choice.dtype == "float32" and probed == []
    assert "AMD EPYC 7B13" in choice.reason and "no native bfloat16" in choice.reason


@pytest.mark.parametrize("flags, native", [(AVX512_BF16, "AVX512_BF16"), (AMX, "AMX")])
def test_auto_is_bfloat16_where_native_and_measured_faster(cpu, flags, native):
    probed = cpu(flags, speedup=2.4)
    choice = choose_dtype("auto", "cpu")
    assert choice.dtype == "bfloat16" and probed == [True]
    assert native in choice.reason and "2.4×" in choice.reason



def test_arm_bfloat16_is_named_as_such(cpu, monkeypatch):
    import platform

    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    cpu(ARM_BF16, speedup=1.9)
    choice = choose_dtype("auto", "cpu")
    assert choice.dtype == "bfloat16" and "ARM BF16" in choice.reason
    assert enc.cpu_description() == "aarch64; bf16"  # no x86 flags listed as missing on an ARM CPU

def test_auto_keeps_float32_where_native_bfloat16_measures_no_faster(cpu):
    cpu(AVX512_BF16, speedup=0.9)
    assert choose_dtype("auto", "cpu").dtype == "float32"


def test_explicit_bfloat16_on_avx2_warns_with_the_measured_cost(cpu):
    cpu(AVX2, speedup=1 / 40)
    with pytest.warns(UserWarning, match=r"no native bfloat16.*measured 40× slower than float32") as caught:
        choice = choose_dtype("bfloat16", "cpu")
    assert choice.dtype == "bfloat16" and len(caught) == 1


def test_explicit_bfloat16_on_native_cpu_does_not_warn(cpu):
    cpu(AMX)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose_dtype("bfloat16", "cpu").dtype == "bfloat16"


@pytest.mark.parametrize("explicit", ["float32", "int8", "float16"])
def test_other_explicit_dtypes_are_kept(cpu, explicit):
    cpu(AVX2)
    assert choose_dtype(explicit, "cpu").dtype == explicit


@pytest.mark.parametrize("bf16, expected", [(True, "bfloat16"), (False, "float16")])
def test_auto_on_cuda_autocasts(monkeypatch, bf16, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert choose_dtype("auto", "cuda").dtype == expected


def test_encoder_cache_key_and_pipeline_carry_the_resolved_dtype(cpu, tiny_model):
    cpu(AMX, speedup=2.0)
    encoder = Encoder(str(tiny_model), pooling="cls")
    assert encoder.dtype == "bfloat16"
    assert "bfloat16" in encoder.cache_namespace("cls").split("\x1f") and "auto" not in encoder.cache_namespace("cls")
    pipeline = fit_pipeline(sample_sentences(20), encoder, FitOptions(n_components=4))
    assert pipeline.info["dtype"] == "bfloat16"
    cpu(AVX2)
    assert Encoder(str(tiny_model), pooling="cls").dtype == "float32"


def test_cli_verbose_says_which_dtype_and_why(cpu, tiny_model, tmp_path):
    cpu(AVX2)
    write(tmp_path / "texts.txt", "the cat plays\n")
    result = CliRunner().invoke(app, ["encode", str(tmp_path / "texts.txt"), "-o", str(tmp_path / "v.npy"),
                                      "--model", str(tiny_model), "--pooling", "cls", "-v"])
    assert result.exit_code == 0, result.output
    assert "dtype float32 (auto): this CPU (AMD EPYC 7B13; avx2, no avx512_bf16/amx_bf16) has no native bfloat16" in result.stderr
    quiet = CliRunner().invoke(app, ["encode", str(tmp_path / "texts.txt"), "-o", str(tmp_path / "v.npy"),
                                     "--model", str(tiny_model), "--pooling", "cls"])
    assert quiet.exit_code == 0 and "dtype" not in quiet.stderr


def test_cli_explicit_bfloat16_on_avx2_is_one_warning_line(cpu, tiny_model, tmp_path):
    cpu(AVX2, speedup=1 / 35)
    write(tmp_path / "texts.txt", "the cat plays\n")
    result = CliRunner().invoke(app, ["encode", str(tmp_path / "texts.txt"), "-o", str(tmp_path / "v.npy"),
                                      "--model", str(tiny_model), "--pooling", "cls", "--dtype", "bfloat16"])
    assert result.exit_code == 0, result.output
    warning_lines = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warning_lines) == 1 and "35× slower than float32" in warning_lines[0]
