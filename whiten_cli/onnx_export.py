"""Export to ONNX: one graph from token ids to vectors, with its tokenizer beside it.

A *graph folder* holds ``model.onnx``, the tokenizer files (``tokenizer.json`` is what the ONNX
backend reads, with the ``tokenizers`` library alone) and ``onnx.json`` (what the graph computes:
model, pooling, max_length, dims, opset, outputs). Two kinds:

* ``pipeline`` (:func:`export_onnx`): transformer → pooling (masked) → whitening → projection → L2
  normalization, output ``sentence_embedding``; the pooled vector before the pipeline's stages is a
  second output, ``pooled_embedding`` (the backend applies the stages itself, so that it can cache
  and return the raw vectors too). The folder also holds ``pipeline.json`` and
  ``arrays.safetensors``: it is a pipeline folder as well, which ``--backend onnx`` runs without torch.
* ``raw`` (:func:`export_raw`): transformer → every pooling the model has, one output each
  (``pooled_cls``, ``pooled_last_avg``, ...), for ``fit`` and ``eval`` with ``--backend onnx``.

Inputs: ``input_ids``, ``attention_mask`` and ``token_type_ids`` where the model takes it (int64,
dynamic batch and sequence axes). torch and transformers are needed to export, not to run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from whiten_cli.errors import WhitenError

FORMAT = "whiten-onnx"
FORMAT_VERSION = 1
GRAPH_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
# Dynamic int8 with per-channel weight scales and 7-bit weights (reduce_range: no saturation in the
# u8×s8 products of CPUs without VNNI). Per-tensor 8-bit scales measured STS-B test 81.69 (float32
# 82.03, least cosine 0.82) on all-MiniLM-L6-v2; this scheme 81.93 (least cosine 0.96), same speed.
INT8_SCHEME = "qint8-per-channel-reduce-range"
METADATA_FILE = "onnx.json"
TOKENIZER_FILE = "tokenizer.json"
OPSET = 18
SENTENCE_EMBEDDING = "sentence_embedding"
POOLED_EMBEDDING = "pooled_embedding"
# A few texts to compare the int8 graph with the float32 one when no others are given.
_PROBE_TEXTS = ("A man is playing a guitar.", "The weather is cold and it is raining in the city.",
                "Stocks fell sharply on Monday after the report.", "a cat sleeps", "How do I bake bread at home?",
                "Two dogs are running through a field of tall grass while children watch.")


def missing_extra(what: str, modules: Sequence[str] = ("onnx", "onnxruntime", "onnxscript")) -> None:
    """Raise the one-line error naming the ``onnx`` extra when one of ``modules`` cannot be imported."""
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            raise WhitenError(f"{what} needs the onnx extra: pip install 'whiten[onnx]'") from None


def export_onnx(pipeline, out_dir: Path, *, quantize: str | None = None, model: str | None = None,
                quality_texts: Sequence[str] | None = None) -> dict:
    """Write the pipeline's whole graph into the existing empty folder ``out_dir``.

    ``model`` relocates the pipeline's model (same weights only). ``quantize="int8"`` adds
    ``model.int8.onnx`` (onnxruntime's dynamic quantization) and measures it against float32 on
    ``quality_texts`` (else a few built-in sentences). Returns a report: files, dims, opset and,
    with int8, the least and mean cosine between the two graphs' vectors.
    """
    if quantize not in (None, "int8"):
        raise WhitenError(f"quantize must be None or 'int8', got {quantize!r}")
    missing_extra("export to ONNX")
    from whiten_cli.index_folder import pipeline_fingerprint

    out_dir = Path(out_dir)
    encoder = pipeline.encoder(model, dtype="float32")
    graph = _graph_module(encoder, [pipeline.pooling], pipeline)
    outputs = [SENTENCE_EMBEDDING, POOLED_EMBEDDING]
    _export(graph, encoder, outputs, out_dir / GRAPH_FILE)
    pipeline.write_files(out_dir)
    metadata = _metadata(encoder, kind="pipeline", outputs={pipeline.pooling: POOLED_EMBEDDING},
                         graph_file=out_dir / GRAPH_FILE)
    metadata.update(pipeline_fingerprint=pipeline_fingerprint(pipeline), output_dim=pipeline.output_dim,
                    normalize=pipeline.normalize, sentence_embedding=SENTENCE_EMBEDDING)
    _save_tokenizer(encoder, out_dir)
    _write_metadata(out_dir, metadata)
    report = {"format": "onnx", "path": str(out_dir), "opset": OPSET, "input_dim": pipeline.input_dim,
              "output_dim": pipeline.output_dim, "inputs": metadata["inputs"], "size_bytes": (out_dir / GRAPH_FILE).stat().st_size}
    if quantize == "int8":
        quantize_int8(out_dir / GRAPH_FILE, out_dir / INT8_FILE)
        report["int8"] = compare_graphs(out_dir, list(quality_texts or _PROBE_TEXTS))
        report["int8"]["size_bytes"] = (out_dir / INT8_FILE).stat().st_size
        report["int8"]["scheme"] = INT8_SCHEME
    report["files"] = sorted(path.name for path in out_dir.iterdir())
    return report


def export_raw(encoder, out_dir: Path) -> dict:
    """Write a graph of the encoder's model giving every pooling it has (one output each) into
    the existing empty folder ``out_dir``; returns the folder's metadata."""
    missing_extra("--backend onnx (exporting the model)")
    from whiten_cli.encoder import Encoder

    if encoder.dtype != "float32" or encoder.device != "cpu":
        encoder = Encoder(str(encoder.source.path), pooling=encoder.pooling, max_length=encoder.max_length,
                          dtype="float32")
    poolings = ["cls", "last-avg", "first-last-avg", "last2avg"]
    if getattr(encoder._model, "pooler", None) is not None:
        poolings.append("pooler")
    if encoder.model_pooling is not None:
        poolings.append("model")
    outputs = {pooling: "pooled_" + pooling.replace("-", "_") for pooling in poolings}
    _export(_graph_module(encoder, poolings), encoder, list(outputs.values()), out_dir / GRAPH_FILE)
    metadata = _metadata(encoder, kind="raw", outputs=outputs, graph_file=out_dir / GRAPH_FILE)
    _save_tokenizer(encoder, out_dir)
    _write_metadata(out_dir, metadata)
    return metadata


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantization (weights int8, activations quantized per call) of an ONNX graph."""
    missing_extra("int8 quantization", ("onnx", "onnxruntime"))
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from whiten_cli.storage import atomic_write

    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer logs advice at WARNING on the root logger
    try:
        atomic_write(target, lambda tmp: quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8,
                                                          per_channel=True, reduce_range=True))
    finally:
        logging.getLogger().setLevel(quiet)


def compare_graphs(folder: Path, texts: Sequence[str]) -> dict:
    """Least and mean cosine between the int8 and float32 graphs' vectors of ``texts``."""
    from whiten_cli.onnx_backend import GraphRunner

    float32 = GraphRunner(folder, threads=None).final_vectors(texts)
    int8 = GraphRunner(folder, int8=True, threads=None).final_vectors(texts)
    cosines = np.sum(_unit(float32) * _unit(int8), axis=1)
    return {"texts": len(texts), "least_cosine": float(cosines.min()), "mean_cosine": float(cosines.mean())}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.finfo(np.float32).tiny)


