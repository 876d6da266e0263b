"""Take a fitted pipeline elsewhere: a sentence-transformers folder, a FAISS transform, an ONNX graph.

- ``sentence-transformers``: a folder ``SentenceTransformer(folder)`` loads with no code of
  whiten's: the model's Transformer, its pooling as stock modules (``Pooling``; first-last-avg and
  last2avg as ``WeightedLayerPooling`` over the hidden states, whose config.json then asks for
  them; ``model`` pooling keeps the folder's own modules), ``Dense(d→k, Identity)`` holding
  W = kernelᵀ and b = −β·μ·kernel (so the mean is removed), a bias-free ``Dense`` for the JL
  projection, and ``Normalize`` when the pipeline normalizes. Modules are written as
  sentence-transformers 3.x–5.x wrote them (``sentence_transformers.models.X``), which 6.x loads
  too, so one folder serves every version from 3.x on.
- ``faiss``: the whitening and projection as one ``LinearTransform`` (y = A·x + b) written with
  ``faiss.write_VectorTransform``, for an ``IndexPreTransform`` over raw pooled vectors.
- ``onnx``: :func:`whiten_cli.onnx_export.export_onnx` builds the graph.

Every export holds ``whiten_export.json``: whiten's version, the source pipeline's fingerprint,
the model, pooling and dimensions. The folder is written to a temporary folder and swapped in.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from whiten_cli import __version__
from whiten_cli.errors import ParameterError, WhitenError
from whiten_cli.pipeline import Pipeline
from whiten_cli.st_folder import read_json, read_model_pooling
from whiten_cli.storage import check_folder_target

FORMATS = ("sentence-transformers", "onnx", "faiss")
METADATA_FILE = "whiten_export.json"
FAISS_FILE = "transform.faiss"
EXPORT_FORMAT = "whiten-export"

_LEGACY = "sentence_transformers.models."  # module type names every version from 3.x to 6.x resolves
_IDENTITY = "torch.nn.modules.linear.Identity"
# Files of a model folder that the export writes itself, or that describe the source and not the export.
_NOT_COPIED = {"modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "README.md"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".h5", ".msgpack", ".pt", ".ckpt", ".onnx")


def export(pipeline: Pipeline, out_dir: str | os.PathLike[str], format: str = "sentence-transformers", *,
           force: bool = False, link_model: bool = False, model: str | None = None,
           quantize: str | None = None) -> dict:
    """Write ``pipeline`` to ``out_dir`` in ``format``; returns a report (what was written).

    An existing ``out_dir`` is refused unless ``force``, and even then only an earlier export or an
    empty folder is replaced. ``link_model`` symlinks the model's weight files instead of copying
    them (sentence-transformers format). ``model`` is where the pipeline's model is, if it moved.
    """
    from whiten_cli.storage import atomic_directory

    if format not in FORMATS:
        raise ParameterError("format", f"must be one of {', '.join(FORMATS)}, got {format!r}")
    if quantize is not None and format != "onnx":
        raise ParameterError("quantize", "applies to the onnx format only")
    check_output(out_dir, force)
    if format == "onnx":
        export_onnx = _onnx_exporter()
    elif format == "sentence-transformers":
        source = pipeline.model_source(model)
        layers = _layer_pooling(pipeline, source)  # refuses an unsupported pooling before writing
    with atomic_directory(out_dir) as tmp:
        if format == "sentence-transformers":
            report = _write_sentence_transformers(pipeline, source, tmp, link_model, layers)
        elif format == "faiss":
            report = _write_faiss(pipeline, tmp)
        else:
            report = dict(export_onnx(pipeline, tmp, quantize=quantize, model=model) or {})
            report.pop("path", None)  # the temporary folder it was written in, gone once swapped in
        report = {**metadata(pipeline, format), **report}
        if not (tmp / METADATA_FILE).exists():
            (tmp / METADATA_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def check_output(out_dir: str | os.PathLike[str], force: bool) -> None:
    """Refuse an existing ``out_dir`` without ``force``, and anything but an export or an empty folder with it."""
    target = Path(out_dir)
    check_folder_target(target, METADATA_FILE, "a whiten export")
    if not force and target.is_dir() and any(target.iterdir()):
        raise ParameterError("force", f"{target}: already exists; pass {{name}} to replace it")


_PIPELINE_KEYS = ("model", "pooling", "max_length", "input_dim", "output_dim", "whitening", "projection", "normalize")
METADATA_KEYS = ("format", "export_format", "tool_version", "pipeline_fingerprint", *_PIPELINE_KEYS)


def metadata(pipeline: Pipeline, format: str) -> dict:
    """What every export records of where it comes from (the keys :data:`METADATA_KEYS`)."""
    from whiten_cli.index_folder import pipeline_fingerprint

    source = pipeline.metadata()
    return {
        "format": EXPORT_FORMAT,
        "export_format": format,
        "tool_version": __version__,
        "pipeline_fingerprint": pipeline_fingerprint(pipeline),
        **{key: source[key] for key in _PIPELINE_KEYS},
    }


def linear_map(pipeline: Pipeline) -> tuple[np.ndarray, np.ndarray | None]:
    """The whitening and projection as one affine map: vectors ↦ vectors @ A + b (A is d × out), float64.

    b is None when nothing is subtracted (no whitening, or β = 0). Normalization is not linear and
    stays outside."""
    a = np.eye(pipeline.input_dim)
    b = None
    if pipeline.whitening is not None:
        w = pipeline.whitening
        a = np.asarray(w.kernel, dtype=np.float64)
        if w.beta:
            b = -w.beta * np.asarray(w.mean, dtype=np.float64) @ a
    if pipeline.projection is not None:
        projection = np.asarray(pipeline.projection.matrix, dtype=np.float64)
        a = a @ projection
        b = b @ projection if b is not None else None
    return a, b


# --------------------------------------------------------------------------- FAISS


def _write_faiss(pipeline: Pipeline, folder: Path) -> dict:
    import faiss

    a, b = linear_map(pipeline)
    transform = faiss.LinearTransform(pipeline.input_dim, a.shape[1], b is not None)
    faiss.copy_array_to_vector(np.ascontiguousarray(a.T, dtype=np.float32).ravel(), transform.A)
    if b is not None:
        faiss.copy_array_to_vector(np.ascontiguousarray(b, dtype=np.float32), transform.b)
    transform.is_trained = True
    faiss.write_VectorTransform(transform, str(folder / FAISS_FILE))
    return {"files": [FAISS_FILE, METADATA_FILE]}


# --------------------------------------------------------------------------- ONNX


def _onnx_exporter():
    try:
        from whiten_cli.onnx_export import export_onnx
    except ModuleNotFoundError as exc:
        if exc.name != "whiten_cli.onnx_export":
            raise
        raise WhitenError("the onnx format is not available in this version of whiten") from None
    return export_onnx


# --------------------------------------------------------------------------- sentence-transformers


def _layer_pooling(pipeline: Pipeline, source) -> tuple[int, list[float]] | None:
    """(layer_start, layer_weights) of the WeightedLayerPooling a layer-mean pooling needs, None for others;
    refuses a pooling no stock module reproduces."""
    if pipeline.pooling == "pooler":
        raise WhitenError(f"{pipeline.model}: pooler pooling has no sentence-transformers module; fit the pipeline "
                          f"with --pooling cls or last-avg, or export it with --format faiss")
    if pipeline.pooling not in ("first-last-avg", "last2avg"):
        return None
    chain = read_model_pooling(source.path)
    config = read_json(source.path / (chain.transformer_subfolder if chain else "") / "config.json")
    layers = config.get("num_hidden_layers")
    if not isinstance(layers, int) or isinstance(layers, bool) or layers < 1:
        raise WhitenError(f"{source.path}: config.json has no num_hidden_layers; {pipeline.pooling} pooling cannot "
                          f"be exported (fit the pipeline with --pooling last-avg or cls)")
    # hidden_states[0] is the embeddings' output, [i] layer i's: first-last-avg averages [1] and [L],
    # last2avg [L−1] and [L]; WeightedLayerPooling averages [layer_start:] with these weights.
    if pipeline.pooling == "first-last-avg":
        return 1, [1.0] + [0.0] * (layers - 2) + [1.0] if layers > 1 else [1.0]
    return layers - 1, [1.0, 1.0]


def _write_sentence_transformers(pipeline: Pipeline, source, folder: Path, link_model: bool,
                                 layers: tuple[int, list[float]] | None) -> dict:
    chain = read_model_pooling(source.path)
    transformer = source.path / (chain.transformer_subfolder if chain else "")
    copied, linked = _copy_transformer(transformer, folder, link_model)
    config = read_json(transformer / "config.json")
    if layers is not None:  # the Transformer module passes all_layer_embeddings on when the model outputs them
        config["output_hidden_states"] = True
    _write_json(folder / "config.json", config)
    settings = read_json(transformer / "sentence_bert_config.json", missing_ok=True) if chain else {}
    settings.update(max_seq_length=pipeline.max_length, do_lower_case=bool(chain and chain.do_lower_case))
    _write_json(folder / "sentence_bert_config.json", settings)
    st_config = read_json(source.path / "config_sentence_transformers.json", missing_ok=True) if chain else {}
    _write_json(folder / "config_sentence_transformers.json", {**st_config, "similarity_fn_name": "cosine"})

    modules = [{"path": "", "type": _LEGACY + "Transformer"}]

    def add(kind: str, config: dict | None, weights: dict[str, np.ndarray] | None = None,
            type_path: str | None = None, copy_from: Path | None = None) -> None:
        path = f"{len(modules)}_{kind}"
        if copy_from is not None and copy_from.is_dir():
            shutil.copytree(copy_from, folder / path)
        else:
            (folder / path).mkdir()
        if config is not None:
            _write_json(folder / path / "config.json", config)
        if weights is not None:  # through bytes: save_file would create the file readable by its owner only
            from safetensors.numpy import save

            (folder / path / "model.safetensors").write_bytes(
                save({name: np.ascontiguousarray(array, dtype=np.float32) for name, array in weights.items()}))
        modules.append({"path": path, "type": type_path or _LEGACY + kind})

    hidden = int(config.get("hidden_size", pipeline.input_dim))
    if pipeline.pooling == "model":
        for module in read_json(source.path / "modules.json", expect=list)[1:]:  # after the Transformer
            add(str(module["type"]).rsplit(".", 1)[-1], None, type_path=str(module["type"]),
                copy_from=source.path / module.get("path", ""))
    else:
        if layers is not None:
            layer_start, weights = layers
            add("WeightedLayerPooling",
                {"word_embedding_dimension": hidden, "layer_start": layer_start,
                 "num_hidden_layers": int(config["num_hidden_layers"])},
                {"layer_weights": np.asarray(weights)})
        mode = "cls" if pipeline.pooling == "cls" else "mean"
        add("Pooling", {"word_embedding_dimension": hidden, "pooling_mode_cls_token": mode == "cls",
                        "pooling_mode_mean_tokens": mode == "mean", "pooling_mode_max_tokens": False,
                        "pooling_mode_mean_sqrt_len_tokens": False})
    width = pipeline.input_dim
    if pipeline.whitening is not None:
        w = pipeline.whitening
        kernel = np.asarray(w.kernel, dtype=np.float64)
        add("Dense", _dense_config(width, w.n_components, bias=True),
            {"linear.weight": kernel.T, "linear.bias": -w.beta * np.asarray(w.mean, dtype=np.float64) @ kernel})
        width = w.n_components
    if pipeline.projection is not None:
        add("Dense", _dense_config(width, pipeline.projection.n_components, bias=False),
            {"linear.weight": np.asarray(pipeline.projection.matrix).T})
    if pipeline.normalize:
        add("Normalize", None)
    _write_json(folder / "modules.json", [{"idx": i, "name": str(i), **module} for i, module in enumerate(modules)])
    return {"modules": [module["type"].rsplit(".", 1)[-1] for module in modules],
            "model_files": "linked" if linked else "copied", "files_copied": copied, "files_linked": linked}


def _dense_config(in_features: int, out_features: int, bias: bool) -> dict:
    return {"in_features": in_features, "out_features": out_features, "bias": bias, "activation_function": _IDENTITY}


def _copy_transformer(transformer: Path, folder: Path, link: bool) -> tuple[int, int]:
    """Copy the model's top-level files (tokenizer, config, the weights it loads) into ``folder``;
    with ``link``, weights become absolute symlinks to the model's own files. Returns (copied, linked)."""
    from whiten_cli.encoder import _folder_weights

    weights = {file.name for file in _folder_weights(transformer)}  # one file, or the shards of an index
    copied = linked = 0
    for file in sorted(transformer.iterdir()):
        name = file.name
        if not file.is_file() or name.startswith(".") or name in _NOT_COPIED or name == "config.json":
            continue
        if name.endswith(_WEIGHT_SUFFIXES) and name not in weights:
            continue  # other formats of the same weights (pytorch_model.bin beside model.safetensors, ONNX, ...)
        if link and name in weights:
            os.symlink(file.resolve(), folder / name)
            linked += 1
        else:
            shutil.copyfile(file, folder / name)
            copied += 1
    return copied, linked


def _write_json(file: Path, value) -> None:
    file.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
