"""Distances between two Gaussians N(μ₁, Σ₁), N(μ₂, Σ₂) fitted to two corpora, in closed form.

KL divergence (both directions), Bhattacharyya distance and the 2-Wasserstein (Fréchet) distance,
each with its mean-only part (what the shift of the means alone contributes), so that a user sees
whether the corpora differ by a shift or by their shape.

Numerics: every inverse, log-determinant and square root goes through a symmetric
eigen-decomposition (``eigh``), so no complex rounding noise appears and log-determinants do not
overflow. A covariance whose smallest eigenvalue is below ε·(its mean eigenvalue) — a corpus with
fewer texts than dimensions, or a direction the model never uses — is regularised by adding that
ε·I, with a warning that says so. KL and Bhattacharyya grow like log(1/ε) and 1/ε along such a
direction (the Gaussian is degenerate there), so their size then depends on ε; W₂ hardly does.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from whiten_cli.errors import WhitenError

EPSILON = 1e-6  # default ε, relative to the mean eigenvalue: the ridge added to a (near-)singular covariance


@dataclass(frozen=True)
class Gaussian:
    """A fitted normal: mean (d,), covariance (d, d), and how many vectors it was fitted on."""

    mean: np.ndarray
    covariance: np.ndarray
    count: int

    @classmethod
    def of(cls, vectors: np.ndarray) -> Gaussian:
        from whiten_cli.stats import GaussianStats

        stats = GaussianStats.of(np.asarray(vectors, dtype=np.float64))
        return cls(stats.mean, stats.covariance, stats.count)

    @property
    def dim(self) -> int:
        return self.mean.shape[0]


@dataclass(frozen=True)
class _Eigen:
    """Σ = V diag(values) Vᵀ, after regularisation."""

    values: np.ndarray
    vectors: np.ndarray

    @property
    def log_det(self) -> float:
        return float(np.log(self.values).sum())

    def inverse_quadratic(self, x: np.ndarray) -> float:
        """xᵀ Σ⁻¹ x."""
        return float(((self.vectors.T @ x) ** 2 / self.values).sum())

    def sqrt(self) -> np.ndarray:
        return (self.vectors * np.sqrt(self.values)) @ self.vectors.T


def _eigen(covariance: np.ndarray, name: str, epsilon: float = EPSILON, regularise: bool = True) -> _Eigen:
    """The eigen-decomposition of a symmetric covariance, with ε·I added when it is (near-)singular."""
    sym = (covariance + covariance.T) / 2
    values, vectors = np.linalg.eigh(sym)
    scale = float(np.trace(sym)) / sym.shape[0]
    if not scale > 0:
        raise WhitenError(f"{name}: the vectors do not vary (zero covariance); no distance can be computed")
    ridge = epsilon * scale
    if regularise and values[0] < ridge:
        warnings.warn(f"{name}: singular covariance (smallest eigenvalue {values[0]:.3g}); regularised with "
                      f"ε·I, ε = {epsilon:g} × mean eigenvalue = {ridge:.3g}", stacklevel=3)
        values = values + ridge
    return _Eigen(np.maximum(values, ridge) if regularise else values, vectors)


@dataclass(frozen=True)
class Distances:
    """Distances between A and B and the part of each that the means alone contribute."""

    kl_ab: float
    kl_ba: float
    bhattacharyya: float
    wasserstein: float  # W₂, not squared
    kl_ab_mean: float
    kl_ba_mean: float
    bhattacharyya_mean: float
    wasserstein_mean: float  # ‖μ₁ − μ₂‖: W₂ of the shift alone
    dim: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def distances(a: Gaussian, b: Gaussian, names: tuple[str, str] = ("A", "B"), epsilon: float = EPSILON) -> Distances:
    """KL(A‖B), KL(B‖A), Bhattacharyya and W₂ between two Gaussians of one dimension."""
    if not 0 < epsilon < 1:
        raise WhitenError(f"ε must be in (0, 1), got {epsilon:g}")
    if a.dim != b.dim:
        raise WhitenError(f"{names[1]}: vectors of dimension {b.dim}, but {names[0]} has dimension {a.dim}")
    ea, eb = _eigen(a.covariance, names[0], epsilon), _eigen(b.covariance, names[1], epsilon)
    shift = b.mean - a.mean
    d = a.dim

    def kl(p: _Eigen, q: _Eigen) -> tuple[float, float]:
        """KL(N_p‖N_q) and its mean part ½ΔᵀΣq⁻¹Δ; tr(Σq⁻¹Σp) in q's eigenbasis."""
        rotated = q.vectors.T @ p.vectors  # Vqᵀ Vp: diag(Vqᵀ Σp Vq) = Σ_j rotated[:, j]² λp_j
        trace = float(((rotated**2 @ p.values) / q.values).sum())
        mean_part = 0.5 * q.inverse_quadratic(shift)
        return max(0.5 * (trace - d + q.log_det - p.log_det) + mean_part, 0.0), mean_part

    kl_ab, kl_ab_mean = kl(ea, eb)
    kl_ba, kl_ba_mean = kl(eb, ea)

    average = _eigen((ea.vectors * ea.values) @ ea.vectors.T / 2 + (eb.vectors * eb.values) @ eb.vectors.T / 2,
                     "the average of both", regularise=False)  # of two regularised ones: positive definite
    bhatt_mean = average.inverse_quadratic(shift) / 8
    bhatt = bhatt_mean + 0.5 * (average.log_det - 0.5 * (ea.log_det + eb.log_det))

    root_b = eb.sqrt()
    middle = root_b @ (ea.vectors * ea.values) @ ea.vectors.T @ root_b
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    shape = float(ea.values.sum() + eb.values.sum() - 2 * cross)
    shift_sq = float(shift @ shift)
    w2 = float(np.sqrt(max(shift_sq + shape, 0.0)))
    return Distances(kl_ab, kl_ba, max(float(bhatt), 0.0), w2, kl_ab_mean, kl_ba_mean, bhatt_mean,
                     float(np.sqrt(shift_sq)), d)


