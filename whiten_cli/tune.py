"""Choosing a whitening on scored DEV pairs: candidates, scoring in numpy, paired bootstrap, choice.

Every text is encoded once (one forward pass for all poolings, through the embedding cache), each
(pooling, corpus) covariance is decomposed once, and every candidate is a mean and a (d × k)
kernel, ``x ↦ (x − βμ) · kernel``, so the chosen one is saved as an ordinary pipeline folder.
Cosines for every k of a (pooling, corpus, γ, β, …) setting come from one matrix product and
running sums over its columns.

Families, in the order of simplicity the choice rule prefers (each reported separately):

* ``raw``: the pooled vectors (a candidate only when their dimension fits the budget);
* ``pca``: γ = 0 — centre and keep the top k principal directions, unscaled;
* ``jl``: a seeded Gaussian random projection of the raw vectors to k (a baseline);
* ``whitening``: the paper's γ = 1 and the soft γ = 0.5;
* ``finer-gamma``: γ ∈ {0.125, 0.25, …, 0.875};
* ``beta``: β < 1 (part of the mean kept) with γ ∈ {0.25, 0.5, 1};
* ``shrinkage``: Σ shrunk toward a scaled identity, (1 − ρ)Σ + ρ·(tr Σ/d)·I, with Ledoit and
  Wolf's closed-form ρ (same eigenvectors, eigenvalues pulled toward their mean);
* ``abtt``: all-but-the-top (Mu & Viswanath 2018): the top D principal directions removed, no
  rescaling, D around d/100; ``(x − μ)(I − U_D U_Dᵀ)`` has the cosines of ``(x − μ)·U[:, D:]``,
  so within a budget of k it is the kernel ``U[:, D:D+k]``;
* ``union``: γ ∈ {0, 0.25, 0.5, 0.75, 1} fitted on all the fit corpora together.

Guard against overfitting DEV: the best DEV Spearman wins only by more than chance. A paired
bootstrap over DEV pairs (fixed seed) gives, for each candidate, the interval of its difference to
the best; every candidate whose 95% interval reaches 0 ties with the best, and among those the
simplest is chosen: earliest family above, then smaller γ, then β nearer 1, fewer directions
skipped, then more dimensions (the budget is the user's size; cutting further is one more change
from raw), then the corpus and pooling given first.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

from whiten_cli import checks
from whiten_cli.errors import ParameterError, WhitenError
from whiten_cli.evaluate import rankdata

FAMILIES = ("raw", "pca", "jl", "whitening", "finer-gamma", "beta", "shrinkage", "abtt", "union")
PAPER_GAMMAS = (0.5, 1.0)
FINER_GAMMAS = (0.125, 0.25, 0.375, 0.625, 0.75, 0.875)
BETA_GRID = tuple((beta, gamma) for beta in (0.0, 0.5) for gamma in (0.25, 0.5, 1.0))
SHRINKAGE_GAMMAS = (0.25, 0.5, 1.0)  # γ = 0 is PCA: shrinking the eigenvalues does not rotate
UNION_GAMMAS = (0.0, 0.25, 0.5, 0.75, 1.0)
JL_SEED = 0
TARGET = "target"
UNION = "union"


def dimension_grid(max_dim: int) -> list[int]:
    """Every k scored: steps of 8 to 64, of 16 to 256, of 32 beyond, and ``max_dim`` itself."""
    grid = [k for k in range(8, 65, 8)] + [k for k in range(80, 257, 16)] + [k for k in range(288, max_dim + 1, 32)]
    return sorted({k for k in grid if k <= max_dim} | {max_dim})


def abtt_skips(dim: int) -> list[int]:
    """Top directions all-but-the-top removes: around d/100 (Mu & Viswanath), and a few beside it."""
    centre = max(1, round(dim / 100))
    return sorted({s for s in (1, 2, 3, centre, 2 * centre, 3 * centre) if s < dim})


@dataclass(frozen=True)
class Candidate:
    """One way to map pooled vectors to at most the budget's dimensions."""

    family: str
    pooling: str
    corpus: str | None  # None: raw vectors and JL use no corpus
    k: int  # output dimensions
    gamma: float = 0.0
    beta: float = 1.0
    skip: int = 0  # top principal directions removed (all-but-the-top)
    shrinkage: float = 0.0  # Ledoit–Wolf ρ

    @property
    def label(self) -> str:
        if self.family == "raw":
            return f"raw {self.k}d"
        if self.family == "jl":
            return f"JL k={self.k} (seed {JL_SEED})"
        parts = [f"k={self.k}", f"γ={self.gamma:g}"]
        if self.beta != 1.0:
            parts.append(f"β={self.beta:g}")
        if self.skip:
            parts.append(f"top {self.skip} removed")
        if self.shrinkage:
            parts.append(f"LW ρ={self.shrinkage:.3g}")
        return " ".join(parts) + f" on {self.corpus}"

    def simplicity(self, corpora: list[str], poolings: list[str]) -> tuple:
        """The choice rule's order among tied candidates: smaller is simpler (see the module's doc)."""
        return (FAMILIES.index(self.family), self.gamma, abs(1 - self.beta), self.skip, self.shrinkage, -self.k,
                corpora.index(self.corpus) if self.corpus in corpora else -1, poolings.index(self.pooling))


