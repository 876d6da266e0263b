"""The embedding cache: hits are exact, corrupt or stale rows are recomputed, an unusable folder warns."""

import shutil
import sqlite3
import sys

import numpy as np
import pytest

from conftest import sample_sentences
from whiten_cli.cache import FILE_NAME, EmbeddingCache, default_cache_dir, open_cache, text_key
from whiten_cli.encoder import Encoder

TEXTS = sample_sentences(12, seed=3)


def cached_encoder(model, cache, **options) -> Encoder:
    return Encoder(str(model), pooling=options.pop("pooling", "last-avg"), cache=cache, **options)


def test_hit_returns_identical_vectors_without_encoding(tiny_model, tmp_path):
    cache = EmbeddingCache(tmp_path)
    first = cached_encoder(tiny_model, cache)
    vectors = first.encode(TEXTS)
    assert first.encoded == len(TEXTS) and len(cache) == len(TEXTS)
    second = cached_encoder(tiny_model, EmbeddingCache(tmp_path))
    again = second.encode(TEXTS)
    assert second.encoded == 0 and second._loaded is None  # the model was not even loaded
    assert again.dtype == np.float32
    np.testing.assert_array_equal(again, vectors)
    assert second.cache.hits == len(TEXTS)


def test_only_misses_are_encoded_and_order_is_kept(tiny_model, tmp_path):
    cache = EmbeddingCache(tmp_path)
    reference = cached_encoder(tiny_model, None).encode(TEXTS)
    encoder = cached_encoder(tiny_model, cache)
    encoder.encode(TEXTS[::2])
    mixed = encoder.encode(TEXTS + TEXTS[:3])
    assert encoder.encoded == len(TEXTS[::2]) + len(TEXTS[1::2])
    np.testing.assert_allclose(mixed, np.concatenate([reference, reference[:3]]), atol=1e-6)


def test_several_poolings_are_cached_apart(tiny_model, tmp_path):
    encoder = cached_encoder(tiny_model, EmbeddingCache(tmp_path))
    both = encoder.encode_poolings(TEXTS, ["cls", "first-last-avg"])
    again = cached_encoder(tiny_model, EmbeddingCache(tmp_path))
    cls_only = again.encode_poolings(TEXTS, ["cls"])
    assert again.encoded == 0
    np.testing.assert_array_equal(cls_only["cls"], both["cls"])
    assert not np.allclose(both["cls"], both["first-last-avg"])
    # A pooling not cached yet is encoded (once, for all texts), the cached one is reused.
    more = again.encode_poolings(TEXTS, ["cls", "last2avg"])
    assert again.encoded == len(TEXTS)
    np.testing.assert_allclose(more["cls"], both["cls"], atol=1e-6)


def corrupt(path, sql: str, *params) -> None:
    db = sqlite3.connect(path / FILE_NAME)
    with db:
        db.execute(sql, params)
    db.close()


@pytest.mark.parametrize(
    "sql",
    [
        # flip the vector's bytes: the checksum no longer matches
        "UPDATE vectors SET vector = zeroblob(length(vector)) WHERE key IN (SELECT key FROM vectors LIMIT 3)",
        # a row cut short
        "UPDATE vectors SET vector = substr(vector, 1, 8) WHERE key IN (SELECT key FROM vectors LIMIT 3)",
        # a wrong dimension
        "UPDATE vectors SET dim = dim + 1 WHERE key IN (SELECT key FROM vectors LIMIT 3)",
        # a checksum that is not even bytes
        "UPDATE vectors SET checksum = 'x' WHERE key IN (SELECT key FROM vectors LIMIT 3)",
    ],
)
def test_corrupt_rows_are_recomputed(tiny_model, tmp_path, sql):
    reference = cached_encoder(tiny_model, EmbeddingCache(tmp_path)).encode(TEXTS)
    corrupt(tmp_path, sql)
    encoder = cached_encoder(tiny_model, EmbeddingCache(tmp_path))
    vectors = encoder.encode(TEXTS)
    assert encoder.encoded == 3 and encoder.cache.rejected == 3
    np.testing.assert_allclose(vectors, reference, atol=1e-6)
    # ... and the rows were replaced: a third run finds all of them valid.
    third = cached_encoder(tiny_model, EmbeddingCache(tmp_path))
    np.testing.assert_allclose(third.encode(TEXTS), reference, atol=1e-6)
    assert third.encoded == 0


