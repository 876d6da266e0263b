"""The ``whiten`` command line: parses arguments, calls the library, prints results.

Heavy libraries (torch, transformers, faiss, numpy) are imported inside commands only, so that
``whiten --help`` and argument errors answer at once.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

try:  # typer 0.2x runs on its own copy of click and no longer needs the click package
    from typer._click import ClickException
except ImportError:  # older typer: click itself
    from click import ClickException

from whiten_cli.errors import InputError, ParameterError, WhitenError, describe_fault, one_line, writing
from whiten_cli.storage import check_file_target, check_not_an_input

# The library's errors name Python parameters; the command line names the flag that sets each one.
_FLAGS = {"n_components": "-k/--dim", "k": "-k", "jl_dim": "--jl-dim", "max_length": "--max-length",
          "batch_size": "--batch-size", "threads": "--threads", "pooling": "--pooling", "beta": "--beta",
          "gamma": "--gamma", "format": "--format", "quantize": "--quantize", "force": "--force",
          "whiten": "--no-whiten", "hnsw_m": "--hnsw-m", "nlist": "--nlist", "pq_m": "--pq-m", "nprobe": "--nprobe",
          "ef": "--ef", "max_memory": "--max-memory", "seed": "--seed",
          "threshold": "--threshold", "resamples": "--resamples", "device": "--device", "max_dim": "--max-dim"}


class _Group(TyperGroup):
    """The edge of every command: no traceback reaches the user.

    A WhitenError, or a fault of the machine or of a damaged file (disk full, out of memory,
    unreadable database...), is one ``error:`` line on stderr and exit code 2; anything else is a
    bug, reported as one ``error: internal error`` line and exit code 1 (WHITEN_DEBUG=1 re-raises
    it, and every fault other than a WhitenError, for the traceback). Warnings are one line too, and
    so is a warning the user's filters turn into an error (exit code 2).
    """

    def invoke(self, ctx: typer.Context):
        import os
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.showwarning = lambda message, *_, **__: typer.echo(f"warning: {one_line(message)}", err=True)
                return super().invoke(ctx)
        except (typer.Exit, typer.Abort, ClickException):
            raise  # help, usage errors and exit codes: click's own
        except WhitenError as exc:
            message = exc.naming(_FLAGS.get(exc.parameter, exc.parameter)) if isinstance(exc, ParameterError) else exc
            typer.echo(f"error: {one_line(message)}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except Warning as exc:  # raised where the user made warnings errors (python -W error, PYTHONWARNINGS)
            typer.echo(f"error: {one_line(exc)}", err=True)
            raise typer.Exit(2) from None
        except Exception as exc:
            if isinstance(exc, BrokenPipeError) and _stdout_is_gone():
                raise typer.Exit(141) from None  # `whiten search ... | head`: quietly, as `yes | head` (128 + SIGPIPE)
            if os.environ.get("WHITEN_DEBUG", "") not in ("", "0"):
                raise
            fault = describe_fault(exc)
            if fault is not None:
                typer.echo(f"error: {one_line(fault)}", err=True)
                raise typer.Exit(2) from None
            typer.echo(f"error: internal error ({type(exc).__name__}: {one_line(exc)}); "
                       "set WHITEN_DEBUG=1 for the traceback", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Group,
    help="BERT-whitening sentence embeddings: fit, encode, search and evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Options shared by several commands.
ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="HF folder, sentence-transformers folder or hub id [default: all-MiniLM-L6-v2].")]
PoolingOpt = Annotated[Optional[str], typer.Option("--pooling", "-p", help="cls, pooler, last-avg, first-last-avg, last2avg or model [default: model's own, else first-last-avg].")]
FieldOpt = Annotated[Optional[str], typer.Option("--field", "--column", help="JSONL field or CSV/TSV column with the text [default: the first of text, sentence, query, document].")]
MaxLengthOpt = Annotated[Optional[int], typer.Option("--max-length", help="Tokens per text; longer texts are truncated and counted [default: a sentence-transformers folder's max_seq_length, else 128].")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size", help="Texts per forward pass [default: 64].")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, ...")]
DtypeOpt = Annotated[Optional[str], typer.Option("--dtype", help="auto [default]: bfloat16 where this CPU runs it natively and measurably faster (AMX, AVX512-BF16), bfloat16/float16 autocast on CUDA, else float32 (-v says which and why); float32; bfloat16 (~2x faster on CPUs with native bfloat16, same scores; far slower on AVX2-only CPUs); float16; int8 (CPU; lossy: ~1 point lower Spearman, cosine to float32 down to 0.72).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Say which dtype was chosen and why, and whether the model's weights were hashed or found in the hash cache.")]
ConfigOpt = Annotated[Optional[str], typer.Option("--config", "-c", help="Preset name (default, paper, soft, compact, retrieval) or a TOML file.")]
BetaOpt = Annotated[Optional[float], typer.Option("--beta", help="Mean removed: x − βμ, in [0, 1] [default: 1].")]
SkipEmptyOpt = Annotated[bool, typer.Option("--skip-empty", help="Skip empty texts instead of failing.")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", help="CPU threads for the model [default: torch's, one per core]; on a busy machine 1 can be faster.")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Encode every text again; neither read nor write the embedding cache.")]
CacheDirOpt = Annotated[Optional[Path], typer.Option("--cache-dir", help="Embedding cache folder [default: $WHITEN_CACHE_DIR, else ~/.cache/whiten].")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr (a bar on a terminal, else a line every 10 s).")]
BackendOpt = Annotated[Optional[str], typer.Option("--backend", help="torch [default] or onnx: the model as an ONNX graph in onnxruntime (an ONNX-exported pipeline, else the model exported once into the cache folder); --dtype float32 or int8 (lossy). Needs the onnx extra.")]
EngineOpt = Annotated[str, typer.Option("--engine", help="local (this process) or ray (a Ray cluster: pip install 'whiten[ray]'); same results.")]
RayAddressOpt = Annotated[Optional[str], typer.Option("--ray-address", help="--engine ray: an existing cluster (HOST:PORT, or auto) [default: start a local Ray].")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", help="--engine ray: encoder actors, one CPU each [default: every CPU of the cluster].")]


def _stdout_is_gone() -> bool:
    """Whether the reader of standard output has closed it (a pipe with no reader polls as an error).
    If so, stdout is pointed at /dev/null, so that Python's flush at exit does not fail once more."""
    import os
    import select

    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        if not any(events & select.POLLERR for _, events in poller.poll(0)):
            return False
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    except (OSError, ValueError, AttributeError):  # no file descriptor (a test runner's captured stdout), no poll
        return False
    return True