# --------------------------------------------------------------------------- the graph


def _graph_module(encoder, poolings: list[str], pipeline=None):
    """A torch module: token ids → the encoder's pooled vectors (one output per pooling); with a
    pipeline, its final vectors first, then the pooled ones. Pooling is the encoder's own code."""
    import torch

    from whiten_cli.st_folder import load_head

    class Graph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = encoder._model
            self.needs_layers = any(p in ("first-last-avg", "last2avg") for p in poolings)
            if "model" in poolings and encoder._head is None:  # loaded now: not while the exporter traces
                encoder._head = load_head(encoder.model_pooling, "cpu")
            if pipeline is not None:
                whitening, projection = pipeline.whitening, pipeline.projection
                if whitening is not None:
                    self.register_buffer("shift", torch.tensor(whitening.beta * whitening.mean, dtype=torch.float32))
                    self.register_buffer("kernel", torch.tensor(whitening.kernel, dtype=torch.float32))
                if projection is not None:
                    self.register_buffer("projection", torch.tensor(projection.matrix, dtype=torch.float32))

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                inputs["token_type_ids"] = token_type_ids
            out = self.model(**inputs, output_hidden_states=self.needs_layers, return_dict=True)
            mask = attention_mask.unsqueeze(-1).float()
            pooled = [encoder._pool(pooling, out, mask).float() for pooling in poolings]
            if pipeline is None:
                return tuple(pooled)
            x = pooled[0]
            if hasattr(self, "kernel"):
                x = (x - self.shift) @ self.kernel
            if hasattr(self, "projection"):
                x = x @ self.projection
            if pipeline.normalize:
                x = x / x.norm(dim=1, keepdim=True).clamp(min=float(np.finfo(np.float32).tiny))
            return x, pooled[0]

    return Graph().eval()


