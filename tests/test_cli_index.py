"""`whiten index` and `whiten search`: output, append, and one-line errors for bad input.

The model is replaced by a fake encoder (a text's vector is seeded by its hash, so equal texts
get equal vectors); one slow test runs the real default model end to end.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from whiten_cli import index as ix
from whiten_cli.cli import app
from whiten_cli.errors import WhitenError
from whiten_cli.pipeline import Pipeline
from whiten_cli.stats import GaussianStats
from whiten_cli.whitening import Whitening

runner = CliRunner()
DIM_IN = 16
SENTENCES = [
    "A man is playing a guitar.",
    "A woman is slicing an onion.",
    "Two dogs run across a field.",
    "The stock market fell sharply today.",
    "A child is riding a bicycle.",
    "Rain is expected tomorrow afternoon.",
]


class FakeEncoder:
    """Stands in for the model: deterministic vectors from each text's hash."""

    encoded: list[str] = []

    def __init__(self, dim: int):
        self.dim, self.truncated, self.max_length = dim, 0, 128

    def encode(self, texts, progress=None):
        FakeEncoder.encoded.extend(texts)
        rows = [np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)).standard_normal(self.dim)
                for t in texts]
        return np.array(rows, dtype=np.float32).reshape(len(texts), self.dim)


@pytest.fixture(autouse=True)
def fake_model(monkeypatch):
    FakeEncoder.encoded = []
    monkeypatch.setattr(Pipeline, "encoder", lambda self, model=None, **options: FakeEncoder(self.input_dim))


def make_pipeline(folder: Path, seed: int = 0, k: int = 8) -> Path:
    raw = np.random.default_rng(seed).standard_normal((300, DIM_IN))
    Pipeline(model="all-MiniLM-L6-v2", model_fingerprint="test-weights", pooling="model", max_length=128,
             input_dim=DIM_IN, whitening=Whitening.fit(GaussianStats.of(raw), k)).save(folder)
    return folder


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def run(*args, input=None):
    return runner.invoke(app, [str(arg) for arg in args], input=input)


