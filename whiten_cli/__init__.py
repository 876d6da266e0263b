"""whiten: BERT-whitening sentence embeddings (Su et al. 2021) from the command line and Python.

The public API is importable from here; each name loads its module on first use, so that the
command line starts without importing torch or numpy::

    from whiten_cli import Encoder, FitOptions, fit_pipeline, Pipeline
"""

from importlib import import_module

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
}
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'whiten_cli' has no attribute {name!r}")