def _file_not_stdout(param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    """``-`` is standard output to many tools; here it would be a file or folder named "-"."""
    if value is not None and str(value) == "-":
        raise WhitenError(f"{param.opts[-1]} -: not standard output here: every output is a file or folder, written "
                          f"whole and then renamed; give it a name")
    return value


def _settings(config: str | None, **flags) -> dict:
    """Built-in defaults < preset/TOML < flags given on the command line."""
    from whiten_cli.config import load_config

    settings = {"max_length": None, "batch_size": 64, "beta": 1.0, "gamma": 1.0, "seed": 0, "dtype": "auto",
                "whiten": True, "normalize": True}
    settings.update(load_config(config))
    settings.update({key: value for key, value in flags.items() if value is not None})
    return settings


def _say(message: str) -> None:
    typer.echo(message, err=True)


def _clock() -> float:
    return time.monotonic()


class _Echo(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _say(record.getMessage())


def _verbose(verbose: bool) -> None:
    """-v: the library's info messages (dtype choice, weight hashing) as lines on stderr."""
    logger = logging.getLogger("whiten_cli")
    if not any(isinstance(handler, _Echo) for handler in logger.handlers):
        logger.addHandler(_Echo())
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


class _ProgressBar:
    """Progress of a long encoding on stderr.

    A rich bar on a terminal; elsewhere (a log, a pipe) a line every ``interval`` seconds with the
    counts and the rate, so that a long run in a log is not silent; nothing when ``quiet``.
    """

    interval = 10.0  # seconds between two lines when stderr is not a terminal

    def __init__(self, label: str, quiet: bool = False):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        console = Console(stderr=True)
        self._label = label
        self._lines = not quiet and not console.is_terminal
        self._progress = Progress(
            "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=console, transient=True, disable=quiet or not console.is_terminal,
        )
        self._task = self._progress.add_task(label, total=None)
        self._last_line = _clock()
        self._first: tuple[float, int] | None = None  # (time, count) of the first report: the model is loaded
        self._printed: tuple[int, int] | None = None
        self._latest: tuple[int, int] | None = None

    def __enter__(self):
        self._progress.start()
        return self

    def __exit__(self, *exc):
        self._progress.stop()
        if exc[0] is None and self._printed is not None and self._latest != self._printed:
            self._line(*self._latest, _clock())  # a log that showed the run going also shows it done

    def __call__(self, done: int, total: int) -> None:
        self._progress.update(self._task, completed=done, total=total)
        self._latest = (done, total)
        now = _clock()
        if self._first is None:
            self._first = (now, done)
        if self._lines and now - self._last_line >= self.interval:
            self._line(done, total, now)

    def _line(self, done: int, total: int, now: float) -> None:
        """``encoding: 12,800/50,000 texts (256/s)``: the rate since the first report, which leaves out
        loading the model and texts found in the cache; none yet at the first report."""
        started, done_then = self._first
        rate = f" ({(done - done_then) / (now - started):,.0f}/s)" if now > started else ""
        _say(f"{self._label}: {done:,}/{total:,} texts{rate}")
        self._last_line, self._printed = now, (done, total)


def _report_truncation(encoder, total: int) -> None:
    if encoder.truncated:
        _say(f"note: {encoder.truncated} of {total} texts were longer than {encoder.max_length} tokens and were truncated "
             f"(raise --max-length to keep more)")


def _cache(no_cache: bool, cache_dir: Path | None):
    """The embedding cache for --no-cache / --cache-dir (an unusable folder warns and gives none)."""
    from whiten_cli.cache import open_cache

    cache = open_cache(not no_cache, cache_dir)
    return cache if cache is not None and cache.enabled else None


def _encoding(settings: dict, device: str, no_cache: bool = False, cache_dir: Path | None = None,
              threads: int | None = None) -> dict:
    """How to run the model: the Encoder options every encoding command shares."""
    return {"batch_size": settings["batch_size"], "device": device, "dtype": settings["dtype"],
            "cache": _cache(no_cache, cache_dir), "threads": threads}


def _engine(command: str, name: str, address: str | None, workers: int | None, backend: str | None = None):
    """The engine asked for; --engine ray without the extra, or with the onnx backend (its actors run
    torch encoders), fails here, before any work."""
    from whiten_cli.shards import Engine

    engine = Engine(name, address, workers)
    if engine.name == "ray":
        if backend not in (None, "torch"):
            raise WhitenError(f"--engine ray runs torch encoders; --backend {backend} is for the local engine")
        from whiten_cli.engine_ray import require_ray

        require_ray(command)
    return engine


def _encoder(settings: dict, device: str, no_cache: bool = False, cache_dir: Path | None = None,
             threads: int | None = None, backend: str | None = None):
    from whiten_cli.encoder import Encoder

    options = _encoding(settings, device, no_cache, cache_dir, threads)
    if _onnx(backend, device):
        from whiten_cli.onnx_backend import model_encoder

        model = Encoder(settings.get("model"), pooling=settings.get("pooling"), max_length=settings["max_length"],
                        dtype="float32")  # names the model and its settings; not loaded
        return model_encoder(model, cache_dir=cache_dir, **_onnx_encoding(options))
    return Encoder(settings.get("model"), pooling=settings.get("pooling"), max_length=settings["max_length"], **options)


def _onnx(backend: str | None, device: str) -> bool:
    """Whether --backend asks for onnxruntime (which runs on the CPU here)."""
    from whiten_cli.onnx_backend import check_backend

    if check_backend(backend or "torch") == "torch":
        return False
    if device != "cpu":
        raise WhitenError(f"--backend onnx runs on the CPU, not on --device {device}")
    return True


def _onnx_encoding(options: dict) -> dict:
    return {key: options[key] for key in ("batch_size", "dtype", "cache", "threads")}


def _pipeline_encoder(pipe, graph: Path | None, model: str | None, options: dict, backend: str | None,
                      cache_dir: Path | None = None):
    """The pipeline's encoder: torch, or onnxruntime on ``graph`` when it is an ONNX export of the
    pipeline (an export folder, an index's copy), else on the model's graph in the cache."""
    if _onnx(backend, options["device"]):
        from whiten_cli.onnx_backend import pipeline_encoder

        return pipeline_encoder(pipe, graph, model, cache_dir=cache_dir, **_onnx_encoding(options))
    return pipe.encoder(model, **options)


@app.command()
def fit(
    corpus: Annotated[Path, typer.Argument(help="Texts to fit on: .txt (one a line), .jsonl, .csv or .tsv (empty texts are skipped), a folder or glob of shards, or a dataset name such as stsb-train (its distinct sentences).")],
    output: Annotated[Path, typer.Option("--output", "-o", callback=_file_not_stdout, help="Pipeline folder to write.")],
    model: ModelOpt = None,
    pooling: PoolingOpt = None,
    k: Annotated[Optional[int], typer.Option("-k", "--dim", help="Dimensions kept after whitening [default: all].")] = None,
    beta: BetaOpt = None,
    gamma: Annotated[Optional[float], typer.Option("--gamma", help="Whitening strength Λ^(−γ/2), in [0, 1] [default: 1]; eigenvalues below 1e-6·λ₁ are floored to it.")] = None,
    whiten: Annotated[Optional[bool], typer.Option("--whiten/--no-whiten", help="Fit whitening (--no-whiten: JL projection only).")] = None,
    jl_dim: Annotated[Optional[int], typer.Option("--jl-dim", help="Add a Gaussian JL random projection to this many dimensions.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the JL projection [default: 0].")] = None,
    normalize: Annotated[Optional[bool], typer.Option("--normalize/--no-normalize", help="L2-normalize output vectors [default: normalize].")] = None,
    field: FieldOpt = None,
    max_length: MaxLengthOpt = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
    verbose: VerboseOpt = False,
    config: ConfigOpt = None,
    threads: ThreadsOpt = None,
    no_cache: NoCacheOpt = False,
    cache_dir: CacheDirOpt = None,
    quiet: QuietOpt = False,
    backend: BackendOpt = None,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = None,
) -> None:
    """Fit whitening (and an optional JL projection) on a corpus; write a pipeline folder."""
    _verbose(verbose)
    from whiten_cli.pipeline import FitOptions, check_fit_options, check_output_folder, fit_pipeline, pipeline_from_stats
    from whiten_cli.projection import jl_distortion, jl_min_dim
    from whiten_cli.readers import read_texts
    from whiten_cli.shards import fit_statistics, is_sharded
    from whiten_cli.sts import NAMED, corpus_sentences

    s = _settings(config, model=model, pooling=pooling, k=k, beta=beta, gamma=gamma, whiten=whiten, jl_dim=jl_dim,
                  seed=seed, normalize=normalize, max_length=max_length, batch_size=batch_size, dtype=dtype)
    check_output_folder(output)
    engine_ = _engine("fit", engine, ray_address, workers, backend)
    options = FitOptions(n_components=s.get("k"), beta=s["beta"], gamma=s["gamma"], whiten=s["whiten"],
                         jl_dim=s.get("jl_dim"), seed=s["seed"], normalize=s["normalize"])
    by_name = engine_.name == "local" and not corpus.exists() and str(corpus).strip().lower() in NAMED
    if by_name or (engine_.name == "local" and not is_sharded(corpus)):
        texts = corpus_sentences(str(corpus)) if by_name else read_texts(corpus, field=field, skip_empty=True)
        if s["whiten"] and len(texts) < 2:
            raise InputError(corpus, "1 text; whitening is fitted on at least 2 (a mean and a covariance)")
        encoder = _encoder(s, device, no_cache, cache_dir, threads, backend)
        with _ProgressBar("encoding", quiet) as bar:
            pipeline = fit_pipeline(texts, encoder, options, progress=bar, info={"corpus": str(corpus)})
        _report_truncation(encoder, len(texts))
    else:
        encoder = _encoder(s, device, no_cache, cache_dir, threads, backend)
        check_fit_options(options, encoder.dim)
        with _ProgressBar("encoding", quiet) as bar:
            stats, count, encoder.truncated = fit_statistics(corpus, encoder, engine_, options.whiten,
                                                             {"field": field}, bar)
        if s["whiten"] and count < 2:
            raise InputError(corpus, "1 text; whitening is fitted on at least 2 (a mean and a covariance)")
        _report_truncation(encoder, count)
        pipeline = pipeline_from_stats(stats, encoder, options, count, {"corpus": str(corpus)})
        texts = range(count)  # only counted below
    with writing(output):
        pipeline.save(output)
    stages = [f"{pipeline.model} ({pipeline.pooling} pooling, {pipeline.input_dim}d)"]
    if pipeline.whitening is not None:
        w = pipeline.whitening
        stages.append(f"whitening k={w.n_components} β={w.beta:g} γ={w.gamma:g}")
    if pipeline.projection is not None:
        stages.append(f"JL projection to {pipeline.projection.n_components}d (seed {pipeline.projection.seed})")
    typer.echo(f"fitted on {len(texts)} texts: {' → '.join(stages)}")
    if pipeline.projection is not None:
        eps = jl_distortion(len(texts), pipeline.projection.n_components)
        bound = (f"distances between any two of {len(texts)} points are kept within 1 ± {eps:.2f}" if eps is not None
                 else f"no guarantee for {len(texts)} points at this n (the bound needs ε < 1)")
        typer.echo(f"JL lemma: with n={pipeline.projection.n_components}, {bound}; "
                   f"within 1 ± 0.1 needs n ≥ {jl_min_dim(len(texts), 0.1)}, within 1 ± 0.5 n ≥ {jl_min_dim(len(texts), 0.5)}")
    typer.echo(f"wrote {output}")


@app.command()
def encode(
    input: Annotated[Path, typer.Argument(help="Texts to encode: .txt (one a line), .jsonl, .csv, .tsv, or a folder or quoted glob of shards (also .parquet).")],
    output: Annotated[Path, typer.Option("--output", "-o", callback=_file_not_stdout, help=".npy file to write (float32, row i = text i); for a folder or glob of shards, or -o DIR (no suffix), a folder of .npy shards with manifest.json.")],
    pipeline_dir: Annotated[Optional[Path], typer.Option("--pipeline", help="Pipeline folder from `whiten fit`.")] = None,
    raw_output: Annotated[Optional[Path], typer.Option("--raw-output", callback=_file_not_stdout, help="Also write the pooled vectors before the pipeline.")] = None,
    model: ModelOpt = None,
    pooling: PoolingOpt = None,
    field: FieldOpt = None,
    skip_empty: SkipEmptyOpt = False,
    max_length: MaxLengthOpt = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
    verbose: VerboseOpt = False,
    config: ConfigOpt = None,
    threads: ThreadsOpt = None,
    no_cache: NoCacheOpt = False,
    cache_dir: CacheDirOpt = None,
    quiet: QuietOpt = False,
    backend: BackendOpt = None,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = None,
) -> None:
    """Encode texts to vectors (.npy): raw pooled vectors, or through a fitted pipeline."""
    _verbose(verbose)
    from whiten_cli.readers import read_texts
    from whiten_cli.shards import check_vector_folder_target, encode_matrix, encode_to_folder, shard_paths, wants_folder

    engine_ = _engine("encode", engine, ray_address, workers, backend)
    folder = wants_folder(input, output)
    if folder:
        if raw_output is not None:
            raise WhitenError("--raw-output: only with a single .npy output")
        if output.suffix == ".npy":
            raise WhitenError(f"{output}: a folder of vector shards is written for sharded input; name a folder")
        shard_paths(input)  # an empty glob fails before the model loads
        check_vector_folder_target(output)
    else:
        _check_npy_outputs(output, raw_output, input)
    texts = read_texts(input, field=field, skip_empty=skip_empty) if not folder and engine_.name == "local" else None
    s = _settings(config, model=model, pooling=pooling, max_length=max_length, batch_size=batch_size, dtype=dtype)
    if pipeline_dir is not None:
        from whiten_cli.pipeline import Pipeline

        pipe = Pipeline.load(pipeline_dir)
        if pooling is not None and pooling != pipe.pooling:
            raise WhitenError(f"{pipeline_dir}: fitted with {pipe.pooling} pooling, not {pooling}")
        if max_length is not None and max_length != pipe.max_length:
            raise WhitenError(f"{pipeline_dir}: fitted with max_length {pipe.max_length}, not {max_length}")
        encoder = _pipeline_encoder(pipe, pipeline_dir, model, _encoding(s, device, no_cache, cache_dir, threads),
                                    backend, cache_dir)
    else:
        pipe = None
        encoder = _encoder(s, device, no_cache, cache_dir, threads, backend)
    transform = pipe.transform if pipe is not None else (lambda raw: raw)
    read_options = {"field": field, "skip_empty": skip_empty}
    if folder:
        info = {"model": encoder.source.name, "model_fingerprint": encoder.source.fingerprint, "pooling": encoder.pooling,
                "pipeline": str(pipeline_dir) if pipe is not None else None, "engine": engine_.name}
        with _ProgressBar("encoding", quiet) as bar, writing(output):
            manifest = encode_to_folder(input, output, encoder, transform, engine_, read_options, info, bar)
        typer.echo(f"wrote {manifest['count']} vectors of dimension {manifest['dim']} to {output} "
                   f"({len(manifest['parts'])} shards)")
        return
    with _ProgressBar("encoding", quiet) as bar:
        if texts is None:
            _, raw = encode_matrix(input, encoder, engine_, read_options, "encode", bar)
        else:
            raw = encoder.encode(texts, progress=bar)
    _report_truncation(encoder, len(raw))
    vectors = transform(raw)
    _save_vectors(output, vectors, raw_output, raw)
    typer.echo(f"wrote {vectors.shape[0]} vectors of dimension {vectors.shape[1]} to {output}")


def _check_npy_outputs(output: Path, raw_output: Path | None, input: Path) -> None:
    """Before encoding: each output a writable .npy file name, not the input, and --raw-output not
    the same file as -o."""
    for path in filter(None, (output, raw_output)):
        if path.suffix != ".npy":
            raise WhitenError(f"{path}: the output must be a .npy file")
        check_file_target(path)
        check_not_an_input(path, [input])
    if raw_output is not None and (
        output.resolve() == raw_output.resolve()
        or (output.exists() and raw_output.exists() and output.samefile(raw_output))
    ):
        raise WhitenError(f"{raw_output}: the same file as -o {output}; give the raw vectors another name")


def _save_vectors(output: Path, vectors, raw_output: Path | None, raw) -> None:
    """Write -o (and --raw-output) all or none: both are written to temporary files before either is
    renamed into place, so that a failure writing one (a full disk) leaves neither changed."""
    from whiten_cli.storage import atomic_write, save_npy

    def write(tmp: Path) -> None:
        save_npy(tmp, vectors)
        if raw_output is not None:
            with writing(raw_output):
                save_npy(raw_output, raw)  # renamed into place just before -o's temporary file is

    with writing(output):
        atomic_write(output, write)


def _split_list(values: list[str] | None) -> list[str]:
    """Repeated options and comma lists alike: -k 64 -k 128,256 → ["64", "128", "256"]."""
    return [item.strip() for value in values or [] for item in value.split(",") if item.strip()]


def _numbers(values: list[str], flag: str, kind: type) -> list:
    parsed = []
    for value in values:
        if kind is int and value.lower() == "all":
            parsed.append(None)
            continue
        try:
            parsed.append(kind(value))
        except ValueError:
            raise WhitenError(f"{flag}: {value!r} is not a{'n integer' if kind is int else ' number'}") from None
    return parsed


@app.command("eval")
def eval_(
    datasets: Annotated[list[str], typer.Argument(help="STS data: names (stsb, stsb-dev, sick, sts12..sts16, stsb-zh, atec, bq, lcqmc, pawsx) under $WHITEN_STS_DIR, or files/folders.")],
    pipeline_dir: Annotated[Optional[Path], typer.Option("--pipeline", help="Evaluate a fitted pipeline folder against raw vectors.")] = None,
    fit_on: Annotated[str, typer.Option("--fit-on", help="Fit whitening on 'target' (each dataset's own sentences, as the paper) or on a corpus: a text file, or a dataset name or pairs file (its distinct sentences).")] = "target",
    model: ModelOpt = None,
    pooling: Annotated[Optional[list[str]], typer.Option("--pooling", "-p", help="Pooling(s) to compare, repeated or comma-separated.")] = None,
    k: Annotated[Optional[list[str]], typer.Option("-k", "--dim", help="Dimensions kept, repeated or comma-separated; 'all' keeps every one [default: all].")] = None,
    gamma: Annotated[Optional[list[str]], typer.Option("--gamma", help="Whitening strength(s) γ in [0, 1] [default: 1].")] = None,
    beta: BetaOpt = None,
    field: FieldOpt = None,
    max_length: MaxLengthOpt = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
    verbose: VerboseOpt = False,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures (Spearman and Pearson) as JSON instead of a table.")] = False,
    metric: Annotated[str, typer.Option("--metric", help="The table's figure: spearman or pearson (× 100).")] = "spearman",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", callback=_file_not_stdout, help="Also save the figures as JSON here.")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", callback=_file_not_stdout, help="Save a PNG of Spearman against k here.")] = None,
    threads: ThreadsOpt = None,
    no_cache: NoCacheOpt = False,
    cache_dir: CacheDirOpt = None,
    quiet: QuietOpt = False,
    backend: BackendOpt = None,
) -> None:
    """Spearman × 100 of cosine similarity on STS benchmarks: raw against whitened, side by side."""
    _verbose(verbose)
    import json

    from whiten_cli import __version__
    from whiten_cli.encoder import check_pooling
    from whiten_cli.evaluate import RAW, Variant, plot_spearman_vs_k, pyplot, run_evaluation
    from whiten_cli.storage import atomic_write
    from whiten_cli.sts import corpus_sentences, load_dataset

    if metric not in ("spearman", "pearson"):
        raise WhitenError(f"--metric must be spearman or pearson, got {metric!r}")
    if plot is not None:
        pyplot()  # fail before encoding if matplotlib is missing
    for target in filter(None, (output, plot)):
        check_file_target(target)
    s = _settings(config, model=model, beta=beta, max_length=max_length, batch_size=batch_size, dtype=dtype)
    poolings = [check_pooling(p) for p in _split_list(pooling)]
    loaded = [load_dataset(spec) for spec in datasets]
    read = [subset.path for dataset in loaded for subset in dataset.subsets] + [None if fit_on == "target" else fit_on]
    for written in (output, plot):
        check_not_an_input(written, read)
    pipe = None
    if pipeline_dir is not None:
        from whiten_cli.pipeline import Pipeline

        if k or gamma or fit_on != "target":
            raise WhitenError("--pipeline evaluates a fitted pipeline as it is: drop -k, --gamma and --fit-on")
        pipe = Pipeline.load(pipeline_dir)
        if poolings and poolings != [pipe.pooling]:
            raise WhitenError(f"{pipeline_dir}: fitted with {pipe.pooling} pooling, not {', '.join(poolings)}")
        encoder = _pipeline_encoder(pipe, pipeline_dir, model, _encoding(s, device, no_cache, cache_dir, threads),
                                    backend, cache_dir)
        poolings, variants = [pipe.pooling], [RAW]
        fit_source: str | list[str] = "target"
    else:
        ks = _numbers(_split_list(k), "-k", int) or [s.get("k")]
        gammas = _numbers(_split_list(gamma), "--gamma", float) or [s["gamma"]]
        variants = [RAW] + [Variant(n, s["beta"], g) for n in ks for g in gammas]
        encoder = _encoder({**s, "pooling": poolings[0] if poolings else s.get("pooling")}, device, no_cache, cache_dir, threads,
                           backend)
        poolings = poolings or [encoder.pooling]
        for n in ks:
            if n is not None and not 1 <= n <= encoder.dim:
                raise WhitenError(f"-k must be between 1 and the model's dimension {encoder.dim}, got {n}")
        fit_source = "target"
        if fit_on != "target":
            fit_source = corpus_sentences(fit_on, field)
            distinct = len(set(fit_source))
            if distinct < 2:  # identical texts give identical vectors: no covariance to whiten with
                raise InputError(fit_on, f"{distinct} text{'s' * (distinct != 1)} (repeats counted once); whitening "
                                         "is fitted on at least 2 (a mean and a covariance)")
    total = sum(2 * d.pairs for d in loaded) + (0 if isinstance(fit_source, str) else len(fit_source))
    with _ProgressBar("encoding", quiet) as bar:
        rows = run_evaluation(loaded, encoder, poolings, variants, fit_on=fit_source, pipeline=pipe, progress=bar)
    _report_truncation(encoder, total)
    report = {
        "tool_version": __version__,
        "model": {"name": encoder.source.name, "fingerprint": encoder.source.fingerprint},
        "max_length": encoder.max_length,
        "fit_on": str(pipeline_dir) if pipe is not None else fit_on,
        "rows": [row.__dict__ for row in rows],
    }
    if output is not None:
        with writing(output):
            atomic_write(output, lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8"))
    if plot is not None:
        with writing(plot):
            plot_spearman_vs_k(rows, plot, encoder.dim)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        typer.echo(_table(rows, metric))


def _table(rows, metric: str = "spearman") -> str:
    """Plain text: a block per dataset and pooling, subsets down, variants across.

    The mean/wmean aggregates are Spearman-only (published tables average Spearman): "-" for Pearson.
    """
    blocks = []
    groups: dict[tuple[str, str], list] = {}
    for row in rows:
        groups.setdefault((row.dataset, row.pooling), []).append(row)
    for (dataset, pooling), group in groups.items():
        variants = list(dict.fromkeys(row.variant for row in group))
        subsets = list(dict.fromkeys(row.subset for row in group))
        figures = {(row.subset, row.variant): getattr(row, metric) for row in group}
        pairs = {row.subset: row.pairs for row in group}
        width = max(len(name) for name in subsets + ["subset"]) + 2
        lines = [f"{dataset} · {pooling} pooling · {metric.capitalize()} × 100",
                 "subset".ljust(width) + "pairs".rjust(7) + "".join(v.rjust(14) for v in variants)]
        for subset in subsets:
            cells = "".join("-".rjust(14) if figures[(subset, v)] is None else f"{figures[(subset, v)]:14.2f}"
                            for v in variants)
            lines.append(subset.ljust(width) + str(pairs[subset]).rjust(7) + cells)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


# --------------------------------------------------------------------------- retrieval

KindOpt = Annotated[Optional[str], typer.Option("--kind", help="auto, flat, hnsw, ivf or ivfpq [default: auto: flat below 100,000 documents, else IVF; PQ when --max-memory is tight].")]
NprobeOpt = Annotated[Optional[int], typer.Option("--nprobe", help="IVF lists visited per query: more is slower and more exact [default: the index's own, tuned when built].")]
EfOpt = Annotated[Optional[int], typer.Option("--ef", help="HNSW efSearch: more is slower and more exact [default: the index's own, tuned when built].")]


def _load_vectors(path: Path, rows: int, dim: int, what: str):
    import numpy as np

    from whiten_cli.errors import InputError

    if not path.is_file():
        raise InputError(path, "no such file")
    with open(path, "rb") as handle:
        if handle.read(6) != b"\x93NUMPY":
            raise InputError(path, "not a .npy file (no NumPy header)")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"not a .npy array file ({exc})") from None
    if array.ndim != 2 or array.shape[1] != dim or not np.issubdtype(array.dtype, np.floating):
        raise InputError(path, f"expected {what} of shape ({rows}, {dim}) as floats, found {array.dtype} {array.shape}")
    if array.shape[0] != rows:
        raise InputError(path, f"{array.shape[0]} vectors for the {rows} texts of the corpus (row i must be text i)")
    if not np.isfinite(array).all():
        raise InputError(path, "holds NaN or infinite values")
    return np.asarray(array, dtype=np.float32)


