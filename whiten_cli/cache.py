"""An on-disk cache of pooled sentence vectors, so that repeated fit / encode / eval runs encode once.

One SQLite file (stdlib ``sqlite3``, nothing pickled) holds one row per (encoder settings, text):

- ``key``: sha256 of the cache format version, a *namespace* naming everything the vector depends
  on (model weight fingerprint, tokenizer and configuration files, pooling, max_length, dtype) and
  the text itself. A change to any of them gives another key, so a stale vector is never found.
- ``dim``, ``truncated`` (whether the text was cut at max_length) and ``vector`` (float32 bytes).
- ``checksum``: sha256 over key, dim, truncated and vector. A row whose checksum, length or
  dimension does not match, or whose values are not finite, is treated as missing: the text is
  encoded again and the row replaced.

The default location is ``$WHITEN_CACHE_DIR``, else ``$XDG_CACHE_HOME/whiten``, else
``~/.cache/whiten``. When the location cannot be written, or the database fails later on, the
cache warns once (``warnings.warn``; the CLI prints it as one ``warning:`` line) and every
lookup then misses: encoding goes on without a cache.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
FILE_NAME = "embeddings-v1.sqlite3"
ENV_VAR = "WHITEN_CACHE_DIR"
_BATCH = 500  # keys per SELECT (SQLite allows at least 999 bound parameters)


def default_cache_dir() -> Path:
    """``$WHITEN_CACHE_DIR``, else ``$XDG_CACHE_HOME/whiten``, else ``~/.cache/whiten``."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "whiten"
    return Path.home() / ".cache" / "whiten"


def text_key(namespace: str, text: str) -> bytes:
    """The row key of ``text`` under ``namespace``: 32 bytes of sha256."""
    digest = hashlib.sha256()
    digest.update(f"whiten-cache-v{FORMAT_VERSION}\0{namespace}\0".encode())
    digest.update(text.encode("utf-8", "surrogatepass"))
    return digest.digest()


def _checksum(key: bytes, dim: int, truncated: int, vector: bytes) -> bytes:
    return hashlib.sha256(key + dim.to_bytes(4, "little") + truncated.to_bytes(1, "little") + vector).digest()[:16]


