"""The saved artifact: model reference + pooling + whitening + projection + normalization.

A pipeline folder holds ``pipeline.json`` (metadata: the model — name as typed, weight
fingerprint, absolute path and path relative to the pipeline folder, hub id and revision — pooling,
max_length, k, β, γ, projection, dims, tool version) and ``arrays.safetensors`` (μ, the whitening
kernel, the eigenvalues and eigenvectors of Σ, the projection matrix). Nothing is pickled; the folder is written
atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from whiten_cli import __version__, checks
from whiten_cli.encoder import POOLINGS
from whiten_cli.errors import InputError, ParameterError, WhitenError
from whiten_cli.projection import RandomProjection
from whiten_cli.storage import atomic_directory, check_folder_target, reads_one_version
from whiten_cli.whitening import Whitening

FORMAT = "whiten-pipeline"
FORMAT_VERSION = 1
METADATA_FILE = "pipeline.json"
ARRAYS_FILE = "arrays.safetensors"


@dataclass(frozen=True)
class Pipeline:
    """Pooled encoder vectors → whitening → projection → L2 normalization."""

    model: str  # the name as typed
    model_fingerprint: str
    pooling: str
    max_length: int
    input_dim: int
    whitening: Whitening | None = None
    projection: RandomProjection | None = None
    normalize: bool = True
    eigenvalues: np.ndarray | None = None
    eigenvectors: np.ndarray | None = None  # (d, d): with mean and eigenvalues, the fitted Σ (None in older pipelines)
    info: dict = field(default_factory=dict)  # free-form provenance: corpus, sentence count, ...
    model_path: str | None = None  # the resolved folder (absolute); None in pipelines of older versions
    model_revision: str | None = None  # a hub model's snapshot commit
    model_hub_id: str | None = None
    # sha256 of the model's tokenizer and configuration files (None in pipelines of older versions)
    model_files: dict[str, str] | None = None
    # The encoders :meth:`encode` built, by (batch_size, device, dtype).
    _encoders: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    # The pipeline.json it was loaded from, for messages about its values (None when not loaded).
    source_file: Path | None = field(default=None, repr=False, compare=False)

    @property
    def output_dim(self) -> int:
        if self.projection is not None:
            return self.projection.n_components
        if self.whitening is not None:
            return self.whitening.n_components
        return self.input_dim

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """Apply the fitted stages to pooled vectors (float32 out); NaN or infinite values are refused."""
        x = checks.vectors(vectors, self.input_dim, dtype=np.float32)
        if self.whitening is not None:
            x = self.whitening.transform(x)
        if self.projection is not None:
            x = self.projection.transform(x)
        if self.normalize:
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            x = x / np.maximum(norms, np.finfo(np.float32).tiny)
        return x.astype(np.float32, copy=False)

    def encoder(self, model: str | None = None, **options):
        """An Encoder for this pipeline's model and pooling; refuses a model with other weights.

        Without ``model``: the stored folder, else the hub id at its stored revision, else the
        name as typed (pipelines of older versions)."""
        from whiten_cli.encoder import Encoder

        source = self.model_source(model)
        try:
            return Encoder(str(source.path), pooling=self.pooling, max_length=self.max_length, **options)
        except ParameterError as exc:
            if exc.parameter != "max_length":
                raise
            # The value comes from pipeline.json, not from a flag the user gave.
            raise WhitenError(f"{self.source_file or METADATA_FILE}: " + exc.naming("max_length")) from None

    def model_source(self, model: str | None = None):
        """Where this pipeline's model is (a :class:`~whiten_cli.encoder.ModelSource`), found as
        :meth:`encoder` finds it; refuses a model with other weights."""
        from whiten_cli.encoder import legacy_fingerprint, resolve_model

        if model is not None:
            source = resolve_model(model)
        elif self.model_path is not None and Path(self.model_path).is_dir():
            source = resolve_model(self.model_path)
        elif self.model_hub_id is not None:
            source = resolve_model(self.model_hub_id, revision=self.model_revision)
        else:
            try:
                source = resolve_model(self.model)
            except WhitenError:
                if self.model_path is None:
                    raise
                raise WhitenError(f"{self.model_path}: this pipeline's model folder is gone (and not found beside "
                                  f"the pipeline either); give its new place with --model") from None
        if self.model_path is not None or source.fingerprint == self.model_fingerprint:
            self.check_model(source.fingerprint, source.name)
        else:  # an older pipeline: fingerprinted every top-level weight file
            self.check_model(legacy_fingerprint(source.path) or source.fingerprint, source.name)
        self.check_model_files(source.path)
        return source

    def check_encoder(self, encoder) -> None:
        """Refuse an encoder of another model (same weights only) or another pooling than this pipeline's."""
        if encoder.pooling != self.pooling:
            raise ParameterError("encoder", f"pools with {encoder.pooling!r}, but this pipeline was fitted on "
                                            f"{self.pooling!r} vectors")
        if self.model_path is not None:  # older pipelines fingerprinted the weights otherwise (model_source)
            self.check_model(encoder.source.fingerprint, encoder.source.name)
        self.check_model_files(encoder.source.path)

    def check_model(self, fingerprint: str, name: str) -> None:
        if fingerprint != self.model_fingerprint:
            raise WhitenError(
                f"model {name} (weights {fingerprint}) is not the model this pipeline was fitted on "
                f"({self.model}, weights {self.model_fingerprint}); refit with `whiten fit` for this model"
            )

    def check_model_files(self, folder: Path) -> None:
        """Refuse a model folder whose tokenizer or configuration files (those recorded at fitting) changed:
        the same weights would give other vectors, whitened as if they were the fitted ones."""
        from whiten_cli.encoder import model_files_digests

        if not self.model_files or not Path(folder).is_dir():  # no folder: an ONNX graph, which holds its own
            return
        now = model_files_digests(Path(folder))
        changed = next((name for name, digest in self.model_files.items() if now.get(name) != digest), None)
        if changed is not None:
            what = "is gone" if changed not in now else "differs from the one this pipeline was fitted with"
            raise WhitenError(f"{Path(folder) / changed}: {what}, so the vectors would not be the fitted ones; "
                              "refit with `whiten fit` (or restore the file)")

    def encode(self, texts: str | Sequence[str], encoder=None, *, batch_size: int | None = None,
               device: str = "cpu", dtype: str = "auto", progress=None) -> np.ndarray:
        """The pipeline's vectors of ``texts``: a ``str`` gives one vector (``dim``,), a list an
        (n, ``dim``) float32 array.

        Without ``encoder``, the pipeline builds one for its model with :meth:`encoder` on first
        use and keeps it; ``batch_size``, ``device`` and ``dtype`` say how it runs. ``progress(done,
        total)`` is called after each batch. A given ``encoder`` must be of this pipeline's model
        and pooling: another one's vectors would be whitened without a word."""
        if encoder is not None:
            self.check_encoder(encoder)
        if encoder is None:
            key = (batch_size, device, dtype)
            if key not in self._encoders:
                options = {"batch_size": batch_size} if batch_size is not None else {}
                self._encoders[key] = self.encoder(device=device, dtype=dtype, **options)
            encoder = self._encoders[key]
        if isinstance(texts, str):
            return self.transform(encoder.encode([texts], progress=progress))[0]
        return self.transform(encoder.encode(texts, progress=progress))

    @property
    def dim(self) -> int:
        """The dimension of the pipeline's vectors (``output_dim``)."""
        return self.output_dim

    def metadata(self, folder: str | os.PathLike[str] | None = None) -> dict:
        """The ``pipeline.json`` content; ``folder`` (where it is saved) adds the model's relative path."""
        whitening = None
        if self.whitening is not None:
            whitening = {"k": self.whitening.n_components, "beta": self.whitening.beta, "gamma": self.whitening.gamma}
        projection = None
        if self.projection is not None:
            projection = {"kind": "gaussian-jl", "n": self.projection.n_components, "seed": self.projection.seed}
        model = {"name": self.model, "fingerprint": self.model_fingerprint}
        if self.model_path is not None:
            model["path"] = self.model_path
            if folder is not None:
                model["relative_path"] = Path(os.path.relpath(self.model_path, Path(folder).resolve())).as_posix()
        if self.model_hub_id is not None:
            model.update(hub_id=self.model_hub_id, revision=self.model_revision)
        if self.model_files is not None:
            model["files"] = self.model_files
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tool_version": __version__,
            "model": model,
            "pooling": self.pooling,
            "max_length": self.max_length,
            "input_dim": self.input_dim,
            "output_dim": self.output_dim,
            "whitening": whitening,
            "projection": projection,
            "normalize": self.normalize,
            "info": self.info,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the pipeline folder atomically; an existing pipeline folder is replaced whole.

        Anything else already at ``path`` (a file, a folder that is not a pipeline) is refused
        rather than replaced: ``-o data`` or ``-o corpus.txt`` must not delete the user's files.
        """
        check_output_folder(path)
        with atomic_directory(path) as tmp:
            self.write_files(tmp, shown=path)
        return Path(path)

    def write_files(self, folder: Path, shown: str | os.PathLike[str] | None = None) -> None:
        """Write ``pipeline.json`` and ``arrays.safetensors`` into the existing ``folder`` (not atomic:
        for a folder being built elsewhere); ``shown`` is where it will live, for the model's relative path."""
        from safetensors.numpy import save_file

        arrays = {}
        if self.whitening is not None:
            arrays["mean"] = self.whitening.mean.astype(np.float64)
            arrays["kernel"] = self.whitening.kernel.astype(np.float64)
        if self.eigenvalues is not None:
            arrays["eigenvalues"] = np.asarray(self.eigenvalues, dtype=np.float64)
        if self.eigenvectors is not None:
            arrays["eigenvectors"] = np.asarray(self.eigenvectors, dtype=np.float64)
        if self.projection is not None:
            arrays["projection"] = self.projection.matrix
        folder = Path(folder)
        (folder / METADATA_FILE).write_text(json.dumps(self.metadata(shown or folder), indent=2) + "\n", encoding="utf-8")
        save_file({name: np.ascontiguousarray(a) for name, a in arrays.items()}, str(folder / ARRAYS_FILE),
                  metadata={"format": FORMAT})

    @classmethod
    @reads_one_version
    def load(cls, path: str | os.PathLike[str]) -> Pipeline:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        folder = Path(path)
        if not folder.is_dir():
            raise WhitenError(f"{folder}: pipeline folder does not exist (create one with `whiten fit`)")
        for name in (METADATA_FILE, ARRAYS_FILE):
            if not (folder / name).is_file():
                raise WhitenError(f"{folder}: not a complete pipeline folder ({name} is missing)")
        meta_file = folder / METADATA_FILE
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WhitenError(f"{meta_file}: not valid pipeline metadata ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise WhitenError(f"{meta_file}: not a whiten pipeline (format is not {FORMAT!r})")
        if not isinstance(meta.get("format_version", 0), int) or meta.get("format_version", 0) < 0:
            raise WhitenError(f"{meta_file}: not valid pipeline metadata (format_version {meta['format_version']!r})")
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise WhitenError(f"{meta_file}: written by a newer whiten (format {meta['format_version']}); upgrade whiten")
        try:
            arrays = load_file(str(folder / ARRAYS_FILE))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WhitenError(f"{folder / ARRAYS_FILE}: unreadable ({exc})") from None
        _check_metadata(meta, meta_file)
        _check_arrays(arrays, meta, folder / ARRAYS_FILE)
        try:
            whitening = None
            if meta["whitening"] is not None:
                w = meta["whitening"]
                whitening = Whitening(arrays["mean"], arrays["kernel"], float(w["beta"]), float(w["gamma"]))
            projection = None
            if meta["projection"] is not None:
                projection = RandomProjection(arrays["projection"], int(meta["projection"]["seed"]))
            pipeline = cls(
                model=meta["model"]["name"],
                model_fingerprint=meta["model"]["fingerprint"],
                pooling=meta["pooling"],
                max_length=int(meta["max_length"]),
                input_dim=int(meta["input_dim"]),
                whitening=whitening,
                projection=projection,
                normalize=bool(meta["normalize"]),
                eigenvalues=arrays.get("eigenvalues"),
                eigenvectors=arrays.get("eigenvectors"),
                info=meta.get("info", {}),
                model_path=_model_folder(meta["model"], folder),
                model_revision=meta["model"].get("revision"),
                model_hub_id=meta["model"].get("hub_id"),
                model_files=meta["model"].get("files"),
                source_file=meta_file,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WhitenError(f"{meta_file}: incomplete pipeline metadata (missing {exc})") from None
        return pipeline


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_fraction(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1


# The fields Pipeline.load reads: (dotted name, test, what it must be). Parents come before their
# children; the children of a null parent (no whitening, no projection) are not looked for.
_FIELDS = [
    ("model", lambda v: isinstance(v, dict), "an object"),
    ("model.name", lambda v: isinstance(v, str), "a string"),
    ("model.fingerprint", lambda v: isinstance(v, str), "a string"),
    ("pooling", lambda v: isinstance(v, str), "a string"),
    ("max_length", _is_count, "a positive integer"),
    ("input_dim", _is_count, "a positive integer"),
    ("output_dim", _is_count, "a positive integer"),
    ("whitening", lambda v: v is None or isinstance(v, dict), "an object or null"),
    ("whitening.k", _is_count, "a positive integer"),
    ("whitening.beta", _is_fraction, "a number in [0, 1]"),
    ("whitening.gamma", _is_fraction, "a number in [0, 1]"),
    ("projection", lambda v: v is None or isinstance(v, dict), "an object or null"),
    ("projection.kind", lambda v: v == "gaussian-jl", "'gaussian-jl'"),
    ("projection.n", _is_count, "a positive integer"),
    ("projection.seed", lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    ("normalize", lambda v: isinstance(v, bool), "true or false"),
]


def _check_metadata(meta: dict, meta_file: Path) -> None:
    """Each field present and of its type: a string where a number belongs is named, not a TypeError."""
    for name, valid, what in _FIELDS:
        *parents, key = name.split(".")
        holder = meta
        for parent in parents:
            holder = holder[parent]
        if holder is None:
            continue
        if key not in holder:
            raise WhitenError(f"{meta_file}: incomplete pipeline metadata (missing {name!r})")
        if not valid(holder[key]):
            raise WhitenError(f"{meta_file}: not valid pipeline metadata ({name} is {holder[key]!r}, not {what})")
    for key in ("path", "relative_path", "hub_id", "revision"):  # optional: pipelines of older versions lack them
        if not isinstance(meta["model"].get(key, ""), (str, type(None))):
            raise WhitenError(f"{meta_file}: not valid pipeline metadata (model.{key} is {meta['model'][key]!r}, "
                              "not a string or null)")
    files = meta["model"].get("files")
    if files is not None and not (isinstance(files, dict) and all(isinstance(v, str) for v in files.values())):
        raise WhitenError(f"{meta_file}: not valid pipeline metadata (model.files is {files!r}, not an object of "
                          "file digests)")
    if meta["pooling"] not in POOLINGS:
        raise WhitenError(f"{meta_file}: not valid pipeline metadata (pooling is {meta['pooling']!r}, not one of "
                          f"{', '.join(POOLINGS)})")
    if not isinstance(meta.get("info", {}), dict):
        raise WhitenError(f"{meta_file}: not valid pipeline metadata (info is {meta['info']!r}, not an object)")


def _check_arrays(arrays: dict[str, np.ndarray], meta: dict, arrays_file: Path) -> None:
    """The arrays the metadata's stages need, of the shapes its dimensions give, floating point and finite.

    A NaN in a kernel would turn every vector into NaN, and a shape that disagrees would fail as a
    numpy broadcast deep inside transform: both are refused here, naming the file.
    """
    d, width = meta["input_dim"], meta["input_dim"]
    expected: dict[str, tuple[tuple[int, ...], str]] = {}  # name -> (shape, where the shape comes from)
    if meta["whitening"] is not None:
        k = meta["whitening"]["k"]
        expected["mean"] = ((d,), f"input_dim {d}")
        expected["kernel"] = ((d, k), f"input_dim {d}, whitening k {k}")
        width = k
    if meta["projection"] is not None:
        n = meta["projection"]["n"]
        expected["projection"] = ((width, n), f"{width} dimensions into the projection, projection n {n}")
        width = n
    if "eigenvalues" in arrays:
        expected["eigenvalues"] = ((d,), f"input_dim {d}")
    if "eigenvectors" in arrays:
        expected["eigenvectors"] = ((d, d), f"input_dim {d}")
    if width != meta["output_dim"]:
        raise WhitenError(f"{arrays_file.parent / METADATA_FILE}: output_dim {meta['output_dim']} and the stages "
                          f"do not match (they give {width} dimensions)")
    for name, (shape, source) in expected.items():
        if name not in arrays:
            raise WhitenError(f"{arrays_file}: no {name!r} array, which {METADATA_FILE} calls for")
        array = arrays[name]
        if not np.issubdtype(array.dtype, np.floating):
            raise WhitenError(f"{arrays_file}: {name!r} is {array.dtype}, not floating point")
        if array.shape != shape:
            raise WhitenError(f"{arrays_file}: {name!r} has shape {array.shape}, but {METADATA_FILE} "
                              f"({source}) gives {shape}")
        if not np.isfinite(array).all():
            raise WhitenError(f"{arrays_file}: {name!r} holds NaN or infinite values")


def _model_folder(model: dict, folder: Path) -> str | None:
    """The stored absolute model path, else the stored relative one resolved against the pipeline
    folder when that exists there (the model moved along with the pipeline)."""
    path, relative = model.get("path"), model.get("relative_path")
    if path is None or Path(path).is_dir() or relative is None:
        return path
    beside = (folder / relative).resolve()
    return str(beside) if beside.is_dir() else path


def check_output_folder(path: str | os.PathLike[str]) -> None:
    """Refuse to write a pipeline over something that is not an (empty or) pipeline folder."""
    check_folder_target(path, METADATA_FILE, "a pipeline")


@dataclass(frozen=True)
class FitOptions:
    """What ``whiten fit`` fits: whitening to k dims with (β, γ), then an optional JL projection."""

    n_components: int | None = None  # None keeps every dimension
    beta: float = 1.0
    gamma: float = 1.0
    whiten: bool = True
    jl_dim: int | None = None
    seed: int = 0
    normalize: bool = True

    def __post_init__(self) -> None:
        """Checked when made, so that a bad value is refused before a corpus is encoded."""
        for name in ("beta", "gamma"):
            checks.fraction(getattr(self, name), name)
        for name in ("whiten", "normalize"):
            checks.flag(getattr(self, name), name)
        for name in ("n_components", "jl_dim", "seed"):
            if getattr(self, name) is not None or name == "seed":
                # an int, not numpy's: the seed and the sizes are written to pipeline.json
                object.__setattr__(self, name, checks.integer(getattr(self, name), name))
        if self.n_components is not None and self.n_components < 1:
            raise ParameterError("n_components", f"must be at least 1, got {self.n_components}")
        if self.jl_dim is not None and self.jl_dim < 1:
            raise ParameterError("jl_dim", f"must be positive, got {self.jl_dim}")
        if not self.whiten and self.jl_dim is None:
            raise ParameterError("jl_dim", "nothing to fit: without whitening, {name} is needed")
        if self.seed < 0:  # numpy's generators take none
            raise ParameterError("seed", f"must be at least 0, got {self.seed}")


def fit_pipeline(
    texts: Sequence[str],
    encoder,
    options: FitOptions,
    *,
    chunk_size: int = 4096,
    progress=None,
    info: dict | None = None,
) -> Pipeline:
    """Encode ``texts`` chunk by chunk into streaming statistics, then fit whitening/projection.

    Only one chunk of vectors is in memory at a time, so a corpus of any size fits in a
    fixed amount of memory (its texts aside). ``texts`` may be any iterable of str (a generator is
    read into a list); a single str is refused, not fitted on as its characters.
    """
    from whiten_cli.stats import GaussianStats

    if isinstance(texts, str):
        raise ParameterError("texts", "must be a sequence of texts, got a single str (a fit needs at least 2 texts)")
    if not isinstance(options, FitOptions):
        raise ParameterError("options", f"must be FitOptions, got {type(options).__name__}")
    if not all(hasattr(encoder, name) for name in ("encode", "dim", "source", "pooling")):
        raise ParameterError("encoder", f"must be an Encoder, got {type(encoder).__name__}")
    if info is not None and not isinstance(info, dict):
        raise ParameterError("info", f"must be a dict, got {type(info).__name__}")
    if checks.integer(chunk_size, "chunk_size") < 1:
        raise ParameterError("chunk_size", f"must be at least 1, got {chunk_size}")
    if not isinstance(texts, Sequence):
        texts = list(texts)
    check_fit_options(options, encoder.dim)
    stats = None
    if options.whiten:
        stats = GaussianStats.empty(encoder.dim)
        done = 0
        for start in range(0, len(texts), chunk_size):
            chunk = texts[start : start + chunk_size]
            # Progress batch by batch, over the whole corpus (the encoder counts a chunk's distinct texts).
            batches = (lambda n, _, before=done: progress(before + n, len(texts))) if progress else None
            stats.update(encoder.encode(chunk, progress=batches))
            done += len(chunk)
            if progress:
                progress(done, len(texts))
    return pipeline_from_stats(stats, encoder, options, len(texts), info)


def check_fit_options(options: FitOptions, dim: int) -> None:
    """Refuse options that cannot be fitted on vectors of ``dim``, before anything is encoded (the rest
    :class:`FitOptions` checks when made)."""
    if options.n_components is not None and not 1 <= options.n_components <= dim:
        raise ParameterError("n_components", f"must be between 1 and the model's dimension {dim}, "
                                             f"got {options.n_components}")
    source = (options.n_components or dim) if options.whiten else dim
    if options.jl_dim is not None and options.jl_dim > source:
        raise ParameterError("jl_dim", f"must be at most the {source} dimensions it projects from (a random "
                                       f"projection only shrinks vectors), got {options.jl_dim}")


def pipeline_from_stats(stats, encoder, options: FitOptions, count: int, info: dict | None = None) -> Pipeline:
    """The pipeline of ``options`` from the corpus's statistics (None without whitening), however they
    were gathered (one process, or blocks merged); ``encoder`` says which model, pooling and dtype."""
    from whiten_cli.encoder import model_files_digests
    from whiten_cli.whitening import Eigenbasis

    whitening = eigenvalues = eigenvectors = None
    if options.whiten:
        basis = Eigenbasis.fit(stats)
        try:
            whitening = basis.whitening(options.n_components, options.beta, options.gamma)
        except ParameterError:
            raise
        except WhitenError as exc:  # the corpus cannot be whitened (its vectors do not vary): name it
            if not (info or {}).get("corpus"):
                raise
            raise InputError(info["corpus"], str(exc)) from None
        eigenvalues, eigenvectors = basis.eigenvalues, basis.eigenvectors
    projection = None
    if options.jl_dim is not None:
        input_dim = whitening.n_components if whitening is not None else encoder.dim
        projection = RandomProjection.create(input_dim, options.jl_dim, options.seed)
    return Pipeline(
        model=encoder.source.name,
        model_fingerprint=encoder.source.fingerprint,
        model_files=model_files_digests(encoder.source.path),
        pooling=encoder.pooling,
        max_length=encoder.max_length,
        input_dim=encoder.dim,
        whitening=whitening,
        projection=projection,
        normalize=options.normalize,
        eigenvalues=eigenvalues,
        eigenvectors=eigenvectors,
        info={"fitted_on": count, "dtype": encoder.dtype, **(info or {})},
        model_path=str(encoder.source.path),
        model_revision=encoder.source.revision,
        model_hub_id=encoder.source.hub_id,
    )
