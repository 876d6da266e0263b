"""STS scoring: rank and linear correlation of cosine similarities against gold scores (pure numpy)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from whiten_cli import checks
from whiten_cli.errors import ParameterError, WhitenError


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


def _sequence(values: ArrayLike, name: str) -> np.ndarray:
    """``values`` as a 1-D float64 array: a 2-D array would be correlated flattened, strings fail in numpy."""
    array = checks.real_array(values, name)
    if array.ndim != 1:
        raise ParameterError(name, f"must be one sequence of values (1-D), got shape {array.shape}")
    return array.astype(np.float64, copy=False)


def _paired(a: ArrayLike, b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x, y = _sequence(a, "a"), _sequence(b, "b")
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
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        raise WhitenError("cannot correlate a constant sequence")
    # Shifted by a value of their own first (exact for values within 2× of it), so that the mean of
    # near-constant values ([1, 1 − 2⁻⁵³]) is exact and so is what centring leaves of their spread.
    x = x - x[0]
    y = y - y[0]
    x -= x.mean()
    y -= y.mean()
    # scaled to at most 1 first, so that the sums of squares of tiny (or huge) values stay in range
    x /= np.abs(x).max()
    y /= np.abs(y).max()
    denominator = np.sqrt((x @ x) * (y @ y))
    return float(np.clip((x @ y) / denominator, -1.0, 1.0))


def spearman(a: ArrayLike, b: ArrayLike) -> float:
    """Spearman's rho in [-1, 1]: Pearson's r of the average ranks."""
    x, y = _paired(a, b)
    return pearson(rankdata(x), rankdata(y))


def cosine_similarity_pairs(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``u`` with the same row of ``v``, in float64; a zero vector gives 0
    (count them with :func:`zero_vector_pairs`), a NaN or infinite value is an error."""
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    if u.ndim != 2 or u.shape != v.shape:
        raise WhitenError(f"expected two (n, d) arrays of one shape, got {u.shape} and {v.shape}")
    broken = ~(np.isfinite(u).all(axis=1) & np.isfinite(v).all(axis=1))
    if broken.any():
        raise WhitenError(f"{int(broken.sum())} of {len(u)} pairs have a vector with NaN or infinite values "
                          f"(first: pair {int(np.argmax(broken)) + 1}); they have no cosine")
    # √(u·u × v·v), not ‖u‖·‖v‖: for u = v it is exactly u·v, so a pair of identical sentences scores
    # exactly 1 and such pairs tie; ‖u‖·‖v‖ is off by an ulp either way and ranked them by rounding noise.
    dots = np.einsum("ij,ij->i", u, v)
    norms = np.sqrt(np.einsum("ij,ij->i", u, u) * np.einsum("ij,ij->i", v, v))
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def zero_vector_pairs(u: np.ndarray, v: np.ndarray) -> int:
    """How many pairs have a zero vector on either side: their cosine is taken as 0."""
    return int(np.count_nonzero(~(np.any(u, axis=1) & np.any(v, axis=1))))


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
    for values, what in ((gold, "gold score"), (similarities, "cosine similarity")):
        if values.size >= 2 and np.ptp(values) == 0:
            raise WhitenError(f"every {what} is {values[0]:.4g}: a correlation needs values that vary")
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


# Running an evaluation: encode every sentence once, then score raw and whitened variants.


@dataclass(frozen=True)
class Variant:
    """One column of an evaluation: raw vectors, or whitening with (k, β, γ)."""

    n_components: int | None = None  # None: every dimension
    beta: float = 1.0
    gamma: float = 1.0
    whiten: bool = True

    def __post_init__(self) -> None:
        """Checked when made, so that a bad value is refused before any sentence is encoded."""
        for name in ("beta", "gamma"):
            checks.fraction(getattr(self, name), name)
        if self.n_components is not None and checks.integer(self.n_components, "n_components") < 1:
            raise ParameterError("n_components", f"must be at least 1, got {self.n_components}")

    @property
    def label(self) -> str:
        if not self.whiten:
            return "raw"
        label = f"k={self.n_components or 'all'}"
        if self.gamma != 1.0:
            label += f" γ={self.gamma:g}"
        if self.beta != 1.0:
            label += f" β={self.beta:g}"
        return label


RAW = Variant(whiten=False)


@dataclass(frozen=True)
class Row:
    """One figure: a dataset's subset (or a named aggregate) under a pooling and a variant."""

    dataset: str
    subset: str  # a subset's name, or "all" / "mean" / "wmean" for the aggregates
    pooling: str
    variant: str
    spearman: float
    pearson: float | None
    pairs: int


def _where(dataset, subset) -> str:
    """The file a subset was read from, else its dataset's and its own name."""
    if subset.path is not None:
        return str(subset.path)
    return dataset.name if subset.name == dataset.name else f"{dataset.name} subset {subset.name}"


