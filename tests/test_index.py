"""VectorIndex API: choice of index, build/add/search/save/load, atomic append, bad input."""

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest

from whiten_cli import index as ix
from whiten_cli.errors import ParameterError, WhitenError
from whiten_cli.index import Document, VectorIndex, choose_index, pipeline_fingerprint, plan_index
from whiten_cli.pipeline import Pipeline
from whiten_cli.stats import GaussianStats
from whiten_cli.whitening import Whitening

DIM_IN, DIM_OUT = 16, 8


def tiny_pipeline(seed: int = 0, k: int = DIM_OUT) -> Pipeline:
    raw = np.random.default_rng(seed).standard_normal((500, DIM_IN))
    return Pipeline(model="all-MiniLM-L6-v2", model_fingerprint="test-weights", pooling="model", max_length=128,
                    input_dim=DIM_IN, whitening=Whitening.fit(GaussianStats.of(raw), k))


def clustered(n: int, dim: int = DIM_OUT, seed: int = 0, labels: bool = False):
    """Vectors around 20 centres, so that neighbourhoods are well defined (and their centre)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim))
    label = rng.integers(0, 20, n)
    vectors = (centres[label] + 0.3 * rng.standard_normal((n, dim))).astype(np.float32)
    return (vectors, label) if labels else vectors


def folder_digest(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture()
def pipe():
    return tiny_pipeline()


@pytest.fixture()
def saved(tmp_path, pipe):
    vectors = clustered(300)
    index = VectorIndex.build(vectors, [f"text {i}" for i in range(300)], pipe, kind="flat")
    index.save(tmp_path / "idx")
    return tmp_path / "idx", vectors


# --------------------------------------------------------------------------- choosing


def test_choose_index_follows_faiss_guidelines():
    factory, reason = choose_index(16_000, 128)
    assert factory == "Flat" and "exact" in reason
    factory, reason = choose_index(1_000_000, 128)
    assert factory == "IVF4096,Flat"  # 4·√N = 4000 → next power of two
    assert "4·√N" in reason and "4096 lists" in reason
    factory, reason = choose_index(100_000, 384)
    assert factory == "IVF2048,Flat"
    # memory a little tight: SQ8, one byte per dimension
    factory, reason = choose_index(1_000_000, 128, max_memory=200 * 2**20)
    assert factory == "IVF4096,SQ8" and "128-byte SQ8 codes" in reason
    assert ix.estimate_bytes(plan_index("auto", 1_000_000, 128, max_memory=200 * 2**20), 1_000_000, 128) <= 200 * 2**20
    # tighter: PQ codes, as many bytes per vector as fit
    factory, reason = choose_index(1_000_000, 128, max_memory=100 * 2**20)
    assert factory.startswith("IVF4096,PQ") and "100.0 MiB memory budget" in reason
    plan = plan_index("auto", 1_000_000, 128, max_memory=100 * 2**20)
    assert ix.estimate_bytes(plan, 1_000_000, 128) <= 100 * 2**20
    assert 128 % plan.pq_m == 0 and plan.pq_m >= 64
    default = plan_index("ivfpq", 1_000_000, 128)  # one byte per dimension by default: SQ8
    assert (default.factory, default.pq_m, default.scalar) == ("IVF4096,SQ8", 128, True)
    assert "scalar quantization (128 bytes per vector)" in default.reason
    assert plan_index("ivfpq", 1_000_000, 128, pq_m=64).factory == "IVF4096,PQ64"
    # small corpus whose vectors do not fit the budget is compressed too
    assert choose_index(50_000, 384, max_memory=10 * 2**20)[0].startswith("IVF")
    with pytest.raises(WhitenError, match="too small"):
        choose_index(1_000_000, 128, max_memory=1000)


@pytest.mark.parametrize("n", [100_000, 400_000, 1_000_000, 5_000_000])
def test_ivf_lists_within_4_to_16_sqrt_n(n):
    nlist = ix.ivf_lists(n)
    assert 4 * math.sqrt(n) <= nlist <= 16 * math.sqrt(n)
    assert nlist & (nlist - 1) == 0


def test_ivf_lists_capped_for_training_on_small_corpora():
    assert ix.ivf_lists(1000) * ix.MIN_PER_CENTROID <= 1000
    assert ix.ivf_lists(10) == 1


def test_plan_rejects_bad_options():
    with pytest.raises(WhitenError, match="unknown index kind"):
        plan_index("annoy", 100, 8)
    with pytest.raises(WhitenError, match="empty corpus"):
        plan_index("flat", 0, 8)
    with pytest.raises(WhitenError, match="divide"):
        plan_index("ivfpq", 5000, 8, pq_m=3)
    with pytest.raises(WhitenError, match="too few .* lower nlist"):  # the parameter, not the CLI's flag
        plan_index("ivf", 100, 8, nlist=64)
    with pytest.raises(WhitenError, match="too few"):
        plan_index("ivfpq", 300, 8, pq_m=4)  # PQ codebooks need 39 × 16 points; SQ8 needs none
    assert plan_index("ivfpq", 300, 8).factory.endswith(",SQ8")


def test_parse_size():
    assert ix.parse_size("500M") == 500 * 2**20
    assert ix.parse_size("2GiB") == 2 * 2**30
    assert ix.parse_size("1.5g") == int(1.5 * 2**30)
    assert ix.parse_size("123456") == 123456
    for bad in ("lots", "-1G", "0"):
        with pytest.raises(WhitenError, match=f"^max_memory '{bad}'"):
            ix.parse_size(bad)
    with pytest.raises(WhitenError, match="^max_memory 1.0 KiB is less than"):
        plan_index("auto", 500, 8, max_memory=1024)


# --------------------------------------------------------------------------- build and search


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq", "ivfpq-pq", "auto"])
def test_every_kind_finds_each_vector_itself(pipe, kind):
    vectors, label = clustered(2000, labels=True)
    options = {"pq_m": DIM_OUT // 2} if kind == "ivfpq-pq" else {}
    kind = kind.removesuffix("-pq")
    index = VectorIndex.build(vectors, [f"t{i}" for i in range(2000)], pipe, kind=kind, **options)
    if kind == "ivfpq":
        assert f",PQ{DIM_OUT // 2}" in index.factory if options else index.factory.endswith(",SQ8")
    assert len(index) == 2000 and index.dim == DIM_OUT
    hits = index.search(vectors[:50], k=5, nprobe=8)
    top1 = np.mean([query_hits[0].row == i for i, query_hits in enumerate(hits)])
    if kind != "ivfpq":
        assert top1 >= (1.0 if kind in ("flat", "auto") else 0.9)
    else:  # PQ codes are approximate: the first hit is a close neighbour, in the same cluster
        assert np.mean([label[query_hits[0].row] == label[i] for i, query_hits in enumerate(hits)]) >= 0.9
    first = hits[0][0]
    assert first.rank == 1 and first.id == str(first.row + 1) and first.text == f"t{first.row}"
    assert [hit.rank for hit in hits[0]] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in zip(hits[0], hits[0][1:]))


def test_scores_are_cosine_similarities(pipe):
    vectors = clustered(50)
    index = VectorIndex.build(vectors * 7.0, [f"t{i}" for i in range(50)], pipe, kind="flat")
    hits = index.search(vectors[3] * 0.01, k=50)[0]  # one query vector, any scale
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = unit @ unit[3]
    for hit in hits:
        assert hit.score == pytest.approx(cosines[hit.row], abs=1e-5)


def test_k_larger_than_the_index_returns_everything_and_threshold_drops(pipe):
    index = VectorIndex.build(clustered(5), list("abcde"), pipe, kind="flat")
    hits = index.search(clustered(5)[:1], k=50)[0]
    assert len(hits) == 5
    strong = index.search(clustered(5)[:1], k=5, threshold=0.999)[0]
    assert [hit.text for hit in strong] == ["a"]
    with pytest.raises(WhitenError, match="^k must be at least 1"):
        index.search(clustered(5)[:1], k=0)
    with pytest.raises(WhitenError, match="shape"):
        index.search(np.ones((1, DIM_OUT + 1)), k=1)
    with pytest.raises(WhitenError, match="^nprobe must"):
        index.search(clustered(5)[:1], k=1, nprobe=0)


def test_documents_with_ids_and_duplicates(pipe):
    docs = [Document("a", "first"), Document("b", "second")]
    index = VectorIndex.build(clustered(2), docs, pipe, kind="flat")
    assert index.document(1) == Document("b", "second")
    with pytest.raises(WhitenError, match="duplicate id 'a'"):
        VectorIndex.build(clustered(2), [Document("a", "x"), Document("a", "y")], pipe)
    with pytest.raises(WhitenError, match="already in the index"):
        index.add(clustered(1), [Document("b", "again")])
    with pytest.raises(WhitenError, match="2 vectors for 3 documents"):
        VectorIndex.build(clustered(2), ["x", "y", "z"], pipe)


def test_empty_corpus_and_bad_vectors(pipe):
    with pytest.raises(WhitenError, match="empty corpus"):
        VectorIndex.build(np.zeros((0, DIM_OUT)), [], pipe)
    with pytest.raises(WhitenError, match="shape"):
        VectorIndex.build(np.zeros((2, DIM_OUT + 1)), ["x", "y"], pipe)
    with pytest.raises(WhitenError, match="NaN"):
        VectorIndex.build(np.full((2, DIM_OUT), np.nan), ["x", "y"], pipe)


# --------------------------------------------------------------------------- save, load, append


def test_save_and_load_round_trip(saved, pipe):
    folder, vectors = saved
    assert sorted(p.name for p in folder.iterdir()) == sorted(ix.REQUIRED)
    loaded = VectorIndex.load(folder)
    assert len(loaded) == 300 and loaded.kind == "flat" and loaded.factory == "Flat"
    assert loaded.metadata["pipeline"]["fingerprint"] == pipeline_fingerprint(pipe)
    assert loaded.metadata["metric"] == "inner_product" and loaded.metadata["dim"] == DIM_OUT
    hits = loaded.search(vectors[:3], k=2)
    assert [h[0].text for h in hits] == ["text 0", "text 1", "text 2"]
    offsets = np.load(folder / ix.OFFSETS_FILE)
    assert offsets.dtype == np.uint64 and len(offsets) == 301
    assert int(offsets[-1]) == (folder / ix.DOCS_FILE).stat().st_size


def test_documents_are_read_by_offset_not_all_at_once(saved):
    folder, vectors = saved
    loaded = VectorIndex.load(folder)
    assert isinstance(loaded._stored.offsets, np.memmap)
    assert loaded.document(299) == Document("300", "text 299")


def test_unicode_and_newlines_survive(tmp_path, pipe):
    texts = ["naïve café", "line one\nline two", 'quote " tab\t', "中文句子"]
    index = VectorIndex.build(clustered(4), texts, pipe, kind="flat")
    index.save(tmp_path / "u")
    loaded = VectorIndex.load(tmp_path / "u")
    assert [loaded.document(i).text for i in range(4)] == texts


def test_add_and_save_appends_without_reencoding(saved):
    folder, vectors = saved
    loaded = VectorIndex.load(folder)
    extra = clustered(10, seed=5)
    loaded.add(extra, [f"extra {i}" for i in range(10)])
    assert len(loaded) == 310
    assert loaded.search(extra[:1], k=1)[0][0].text == "extra 0"  # visible before saving
    loaded.save(folder)
    again = VectorIndex.load(folder)
    assert len(again) == 310 and again.metadata["count"] == 310
    assert again.document(300) == Document("301", "extra 0")  # numbered after the existing ones
    assert again.document(0) == Document("1", "text 0")
    assert again.search(extra[9:], k=1)[0][0].text == "extra 9"


def test_append_to_index_helper_and_id_clash(saved):
    folder, _ = saved
    ix.append_to_index(folder, clustered(2, seed=9), [Document("x", "one"), Document("y", "two")])
    assert len(VectorIndex.load(folder)) == 302
    with pytest.raises(WhitenError, match="already in the index"):
        ix.append_to_index(folder, clustered(1), [Document("x", "again")])
    assert len(VectorIndex.load(folder)) == 302


def test_append_refuses_vectors_of_a_pipeline_the_index_no_longer_has(saved):
    """Another process may rebuild the index while an append encodes: its vectors must not land."""
    folder, _ = saved
    with pytest.raises(WhitenError, match="rebuilt with another pipeline"):
        ix.append_to_index(folder, clustered(1), ["late"], pipeline=tiny_pipeline(seed=1))
    assert len(VectorIndex.load(folder)) == 300
    ix.append_to_index(folder, clustered(1), ["in time"], pipeline=tiny_pipeline())
    assert VectorIndex.load(folder).document(300) == Document("301", "in time")


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_interrupted_append_leaves_the_index_byte_identical(saved, monkeypatch, error):
    import faiss

    folder, _ = saved
    before = folder_digest(folder)

    def failing_write(index, path):
        Path(path).write_bytes(b"partial")  # something half-written in the new folder
        raise error

    monkeypatch.setattr(faiss, "write_index", failing_write)
    loaded = VectorIndex.load(folder)
    loaded.add(clustered(5, seed=3), [f"new {i}" for i in range(5)])
    with pytest.raises(type(error)):
        loaded.save(folder)
    assert folder_digest(folder) == before
    leftovers = [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]
    assert leftovers == []
    monkeypatch.undo()
    assert len(VectorIndex.load(folder)) == 300


def test_save_refuses_to_replace_a_folder_that_is_not_an_index(tmp_path, pipe):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    index = VectorIndex.build(clustered(3), ["a", "b", "c"], pipe, kind="flat")
    with pytest.raises(WhitenError, match="not a whiten index"):
        index.save(precious)
    assert (precious / "thesis.tex").read_text() == "do not delete"


# --------------------------------------------------------------------------- bad folders


@pytest.mark.parametrize("name", ix.REQUIRED)
def test_load_names_a_missing_file(saved, name):
    import shutil

    folder, _ = saved
    target = folder / name
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(WhitenError, match=f"{name} is missing"):
        VectorIndex.load(folder)


def test_load_refuses_another_pipeline(saved):
    folder, _ = saved
    tiny_pipeline(seed=1).save(folder / ix.PIPELINE_DIR)  # same shape, other whitening
    with pytest.raises(WhitenError, match="is not the pipeline index"):
        VectorIndex.load(folder)


def test_load_refuses_damaged_files(saved, tmp_path):
    folder, _ = saved
    with pytest.raises(WhitenError, match="does not exist"):
        VectorIndex.load(tmp_path / "nowhere")
    docs = (folder / ix.DOCS_FILE).read_bytes()
    (folder / ix.DOCS_FILE).write_bytes(docs[:-10])
    with pytest.raises(WhitenError, match="the files do not match"):
        VectorIndex.load(folder)
    (folder / ix.DOCS_FILE).write_bytes(docs)
    (folder / ix.INDEX_FILE).write_bytes(b"not faiss")
    with pytest.raises(WhitenError, match="FAISS"):
        VectorIndex.load(folder)
    (folder / ix.METADATA_FILE).write_text("{}")
    with pytest.raises(WhitenError, match="not a whiten index"):
        VectorIndex.load(folder)


def test_pipeline_fingerprint_is_stable_across_save_and_load(tmp_path, pipe):
    pipe.save(tmp_path / "p")
    assert pipeline_fingerprint(Pipeline.load(tmp_path / "p")) == pipeline_fingerprint(pipe)
    assert pipeline_fingerprint(tiny_pipeline(seed=1)) != pipeline_fingerprint(pipe)
    assert pipeline_fingerprint(tiny_pipeline(k=4)) != pipeline_fingerprint(pipe)


def test_build_tunes_the_search_knob_to_the_recall_target(pipe):
    vectors = clustered(3000, seed=4)
    index = VectorIndex.build(vectors, [f"t{i}" for i in range(3000)], pipe, kind="ivf")
    search = index.metadata["search"]
    assert search["tuned"]["recall"] >= ix.TARGET_RECALL and search["tuned"]["queries"] == ix.TUNE_QUERIES
    assert search["nprobe"] & (search["nprobe"] - 1) == 0 and "recall@10" in index.metadata["reason"]
    hnsw = VectorIndex.build(vectors, [f"t{i}" for i in range(3000)], pipe, kind="hnsw", ef=24)
    assert hnsw.metadata["search"]["ef"] == 24 and "tuned" not in hnsw.metadata["search"]
    untuned = VectorIndex.build(vectors, [f"t{i}" for i in range(3000)], pipe, kind="ivf", tune=False)
    assert untuned.metadata["search"]["nprobe"] == untuned.metadata["nlist"] // 8


def test_batched_search_matches_the_one_query_scan():
    """The BLAS path taken for batches returns what FAISS's per-query scan returns."""
    import faiss

    rng = np.random.default_rng(3)
    corpus = ix.normalized(rng.standard_normal((3000, 64)).astype(np.float32))
    queries = ix.normalized(rng.standard_normal((300, 64)).astype(np.float32))
    index = faiss.IndexFlatIP(64)
    index.add(corpus)
    scan_scores, scan_rows = index.search(queries, 10)  # 300 × 64 < FAISS's threshold: per-query scan
    scores, rows = ix.faiss_search(index, queries, 10)
    np.testing.assert_array_equal(rows, scan_rows)
    np.testing.assert_allclose(scores, scan_scores, atol=1e-5)


@pytest.mark.parametrize("n_queries, blas", [(1, False), (ix.BLAS_MIN_QUERIES - 1, False), (ix.BLAS_MIN_QUERIES, True)])
def test_blas_threshold_lowered_for_batches_only_and_restored(n_queries, blas):
    import faiss

    seen = []

    class Spy(faiss.IndexFlatIP):
        def search(self, x, k, params=None):
            seen.append(faiss.cvar.distance_compute_blas_threshold)
            raise RuntimeError("interrupted")

    before = faiss.cvar.distance_compute_blas_threshold
    with pytest.raises(RuntimeError):
        ix.faiss_search(Spy(8), np.zeros((n_queries, 8), np.float32), 3)
    assert seen == [0 if blas else before]
    assert faiss.cvar.distance_compute_blas_threshold == before


@pytest.mark.parametrize("options, message", [({"k": 0}, "^k must be at least 1"), ({"nprobe": 0}, "^nprobe"),
                                              ({"threshold": math.nan}, "^threshold must be a number, got nan")])
def test_search_refuses_bad_options_in_the_library_too(saved, options, message):
    folder, _ = saved
    index = VectorIndex.load(folder)
    with pytest.raises(ParameterError, match=message):
        index.search(clustered(1), **{"k": 5, **options})