@dataclass(frozen=True)
class Corpus:
    """Unscored texts to fit on; ``name`` as the user gave it."""

    name: str
    texts: list[str]


def corpus_texts(spec: str, field: str | None = None) -> Corpus:
    """A fit corpus: a dataset name or pairs file (its distinct sentences), else a text file
    (.txt, .jsonl, .csv, .tsv, as ``fit`` reads it; empty lines skipped)."""
    from whiten_cli.sts import corpus_sentences

    texts = corpus_sentences(spec, field)
    if len(texts) < 2:
        raise WhitenError(f"{spec}: {len(texts)} distinct text{'s' * (len(texts) != 1)}; a fit corpus needs at "
                          "least 2 (a mean and a covariance)")
    return Corpus(spec, texts)


def check_dev(datasets: list) -> None:
    """Each DEV dataset has at least 3 pairs and gold scores that vary."""
    for dataset in datasets:
        scores = np.concatenate([subset.scores for subset in dataset.subsets])
        where = dataset.subsets[0].path if len(dataset.subsets) == 1 and dataset.subsets[0].path else dataset.name
        if scores.size < 3:
            raise WhitenError(f"{where}: {scores.size} scored pair{'s' * (scores.size != 1)}; tuning needs at least 3")
        if np.ptp(scores) == 0:
            raise WhitenError(f"{where}: every gold score is {scores[0]:g}; tuning needs scores that vary")


def check_bootstrap(resamples: int, seed: int) -> None:
    """At least 10 resamples (an interval from fewer means little), and a seed numpy takes."""
    if checks.integer(resamples, "resamples") < 10:
        raise ParameterError("resamples", f"must be at least 10, got {resamples}")
    if checks.integer(seed, "seed") < 0:
        raise ParameterError("seed", f"must be at least 0, got {seed}")


def ledoit_wolf_intensity(vectors: np.ndarray) -> float:
    """Ledoit & Wolf (2004)'s closed-form shrinkage intensity ρ ∈ [0, 1] toward (tr S/d)·I.

    With centred rows xᵢ and S = XᵀX/n: ρ = min(b̄², δ²)/δ², δ² = ‖S − mI‖²_F, b̄² = Σᵢ‖xᵢxᵢᵀ − S‖²_F/n²
    = (Σᵢ‖xᵢ‖⁴ − n‖S‖²_F)/n².
    """
    x = np.asarray(vectors, dtype=np.float64)
    x = x - x.mean(axis=0)
    n, d = x.shape
    sample = x.T @ x / n
    mu = np.trace(sample) / d
    delta = float(np.sum((sample - mu * np.eye(d)) ** 2))
    if delta == 0:
        return 0.0
    beta_bar = (float(np.sum(np.sum(x * x, axis=1) ** 2)) - n * float(np.sum(sample**2))) / n**2
    return float(min(max(beta_bar, 0.0), delta) / delta)