def check_scorable(datasets: list) -> None:
    """Refuse, before anything is encoded, a subset whose gold scores cannot be correlated."""
    for dataset in datasets:
        for subset in dataset.subsets:
            if len(subset) < 2:
                raise WhitenError(f"{_where(dataset, subset)}: {len(subset)} scored sentence pair; "
                                  "a correlation needs at least 2")
            if np.ptp(subset.scores) == 0:
                raise WhitenError(f"{_where(dataset, subset)}: every gold score is {subset.scores[0]:g}; "
                                  "a correlation needs scores that vary")


def score_dataset(dataset, vectors: np.ndarray) -> dict[str, Score]:
    """Scores per subset, plus the aggregates ("all", "mean", "wmean") when there are several."""
    halves = dataset.split(vectors)
    scores = {}
    for subset, (u, v) in zip(dataset.subsets, halves):
        try:
            scores[subset.name] = score_pairs(u, v, subset.scores)
        except WhitenError as exc:
            raise WhitenError(f"{_where(dataset, subset)}: {exc}") from None
        zeros = zero_vector_pairs(u, v)
        if zeros:
            warnings.warn(f"{_where(dataset, subset)}: {zeros} of {len(subset)} pairs have a zero vector; "
                          "their cosine is taken as 0", stacklevel=2)
    if len(dataset.subsets) == 1:
        return scores
    pooled = score_pairs(
        np.concatenate([u for u, _ in halves]),
        np.concatenate([v for _, v in halves]),
        np.concatenate([subset.scores for subset in dataset.subsets]),
    )
    named = aggregate(scores, pooled)
    scores["all"] = pooled
    for name in ("mean", "wmean"):
        scores[name] = Score(named[name], float("nan"), dataset.pairs)
    return scores


def run_evaluation(
    datasets: list,
    encoder,
    poolings: list[str],
    variants: list[Variant],
    *,
    fit_on: str | list[str] = "target",
    pipeline=None,
    progress=None,
) -> list[Row]:
    """Score every dataset under every pooling and variant, encoding each sentence once.

    ``fit_on="target"`` fits whitening on each dataset's own sentences (as the paper does);
    a list of texts fits it once on that corpus. With ``pipeline`` (a fitted Pipeline), the
    variants are raw and the pipeline itself, and ``poolings`` must be the pipeline's.
    """
    from whiten_cli.stats import GaussianStats
    from whiten_cli.whitening import Eigenbasis

    check_scorable(datasets)
    corpus = [] if isinstance(fit_on, str) else list(fit_on)
    texts = [text for dataset in datasets for text in dataset.sentences] + corpus
    encoded = encoder.encode_poolings(texts, poolings, progress=progress)
    rows: list[Row] = []
    for pooling in poolings:
        vectors = encoded[pooling]
        corpus_basis = None
        if corpus and pipeline is None:
            corpus_basis = Eigenbasis.fit(GaussianStats.of(vectors[len(texts) - len(corpus):]))
        start = 0
        for dataset in datasets:
            own = vectors[start : start + 2 * dataset.pairs]
            start += 2 * dataset.pairs
            columns: dict[str, np.ndarray] = {}
            if pipeline is not None:
                columns = {RAW.label: own, "pipeline": pipeline.transform(own)}
            else:
                basis = corpus_basis
                for variant in variants:
                    if not variant.whiten:
                        columns[variant.label] = own
                        continue
                    if basis is None:
                        basis = Eigenbasis.fit(GaussianStats.of(own))
                    columns[variant.label] = basis.whitening(variant.n_components, variant.beta, variant.gamma).transform(own)
            for label, column in columns.items():
                for subset, score in score_dataset(dataset, column).items():
                    pearson = None if np.isnan(score.pearson) else score.pearson
                    rows.append(Row(dataset.name, subset, pooling, label, score.spearman, pearson, score.pairs))
    return rows


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or a one-line error naming the extra."""
    try:
        import matplotlib
    except ImportError:
        raise WhitenError('--plot needs matplotlib: pip install "whiten[plot]"') from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_spearman_vs_k(rows: list[Row], path, dims: int) -> None:
    """A PNG of Spearman against k: one line per dataset, pooling and (β, γ); raw as a dashed level."""
    from whiten_cli.storage import atomic_write

    plt = pyplot()
    headline = [row for row in rows if row.subset in ("all", row.dataset)]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    curves: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for row in headline:
        if row.variant == "raw":
            axes.axhline(row.spearman, linestyle="--", linewidth=1, color="grey")
            axes.annotate(f"raw {row.dataset} {row.pooling}", (0, row.spearman), fontsize=7, color="grey",
                          xycoords=("axes fraction", "data"), va="bottom")
            continue
        k_label, _, rest = row.variant.partition(" ")
        k = dims if k_label == "k=all" else int(k_label[2:])
        curves.setdefault((row.dataset, row.pooling, rest), []).append((k, row.spearman))
    for (dataset, pooling, rest), points in curves.items():
        points.sort()
        axes.plot([k for k, _ in points], [rho for _, rho in points], marker="o",
                  label=" ".join(filter(None, (dataset, pooling, rest or "γ=1"))))
    axes.set_xlabel("k (dimensions kept after whitening)")
    axes.set_ylabel("Spearman × 100")
    axes.grid(alpha=0.3)
    if curves:
        axes.legend(fontsize=8)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    plt.close(figure)