@app.command("index")
def index_(
    ctx: typer.Context,
    corpus: Annotated[Path, typer.Argument(help="Documents: .txt (one a line), .jsonl, .csv or .tsv. Ids come from --id-field or an id/_id/doc_id field; without one, documents are numbered 1, 2, ... in index order.")],
    output: Annotated[Path, typer.Option("--output", "-o", callback=_file_not_stdout, help="Index folder to write (with --append: to extend).")],
    pipeline_dir: Annotated[Optional[Path], typer.Option("--pipeline", help="Pipeline folder from `whiten fit` (needed for a new index; with --append it must be the index's own).")] = None,
    append: Annotated[bool, typer.Option("--append", help="Add the corpus to the index at -o; what is there is not re-encoded. Atomic: an error or Ctrl-C leaves the index as it was.")] = False,
    kind: KindOpt = None,
    max_memory: Annotated[Optional[str], typer.Option("--max-memory", help="Memory budget of the FAISS index for --kind auto, e.g. 500M or 2G (1024-based): SQ8 or PQ codes when full vectors would not fit.")] = None,
    nlist: Annotated[Optional[int], typer.Option("--nlist", help="IVF lists [default: the power of two ≥ 4·√N].")] = None,
    pq_m: Annotated[Optional[int], typer.Option("--pq-m", help="ivfpq: bytes per vector; must divide the dimension. Below the dimension: PQ with that many sub-quantizers [default: the dimension: SQ8, 4× smaller than flat].")] = None,
    hnsw_m: Annotated[Optional[int], typer.Option("--hnsw-m", help="hnsw: links per vector [default: 32].")] = None,
    nprobe: Annotated[Optional[int], typer.Option("--nprobe", help="IVF lists visited per query, stored in the index [default: tuned to recall@10 ≥ 0.95 against exact search].")] = None,
    ef: Annotated[Optional[int], typer.Option("--ef", help="HNSW efSearch, stored in the index [default: tuned to recall@10 ≥ 0.95 against exact search].")] = None,
    vectors: Annotated[Optional[Path], typer.Option("--vectors", help="Precomputed pipeline vectors (.npy, or a folder of shards, from `whiten encode --pipeline`), row i = text i of CORPUS.")] = None,
    raw_vectors: Annotated[Optional[Path], typer.Option("--raw-vectors", help="Precomputed pooled vectors (.npy from `whiten encode` without --pipeline, or --raw-output); the pipeline is applied.")] = None,
    field: FieldOpt = None,
    id_field: Annotated[Optional[str], typer.Option("--id-field", help="JSONL field or CSV/TSV column with the document id [default: id/_id/doc_id when present].")] = None,
    skip_empty: SkipEmptyOpt = False,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Where the pipeline's model is, if it moved (the same weights only).")] = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
    verbose: VerboseOpt = False,
    threads: ThreadsOpt = None,
    no_cache: NoCacheOpt = False,
    cache_dir: CacheDirOpt = None,
    quiet: QuietOpt = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the IVF/PQ training sample and k-means.")] = 0,
    backend: Annotated[Optional[str], typer.Option("--backend", help="torch or onnx (the ONNX graph is stored in the index, so that search and --append run without torch) [default: torch; with --append the index's own].")] = None,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = None,
) -> None:
    """Encode a corpus through a pipeline and build a FAISS index folder (or --append to one)."""
    _verbose(verbose)
    from whiten_cli import index as ix
    from whiten_cli.pipeline import Pipeline
    from whiten_cli.shards import encode_matrix, load_vector_folder, read_all_records

    if vectors is not None and raw_vectors is not None:
        raise WhitenError("give --vectors or --raw-vectors, not both")
    engine_ = _engine("index", engine, ray_address, workers, backend)
    budget = ix.parse_size(max_memory) if max_memory is not None else None
    records = read_all_records(corpus, field=field, id_field=id_field, skip_empty=skip_empty)
    if append:
        fixed = [flag for flag, value in (("--kind", kind), ("--max-memory", max_memory), ("--nlist", nlist),
                                          ("--pq-m", pq_m), ("--hnsw-m", hnsw_m), ("--nprobe", nprobe), ("--ef", ef))
                 if value is not None]
        if fixed:
            raise WhitenError(f"{', '.join(fixed)}: set when an index is built; --append keeps the index's own")
        existing = ix.read_header(output)  # the index itself is loaded once, under the lock, to append
        pipe, graph = existing.pipeline, existing.onnx_graph
        backend = backend or ("onnx" if graph is not None else "torch")
        if pipeline_dir is not None:
            ix.check_pipeline(existing.metadata, Pipeline.load(pipeline_dir), str(pipeline_dir), output)
        docs = ix.records_to_documents(records, corpus, start=len(existing), existing_ids=existing.ids)
    else:
        if pipeline_dir is None:
            raise WhitenError("--pipeline is needed to build an index (or pass --append to extend one)")
        ix.check_target(output)
        pipe, graph = Pipeline.load(pipeline_dir), pipeline_dir
        ix.plan_index(kind or "auto", len(records), pipe.output_dim, max_memory=budget, nlist=nlist, pq_m=pq_m,
                      hnsw_m=hnsw_m)  # fail before encoding
        docs = ix.records_to_documents(records, corpus)
    ray_workers = None
    if engine_.name == "ray":  # Ray runs until the command returns
        from whiten_cli.engine_ray import session

        ray_workers = ctx.with_resource(session("index", engine_.address, engine_.workers))
    if vectors is not None and vectors.is_dir():
        matrix = load_vector_folder(vectors, [record.id for record in records] if id_field is None else None,
                                    pipe.output_dim)
    elif vectors is not None:
        matrix = _load_vectors(vectors, len(records), pipe.output_dim, "pipeline vectors")
    elif raw_vectors is not None:
        matrix = pipe.transform(_load_vectors(raw_vectors, len(records), pipe.input_dim, "pooled vectors"))
    else:
        s = _settings(None, batch_size=batch_size, dtype=dtype)
        encoder = _pipeline_encoder(pipe, graph, model, _encoding(s, device, no_cache, cache_dir, threads), backend,
                                    cache_dir)
        with _ProgressBar("encoding", quiet) as bar:
            if engine_.name == "ray":
                _, raw = encode_matrix(corpus, encoder, engine_, {"field": field, "skip_empty": skip_empty}, "index", bar)
            else:
                raw = encoder.encode([record.text for record in records], progress=bar)
        _report_truncation(encoder, len(records))
        matrix = pipe.transform(raw)
    if append:
        with writing(output):  # under the lock, onto the latest index
            appended = ix.append_records(output, matrix, records, corpus, pipe)
        with appended:
            typer.echo(f"added {len(docs)} documents to {output} ({len(appended)} in all, {appended.factory})")
        return
    builder = ix.build_faiss
    if ray_workers is not None:
        from whiten_cli.engine_ray import faiss_builder

        builder = faiss_builder(ray_workers)
    built = ix.VectorIndex.build(matrix, docs, pipe, kind=kind or "auto", max_memory=budget, nlist=nlist, pq_m=pq_m,
                                 hnsw_m=hnsw_m, nprobe=nprobe, ef=ef, seed=seed, builder=builder)
    built.onnx_graph = getattr(encoder, "folder", None) if vectors is None and raw_vectors is None else None
    typer.echo(f"index {built.factory}: {built.metadata['reason']}")
    if (output / ix.METADATA_FILE).is_file():
        _say(f"note: replacing the index at {output} (use --append to add to it)")
    with built, writing(output):
        built.save(output)
    typer.echo(f"wrote {len(built)} documents of dimension {built.dim} to {output}")