def assert_one_line_error(result, *fragments: str, code: int = 2) -> str:
    """A non-zero exit, a single `error: ...` line on stderr naming ``fragments``, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def folder_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def built(tmp_path):
    """An index of SENTENCES built through the CLI: (index folder, pipeline folder)."""
    pipe = make_pipeline(tmp_path / "pipe")
    corpus = write(tmp_path / "corpus.txt", "\n".join(SENTENCES) + "\n")
    result = run("index", corpus, "--pipeline", pipe, "-o", tmp_path / "idx")
    assert result.exit_code == 0, result.output
    return tmp_path / "idx", pipe


# --------------------------------------------------------------------------- building


def test_index_search_and_append_close_the_documents_file(tmp_path, monkeypatch):
    """A file left for the garbage collector (a ResourceWarning) is a leak in a long-running caller."""
    import gc

    opened = []
    real_open = open

    def tracking_open(file, *args, **kwargs):
        handle = real_open(file, *args, **kwargs)
        if str(file).endswith(ix.DOCS_FILE) and "r" in (args[0] if args else kwargs.get("mode", "r")):
            opened.append(handle)
        return handle

    monkeypatch.setattr("builtins.open", tracking_open)
    pipe = make_pipeline(tmp_path / "pipe")
    corpus = write(tmp_path / "corpus.txt", "\n".join(SENTENCES) + "\n")
    more = write(tmp_path / "more.txt", "one more text\n")
    for args in (("index", corpus, "--pipeline", pipe, "-o", tmp_path / "idx"), ("search", tmp_path / "idx", "cat"),
                 ("index", more, "--pipeline", pipe, "-o", tmp_path / "idx", "--append")):
        assert run(*args).exit_code == 0
    assert opened and all(handle.closed for handle in opened)
    gc.collect()
    with ix.VectorIndex.load(tmp_path / "idx") as index:
        assert index.document(0).text == SENTENCES[0]
    assert all(handle.closed for handle in opened)


def test_index_says_what_it_chose_and_writes_the_folder(built):
    folder, _ = built
    assert sorted(p.name for p in folder.iterdir()) == sorted(ix.REQUIRED)
    meta = json.loads((folder / "index.json").read_text())
    assert meta["kind"] == "flat" and meta["count"] == 6 and meta["dim"] == 8
    assert meta["metric"] == "inner_product"


def test_index_output_names_kind_and_reason(tmp_path):
    pipe = make_pipeline(tmp_path / "pipe")
    corpus = write(tmp_path / "c.txt", "\n".join(SENTENCES))
    result = run("index", corpus, "--pipeline", pipe, "-o", tmp_path / "idx", "--kind", "hnsw", "--ef", "32")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("index HNSW32: hnsw")
    assert "wrote 6 documents of dimension 8" in result.stdout
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["search"]["ef"] == 32


def test_search_prints_rank_score_id_text(built):
    folder, _ = built
    result = run("search", folder, SENTENCES[2], "-k", "3")
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(rows) == 3
    assert rows[0] == ["1", "1.0000", "3", SENTENCES[2]]
    assert [row[0] for row in rows] == ["1", "2", "3"]


def test_search_json_lines_and_several_queries(built):
    folder, _ = built
    result = run("search", folder, SENTENCES[0], SENTENCES[4], "-k", "2", "--json")
    assert result.exit_code == 0, result.output
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(hits) == 4
    assert hits[0] == {"query": SENTENCES[0], "rank": 1, "score": pytest.approx(1.0, abs=1e-5), "id": "1",
                       "text": SENTENCES[0]}
    assert hits[2]["query"] == SENTENCES[4] and hits[2]["id"] == "5"
    plain = run("search", folder, SENTENCES[0], SENTENCES[4], "-k", "1")
    assert [line.split("\t")[0] for line in plain.stdout.splitlines()] == [SENTENCES[0], SENTENCES[4]]


def test_threshold_drops_weak_hits(built):
    folder, _ = built
    result = run("search", folder, SENTENCES[1], "-k", "6", "--threshold", "0.99")
    assert result.exit_code == 0, result.output
    assert [line.split("\t")[3] for line in result.stdout.splitlines()] == [SENTENCES[1]]


def test_queries_from_a_file_skip_empty_lines(built, tmp_path):
    folder, _ = built
    queries = write(tmp_path / "q.txt", f"\n{SENTENCES[3]}\n\n   \n{SENTENCES[5]}\n")
    result = run("search", folder, "--file", queries, "-k", "1", "--json")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["text"] for line in result.stdout.splitlines()] == [SENTENCES[3], SENTENCES[5]]


def test_queries_from_stdin(built):
    folder, _ = built
    result = run("search", folder, "-k", "1", "--json", input=f"{SENTENCES[4]}\n\n{SENTENCES[0]}\n")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == ["5", "1"]
    dash = run("search", folder, "-f", "-", "-k", "1", "--json", input=f"{SENTENCES[1]}\n")
    assert json.loads(dash.stdout)["id"] == "2"


def test_jsonl_corpus_with_ids_and_precomputed_vectors(tmp_path):
    pipe_dir = make_pipeline(tmp_path / "pipe")
    pipe = Pipeline.load(pipe_dir)
    corpus = write(tmp_path / "docs.jsonl", "".join(json.dumps({"id": f"d{i}", "text": t}) + "\n"
                                                    for i, t in enumerate(SENTENCES)))
    raw = FakeEncoder(DIM_IN).encode(SENTENCES)
    np.save(tmp_path / "raw.npy", raw)
    np.save(tmp_path / "vec.npy", pipe.transform(raw))
    FakeEncoder.encoded = []
    for option, path in (("--raw-vectors", "raw.npy"), ("--vectors", "vec.npy")):
        out = tmp_path / f"idx{option}"
        result = run("index", corpus, "--pipeline", pipe_dir, "-o", out, option, tmp_path / path)
        assert result.exit_code == 0, result.output
        hit = json.loads(run("search", out, SENTENCES[3], "-k", "1", "--json").stdout)
        assert hit["id"] == "d3" and hit["score"] == pytest.approx(1.0, abs=1e-5)
    assert FakeEncoder.encoded == [SENTENCES[3]] * 2  # only the queries were encoded


# --------------------------------------------------------------------------- appending


def test_append_adds_documents_without_reencoding(built, tmp_path):
    folder, pipe = built
    FakeEncoder.encoded = []
    more = write(tmp_path / "more.txt", "A cat sleeps on the sofa.\nThe train left on time.\n")
    result = run("index", more, "-o", folder, "--append")
    assert result.exit_code == 0, result.output
    assert "added 2 documents" in result.stdout and "8 in all" in result.stdout
    assert FakeEncoder.encoded == ["A cat sleeps on the sofa.", "The train left on time."]
    hit = json.loads(run("search", folder, "The train left on time.", "-k", "1", "--json").stdout)
    assert hit["id"] == "8"  # numbered after the six documents already there
    again = run("index", more, "-o", folder, "--append", "--pipeline", pipe)  # own pipeline is accepted
    assert again.exit_code == 0, again.output
    assert json.loads((folder / "index.json").read_text())["count"] == 10


def test_append_reads_the_index_vectors_once(built, tmp_path, monkeypatch):
    """The checks before encoding read the folder's metadata and ids, not its FAISS file: holding a
    copy while the locked append loads the latest one doubled the memory an append needs."""
    import faiss

    folder, _ = built
    reads = []
    read_index = faiss.read_index
    monkeypatch.setattr(faiss, "read_index", lambda *args: reads.append(args[0]) or read_index(*args))
    result = run("index", write(tmp_path / "more.txt", "One more.\n"), "-o", folder, "--append")
    assert result.exit_code == 0, result.output
    assert reads == [str(folder / "index.faiss")]


def test_a_header_is_checked_like_the_index(built):
    folder, pipe = built
    header = ix.read_header(folder)
    assert len(header) == 6 and header.ids == frozenset(map(str, range(1, 7)))
    assert header.pipeline.output_dim == Pipeline.load(pipe).output_dim
    meta = json.loads((folder / "index.json").read_text())
    (folder / "index.json").write_text(json.dumps({**meta, "count": 7}))  # one more than docs.jsonl holds
    with pytest.raises(WhitenError, match="files disagree"):
        ix.read_header(folder)


def test_append_refuses_build_options(built, tmp_path):
    folder, _ = built
    more = write(tmp_path / "more.txt", "One more.\n")
    assert_one_line_error(run("index", more, "-o", folder, "--append", "--kind", "hnsw"), "--kind", "--append")


def test_interrupted_append_leaves_the_index_as_it_was(built, tmp_path, monkeypatch):
    import faiss

    folder, _ = built
    before = folder_digest(folder)

    def interrupted(index, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(faiss, "write_index", interrupted)
    more = write(tmp_path / "more.txt", "A cat sleeps on the sofa.\n")
    result = run("index", more, "-o", folder, "--append")
    assert result.exit_code == 130
    assert "Traceback" not in result.output
    assert folder_digest(folder) == before
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", ["index.faiss", "docs.jsonl", "docs.offsets.npy", "index.json", "pipeline"])
def test_search_an_incomplete_index(built, name):
    import shutil

    folder, _ = built
    target = folder / name
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    assert_one_line_error(run("search", folder, "query"), str(folder), f"{name} is missing")


def test_search_and_append_refuse_another_pipeline(built, tmp_path):
    folder, _ = built
    other = make_pipeline(tmp_path / "other", seed=7)
    assert_one_line_error(run("search", folder, "query", "--pipeline", other), "is not the pipeline index")
    more = write(tmp_path / "more.txt", "One more.\n")
    before = folder_digest(folder)
    assert_one_line_error(run("index", more, "-o", folder, "--append", "--pipeline", other),
                          "is not the pipeline index")
    assert folder_digest(folder) == before
    make_pipeline(folder / "pipeline", seed=7)  # the copy inside the index swapped for another
    assert_one_line_error(run("search", folder, "query"), "is not the pipeline index")


def test_empty_corpus(tmp_path):
    pipe = make_pipeline(tmp_path / "pipe")
    empty = write(tmp_path / "empty.txt", "")
    assert_one_line_error(run("index", empty, "--pipeline", pipe, "-o", tmp_path / "idx"), "empty.txt", "no text")
    blank = write(tmp_path / "blank.txt", "\n  \n")
    assert_one_line_error(run("index", blank, "--pipeline", pipe, "-o", tmp_path / "idx", "--skip-empty"), "no text")
    assert not (tmp_path / "idx").exists()


def test_duplicate_ids_name_the_second_occurrence(tmp_path):
    pipe = make_pipeline(tmp_path / "pipe")
    corpus = write(tmp_path / "docs.jsonl", '{"id": "a", "text": "one"}\n{"id": "b", "text": "two"}\n'
                                            '{"id": "a", "text": "three"}\n')
    assert_one_line_error(run("index", corpus, "--pipeline", pipe, "-o", tmp_path / "idx"),
                          "docs.jsonl:3", "duplicate id 'a'", "line 1")
    tsv = write(tmp_path / "docs.tsv", "doc_id\ttext\nx\tone\ny\ttwo\ny\tthree\n")
    assert_one_line_error(run("index", tsv, "--pipeline", pipe, "-o", tmp_path / "idx"), "docs.tsv:4", "'y'")
    assert not (tmp_path / "idx").exists()


def test_appended_id_already_in_the_index(tmp_path):
    pipe = make_pipeline(tmp_path / "pipe")
    corpus = write(tmp_path / "docs.jsonl", '{"id": "a", "text": "one"}\n')
    assert run("index", corpus, "--pipeline", pipe, "-o", tmp_path / "idx").exit_code == 0
    assert_one_line_error(run("index", corpus, "-o", tmp_path / "idx", "--append"),
                          "docs.jsonl:1", "'a' is already in the index")


@pytest.mark.parametrize("k", ["0", "-3"])
def test_k_must_be_positive(built, k):
    folder, _ = built
    assert_one_line_error(run("search", folder, "query", "-k", k), "-k must be at least 1")


def test_k_larger_than_the_index_is_clamped_with_a_note(built):
    folder, _ = built
    result = run("search", folder, SENTENCES[0], "-k", "50")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 6
    assert "note: -k 50 is more than the 6 documents" in result.stderr


def test_no_query_and_empty_queries(built, tmp_path):
    folder, _ = built
    assert_one_line_error(run("search", folder), "no query")
    assert_one_line_error(run("search", folder, "   "), "empty query")
    only_blank = write(tmp_path / "q.txt", "\n\n")
    assert_one_line_error(run("search", folder, "-f", only_blank), "q.txt", "no text")
    assert_one_line_error(run("search", folder, "-f", tmp_path / "missing.txt"), "missing.txt", "no such file")


def test_index_bad_options(tmp_path):
    pipe = make_pipeline(tmp_path / "pipe")
    corpus = write(tmp_path / "c.txt", "\n".join(SENTENCES))
    out = tmp_path / "idx"
    assert_one_line_error(run("index", corpus, "-o", out), "--pipeline is needed")
    assert_one_line_error(run("index", corpus, "--pipeline", pipe, "-o", out, "--kind", "lsh"), "unknown index kind")
    assert_one_line_error(run("index", corpus, "--pipeline", pipe, "-o", out, "--kind", "ivf"), "too few")
    assert_one_line_error(run("index", corpus, "--pipeline", pipe, "-o", out, "--max-memory", "lots"), "--max-memory")
    assert_one_line_error(run("index", corpus, "-o", out, "--append"), "index folder does not exist")
    np.save(tmp_path / "short.npy", np.zeros((2, 8), dtype=np.float32))
    assert_one_line_error(run("index", corpus, "--pipeline", pipe, "-o", out, "--vectors", tmp_path / "short.npy"),
                          "short.npy", "2 vectors for the 6 texts")
    assert_one_line_error(run("index", corpus, "--pipeline", pipe, "-o", out, "--raw-vectors", tmp_path / "short.npy"),
                          "short.npy", "shape")
    assert_one_line_error(run("index", corpus, "--pipeline", pipe, "-o", out, "--vectors", corpus),
                          "c.txt", "not a .npy file")
    assert not out.exists()


def test_index_refuses_to_overwrite_a_folder_that_is_not_an_index(tmp_path):
    pipe = make_pipeline(tmp_path / "pipe")
    corpus = write(tmp_path / "c.txt", "\n".join(SENTENCES))
    precious = tmp_path / "precious"
    precious.mkdir()
    write(precious / "notes.txt", "keep me")
    assert_one_line_error(run("index", corpus, "--pipeline", pipe, "-o", precious), "not a whiten index")
    assert (precious / "notes.txt").read_text() == "keep me"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:fitting on")
def test_end_to_end_with_the_default_model(tmp_path, monkeypatch):
    """The real model: fit a pipeline, index, search by meaning (about 15 s)."""
    monkeypatch.undo()  # the real encoder
    corpus = write(tmp_path / "c.txt", "\n".join(SENTENCES * 10 + [f"Filler sentence number {i}." for i in range(40)]))
    assert run("fit", corpus, "-o", tmp_path / "pipe", "-k", "32").exit_code == 0
    unique = write(tmp_path / "u.txt", "\n".join(SENTENCES))
    result = run("index", unique, "--pipeline", tmp_path / "pipe", "-o", tmp_path / "idx")
    assert result.exit_code == 0, result.output
    found = run("search", tmp_path / "idx", "someone plays the guitar", "-k", "1", "--json")
    assert found.exit_code == 0, found.output
    assert json.loads(found.stdout)["text"] == SENTENCES[0]


def test_rebuilding_replaces_the_index_with_a_note(built, tmp_path):
    folder, pipe = built
    corpus = write(tmp_path / "two.txt", "First.\nSecond.\n")
    result = run("index", corpus, "--pipeline", pipe, "-o", folder)
    assert result.exit_code == 0, result.output
    assert "note: replacing the index" in result.stderr
    assert json.loads((folder / "index.json").read_text())["count"] == 2


# --------------------------------------------------------------------------- trust: concurrency, signals, corrupt files

ROOT = Path(__file__).resolve().parents[1]

APPENDER = """
import sys, time
from pathlib import Path
import numpy as np
from whiten_cli.cli import app
from whiten_cli.errors import WhitenError