def test_row_with_forged_checksum_but_other_values_is_rejected(tiny_model, tmp_path):
    """A row whose vector was swapped with another row's (each with its own checksum) is caught:
    the checksum covers the key too."""
    cached_encoder(tiny_model, EmbeddingCache(tmp_path)).encode(TEXTS[:2])
    db = sqlite3.connect(tmp_path / FILE_NAME)
    (k1, v1, c1), (k2, v2, c2) = db.execute("SELECT key, vector, checksum FROM vectors").fetchall()
    with db:
        db.execute("UPDATE vectors SET vector = ?, checksum = ? WHERE key = ?", (v2, c2, k1))
    db.close()
    encoder = cached_encoder(tiny_model, EmbeddingCache(tmp_path))
    encoder.encode(TEXTS[:2])
    assert encoder.encoded == 1 and encoder.cache.rejected == 1


def test_non_finite_vector_is_recomputed(tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache.store("ns", ["a", "b"], np.array([[1.0, np.nan], [1.0, 2.0]], dtype=np.float32), [False, True])
    vectors, found, truncated = cache.lookup("ns", ["a", "b", "c"], 2)
    assert found.tolist() == [False, True, False] and truncated.tolist() == [False, True, False]
    np.testing.assert_array_equal(vectors[1], [1.0, 2.0])


def test_stale_entries_are_not_used(tiny_model, other_tiny_model, tmp_path):
    """Another model's weights, max_length, dtype or pooling never read this one's rows."""
    cache_dir = tmp_path / "cache"
    cached_encoder(tiny_model, EmbeddingCache(cache_dir)).encode(TEXTS)
    for model, options in [(other_tiny_model, {}), (tiny_model, {"max_length": 6}), (tiny_model, {"dtype": "bfloat16"}),
                           (tiny_model, {"pooling": "cls"})]:
        encoder = cached_encoder(model, EmbeddingCache(cache_dir), **options)
        fresh = cached_encoder(model, None, **options).encode(TEXTS)
        np.testing.assert_allclose(encoder.encode(TEXTS), fresh, atol=1e-6)
        assert encoder.encoded == len(TEXTS), options


def test_weights_changed_in_place_are_stale(tiny_model, other_tiny_model, tmp_path):
    """Same folder, new weights: the fingerprint changes, so the old rows are not found."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    cache_dir = tmp_path / "cache"
    old = cached_encoder(folder, EmbeddingCache(cache_dir)).encode(TEXTS)
    shutil.copy(other_tiny_model / "model.safetensors", folder / "model.safetensors")
    encoder = cached_encoder(folder, EmbeddingCache(cache_dir))
    new = encoder.encode(TEXTS)
    assert encoder.encoded == len(TEXTS) and not np.allclose(new, old)


def test_tokenizer_change_is_stale(tiny_model, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    cache_dir = tmp_path / "cache"
    cached_encoder(folder, EmbeddingCache(cache_dir)).encode(TEXTS)
    config = folder / "tokenizer_config.json"
    config.write_text(config.read_text().replace("{", '{"whiten_test": 1, ', 1))
    encoder = cached_encoder(folder, EmbeddingCache(cache_dir))
    encoder.encode(TEXTS)
    assert encoder.encoded == len(TEXTS)



def test_a_vectors_revision_makes_old_entries_stale(tiny_model, tmp_path, monkeypatch):
    """A fix to whiten that changes vectors (as the pooler fix did) must not be hidden by the cache."""
    from whiten_cli import encoder as enc

    encoder = Encoder(str(tiny_model), pooling="cls", cache=tmp_path)
    encoder.encode(TEXTS)
    monkeypatch.setattr(enc, "VECTORS_REVISION", enc.VECTORS_REVISION + 1)
    enc.software_versions.cache_clear()  # read once per process
    try:
        again = Encoder(str(tiny_model), pooling="cls", cache=tmp_path)
        again.encode(TEXTS)
    finally:
        monkeypatch.undo()
        enc.software_versions.cache_clear()
    assert again.encoded == len(set(TEXTS))

def test_truncation_is_counted_from_the_cache_too(tiny_model, tmp_path):
    long = " ".join(["the big dog runs fast in the cold rain"] * 3)
    texts = [long, "the cat plays.", long]
    first = cached_encoder(tiny_model, EmbeddingCache(tmp_path), max_length=8)
    first.encode(texts)
    second = cached_encoder(tiny_model, EmbeddingCache(tmp_path), max_length=8)
    second.encode(texts)
    assert first.truncated == second.truncated == 2 and second.encoded == 0


def test_unwritable_location_warns_once_and_encodes(tiny_model, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.warns(UserWarning, match="cannot use the embedding cache") as caught:
        cache = EmbeddingCache(blocker / "cache")
    assert len(caught) == 1 and not cache.enabled
    encoder = cached_encoder(tiny_model, cache)
    reference = cached_encoder(tiny_model, None).encode(TEXTS)
    np.testing.assert_allclose(encoder.encode(TEXTS), reference, atol=1e-6)
    np.testing.assert_allclose(encoder.encode(TEXTS), reference, atol=1e-6)
    assert encoder.encoded == 2 * len(TEXTS)


def test_read_only_database_warns_and_works(tiny_model, tmp_path, monkeypatch):
    EmbeddingCache(tmp_path).store("ns", ["a"], np.ones((1, 2), dtype=np.float32), [False])
    for suffix in ("-wal", "-shm"):
        (tmp_path / (FILE_NAME + suffix)).unlink(missing_ok=True)
    # chmod 0444 does not stop root (CI runs as root): open the file the way SQLite opens a file it
    # may not write, read-only, so that its writes fail as they would for any other user.
    connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect",
                        lambda path, **options: connect(f"file:{path}?mode=ro", uri=True, **options))
    with pytest.warns(UserWarning, match="embedding cache"):
        cache = EmbeddingCache(tmp_path)
    assert not cache.enabled
    encoder = cached_encoder(tiny_model, cache)
    np.testing.assert_allclose(encoder.encode(TEXTS), cached_encoder(tiny_model, None).encode(TEXTS), atol=1e-6)
    assert encoder.encoded == len(TEXTS)


def test_file_that_is_not_a_database_is_replaced(tiny_model, tmp_path):
    (tmp_path / FILE_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.warns(UserWarning, match="unreadable"):
        cache = EmbeddingCache(tmp_path)
    assert cache.enabled
    encoder = cached_encoder(tiny_model, cache)
    encoder.encode(TEXTS)
    again = cached_encoder(tiny_model, EmbeddingCache(tmp_path))
    again.encode(TEXTS)
    assert again.encoded == 0


def test_database_failing_later_disables_the_cache(tiny_model, tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache._db.close()  # every later call fails with sqlite3.ProgrammingError
    encoder = cached_encoder(tiny_model, cache)
    with pytest.warns(UserWarning, match="embedding cache"):
        vectors = encoder.encode(TEXTS)
    assert not cache.enabled and vectors.shape == (len(TEXTS), 32)


def test_keys_separate_namespace_and_text():
    assert text_key("ab", "c") != text_key("a", "bc")
    assert len(text_key("ns", "text")) == 32


def test_default_location(monkeypatch, tmp_path):
    monkeypatch.setenv("WHITEN_CACHE_DIR", str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv("WHITEN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "whiten"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "whiten"
    assert open_cache(False) is None


# ------------------------------------------------------------------ CLI


def run(*args):
    from typer.testing import CliRunner

    from whiten_cli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_second_encode_reads_the_cache(tiny_model, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n")
    cache_dir = tmp_path / "cache"
    first = run("encode", corpus, "-o", tmp_path / "a.npy", "--model", tiny_model, "--pooling", "cls", "--cache-dir", cache_dir)
    assert first.exit_code == 0, first.output
    assert (cache_dir / FILE_NAME).is_file()
    second = run("encode", corpus, "-o", tmp_path / "b.npy", "--model", tiny_model, "--pooling", "cls", "--cache-dir", cache_dir)
    assert second.exit_code == 0, second.output
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
    assert len(EmbeddingCache(cache_dir)) == len(TEXTS)


def test_cli_no_cache_writes_nothing(tiny_model, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n")
    cache_dir = tmp_path / "cache"
    result = run("encode", corpus, "-o", tmp_path / "a.npy", "--model", tiny_model, "--pooling", "cls",
                 "--no-cache", "--cache-dir", cache_dir)
    assert result.exit_code == 0, result.output
    assert not cache_dir.exists()


def test_cli_unwritable_cache_dir_warns_and_works(tiny_model, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run("fit", corpus, "-o", tmp_path / "pipe", "--model", tiny_model, "--pooling", "cls", "-k", 4,
                 "--cache-dir", blocker / "cache")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "encoding without a cache" in warnings[0]
    assert (tmp_path / "pipe" / "pipeline.json").is_file()


def test_help_imports_no_heavy_library():
    """`whiten --help` and argument errors answer without torch, transformers or faiss."""
    import subprocess

    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from whiten_cli.cli import app\n"
        "for args in (['--help'], ['fit', '--help'], ['encode', 'x.txt'], ['eval', '--nope']):\n"
        "    CliRunner().invoke(app, args)\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'faiss', 'sentence_transformers') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
