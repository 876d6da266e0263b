"""The ``whiten`` command line: parses arguments, calls the library, prints results.

Heavy libraries (torch, transformers, faiss, numpy) are imported inside commands only, so that
``whiten --help`` and argument errors answer at once.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from typer.core import TyperGroup

from whiten_cli.errors import WhitenError


class _Group(TyperGroup):
    """Prints a WhitenError as one line on stderr and exits with code 2, without a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except WhitenError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None


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
FieldOpt = Annotated[Optional[str], typer.Option("--field", "--column", help="JSONL field or CSV/TSV column with the text [default: text/sentence].")]
MaxLengthOpt = Annotated[Optional[int], typer.Option("--max-length", help="Tokens per text; longer texts are truncated and counted [default: 128].")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size", help="Texts per forward pass [default: 64].")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, ...")]
DtypeOpt = Annotated[Optional[str], typer.Option("--dtype", help="float32, bfloat16 or float16 [default: float32].")]
ConfigOpt = Annotated[Optional[str], typer.Option("--config", "-c", help="Preset name (default, paper, soft, compact) or a TOML file.")]
SkipEmptyOpt = Annotated[bool, typer.Option("--skip-empty", help="Skip empty texts instead of failing.")]


def _settings(config: str | None, **flags) -> dict:
    """Built-in defaults < preset/TOML < flags given on the command line."""
    from whiten_cli.config import load_config

    settings = {"max_length": 128, "batch_size": 64, "beta": 1.0, "gamma": 1.0, "seed": 0, "dtype": "float32",
                "whiten": True, "normalize": True}
    settings.update(load_config(config))
    settings.update({key: value for key, value in flags.items() if value is not None})
    return settings


def _say(message: str) -> None:
    typer.echo(message, err=True)


class _ProgressBar:
    """A rich progress bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self, label: str):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        console = Console(stderr=True)
        self._progress = Progress(
            "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=console, transient=True, disable=not console.is_terminal,
        )
        self._task = self._progress.add_task(label, total=None)

    def __enter__(self):
        self._progress.start()
        return self

    def __exit__(self, *exc):
        self._progress.stop()

    def __call__(self, done: int, total: int) -> None:
        self._progress.update(self._task, completed=done, total=total)


def _report_truncation(encoder, total: int) -> None:
    if encoder.truncated:
        _say(f"note: {encoder.truncated} of {total} texts were longer than {encoder.max_length} tokens and were truncated "
             f"(raise --max-length to keep more)")


def _encoder(settings: dict, device: str):
    from whiten_cli.encoder import Encoder

    return Encoder(settings.get("model"), pooling=settings.get("pooling"), max_length=settings["max_length"],
                   batch_size=settings["batch_size"], device=device, dtype=settings["dtype"])


@app.command()
def fit(
    corpus: Annotated[Path, typer.Argument(help="Texts to fit on: .txt (one a line), .jsonl, .csv or .tsv.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Pipeline folder to write.")],
    model: ModelOpt = None,
    pooling: PoolingOpt = None,
    k: Annotated[Optional[int], typer.Option("-k", "--dim", help="Dimensions kept after whitening [default: all].")] = None,
    beta: Annotated[Optional[float], typer.Option("--beta", help="Mean removed: x − βμ, in [0, 1] [default: 1].")] = None,
    gamma: Annotated[Optional[float], typer.Option("--gamma", help="Whitening strength Λ^(−γ/2), in [0, 1] [default: 1].")] = None,
    whiten: Annotated[Optional[bool], typer.Option("--whiten/--no-whiten", help="Fit whitening (--no-whiten: JL projection only).")] = None,
    jl_dim: Annotated[Optional[int], typer.Option("--jl-dim", help="Add a Gaussian JL random projection to this many dimensions.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the JL projection [default: 0].")] = None,
    normalize: Annotated[Optional[bool], typer.Option("--normalize/--no-normalize", help="L2-normalize output vectors [default: normalize].")] = None,
    field: FieldOpt = None,
    max_length: MaxLengthOpt = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Fit whitening (and an optional JL projection) on a corpus; write a pipeline folder."""
    from whiten_cli.pipeline import FitOptions, fit_pipeline
    from whiten_cli.projection import jl_distortion
    from whiten_cli.readers import read_texts

    s = _settings(config, model=model, pooling=pooling, k=k, beta=beta, gamma=gamma, whiten=whiten, jl_dim=jl_dim,
                  seed=seed, normalize=normalize, max_length=max_length, batch_size=batch_size, dtype=dtype)
    texts = read_texts(corpus, field=field, skip_empty=True)
    options = FitOptions(n_components=s.get("k"), beta=s["beta"], gamma=s["gamma"], whiten=s["whiten"],
                         jl_dim=s.get("jl_dim"), seed=s["seed"], normalize=s["normalize"])
    encoder = _encoder(s, device)
    with _ProgressBar("encoding") as bar:
        pipeline = fit_pipeline(texts, encoder, options, progress=bar, info={"corpus": str(corpus)})
    _report_truncation(encoder, len(texts))
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
        typer.echo(f"JL lemma: with n={pipeline.projection.n_components}, {bound}")
    typer.echo(f"wrote {output}")


@app.command()
def encode(
    input: Annotated[Path, typer.Argument(help="Texts to encode: .txt (one a line), .jsonl, .csv or .tsv.")],
    output: Annotated[Path, typer.Option("--output", "-o", help=".npy file to write (float32, row i = text i).")],
    pipeline_dir: Annotated[Optional[Path], typer.Option("--pipeline", help="Pipeline folder from `whiten fit`.")] = None,
    raw_output: Annotated[Optional[Path], typer.Option("--raw-output", help="Also write the pooled vectors before the pipeline.")] = None,
    model: ModelOpt = None,
    pooling: PoolingOpt = None,
    field: FieldOpt = None,
    skip_empty: SkipEmptyOpt = False,
    max_length: MaxLengthOpt = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """Encode texts to vectors (.npy): raw pooled vectors, or through a fitted pipeline."""
    from whiten_cli.readers import read_texts
    from whiten_cli.storage import save_npy

    if output.suffix != ".npy":
        raise WhitenError(f"{output}: the output must be a .npy file")
    texts = read_texts(input, field=field, skip_empty=skip_empty)
    s = _settings(None, model=model, pooling=pooling, max_length=max_length, batch_size=batch_size, dtype=dtype)
    if pipeline_dir is not None:
        from whiten_cli.pipeline import Pipeline

        pipe = Pipeline.load(pipeline_dir)
        if pooling is not None and pooling != pipe.pooling:
            raise WhitenError(f"{pipeline_dir}: fitted with {pipe.pooling} pooling, not {pooling}")
        if max_length is not None and max_length != pipe.max_length:
            raise WhitenError(f"{pipeline_dir}: fitted with max_length {pipe.max_length}, not {max_length}")
        encoder = pipe.encoder(model, batch_size=s["batch_size"], device=device, dtype=s["dtype"])
    else:
        pipe = None
        encoder = _encoder(s, device)
    with _ProgressBar("encoding") as bar:
        raw = encoder.encode(texts, progress=bar)
    _report_truncation(encoder, len(texts))
    vectors = pipe.transform(raw) if pipe is not None else raw
    if raw_output is not None:
        save_npy(raw_output, raw)
    save_npy(output, vectors)
    typer.echo(f"wrote {vectors.shape[0]} vectors of dimension {vectors.shape[1]} to {output}")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
