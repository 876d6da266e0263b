"""STS scoring: rank and linear correlation of cosine similarities against gold scores (pure numpy)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from whiten_cli.errors import WhitenError


def rankdata(x: ArrayLike) -> np.ndarray:
    """1-based ranks of a 1-D array, tied values sharing their average rank (scipy's ``"average"``)."""
    values = np.asarray(x, dtype=np.float64).ravel()
    if values.size == 0:
        return values
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], values.size]
    run = np.repeat(np.arange(starts.size), ends - starts)
    ranks = np.empty_like(values)
    ranks[order] = ((starts + 1 + ends) / 2.0)[run]
    return ranks


def _paired(a: ArrayLike, b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.size != y.size:
        raise WhitenError(f"cannot correlate {x.size} values with {y.size}")
    if x.size < 2:
        raise WhitenError(f"a correlation needs at least 2 pairs, got {x.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise WhitenError("cannot correlate values that are NaN or infinite")
    return x, y


def pearson(a: ArrayLike, b: ArrayLike) -> float:
    """Pearson's r in [-1, 1]; constant input has no correlation and is an error."""
    x, y = _paired(a, b)
    x = x - x.mean()
    y = y - y.mean()
    denominator = np.sqrt((x @ x) * (y @ y))
    if denominator == 0:
        raise WhitenError("cannot correlate a constant sequence")
    return float(np.clip((x @ y) / denominator, -1.0, 1.0))


def spearman(a: ArrayLike, b: ArrayLike) -> float:
    """Spearman's rho in [-1, 1]: Pearson's r of the average ranks."""
    x, y = _paired(a, b)
    return pearson(rankdata(x), rankdata(y))


def cosine_similarity_pairs(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``u`` with the same row of ``v``, in float64; a zero vector gives 0."""
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    if u.ndim != 2 or u.shape != v.shape:
        raise WhitenError(f"expected two (n, d) arrays of one shape, got {u.shape} and {v.shape}")
    norms = np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1)
    dots = np.einsum("ij,ij->i", u, v)
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


@dataclass(frozen=True)
class Score:
    """Correlations × 100 (as STS tables print them) over ``pairs`` scored pairs."""

    spearman: float
    pearson: float
    pairs: int


def score_pairs(u: np.ndarray, v: np.ndarray, gold: ArrayLike) -> Score:
    """Score the cosine similarities of the rows of ``u`` and ``v`` against ``gold``."""
    similarities = cosine_similarity_pairs(u, v)
    gold = np.asarray(gold, dtype=np.float64).ravel()
    if gold.size != similarities.size:
        raise WhitenError(f"{similarities.size} embedding pairs but {gold.size} gold scores")
    return Score(100 * spearman(similarities, gold), 100 * pearson(similarities, gold), int(gold.size))


def aggregate(scores: dict[str, Score], pooled: Score | None) -> dict[str, float]:
    """Spearman aggregates over subsets, each under an explicit name.

    Published STS12–16 tables disagree on which one they report, so none is "the" score:
    ``"all"`` is ``pooled.spearman``, computed by the caller over all subsets' pairs concatenated
    (left out when ``pooled`` is None); ``"mean"`` is the plain mean of the subsets' Spearmans;
    ``"wmean"`` is their mean weighted by each subset's pair count.
    """
    if not scores:
        raise WhitenError("no subset scores to aggregate")
    rhos = np.array([score.spearman for score in scores.values()])
    weights = np.array([score.pairs for score in scores.values()], dtype=np.float64)
    result = {"mean": float(rhos.mean()), "wmean": float(rhos @ weights / weights.sum())}
    if pooled is not None:
        result = {"all": pooled.spearman, **result}
    return result