def _takes_token_types(encoder) -> bool:
    return "token_type_ids" in encoder._tokenizer.model_input_names


def _export(graph, encoder, outputs: list[str], target: Path) -> None:
    """torch.onnx.export (the dynamo exporter: the older tracer fixes the padding mask's shape)."""
    import contextlib
    import io
    import logging
    import warnings

    import torch

    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if _takes_token_types(encoder) else [])
    example = torch.randint(5, 50, (2, 9), dtype=torch.int64)
    mask = torch.ones_like(example)
    mask[1, 6:] = 0
    args = (example, mask) + ((torch.zeros_like(example),) if len(names) == 3 else ())
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad(), \
                contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, args, str(target), input_names=names, output_names=outputs,
                              dynamic_shapes=tuple(dims for _ in names), opset_version=OPSET, dynamo=True,
                              external_data=False)
    except WhitenError:
        raise
    except Exception as exc:  # the exporter raises many kinds for an unsupported model
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WhitenError(f"{encoder.source.name}: cannot export the model to ONNX ({reason})") from None


def _save_tokenizer(encoder, out_dir: Path) -> None:
    """The tokenizer files; ``tokenizer.json`` must be among them (the ONNX backend reads only it)."""
    try:
        encoder._tokenizer.save_pretrained(str(out_dir))
    except Exception as exc:  # a tokenizer with a Python pre-tokenizer (RoFormer's jieba) cannot be serialized
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WhitenError(f"{encoder.source.name}: its tokenizer cannot be saved for ONNX ({reason}); "
                          f"use --backend torch") from None
    if not (out_dir / TOKENIZER_FILE).is_file():
        raise WhitenError(f"{encoder.source.name}: no fast tokenizer (tokenizer.json), which the ONNX backend needs; "
                          f"use --backend torch")


def _metadata(encoder, *, kind: str, outputs: dict[str, str], graph_file: Path) -> dict:
    from whiten_cli import __version__
    from whiten_cli.encoder import software_versions

    chain = encoder.model_pooling
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "whiten_version": __version__,
        "exported_with": list(software_versions()),
        "graph_sha256": _sha256(graph_file),
        "model": {"name": encoder.source.name, "fingerprint": encoder.source.fingerprint,
                  "path": str(encoder.source.path)},
        "pooling": encoder.pooling,
        "outputs": outputs,
        "dims": {pooling: encoder.dim_of(pooling) for pooling in outputs},
        "max_length": encoder.max_length,
        "do_lower_case": bool(chain and chain.do_lower_case),
        "model_chain": chain.mode if chain is not None else None,
        "normalizes": {pooling: pooling == "model" and bool(chain and chain.normalize) for pooling in outputs},
        "pad_token_id": encoder._tokenizer.pad_token_id or 0,
        "token_embeddings": int(encoder._model.get_input_embeddings().num_embeddings),
        "inputs": ["input_ids", "attention_mask"] + (["token_type_ids"] if _takes_token_types(encoder) else []),
        "opset": OPSET,
    }


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _write_metadata(out_dir: Path, metadata: dict) -> None:
    (out_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")


def read_metadata(folder: Path) -> dict:
    """``onnx.json`` of a graph folder, checked for what the backend reads."""
    file = Path(folder) / METADATA_FILE
    try:
        metadata = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WhitenError(f"{folder}: not an ONNX export ({METADATA_FILE} is missing)") from None
    except (OSError, ValueError) as exc:
        raise WhitenError(f"{file}: unreadable ONNX metadata ({exc})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise WhitenError(f"{file}: not whiten ONNX metadata (format is not {FORMAT!r})")
    if metadata.get("format_version", 0) > FORMAT_VERSION:
        raise WhitenError(f"{file}: written by a newer whiten (format {metadata['format_version']}); upgrade whiten")
    for key in ("kind", "model", "outputs", "dims", "max_length", "inputs", "pad_token_id"):
        if key not in metadata:
            raise WhitenError(f"{file}: incomplete ONNX metadata (missing {key!r})")
    for name in (GRAPH_FILE, TOKENIZER_FILE):
        if not (Path(folder) / name).is_file():
            raise WhitenError(f"{folder}: not a complete ONNX export ({name} is missing)")
    return metadata


def copy_graph_folder(source: Path, target: Path) -> None:
    """Copy a graph folder's files (hard links where the file system allows: graphs are large)."""
    import os

    target.mkdir(parents=True, exist_ok=True)
    for file in Path(source).iterdir():
        if not file.is_file() or file.name.startswith("."):
            continue
        try:
            os.link(file, target / file.name)
        except OSError:
            shutil.copy2(file, target / file.name)