folder, go, name, rounds, dim = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
work = folder.parent / f"work-{name}"
work.mkdir()
while not go.exists():
    time.sleep(0.001)
for i in range(rounds):
    corpus = work / f"{i}.txt"
    corpus.write_text(f"{name} text {i}\\n{name} other text {i}\\n", encoding="utf-8")
    np.save(work / f"{i}.npy", np.random.default_rng([ord(name), i]).standard_normal((2, dim)).astype(np.float32))
    app(["index", str(corpus), "-o", str(folder), "--append", "--vectors", str(work / f"{i}.npy")],
        standalone_mode=False)
"""


def python(script: str, *args, **popen):
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=env, **popen)


def test_concurrent_appends_from_two_processes_all_land(built, tmp_path):
    folder, _ = built
    rounds = 8
    go = tmp_path / "go"
    workers = [python(APPENDER, folder, go, name, rounds, 8) for name in "ab"]
    go.touch()
    while any(worker.poll() is None for worker in workers):  # a reader meanwhile sees whole versions only
        seen = ix.VectorIndex.load(folder)
        assert seen.document(len(seen) - 1).id == str(len(seen))
    assert [worker.wait(timeout=300) for worker in workers] == [0, 0]
    index = ix.VectorIndex.load(folder)
    assert len(index) == len(SENTENCES) + 2 * 2 * rounds
    docs = [index.document(row) for row in range(len(index))]
    assert [doc.id for doc in docs] == [str(row + 1) for row in range(len(index))]  # numbered in index order
    assert sorted(doc.text for doc in docs[len(SENTENCES):]) == sorted(
        f"{name} {kind}text {i}" for name in "ab" for kind in ("", "other ") for i in range(rounds))
    offsets = np.load(folder / ix.OFFSETS_FILE)
    assert len(offsets) == len(index) + 1 and int(offsets[-1]) == (folder / ix.DOCS_FILE).stat().st_size
    for row in (0, len(index) - 1):  # the vectors and the documents are in step
        hit = index.search(index.faiss_index.reconstruct(row)[None, :], k=1)[0][0]
        assert (hit.row, hit.id) == (row, str(row + 1))
    found = run("search", folder, SENTENCES[1], "-k", "1", "--json")
    assert found.exit_code == 0 and json.loads(found.stdout)["id"] == "2"


STOPPED_WRITER = """
import os, signal, sys, time
from pathlib import Path
import faiss