def whitened_reference(mean: np.ndarray, eigenvalues: np.ndarray, eigenvectors: np.ndarray,
                       kernel: np.ndarray, beta: float) -> Gaussian:
    """The fitted corpus's own Gaussian seen through a whitening ``(x − βμ) @ kernel``.

    For the paper's whitening (β = γ = 1, all kept directions above the floor) this is N(0, I_k):
    a new corpus far from it is one the whitening no longer fits."""
    covariance = (eigenvectors * eigenvalues) @ eigenvectors.T
    return Gaussian((1 - beta) * mean @ kernel, kernel.T @ covariance @ kernel, 0)


def summary_lines(result: Distances) -> list[str]:
    """Human-readable lines: each distance with its mean-only part and the share it takes."""

    def share(part: float, total: float) -> str:
        return f"{100 * part / total:.0f}%" if total > 0 else "-"

    w2_sq = result.wasserstein**2
    return [
        f"KL(A‖B)        {result.kl_ab:12.4f}   mean shift alone {result.kl_ab_mean:10.4f} ({share(result.kl_ab_mean, result.kl_ab)})",
        f"KL(B‖A)        {result.kl_ba:12.4f}   mean shift alone {result.kl_ba_mean:10.4f} ({share(result.kl_ba_mean, result.kl_ba)})",
        f"Bhattacharyya  {result.bhattacharyya:12.4f}   mean shift alone {result.bhattacharyya_mean:10.4f} "
        f"({share(result.bhattacharyya_mean, result.bhattacharyya)})",
        f"W₂ (Fréchet)   {result.wasserstein:12.4f}   mean shift alone {result.wasserstein_mean:10.4f} "
        f"({share(result.wasserstein_mean**2, w2_sq)} of W₂²)",
    ]


# Inputs of `whiten compare`: text files (encoded), .npy vectors, or pipeline folders.


@dataclass
class Source:
    """One side of a comparison, as given: a pipeline, vectors, or texts still to encode."""

    path: str
    pipeline: object | None = None
    vectors: np.ndarray | None = None
    texts: list[str] | None = None