class EmbeddingCache:
    """Pooled vectors by (namespace, text), in ``folder/embeddings-v1.sqlite3``.

    >>> cache = EmbeddingCache("/tmp/whiten-cache")
    >>> vectors, found, truncated = cache.lookup(namespace, texts, dim)
    >>> cache.store(namespace, [texts[i] for i in missing], new_vectors, new_truncated)

    Never raises for a cache problem: it warns once and disables itself (:attr:`enabled`).
    """

    def __init__(self, folder: str | os.PathLike[str] | None = None):
        self.folder = Path(folder).expanduser() if folder is not None else default_cache_dir()
        self.path = self.folder / FILE_NAME
        self.enabled = True
        self.hits = 0  # rows found valid, over this object's life
        self.rejected = 0  # rows found but corrupt (recomputed)
        self._db: sqlite3.Connection | None = None
        try:
            self._db = self._open()
        except (OSError, sqlite3.Error) as exc:
            self._disable(f"cannot use the embedding cache at {self.folder} ({_reason(exc)}); encoding without a cache")

    def _open(self) -> sqlite3.Connection:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and not _is_corruption(exc):
                raise
            # Not a database (or damaged beyond use): start a new file rather than fail every run.
            warnings.warn(f"embedding cache {self.path} is unreadable ({_reason(exc)}); starting a new one", stacklevel=3)
            for suffix in ("", "-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            try:
                db.execute("PRAGMA journal_mode=WAL")  # readers do not wait for a writer
            except sqlite3.OperationalError:
                pass  # e.g. a file system without shared memory: the default journal works too
            db.execute("PRAGMA synchronous=NORMAL")
            # A rowid table with the key indexed apart: rows of ~1.5 KB in a WITHOUT ROWID table
            # spill into overflow pages and take three times the space.
            db.execute(
                "CREATE TABLE IF NOT EXISTS vectors (key BLOB NOT NULL UNIQUE, dim INTEGER NOT NULL, "
                "truncated INTEGER NOT NULL, vector BLOB NOT NULL, checksum BLOB NOT NULL)"
            )
            # Prove it is writable now, not halfway through a long run.
            db.execute("BEGIN IMMEDIATE")
            db.execute("COMMIT")
            db.execute("SELECT count(*) FROM (SELECT 1 FROM vectors LIMIT 1)").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    def _disable(self, message: str) -> None:
        if self.enabled:
            warnings.warn(message, stacklevel=3)
        self.enabled = False
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None

    def lookup(self, namespace: str, texts: Sequence[str], dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(vectors, found, truncated)`` for ``texts``: float32 (n, dim), and two bool (n,) masks.

        Rows not found, or found but failing their checks, have ``found`` False (and zeros).
        """
        n = len(texts)
        vectors = np.zeros((n, dim), dtype=np.float32)
        found = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        if not self.enabled or n == 0:
            return vectors, found, truncated
        keys = [text_key(namespace, text) for text in texts]
        position = {key: i for i, key in enumerate(keys)}
        try:
            for start in range(0, n, _BATCH):
                batch = keys[start : start + _BATCH]
                rows = self._db.execute(
                    f"SELECT key, dim, truncated, vector, checksum FROM vectors WHERE key IN ({','.join('?' * len(batch))})",
                    batch,
                ).fetchall()
                for key, row_dim, row_truncated, blob, checksum in rows:
                    i = position.get(bytes(key))
                    if i is None:
                        continue
                    if not self._valid(bytes(key), row_dim, row_truncated, blob, checksum, dim):
                        self.rejected += 1
                        continue
                    vector = np.frombuffer(blob, dtype="<f4")
                    if not np.isfinite(vector).all():
                        self.rejected += 1
                        continue
                    vectors[i] = vector
                    found[i] = True
                    truncated[i] = bool(row_truncated)
        except sqlite3.Error as exc:
            self._disable(f"embedding cache {self.path} failed ({_reason(exc)}); encoding without a cache")
            return np.zeros((n, dim), dtype=np.float32), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        self.hits += int(found.sum())
        return vectors, found, truncated

    @staticmethod
    def _valid(key: bytes, row_dim, row_truncated, blob, checksum, dim: int) -> bool:
        if not (isinstance(row_dim, int) and row_dim == dim and row_truncated in (0, 1)):
            return False
        if not isinstance(blob, bytes) or len(blob) != 4 * dim or not isinstance(checksum, bytes):
            return False
        return checksum == _checksum(key, row_dim, row_truncated, blob)

    def store(self, namespace: str, texts: Sequence[str], vectors: np.ndarray, truncated: Sequence[bool]) -> None:
        """Write (or replace) the rows of ``texts``; a failure disables the cache with a warning."""
        if not self.enabled or len(texts) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        dim = int(vectors.shape[1])
        rows = []
        for text, vector, cut in zip(texts, vectors, truncated):
            key = text_key(namespace, text)
            blob = vector.tobytes()
            flag = int(bool(cut))
            rows.append((key, dim, flag, blob, _checksum(key, dim, flag, blob)))
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?, ?)", rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._disable(f"cannot write to the embedding cache {self.path} ({_reason(exc)}); encoding without a cache")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __len__(self) -> int:
        if not self.enabled:
            return 0
        return int(self._db.execute("SELECT count(*) FROM vectors").fetchone()[0])


def _is_corruption(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text or "corrupt" in text


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def open_cache(enabled: bool = True, folder: str | os.PathLike[str] | None = None) -> EmbeddingCache | None:
    """The cache the CLI uses: None with ``enabled=False``; the default folder unless ``folder``."""
    if not enabled:
        return None
    return EmbeddingCache(folder)