@dataclass(frozen=True)
class _Fit:
    """One (pooling, corpus) decomposition, and the corpus's Ledoit–Wolf intensity."""

    mean: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    count: int
    floor: float
    shrinkage: float

    def kernel(self, candidate: Candidate, width: int | None = None) -> np.ndarray:
        """Columns ``skip … skip + width`` of U·Λ^(−γ/2), Λ shrunk by ρ and floored like ``Eigenbasis``."""
        width = candidate.k if width is None else width
        values = self.eigenvalues
        if candidate.shrinkage:
            values = (1 - candidate.shrinkage) * values + candidate.shrinkage * values.mean()
        columns = slice(candidate.skip, candidate.skip + width)
        return self.eigenvectors[:, columns] * np.maximum(values[columns], self.floor) ** (-candidate.gamma / 2)


def _fit(vectors: np.ndarray, name: str) -> _Fit:
    from whiten_cli.stats import GaussianStats
    from whiten_cli.whitening import Eigenbasis

    basis = Eigenbasis.fit(GaussianStats.of(vectors))
    if not basis.floor > 0:  # e.g. one text repeated
        raise WhitenError(f"{name}: the vectors do not vary (zero covariance): there is nothing to whiten")
    return _Fit(basis.mean, basis.eigenvalues, basis.eigenvectors, basis.count, basis.floor,
                ledoit_wolf_intensity(vectors))


def _settings(family: str, fit: _Fit, dim: int) -> list[Candidate]:
    """(γ, β, skip, ρ) settings of a family, as candidates with k left at 0."""
    if family == "pca":
        return [Candidate(family, "", None, 0, 0.0)]
    if family == "whitening":
        return [Candidate(family, "", None, 0, g) for g in PAPER_GAMMAS]
    if family == "finer-gamma":
        return [Candidate(family, "", None, 0, g) for g in FINER_GAMMAS]
    if family == "beta":
        return [Candidate(family, "", None, 0, g, b) for b, g in BETA_GRID]
    if family == "shrinkage":
        return [Candidate(family, "", None, 0, g, shrinkage=fit.shrinkage) for g in SHRINKAGE_GAMMAS] if fit.shrinkage else []
    if family == "abtt":
        return [Candidate(family, "", None, 0, 0.0, skip=s) for s in abtt_skips(dim)]
    if family == "union":
        return [Candidate(family, "", None, 0, g) for g in UNION_GAMMAS]
    raise AssertionError(family)


@dataclass
class _Dev:
    """DEV pairs of every dataset: (u, v) rows per pooling, gold scores per dataset."""

    golds: list[np.ndarray]
    bounds: list[tuple[int, int]]  # each dataset's pair rows in the stacked (u, v)

    def score(self, similarities: np.ndarray) -> float:
        """Mean over DEV datasets of Spearman × 100."""
        return float(np.mean([100 * _spearman(similarities[a:b], gold)
                              for (a, b), gold in zip(self.bounds, self.golds)]))


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = rankdata(x) - (x.size + 1) / 2, rankdata(y) - (y.size + 1) / 2
    denominator = np.sqrt((rx @ rx) * (ry @ ry))
    return float(rx @ ry / denominator) if denominator > 0 else 0.0


def _prefix_cosines(u: np.ndarray, v: np.ndarray, ks: list[int]) -> np.ndarray:
    """Cosine of each (u, v) row pair using only the first k columns, for every k: (len(ks), n)."""
    dots = np.cumsum(u * v, axis=1)[:, np.array(ks) - 1]
    norms = np.sqrt(np.cumsum(u * u, axis=1)[:, np.array(ks) - 1] * np.cumsum(v * v, axis=1)[:, np.array(ks) - 1])
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0).T