def _read_queries(queries: list[str] | None, file: Path | None, field: str | None) -> list[str]:
    """Queries from arguments, else --file (``-``: stdin), else stdin when it is not a terminal."""
    from whiten_cli.readers import decoded_lines, file_format, read_records

    if queries and file is not None:
        raise WhitenError("give queries as arguments or with --file, not both")
    if queries:
        if any(not query.strip() for query in queries):
            raise WhitenError("empty query")
        return list(queries)
    if file is not None and str(file) != "-":
        if file_format(file) == "text":
            return [record.text for record in read_records(file, skip_empty=True)]
        return [record.text for record in read_records(file, field=field, skip_empty=True)]
    stdin = sys.stdin
    if file is None and stdin.isatty():
        raise WhitenError("no query: give queries as arguments, with --file, or one a line on stdin")
    texts = [line for _, line in decoded_lines("<stdin>", stdin.buffer) if line.strip()]
    if not texts:
        raise WhitenError("no query on stdin (empty lines are skipped)")
    return texts


def _clean(text: str) -> str:
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


@app.command()
def search(
    index_dir: Annotated[Path, typer.Argument(help="Index folder from `whiten index`.")],
    queries: Annotated[Optional[list[str]], typer.Argument(help="Query texts. Without any: --file, else stdin, one query a line.", show_default=False)] = None,
    k: Annotated[int, typer.Option("-k", "--top", help="Hits per query; more than the index holds returns every document, with a note on stderr.")] = 10,
    file: Annotated[Optional[Path], typer.Option("--file", "-f", help="Queries, one a line ('-': stdin), or .jsonl/.csv/.tsv (text from --field). Empty lines are skipped.")] = None,
    threshold: Annotated[Optional[float], typer.Option("--threshold", help="Drop hits whose cosine score is below this.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="JSON lines, one object per hit: query, rank, score, id, text.")] = False,
    nprobe: NprobeOpt = None,
    ef: EfOpt = None,
    field: FieldOpt = None,
    pipeline_dir: Annotated[Optional[Path], typer.Option("--pipeline", help="Check that this pipeline folder is the one the index was built with.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Where the pipeline's model is, if it moved (the same weights only).")] = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
    verbose: VerboseOpt = False,
    threads: ThreadsOpt = None,
    backend: Annotated[Optional[str], typer.Option("--backend", help="torch or onnx [default: onnx for an index built with --backend onnx (no torch imported), else torch].")] = None,
) -> None:
    """Search an index: the k nearest documents of each query by cosine similarity.

    Prints rank, score, id and text, tab-separated (a table on a terminal); with several queries
    each line starts with its query. The index's own pipeline encodes the queries.
    """
    _verbose(verbose)
    import json

    from whiten_cli import index as ix

    ix.check_search_options(k, nprobe, ef, threshold)  # before the queries are read and encoded
    texts = _read_queries(queries, file, field)
    with ix.VectorIndex.load(index_dir) as index:
        if pipeline_dir is not None:
            from whiten_cli.pipeline import Pipeline

            ix.check_pipeline(index.metadata, Pipeline.load(pipeline_dir), str(pipeline_dir), index_dir)
        if k > len(index):
            _say(f"note: -k {k} is more than the {len(index)} documents in the index; showing all {len(index)}")
        s = _settings(None, batch_size=batch_size, dtype=dtype)
        backend = backend or ("onnx" if index.onnx_graph is not None else "torch")
        encoder = _pipeline_encoder(index.pipeline, index.onnx_graph, model,
                                    _encoding(s, device, no_cache=True, threads=threads), backend)
        query_vectors = index.pipeline.transform(encoder.encode(texts))
        results = index.search(query_vectors, k, nprobe=nprobe, ef=ef, threshold=threshold)
        if json_out:
            for text, hits in zip(texts, results):
                for hit in hits:
                    typer.echo(json.dumps({"query": text, "rank": hit.rank, "score": round(hit.score, 6),
                                           "id": hit.id, "text": hit.text}, ensure_ascii=False))
            return
        from rich.console import Console

        console = Console()
        if console.is_terminal:
            from rich.table import Table

            for text, hits in zip(texts, results):
                table = Table(title=text if len(texts) > 1 else None, title_justify="left", box=None)
                for name, justify in (("rank", "right"), ("score", "right"), ("id", "left"), ("text", "left")):
                    table.add_column(name, justify=justify, overflow="fold" if name == "text" else "ellipsis")
                for hit in hits:
                    table.add_row(str(hit.rank), f"{hit.score:.4f}", hit.id, hit.text)
                console.print(table if hits else "(no hits)")
            return
        for text, hits in zip(texts, results):
            prefix = f"{_clean(text)}\t" if len(texts) > 1 else ""
            for hit in hits:
                typer.echo(f"{prefix}{hit.rank}\t{hit.score:.4f}\t{_clean(hit.id)}\t{_clean(hit.text)}")


# --------------------------------------------------------------------------- tune and compare


@app.command()
def tune(
    dev: Annotated[list[str], typer.Argument(help="Scored DEV pairs to choose on: dataset names (stsb-dev, sick-trial, ...) or pair files, as `eval` reads them.")],
    output: Annotated[Path, typer.Option("--output", "-o", callback=_file_not_stdout, help="Pipeline folder to write (the chosen candidate).")],
    fit_on: Annotated[Optional[list[str]], typer.Option("--fit-on", help="Corpora to fit on, repeated or comma-separated: 'target' (the DEV sentences), a dataset name or pairs file (its distinct sentences), or a text file [default: target].")] = None,
    max_dim: Annotated[Optional[int], typer.Option("--max-dim", help="Dimension budget: candidates keep at most this many [default: the vectors' dimension].")] = None,
    pooling: Annotated[Optional[list[str]], typer.Option("--pooling", "-p", help="Pooling(s) to try, repeated or comma-separated [default: the model's own].")] = None,
    resamples: Annotated[int, typer.Option("--resamples", help="Paired bootstrap resamples of the DEV pairs.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap.")] = 0,
    model: ModelOpt = None,
    field: FieldOpt = None,
    max_length: MaxLengthOpt = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
    verbose: VerboseOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the record and every candidate's DEV score as JSON.")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", callback=_file_not_stdout, help="Save a PNG of DEV Spearman against k (a line per corpus and γ).")] = None,
    threads: ThreadsOpt = None,
    no_cache: NoCacheOpt = False,
    cache_dir: CacheDirOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Choose the whitening for this model on scored DEV pairs (pooling × corpus × k × γ × β, and more); write it."""
    _verbose(verbose)
    import json

    from whiten_cli.encoder import check_pooling
    from whiten_cli.evaluate import pyplot
    from whiten_cli.pipeline import check_output_folder
    from whiten_cli.sts import load_dataset
    from whiten_cli.tune import TARGET, Corpus, build_pipeline, check_bootstrap, check_dev, corpus_texts, plot_tune
    from whiten_cli.tune import tune as run_tune

    check_output_folder(output)
    check_bootstrap(resamples, seed)
    if plot is not None:
        pyplot()
        check_file_target(plot)
    s = _settings(None, model=model, max_length=max_length, batch_size=batch_size, dtype=dtype)
    datasets = [load_dataset(spec) for spec in dev]
    check_not_an_input(plot, [subset.path for dataset in datasets for subset in dataset.subsets])
    check_dev(datasets)
    dev_sentences = [text for dataset in datasets for text in dataset.sentences]
    corpora = [Corpus(TARGET, dev_sentences) if spec == TARGET else corpus_texts(spec, field)
               for spec in dict.fromkeys(_split_list(fit_on) or [TARGET])]
    poolings = [check_pooling(p) for p in _split_list(pooling)]
    encoder = _encoder({**s, "pooling": poolings[0] if poolings else None}, device, no_cache, cache_dir, threads)
    poolings = poolings or [encoder.pooling]
    dim = min(encoder.dim_of(p) for p in poolings)
    budget = dim if max_dim is None else max_dim
    if not 1 <= budget <= dim:
        raise WhitenError(f"--max-dim must be between 1 and the vectors' dimension {dim}, got {budget}")
    total = len(dev_sentences) + sum(len(c.texts) for c in corpora if c.name != TARGET)
    with _ProgressBar("encoding", quiet) as bar:
        result = run_tune(datasets, corpora, encoder, poolings, budget, resamples=resamples, seed=seed, progress=bar)
    _report_truncation(encoder, total)
    pipe = build_pipeline(result, encoder)
    with writing(output):
        pipe.save(output)
    if plot is not None:
        with writing(plot):
            plot_tune(result, plot)
    if as_json:
        typer.echo(json.dumps({"record": result.record(), "corpora": result.corpus_distances,
                               "per_family": [i.as_dict() for i in result.per_family],
                               "per_budget": [i.as_dict() for i in result.per_budget],
                               "candidates": [i.as_dict() for i in result.scored], "output": str(output)}, indent=2))
        return
    typer.echo(_tune_report(result, datasets, poolings))
    typer.echo(f"wrote {output}")


def _tune_report(result, datasets, poolings) -> str:
    def span(pair) -> str:
        return "" if pair is None else f"[{pair[0]:.2f}, {pair[1]:.2f}]"

    def line(item) -> str:
        c = item.candidate
        return (f"{c.family:<12}{c.pooling:<16}{c.label:<44}{c.k:>5}{item.dev:>9.2f}  {span(item.interval):<16}"
                f"{span(item.difference)}")

    head = f"{'family':<12}{'pooling':<16}{'candidate':<44}{'dims':>5}{'DEV':>9}  {'95% interval':<16}Δ to best [95%]"
    pairs = sum(d.pairs for d in datasets)
    out = [f"DEV: {', '.join(d.name for d in datasets)} ({pairs} pairs), Spearman × 100 · {len(poolings)} pooling(s) · "
           f"{len(result.scored)} candidates within {result.max_dim} dims · paired bootstrap, {result.resamples} "
           f"resamples (seed {result.seed})", "",
           "fit corpora against the DEV sentences (Gaussian distances; the mean-shift share in brackets)",
           f"{'pooling':<16}{'corpus':<24}{'texts':>7}{'Bhattacharyya':>15}{'W₂':>16}{'KL(corpus‖DEV)':>16}{'best DEV':>10}"]
    for row in result.corpus_distances:
        share = f"({100 * row['bhattacharyya_mean'] / row['bhattacharyya']:.0f}%)" if row["bhattacharyya"] > 0 else ""
        out.append(f"{row['pooling']:<16}{row['corpus'][:23]:<24}{row['texts']:>7}{row['bhattacharyya']:>9.3f} {share:>5}"
                   f"{row['wasserstein']:>16.4f}{row['kl_ab']:>16.3f}{row['best_dev']:>10.2f}")
    out += ["", "best of each family", head, *(line(item) for item in result.per_family),
            "", "best per dimension budget", head, *(line(item) for item in result.per_budget), ""]
    raw = result.raw
    out.append(f"raw {raw.candidate.k}d vectors ({raw.candidate.pooling}): DEV {raw.dev:.2f} {span(raw.interval)}")
    out.append(f"best: {result.best.candidate.label} ({result.best.candidate.pooling}), DEV {result.best.dev:.2f} "
               f"{span(result.best.interval)}")
    chosen = result.chosen
    out.append(f"chosen: {chosen.candidate.label} ({chosen.candidate.pooling}, {chosen.candidate.family}), DEV "
               f"{chosen.dev:.2f}, {span(chosen.difference)} to the best: the simplest candidate within the paired "
               f"bootstrap interval of the best ({result.examined} examined, simplest first)")
    if result.note:
        out.append(f"NOTE: {result.note}")
    return "\n".join(out)


@app.command()
def compare(
    a: Annotated[str, typer.Argument(help="A: a text file or dataset name / pairs file (its distinct sentences; encoded), a .npy of pooled vectors, or a pipeline folder (its fitted μ and Σ).")],
    b: Annotated[str, typer.Argument(help="B: the same kinds; with a pipeline as A, a new corpus also gets its drift under the pipeline's whitening.")],
    model: ModelOpt = None,
    pooling: PoolingOpt = None,
    field: FieldOpt = None,
    max_length: MaxLengthOpt = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
    verbose: VerboseOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the distances as JSON.")] = False,
    epsilon: Annotated[float, typer.Option("--epsilon", help="A (near-)singular covariance gets ε·(mean eigenvalue)·I added, with a warning; KL and Bhattacharyya then depend on ε.")] = 1e-6,
    threads: ThreadsOpt = None,
    no_cache: NoCacheOpt = False,
    cache_dir: CacheDirOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Distances between the Gaussians of two corpora: KL both ways, Bhattacharyya, W₂, each with its mean-only part."""
    _verbose(verbose)
    import json

    from whiten_cli.compare import Gaussian, distances, drift, load_source, pipeline_gaussian, summary_lines
    from whiten_cli.encoder import check_pooling

    if not 0 < epsilon < 1:
        raise WhitenError(f"--epsilon must be in (0, 1), got {epsilon:g}")
    sources = [load_source(spec, field) for spec in (a, b)]
    pipe_source = next((src for src in sources if src.pipeline is not None), None)
    if pooling is not None:
        pooling = check_pooling(pooling)
    encoder = None
    if any(src.texts is not None for src in sources):
        s = _settings(None, model=model, pooling=pooling, max_length=max_length, batch_size=batch_size, dtype=dtype)
        if pipe_source is not None:
            pipe = pipe_source.pipeline
            if pooling is not None and pooling != pipe.pooling:
                raise WhitenError(f"{pipe_source.path}: fitted with {pipe.pooling} pooling, not {pooling}")
            encoder = pipe.encoder(model, **_encoding(s, device, no_cache, cache_dir, threads))
        else:
            encoder = _encoder(s, device, no_cache, cache_dir, threads)
        for src in sources:
            if src.texts is not None:
                with _ProgressBar(f"encoding {src.path}", quiet) as bar:
                    src.vectors = encoder.encode(src.texts, progress=bar).astype("float64")
                _report_truncation(encoder, len(src.texts))
    gaussians = [pipeline_gaussian(src.pipeline, src.path) if src.pipeline is not None else Gaussian.of(src.vectors)
                 for src in sources]
    result = distances(gaussians[0], gaussians[1], (a, b), epsilon)
    report = {"a": a, "b": b, "dim": result.dim, "epsilon": epsilon, "counts": [g.count for g in gaussians], **result.as_dict()}
    moved = None
    if sources[0].pipeline is not None and sources[1].vectors is not None:
        moved = drift(sources[0].pipeline, a, sources[1].vectors, epsilon)
        report["drift"] = {**moved.distances.as_dict(), "variance_ratios": moved.variance_ratios,
                           "reference_is_identity": moved.identity}
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"A: {a} ({gaussians[0].count or '?'} vectors)   B: {b} ({gaussians[1].count} vectors)   dimension {result.dim}")
    typer.echo("\n".join(summary_lines(result)))
    if moved is not None:
        what = "N(0, I)" if moved.identity else "the fitted corpus under the same map"
        typer.echo(f"\nB under A's whitening ({sources[0].pipeline.whitening.n_components} dims), against {what}:")
        typer.echo("\n".join(summary_lines(moved.distances)))
        low, high = moved.variance_ratios
        typer.echo(f"B's variance relative to the fitted corpus's, along the whitened axes: {low:.3g} to {high:.3g} "
                   "(1 to 1: the whitening still fits)")


# --------------------------------------------------------------------------- export


@app.command("export")
def export_(
    pipeline_dir: Annotated[Path, typer.Argument(help="Pipeline folder from `whiten fit`.")],
    output: Annotated[Path, typer.Option("--output", "-o", callback=_file_not_stdout, help="Folder to write (written whole, then swapped in).")],
    format: Annotated[str, typer.Option("--format", "-f", help="sentence-transformers (a folder SentenceTransformer(folder) loads), onnx (one graph from token ids to the vector) or faiss (a VectorTransform for raw vectors).")] = "sentence-transformers",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing export at -o.")] = False,
    link_model: Annotated[bool, typer.Option("--link-model/--copy-model", help="sentence-transformers: symlink the model's weight files instead of copying them.")] = False,
    quantize: Annotated[Optional[str], typer.Option("--quantize", help="onnx: also write a dynamically quantized graph (int8).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Where the pipeline's model is, if it moved (the same weights only).")] = None,
) -> None:
    """Export a pipeline: a sentence-transformers folder, an ONNX graph or a FAISS transform."""
    from whiten_cli.export import METADATA_KEYS, export
    from whiten_cli.pipeline import Pipeline

    pipe = Pipeline.load(pipeline_dir)
    with writing(output):
        report = export(pipe, output, format, force=force, link_model=link_model, model=model, quantize=quantize)
    for key, value in report.items():  # what this format reports beyond the metadata every export has
        if key not in METADATA_KEYS:
            shown = (" → " if key == "modules" else ", ").join(map(str, value)) if isinstance(value, list) else value
            typer.echo(f"{key}: {shown}")
    typer.echo(f"wrote {format} export of {pipeline_dir} ({pipe.pooling} pooling, {pipe.input_dim} → "
               f"{pipe.output_dim} dimensions) to {output}")


def _terminated(signum, frame) -> None:
    typer.echo("terminated", err=True)
    raise SystemExit(128 + signum)


def main() -> None:
    """Console-script entry point. SIGTERM unwinds like Ctrl-C (temporary files are removed), exit 143."""
    import signal

    signal.signal(signal.SIGTERM, _terminated)
    app()


if __name__ == "__main__":
    main()