def load_source(spec: str, field: str | None = None) -> Source:
    """One side of a comparison: a pipeline folder, a .npy of pooled vectors, or texts to encode (a
    dataset name or pairs file gives its distinct sentences, as ``tune --fit-on`` reads them)."""
    from pathlib import Path

    from whiten_cli.errors import InputError
    from whiten_cli.pipeline import METADATA_FILE, Pipeline
    from whiten_cli.sts import corpus_sentences

    path = Path(spec)
    if path.is_dir():
        if not (path / METADATA_FILE).is_file():
            raise WhitenError(f"{path}: a folder that is not a pipeline (no {METADATA_FILE})")
        return Source(spec, pipeline=Pipeline.load(path))
    if path.suffix == ".npy":
        if not path.is_file():
            raise InputError(path, "no such file")
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:  # EOFError: an empty file
            raise InputError(path, f"not a .npy array file ({exc})") from None
        if not isinstance(array, np.ndarray):  # np.load opens a .npz archive whatever the name
            array.close()
            raise InputError(path, "not a .npy array file (a .npz archive)")
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
            raise InputError(path, f"expected a (vectors, dimension) array of floats, found {array.dtype} {array.shape}")
        if not np.isfinite(array).all():
            raise InputError(path, "holds NaN or infinite values")
        _check_count(spec, array.shape[0], "vector")
        return Source(spec, vectors=np.asarray(array, dtype=np.float64))
    texts = corpus_sentences(spec, field)
    _check_count(spec, len(texts), "text")
    return Source(spec, texts=texts)


def _check_count(spec: str, count: int, what: str) -> None:
    if count < 2:
        raise WhitenError(f"{spec}: {count} {what}{'s' * (count != 1)}; a mean and a covariance need at least 2")


def pipeline_gaussian(pipeline, path: str) -> Gaussian:
    """The μ and Σ a pipeline was fitted on; pipelines without the full eigenbasis are refused."""
    if pipeline.whitening is None or pipeline.eigenvectors is None or pipeline.eigenvalues is None:
        raise WhitenError(f"{path}: this pipeline does not carry the full statistics of its corpus (mean, "
                          "eigenvalues and eigenvectors of Σ); refit it with this version of `whiten fit` or `whiten tune`")
    vectors, values = pipeline.eigenvectors, pipeline.eigenvalues
    return Gaussian(pipeline.whitening.mean, (vectors * values) @ vectors.T, int(pipeline.info.get("fitted_on", 0) or 0))


@dataclass(frozen=True)
class Drift:
    """A new corpus seen through a pipeline's whitening, against the fitted corpus seen the same way."""

    distances: Distances
    variance_ratios: tuple[float, float]  # min and max of the new corpus's variance relative to the fitted
    identity: bool  # the reference is N(0, I): β = γ = 1


def drift(pipeline, path: str, vectors: np.ndarray, epsilon: float = EPSILON) -> Drift:
    """Does this whitening still fit new data: the new pooled vectors' Gaussian after the pipeline's
    whitening, against the fitted corpus's own under it (N(0, I) for the paper's β = γ = 1)."""
    fitted = pipeline_gaussian(pipeline, path)
    w = pipeline.whitening
    reference = whitened_reference(fitted.mean, pipeline.eigenvalues, pipeline.eigenvectors, w.kernel, w.beta)
    new = Gaussian.of((vectors - w.beta * w.mean) @ w.kernel)
    result = distances(reference, new, (f"{path} (whitened)", "the new corpus (whitened)"), epsilon)
    ref = _eigen(reference.covariance, path, epsilon)
    inverse_root = (ref.vectors / np.sqrt(ref.values)) @ ref.vectors.T
    ratios = np.clip(np.linalg.eigvalsh(inverse_root @ new.covariance @ inverse_root), 0, None)
    identity = w.beta == 1.0 and w.gamma == 1.0 and np.allclose(reference.covariance, np.eye(w.n_components), atol=1e-6)
    return Drift(result, (float(ratios[0]), float(ratios[-1])), bool(identity))