def _cosines(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _prefix_cosines(u, v, [u.shape[1]])[0]


# Paired bootstrap over DEV pairs: a resample is a vector of counts (how often each pair is drawn),
# and Spearman of a resample is the count-weighted Pearson of count-weighted average ranks — exactly
# the Spearman of the resampled pairs written out, ties and all, without materialising them.


def resample_counts(sizes: list[int], resamples: int, seed: int) -> list[np.ndarray]:
    """Per DEV dataset, (resamples, n) draw counts of a bootstrap with replacement (stratified)."""
    rng = np.random.default_rng(seed)
    return [rng.multinomial(n, np.full(n, 1 / n), size=resamples).astype(np.float64) for n in sizes]


def _weighted_ranks(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Average ranks (1-based) of ``values`` in each resample, tied values sharing theirs: (B, n)."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    group_of = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, values.size]))
    sums = np.add.reduceat(counts[:, order], starts, axis=1)
    group_rank = np.cumsum(sums, axis=1) - sums + (sums + 1) / 2
    ranks = np.empty_like(counts)
    ranks[:, order] = group_rank[:, group_of]
    return ranks


def _weighted_pearson(x: np.ndarray, y: np.ndarray, counts: np.ndarray) -> np.ndarray:
    total = counts.sum(axis=1, keepdims=True)
    x = x - (counts * x).sum(axis=1, keepdims=True) / total
    y = y - (counts * y).sum(axis=1, keepdims=True) / total
    with np.errstate(invalid="ignore", divide="ignore"):
        return (counts * x * y).sum(axis=1) / np.sqrt((counts * x * x).sum(axis=1) * (counts * y * y).sum(axis=1))


def bootstrap_spearman(similarities: np.ndarray, gold: np.ndarray, counts: np.ndarray,
                       gold_ranks: np.ndarray | None = None) -> np.ndarray:
    """Spearman × 100 of ``similarities`` against ``gold`` in each resample: (B,); NaN where constant."""
    if gold_ranks is None:
        gold_ranks = _weighted_ranks(gold, counts)
    return 100 * _weighted_pearson(_weighted_ranks(similarities, counts), gold_ranks, counts)


@dataclass
class Scored:
    candidate: Candidate
    dev: float  # mean DEV Spearman × 100
    interval: tuple[float, float] | None = None  # its own 95% bootstrap interval, where computed
    difference: tuple[float, float] | None = None  # 95% interval of (this − best), where computed

    def as_dict(self) -> dict:
        return {**asdict(self.candidate), "label": self.candidate.label, "dev": self.dev,
                "interval": self.interval, "difference_to_best": self.difference}


@dataclass
class TuneResult:
    chosen: Scored
    best: Scored
    raw: Scored  # the raw vectors of the first pooling, in or out of the budget
    scored: list[Scored]
    examined: int  # candidates whose difference to the best was bootstrapped before the simplest tie was found
    per_budget: list[Scored]
    per_family: list[Scored]
    corpus_distances: list[dict]  # per pooling and corpus: distances to the DEV sentences, best DEV
    whitening_beats_raw: bool  # some fitted candidate scores above raw on DEV
    max_dim: int
    dim: int
    resamples: int
    seed: int
    fits: dict = field(repr=False, default_factory=dict)  # (pooling, corpus) -> _Fit, for the pipeline
    dev_names: list[str] = field(default_factory=list)

    @property
    def note(self) -> str | None:
        if self.whitening_beats_raw:
            return None
        return (f"no whitening beats the raw {self.dim}d vectors on DEV ({self.raw.dev:.2f}); written: "
                f"{self.chosen.candidate.label}, the choice within the budget of {self.max_dim} dims")

    def record(self) -> dict:
        """What pipeline.json keeps of the tune (and --json prints, with every candidate)."""
        return {
            "dev": self.dev_names,
            "max_dim": self.max_dim,
            "chosen": self.chosen.as_dict(),
            "best": self.best.as_dict(),
            "raw": self.raw.as_dict(),
            "whitening_beats_raw": self.whitening_beats_raw,
            "note": self.note,
            "rule": "best DEV Spearman; among candidates whose paired-bootstrap 95% interval of the difference "
                    "to the best reaches 0, the simplest (family raw < pca < jl < whitening < finer-gamma < beta "
                    "< shrinkage < abtt < union, then smaller γ, β nearer 1, fewer skipped, more dims)",
            "resamples": self.resamples,
            "seed": self.seed,
            "candidates": len(self.scored),
            "examined": self.examined,
        }


def tune(
    dev: list,
    corpora: list[Corpus],
    encoder,
    poolings: list[str],
    max_dim: int,
    *,
    resamples: int = 1000,
    seed: int = 0,
    progress=None,
) -> TuneResult:
    """Score every candidate on DEV and choose one (see the module's doc for the rule).

    A corpus named :data:`TARGET` stands for the DEV sentences themselves, whatever its texts."""
    from whiten_cli.compare import Gaussian, distances
    from whiten_cli.projection import RandomProjection

    check_dev(dev)
    check_bootstrap(resamples, seed)
    if isinstance(poolings, str):  # one pooling, not its letters
        poolings = [poolings]
    smallest = min(encoder.dim_of(pooling) for pooling in poolings)
    if not 1 <= checks.integer(max_dim, "max_dim") <= smallest:  # before anything is encoded
        raise ParameterError("max_dim", f"must be between 1 and the vector dimension {smallest}, got {max_dim}")
    dev_texts = [text for dataset in dev for text in dataset.sentences]
    names = [corpus.name for corpus in corpora]
    texts = dev_texts + [text for corpus in corpora if corpus.name != TARGET for text in corpus.texts]
    encoded = encoder.encode_poolings(texts, poolings, progress=progress)
    dims = {pooling: encoded[pooling].shape[1] for pooling in poolings}
    dim = dims[poolings[0]]
    ks = dimension_grid(max_dim)

    bounds, golds, u_rows, v_rows, start, row = [], [], [], [], 0, 0
    for dataset in dev:
        for subset in dataset.subsets:
            n = len(subset)
            u_rows.append(np.arange(start, start + n))
            v_rows.append(np.arange(start + n, start + 2 * n))
            start += 2 * n
        pairs = dataset.pairs
        bounds.append((row, row + pairs))
        golds.append(np.concatenate([subset.scores for subset in dataset.subsets]))
        row += pairs
    u_index, v_index = np.concatenate(u_rows), np.concatenate(v_rows)
    scorer = _Dev(golds, bounds)

    candidates: list[Candidate] = []
    similarity_rows: list[np.ndarray] = []

    def add(batch: list[Candidate], sims: np.ndarray) -> None:
        candidates.extend(batch)
        similarity_rows.extend(sims)

    fits: dict[tuple[str, str], _Fit] = {}
    corpus_rows: list[dict] = []
    for pooling in poolings:
        vectors = np.asarray(encoded[pooling], dtype=np.float64)
        dev_vectors = vectors[: len(dev_texts)]
        d = vectors.shape[1]
        u, v = dev_vectors[u_index], dev_vectors[v_index]
        if d <= max_dim:
            add([Candidate("raw", pooling, None, d)], _cosines(u, v)[None])
        for k in ks:
            matrix = RandomProjection.create(d, k, JL_SEED).matrix.astype(np.float64)
            add([Candidate("jl", pooling, None, k)], _cosines(u @ matrix, v @ matrix)[None])
        offset = len(dev_texts)
        corpus_vectors: dict[str, np.ndarray] = {}
        for corpus in corpora:
            if corpus.name == TARGET:
                corpus_vectors[corpus.name] = dev_vectors
            else:
                corpus_vectors[corpus.name] = vectors[offset : offset + len(corpus.texts)]
                offset += len(corpus.texts)
        fitted = [(name, corpus_vectors[name], ("pca", "whitening", "finer-gamma", "beta", "shrinkage", "abtt"))
                  for name in names]
        if len(corpora) > 1:
            fitted.append((UNION, np.concatenate(list(corpus_vectors.values())), ("union",)))
        dev_gaussian = Gaussian.of(dev_vectors)
        for name, fit_vectors, families in fitted:
            fit = fits[(pooling, name)] = _fit(fit_vectors, name)
            rank = min(d, fit.count - 1)
            if rank < max_dim:
                warnings.warn(f"{name}: {fit.count} texts span at most {rank} directions; {pooling} candidates "
                              f"fitted on it keep at most {rank} dimensions", stacklevel=2)
            for family in families:
                for setting in _settings(family, fit, d):
                    usable = [k for k in ks if setting.skip + k <= rank]
                    if setting.skip and d - setting.skip <= min(max_dim, rank - setting.skip) and d - setting.skip not in usable:
                        usable.append(d - setting.skip)  # all-but-the-top itself: every direction but the top D
                    if not usable:
                        continue
                    width = min(d - setting.skip, max(usable))
                    kernel = fit.kernel(setting, width)
                    shift = setting.beta * fit.mean
                    sims = _prefix_cosines((u - shift) @ kernel, (v - shift) @ kernel, usable)
                    add([Candidate(family, pooling, name, k, setting.gamma, setting.beta, setting.skip,
                                   setting.shrinkage) for k in usable], sims)
            gaussian = Gaussian(fit.mean, (fit.eigenvectors * fit.eigenvalues) @ fit.eigenvectors.T, fit.count)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a small corpus's singular covariance: regularised, said once above
                distance = distances(gaussian, dev_gaussian, (name, "DEV"))
            corpus_rows.append({"pooling": pooling, "corpus": name, "texts": fit.count,
                                "shrinkage": fit.shrinkage, **distance.as_dict()})

    similarities = np.vstack(similarity_rows)
    devs = np.array([scorer.score(row) for row in similarities])
    scored = [Scored(candidate, float(score)) for candidate, score in zip(candidates, devs)]

    counts = resample_counts([b - a for a, b in bounds], resamples, seed)
    gold_ranks = [_weighted_ranks(gold, c) for gold, c in zip(golds, counts)]
    cache: dict[int, np.ndarray] = {}

    def boot_of(sims: np.ndarray) -> np.ndarray:
        return np.mean([bootstrap_spearman(sims[a:b], gold, c, ranks)
                        for (a, b), gold, c, ranks in zip(bounds, golds, counts, gold_ranks)], axis=0)

    def boot(index: int) -> np.ndarray:
        if index not in cache:
            cache[index] = boot_of(similarities[index])
        return cache[index]

    def interval(values: np.ndarray) -> tuple[float, float]:
        low, high = np.nanpercentile(values, [2.5, 97.5])
        return float(low), float(high)

    best_index = int(np.argmax(devs))
    best = scored[best_index]
    best.interval = interval(boot(best_index))
    # Simplest first, so the first tie is the choice: only the candidates simpler than it are bootstrapped.
    # A candidate below the best's own interval is not looked at: its paired interval would not reach 0.
    contenders = sorted(np.flatnonzero(devs >= best.interval[0]),
                        key=lambda i: candidates[i].simplicity(names + [UNION], poolings))
    chosen, examined = best, 0
    for index in contenders:
        examined += 1
        item = scored[index]
        item.difference = interval(boot(index) - boot(best_index))
        if item.difference[1] >= 0:
            chosen = item
            break

    def with_interval(index: int) -> Scored:
        item = scored[index]
        if item.interval is None:
            item.interval = interval(boot(index))
        if item.difference is None:
            item.difference = interval(boot(index) - boot(best_index))
        return item

    per_budget = []
    for k in ks + ([dim] if dim <= max_dim and dim not in ks else []):
        indices = [i for i, c in enumerate(candidates) if c.k == k]
        if indices:
            per_budget.append(with_interval(max(indices, key=lambda i: devs[i])))
    per_family = []
    for family in FAMILIES:
        indices = [i for i, c in enumerate(candidates) if c.family == family]
        if indices:
            per_family.append(with_interval(max(indices, key=lambda i: devs[i])))
    raw_sims = [_cosines(*(np.asarray(encoded[p], dtype=np.float64)[: len(dev_texts)][rows]
                           for rows in (u_index, v_index))) for p in poolings]
    raw = Scored(Candidate("raw", poolings[0], None, dims[poolings[0]]), scorer.score(raw_sims[0]),
                 interval(boot_of(raw_sims[0])), interval(boot_of(raw_sims[0]) - boot(best_index)))
    best_raw = max(scorer.score(s) for s in raw_sims)
    fitted_best = max(s.dev for s in scored if s.candidate.family not in ("raw", "jl"))
    for row in corpus_rows:
        row["best_dev"] = max(s.dev for s in scored if s.candidate.corpus == row["corpus"]
                              and s.candidate.pooling == row["pooling"])
    return TuneResult(chosen, best, raw, scored, examined, per_budget, per_family, corpus_rows,
                      fitted_best > best_raw, max_dim, dim, resamples, seed, fits, [d.name for d in dev])


def build_pipeline(result: TuneResult, encoder, candidate: Candidate | None = None):
    """The chosen candidate (or another scored one) as a pipeline folder's content, with the tune
    record in its info."""
    from whiten_cli.encoder import model_files_digests
    from whiten_cli.pipeline import Pipeline
    from whiten_cli.projection import RandomProjection
    from whiten_cli.whitening import Whitening

    candidate = result.chosen.candidate if candidate is None else candidate
    dim = encoder.dim_of(candidate.pooling)
    whitening = projection = fit = None
    if candidate.family == "jl":
        projection = RandomProjection.create(dim, candidate.k, JL_SEED)
    elif candidate.family != "raw":
        fit = result.fits[(candidate.pooling, candidate.corpus)]
        whitening = Whitening(fit.mean, fit.kernel(candidate), candidate.beta, candidate.gamma)
    info = {"dtype": encoder.dtype, "tune": result.record()}
    if fit is not None:
        info.update(fitted_on=fit.count, corpus=candidate.corpus)
    return Pipeline(
        model=encoder.source.name,
        model_fingerprint=encoder.source.fingerprint,
        model_files=model_files_digests(encoder.source.path),
        pooling=candidate.pooling,
        max_length=encoder.max_length,
        input_dim=dim,
        whitening=whitening,
        projection=projection,
        eigenvalues=None if fit is None else fit.eigenvalues,
        eigenvectors=None if fit is None else fit.eigenvectors,
        info=info,
        model_path=str(encoder.source.path),
        model_revision=encoder.source.revision,
        model_hub_id=encoder.source.hub_id,
    )


def plot_tune(result: TuneResult, path) -> None:
    """DEV Spearman against k for the chosen pooling: a line per corpus and γ (β = 1, no skip or
    shrinkage), the raw vectors as a dashed level, the chosen candidate marked."""
    from whiten_cli.evaluate import pyplot
    from whiten_cli.storage import atomic_write

    plt = pyplot()
    pooling = result.chosen.candidate.pooling
    curves: dict[str, list[tuple[int, float]]] = {}
    for item in result.scored:
        c = item.candidate
        if c.pooling != pooling or c.beta != 1.0 or c.skip or c.shrinkage or c.family in ("raw",):
            continue
        name = "JL" if c.family == "jl" else f"{c.corpus} γ={c.gamma:g}"
        if c.family == "finer-gamma" and c.gamma not in (0.25, 0.75):
            continue
        curves.setdefault(name, []).append((c.k, item.dev))
    figure, axes = plt.subplots(figsize=(8, 5))
    axes.axhline(result.raw.dev, linestyle="--", linewidth=1, color="grey")
    axes.annotate(f"raw {result.dim}d", (0, result.raw.dev), fontsize=7, color="grey",
                  xycoords=("axes fraction", "data"), va="bottom")
    for name, points in curves.items():
        points.sort()
        axes.plot([k for k, _ in points], [rho for _, rho in points], marker=".", label=name)
    axes.plot([result.chosen.candidate.k], [result.chosen.dev], marker="*", markersize=14, color="black",
              linestyle="none", label=f"chosen: {result.chosen.candidate.label}")
    axes.set_xlabel(f"k (dimensions), {pooling} pooling")
    axes.set_ylabel(f"DEV Spearman × 100 ({', '.join(result.dev_names)})")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    plt.close(figure)
