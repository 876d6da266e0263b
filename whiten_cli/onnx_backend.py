"""The ONNX Runtime backend: encode with an exported graph, without torch or transformers.

:class:`OnnxEncoder` has the surface of :class:`whiten_cli.encoder.Encoder` (``encode``,
``encode_poolings``, ``dim``, ``cache_namespace``, ``truncated``...) and its batching, caching and
duplicate handling; only the forward pass differs: token ids from the ``tokenizers`` library
(``tokenizer.json``, truncated at max_length as the torch path does), the graph in onnxruntime.

Where the graph comes from (:func:`pipeline_encoder`, :func:`model_encoder`): a pipeline folder that
is an ONNX export (``onnx.json`` in it), an index folder's ``onnx/`` copy, or else the model's
poolings exported once into the cache folder (``onnx/raw-<key>``, written atomically; exporting
needs torch, running does not).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from whiten_cli.encoder import (DEFAULT_BATCH_SIZE, Encoder, ModelSource, _batches, _check_token_ids, check_pooling,
                                check_run_options, model_files_digests)
from whiten_cli.errors import WhitenError
from whiten_cli.onnx_export import (GRAPH_FILE, INT8_FILE, INT8_SCHEME, SENTENCE_EMBEDDING, TOKENIZER_FILE,
                                    missing_extra, quantize_int8, read_metadata)

BACKENDS = ("torch", "onnx")
ONNX_DTYPES = ("auto", "float32", "int8")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise WhitenError(f"--backend must be torch or onnx, got {backend!r}")
    return backend


class GraphRunner:
    """One graph folder in onnxruntime, with its tokenizer."""

    def __init__(self, folder: str | os.PathLike[str], *, int8: bool = False, threads: int | None = None,
                 max_length: int | None = None, graphs_dir: str | os.PathLike[str] | None = None):
        missing_extra("--backend onnx", ("onnxruntime", "tokenizers"))
        import onnxruntime
        import tokenizers

        self.folder = Path(folder)
        self.metadata = read_metadata(self.folder)
        self.max_length = max_length or int(self.metadata["max_length"])
        graph = self.folder / GRAPH_FILE
        if int8:
            graph = self.folder / INT8_FILE
            if not graph.is_file():
                graph = _derived_int8(self.folder, self.metadata, graphs_dir)
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.log_severity_level = 3
        try:
            self.session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
            self.tokenizer = tokenizers.Tokenizer.from_file(str(self.folder / TOKENIZER_FILE))
        except Exception as exc:  # onnxruntime and tokenizers raise their own kinds for a damaged file
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WhitenError(f"{self.folder}: unreadable ONNX export ({reason})") from None
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length, direction=_truncation_side(self.folder))
        # the graph's hash does not cover the files tokenization reads: the cache key names them
        digests = model_files_digests(self.folder)
        self.tokenizer_digest = ",".join(f"{name}={digests[name]}" for name in sorted(digests))
        self.inputs = list(self.metadata["inputs"])
        self.pad = int(self.metadata["pad_token_id"])

    def tokenize(self, texts: Sequence[str]) -> tuple[list[list[int]], np.ndarray]:
        """Token ids per text, cut at max_length, and which texts were cut."""
        if self.metadata.get("do_lower_case"):
            texts = [text.lower() for text in texts]
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=True)
        cut = np.fromiter((bool(encoding.overflowing) for encoding in encodings), dtype=bool, count=len(encodings))
        return [encoding.ids for encoding in encodings], cut

    def run(self, batch: Sequence[Sequence[int]], outputs: Sequence[str]) -> list[np.ndarray]:
        """The graph's ``outputs`` for one batch of token ids (padded here)."""
        width = max(len(seq) for seq in batch)
        input_ids = np.full((len(batch), width), self.pad, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, seq in enumerate(batch):
            input_ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        feed = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        return self.session.run(list(outputs), feed)

    def final_vectors(self, texts: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """A pipeline graph's ``sentence_embedding`` of ``texts`` (in order)."""
        if self.metadata["kind"] != "pipeline":
            raise WhitenError(f"{self.folder}: a graph of poolings only, without a pipeline's {SENTENCE_EMBEDDING}")
        ids, _ = self.tokenize(texts)
        lengths = np.fromiter((len(seq) for seq in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(-lengths, kind="stable")
        out = None
        for rows in _batches(lengths[order], batch_size, batch_size * 64):
            rows = order[rows]
            (vectors,) = self.run([ids[i] for i in rows], [SENTENCE_EMBEDDING])
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[rows] = vectors
        return out


def _truncation_side(folder: Path) -> str:
    try:
        side = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("truncation_side")
    except (OSError, ValueError, AttributeError):
        side = None
    return side if side in ("left", "right") else "right"


def _derived_int8(folder: Path, metadata: dict, graphs_dir: str | os.PathLike[str] | None = None) -> Path:
    """An int8 graph quantized from this folder's float32 one, kept in the cache folder (``graphs_dir``,
    else the default one) by the graph's hash and the quantization scheme."""
    from whiten_cli.cache import default_cache_dir

    graph = metadata.get("graph_sha256", _short_hash(str(folder)))
    target = Path(graphs_dir or default_cache_dir()) / "onnx" / f"int8-{graph}-{_short_hash(INT8_SCHEME)[:8]}" / INT8_FILE
    if not target.is_file():
        quantize_int8(folder / GRAPH_FILE, target)
    return target


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class OnnxEncoder(Encoder):
    """:class:`~whiten_cli.encoder.Encoder` with the forward pass in onnxruntime (``dtype`` float32,
    or int8: the graph dynamically quantized, lossy). ``source`` names the model (for a pipeline's
    record); by default the one the graph folder records."""

    def __init__(self, folder: str | os.PathLike[str], *, pooling: str | None = None, max_length: int | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, dtype: str = "float32", cache=None,
                 threads: int | None = None, source: ModelSource | None = None,
                 graphs_dir: str | os.PathLike[str] | None = None):
        if dtype not in ONNX_DTYPES:
            raise WhitenError(f"--dtype {dtype} is not available with --backend onnx (float32 or int8)")
        check_run_options(max_length, batch_size, threads)
        self.dtype = "int8" if dtype == "int8" else "float32"
        self.runner = GraphRunner(folder, int8=self.dtype == "int8", threads=threads, max_length=max_length,
                                  graphs_dir=graphs_dir)
        self.folder = self.runner.folder
        meta = self.runner.metadata
        self.source = source or ModelSource(name=meta["model"]["name"], path=Path(meta["model"].get("path", folder)),
                                            fingerprint=meta["model"]["fingerprint"])
        self.pooling = check_pooling(pooling or meta["pooling"])
        self.max_length = self.runner.max_length
        self.model_pooling = None  # the graph holds the model's own modules
        self.batch_size = batch_size
        self.device = "cpu"
        self.dtype_reason = "onnxruntime " + ("dynamic int8 quantization" if self.dtype == "int8" else "float32")
        self.threads = threads
        self.truncated = 0
        self.encoded = 0
        if cache is not None and not hasattr(cache, "lookup"):
            from whiten_cli.cache import EmbeddingCache

            cache = EmbeddingCache(cache)
        self.cache = cache
        self.dim = self.dim_of(self.pooling)

    @property
    def normalizes(self) -> bool:
        return bool(self.runner.metadata.get("normalizes", {}).get(self.pooling))

    def dim_of(self, pooling: str) -> int:
        dims = self.runner.metadata["dims"]
        if pooling not in dims:
            raise WhitenError(f"{self.folder}: the ONNX graph gives {', '.join(dims)} pooling, not {pooling}")
        return int(dims[pooling])

    def cache_namespace(self, pooling: str) -> str:
        meta = self.runner.metadata
        dtype = f"{self.dtype}:{INT8_SCHEME}" if self.dtype == "int8" else self.dtype
        return "\x1f".join((self.source.fingerprint, "onnx", str(meta.get("graph_sha256")), self.runner.tokenizer_digest,
                            "lower" if meta.get("do_lower_case") else "cased", pooling, str(meta.get("model_chain")),
                            str(self.max_length), dtype, *_runtime_versions()))

    def _encode_distinct(self, texts: list[str], poolings: Sequence[str], progress, done: int, total: int):
        ids, cut = self.runner.tokenize(texts)
        if "token_embeddings" in self.runner.metadata:  # graphs exported before it was recorded go unchecked
            _check_token_ids(ids, texts, int(self.runner.metadata["token_embeddings"]), self.folder)
        names = [self.runner.metadata["outputs"][pooling] for pooling in poolings]
        outputs = self._run_by_length(ids, poolings, lambda batch: dict(zip(poolings, self.runner.run(batch, names))),
                                      progress, done, total)
        return outputs, cut


@lru_cache(maxsize=1)
def _runtime_versions() -> tuple[str, ...]:
    from importlib.metadata import PackageNotFoundError, version

    from whiten_cli import __version__

    def installed(package: str) -> str:
        try:
            return f"{package}={version(package)}"
        except PackageNotFoundError:
            return f"{package}=none"

    return (f"whiten={__version__}", installed("onnxruntime"), installed("tokenizers"))


# --------------------------------------------------------------------------- where the graph comes from


def is_graph_folder(folder: str | os.PathLike[str] | None) -> bool:
    from whiten_cli.onnx_export import METADATA_FILE

    return folder is not None and (Path(folder) / METADATA_FILE).is_file()


def model_encoder(encoder: Encoder, *, batch_size: int = DEFAULT_BATCH_SIZE, dtype: str = "float32", cache=None,
                  threads: int | None = None, cache_dir: str | os.PathLike[str] | None = None) -> OnnxEncoder:
    """An OnnxEncoder for the model, pooling and max_length of a (not yet loaded) torch ``encoder``:
    the model's poolings exported once into the cache folder, keyed by everything the graph depends on."""
    from whiten_cli.cache import default_cache_dir
    from whiten_cli.encoder import _files_digest, software_versions
    from whiten_cli.storage import atomic_directory

    if dtype not in ONNX_DTYPES:
        raise WhitenError(f"--dtype {dtype} is not available with --backend onnx (float32 or int8)")
    chain = encoder.model_pooling
    key = "\x1f".join((encoder.source.fingerprint, _files_digest(encoder._transformer_path),
                       chain.mode if chain is not None else "", str(bool(chain and chain.do_lower_case)),
                       *software_versions(), *_export_versions()))
    folder = Path(cache_dir or default_cache_dir()) / "onnx" / f"raw-{_short_hash(key)}"
    if not is_graph_folder(folder):
        from whiten_cli.onnx_export import export_raw

        with atomic_directory(folder) as tmp:
            export_raw(encoder, tmp)
    return OnnxEncoder(folder, pooling=encoder.pooling, max_length=encoder.max_length, batch_size=batch_size,
                       dtype=dtype, cache=cache, threads=threads, source=encoder.source, graphs_dir=cache_dir)


def pipeline_encoder(pipeline, folder: str | os.PathLike[str] | None = None, model: str | None = None, *,
                     batch_size: int = DEFAULT_BATCH_SIZE, dtype: str = "float32", cache=None,
                     threads: int | None = None, cache_dir: str | os.PathLike[str] | None = None) -> OnnxEncoder:
    """An OnnxEncoder giving ``pipeline``'s pooled vectors: from ``folder`` when it is an ONNX export
    of that pipeline (an export folder, an index's ``onnx/``; no torch needed), else from the
    model's graph in the cache (exported on first use)."""
    options = {"batch_size": batch_size, "dtype": dtype, "cache": cache, "threads": threads}
    if is_graph_folder(folder) and model is None:
        check_graph(folder, pipeline)
        return OnnxEncoder(folder, pooling=pipeline.pooling, max_length=pipeline.max_length, graphs_dir=cache_dir,
                           **options)
    return model_encoder(pipeline.encoder(model, dtype="float32"), cache_dir=cache_dir, **options)


def check_graph(folder: str | os.PathLike[str], pipeline) -> dict:
    """Refuse a graph folder made from another model, or without the pipeline's pooling."""
    meta = read_metadata(Path(folder))
    if meta["model"].get("fingerprint") != pipeline.model_fingerprint:
        raise WhitenError(f"{folder}: the ONNX graph was exported from other weights ({meta['model'].get('fingerprint')}) "
                          f"than this pipeline's model ({pipeline.model_fingerprint})")
    if pipeline.pooling not in meta["outputs"]:
        raise WhitenError(f"{folder}: the ONNX graph gives {', '.join(meta['outputs'])} pooling, not {pipeline.pooling}")
    if meta["dims"][pipeline.pooling] != pipeline.input_dim:
        raise WhitenError(f"{folder}: the ONNX graph gives vectors of {meta['dims'][pipeline.pooling]}, "
                          f"the pipeline takes {pipeline.input_dim}")
    return meta


def _export_versions() -> tuple[str, ...]:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in ("onnx", "onnxscript"):
        try:
            found.append(f"{package}={version(package)}")
        except PackageNotFoundError:
            found.append(f"{package}=none")
    return tuple(found)
