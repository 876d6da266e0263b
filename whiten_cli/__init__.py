"""whiten: BERT-whitening sentence embeddings (Su et al. 2021) from the command line and Python.

The public API is importable from here; each name loads its module on first use, so that the
command line starts without importing torch or numpy::

    import whiten_cli

    pipeline = whiten_cli.load("out/pipeline")
    vectors = pipeline.encode(["a sentence", "another"])   # (2, pipeline.dim) float32
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_API = {
    "Encoder": "whiten_cli.encoder",
    "EmbeddingCache": "whiten_cli.cache",
    "GaussianStats": "whiten_cli.stats",
    "Eigenbasis": "whiten_cli.whitening",
    "Whitening": "whiten_cli.whitening",
    "RandomProjection": "whiten_cli.projection",
    "Pipeline": "whiten_cli.pipeline",
    "FitOptions": "whiten_cli.pipeline",
    "fit_pipeline": "whiten_cli.pipeline",
    "load_dataset": "whiten_cli.sts",
    "run_evaluation": "whiten_cli.evaluate",
    "VectorIndex": "whiten_cli.index",
    "WhitenError": "whiten_cli.errors",
    "ParameterError": "whiten_cli.errors",
}
__all__ = [*_API, "load", "__version__"]

if TYPE_CHECKING:  # what IDEs and type checkers see; at run time __getattr__ imports on first use
    from whiten_cli.cache import EmbeddingCache
    from whiten_cli.encoder import Encoder
    from whiten_cli.errors import ParameterError, WhitenError
    from whiten_cli.evaluate import run_evaluation
    from whiten_cli.index import VectorIndex
    from whiten_cli.pipeline import FitOptions, Pipeline, fit_pipeline
    from whiten_cli.projection import RandomProjection
    from whiten_cli.stats import GaussianStats
    from whiten_cli.sts import load_dataset
    from whiten_cli.whitening import Eigenbasis, Whitening


def load(path) -> Pipeline:
    """The fitted pipeline in folder ``path`` (from ``whiten fit`` or :meth:`Pipeline.save`).

    ``load(path).encode(texts)`` gives its vectors; it builds its encoder on first use."""
    return import_module("whiten_cli.pipeline").Pipeline.load(path)


def __getattr__(name: str):
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'whiten_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
