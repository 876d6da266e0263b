"""End to end on the real default model and the shared STS-B test file: the published figures.

Reference (../shared/data/sts/README.md): all-MiniLM-L6-v2, max_length 128, whitening fitted on
the 2758 test sentences. One `whiten eval` run encodes once and scores every variant.
"""

import json

import pytest
from typer.testing import CliRunner

from whiten_cli.cli import app
from whiten_cli.sts import sts_dir

pytestmark = pytest.mark.slow

REFERENCE = {
    ("last-avg", "raw"): 82.03,
    ("cls", "raw"): 73.50,
    ("cls", "k=all"): 78.69,
    ("last-avg", "k=128"): 81.06,
    ("last-avg", "k=128 γ=0.5"): 82.11,
    ("last-avg", "k=all"): 78.07,
    ("last-avg", "k=256"): 79.65,
    ("last-avg", "k=256 γ=0"): 82.29,
}


@pytest.fixture(scope="module")
def stsb_rows(tmp_path_factory):
    if not (sts_dir() / "STSBenchmark" / "sts-test.csv").is_file():
        pytest.skip(f"shared STS data not found under {sts_dir()}")
    out = tmp_path_factory.mktemp("e2e") / "stsb.json"
    result = CliRunner().invoke(app, [
        "eval", "stsb", "--pooling", "last-avg,cls", "-k", "all,256,128", "--gamma", "1,0.5,0",
        "--max-length", "128", "--json", "--output", str(out),
    ])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["model"]["name"] == "all-MiniLM-L6-v2"
    return {(row["pooling"], row["variant"]): row for row in report["rows"]}


@pytest.mark.parametrize(("pooling", "variant"), list(REFERENCE))
def test_reproduces_published_figure(stsb_rows, pooling, variant):
    row = stsb_rows[(pooling, variant)]
    assert row["pairs"] == 1379
    assert row["spearman"] == pytest.approx(REFERENCE[(pooling, variant)], abs=0.1)


def test_whitening_lifts_cls_and_soft_whitening_keeps_mean_pooling(stsb_rows):
    assert stsb_rows[("cls", "k=all")]["spearman"] > stsb_rows[("cls", "raw")]["spearman"] + 4
    assert stsb_rows[("last-avg", "k=128 γ=0.5")]["spearman"] >= stsb_rows[("last-avg", "raw")]["spearman"]