ready, how = Path(sys.argv[1]), sys.argv[2]

def stalled_write(index, path):
    Path(path).write_bytes(b"partial")
    ready.touch()
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(300)

faiss.write_index = stalled_write
from whiten_cli.cli import main
sys.argv = ["whiten", *sys.argv[3:]]
main()
"""


def stopped_writer(tmp_path, how: str, *args):
    import subprocess
    import time

    ready = tmp_path / "ready"
    ready.unlink(missing_ok=True)
    writer = python(STOPPED_WRITER, ready, how, *args, stderr=subprocess.PIPE, text=True)
    while not ready.exists() and writer.poll() is None:
        time.sleep(0.01)
    return writer


def temporary_folders(folder: Path) -> list[str]:
    return [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]


def test_sigterm_during_a_build_exits_143_and_removes_its_temporary_folder(built, tmp_path):
    import signal

    folder, pipe = built
    before = folder_digest(folder)
    np.save(tmp_path / "vectors.npy", np.random.default_rng(0).standard_normal((len(SENTENCES), 8)).astype(np.float32))
    writer = stopped_writer(tmp_path, "term", "index", tmp_path / "corpus.txt", "--pipeline", pipe, "-o", folder,
                            "--vectors", tmp_path / "vectors.npy")
    writer.send_signal(signal.SIGTERM)
    code, stderr = writer.wait(timeout=60), writer.stderr.read()
    assert code == 143, stderr
    assert "Traceback" not in stderr and "terminated" in stderr
    assert temporary_folders(folder) == []
    assert folder_digest(folder) == before


def test_sigkill_during_an_append_keeps_the_index_and_the_next_run_cleans_up(built, tmp_path):
    folder, _ = built
    before = folder_digest(folder)
    more = write(tmp_path / "more.txt", "A cat sleeps on the sofa.\n")
    np.save(tmp_path / "vectors.npy", np.ones((1, 8), dtype=np.float32))
    writer = stopped_writer(tmp_path, "kill", "index", more, "-o", folder, "--append", "--vectors", tmp_path / "vectors.npy")
    assert writer.wait(timeout=60) == -9, writer.stderr.read()
    assert folder_digest(folder) == before and temporary_folders(folder) != []
    assert run("search", folder, SENTENCES[0], "-k", "1").exit_code == 0
    assert run("index", more, "-o", folder, "--append").exit_code == 0
    assert temporary_folders(folder) == []
    assert json.loads((folder / "index.json").read_text())["count"] == len(SENTENCES) + 1


@pytest.mark.parametrize("field, value, message", [
    ("dim", "8", "'dim' must be a positive integer, got \"8\""),
    ("count", -1, "'count' must be a positive integer, got -1"),
    ("search", "fast", "'search' must be an object"),
    ("format_version", "1", "'format_version' must be a positive integer"),
    ("kind", 3, "'kind' must be one of flat, hnsw, ivf, ivfpq, got 3"),
    ("pipeline", ["x"], "'pipeline' must be an object"),
], ids=["dim", "count", "search", "format_version", "kind", "pipeline"])
def test_index_json_with_a_field_of_the_wrong_type_or_range(built, tmp_path, field, value, message):
    folder, _ = built
    meta = json.loads((folder / "index.json").read_text())
    meta[field] = value
    write(folder / "index.json", json.dumps(meta))
    assert_one_line_error(run("search", folder, "query"), f"{folder / 'index.json'}: ", message)
    more = write(tmp_path / "more.txt", "One more.\n")
    assert_one_line_error(run("index", more, "-o", folder, "--append"), "index.json", message)


@pytest.mark.parametrize("damage", ["past", "order"])
def test_offsets_past_the_file_or_not_increasing(built, tmp_path, damage):
    folder, _ = built
    offsets = np.load(folder / ix.OFFSETS_FILE)
    if damage == "past":
        offsets[3] = offsets[-1] + 10**12
        expected = "is past the end of docs.jsonl"
    else:
        offsets[2], offsets[3] = offsets[3], offsets[2]
        expected = "offsets must increase"
    np.save(folder / ix.OFFSETS_FILE, offsets)
    assert_one_line_error(run("search", folder, SENTENCES[2], "-k", "1"), "docs.offsets.npy: entry 3 (", expected)
    more = write(tmp_path / "more.txt", "One more.\n")
    assert_one_line_error(run("index", more, "-o", folder, "--append"), "docs.offsets.npy: entry 3 (", expected)


def test_garbled_docs_line_names_file_and_line(built, tmp_path):
    folder, _ = built
    docs = folder / ix.DOCS_FILE
    lines = docs.read_bytes().splitlines(keepends=True)
    lines[2] = b"{" + b"#" * (len(lines[2]) - 2) + b"\n"  # same length: the offsets still agree
    docs.write_bytes(b"".join(lines))
    assert_one_line_error(run("search", folder, SENTENCES[2], "-k", "1"), f"{docs}:3: ", "not a JSON document line")
    more = write(tmp_path / "more.txt", "One more.\n")
    before = folder_digest(folder)
    assert_one_line_error(run("index", more, "-o", folder, "--append"), f"{docs}:3: ", "not a JSON document line")
    assert folder_digest(folder) == before
