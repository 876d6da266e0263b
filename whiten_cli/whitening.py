"""BERT-whitening: x ↦ (x − βμ) · U · Λ^(−γ/2), keeping the first k columns.

β = γ = 1 is the paper's whitening (Su et al. 2021); γ < 1 whitens softly, γ = 0 only rotates
(PCA). Σ = U Λ Uᵀ with eigenvalues in descending order, so the first k columns keep the
directions of largest variance.

Eigenvalues below ``RELATIVE_FLOOR·λ₁`` (1e-6 of the largest) are raised to it before scaling, so
that γ = 1 scales no direction by more than 1e3 times the leading one's factor: a near-null
direction (duplicated sentences, fewer sentences than dimensions, a constant feature) holds
rounding noise, and dividing it by √(1e-12·λ₁) would blow that noise up 1e6-fold. Keeping such a
direction warns, since k could be lowered instead.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from whiten_cli import checks
from whiten_cli.errors import ParameterError, WhitenError
from whiten_cli.stats import GaussianStats

RELATIVE_FLOOR = 1e-6  # eigenvalues are floored at this fraction of the largest one


@dataclass(frozen=True)
class Eigenbasis:
    """μ and the eigen-decomposition of Σ: fitted once, sliced into any (k, β, γ)."""

    mean: np.ndarray  # (d,)
    eigenvalues: np.ndarray  # (d,), descending
    eigenvectors: np.ndarray  # (d, d), column i belongs to eigenvalue i
    count: int

    @classmethod
    def fit(cls, stats: GaussianStats) -> Eigenbasis:
        values, vectors = np.linalg.eigh(stats.covariance)
        values, vectors = values[::-1], vectors[:, ::-1]
        # Fixed signs: the largest-magnitude entry of each eigenvector is positive, so that two
        # fits on the same data give the same kernel.
        pivots = np.abs(vectors).argmax(axis=0)
        vectors = vectors * np.sign(vectors[pivots, np.arange(vectors.shape[1])])
        return cls(stats.mean, values.copy(), np.ascontiguousarray(vectors), stats.count)

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    @property
    def floor(self) -> float:
        """The smallest eigenvalue whitening divides by: :data:`RELATIVE_FLOOR` of the largest."""
        return RELATIVE_FLOOR * float(self.eigenvalues[0])

    def whitening(self, n_components: int | None = None, beta: float = 1.0, gamma: float = 1.0) -> Whitening:
        k = self.dim if n_components is None else checks.integer(n_components, "n_components")
        if not 1 <= k <= self.dim:
            raise ParameterError("n_components", f"must be between 1 and the vector dimension {self.dim}, got {k}")
        beta, gamma = checks.fraction(beta, "beta"), checks.fraction(gamma, "gamma")
        if gamma > 0 and not self.floor > 0:
            raise WhitenError("the vectors do not vary (zero covariance): there is nothing to whiten")
        if k > self.count - 1:
            # n centred vectors span at most n − 1 directions: the rest is noise, scaled up.
            warnings.warn(
                f"k={k} but {self.count} vectors span at most {self.count - 1} directions (rank-deficient "
                f"covariance); keep k below {self.count} or fit on more sentences",
                stacklevel=2,
            )
        elif gamma > 0 and (floored := int(np.sum(self.eigenvalues[:k] < self.floor))):
            warnings.warn(
                f"{floored} of the k={k} kept directions have variance below {RELATIVE_FLOOR:g} of the largest "
                f"and were floored to it (near-null directions); lower k to {k - floored} to drop them",
                stacklevel=2,
            )
        scale = np.maximum(self.eigenvalues[:k], self.floor) ** (-gamma / 2)
        return Whitening(self.mean, self.eigenvectors[:, :k] * scale, beta, gamma)


@dataclass(frozen=True)
class Whitening:
    """The fitted map: ``transform(x) = (x − β·mean) @ kernel``; kernel is (d, k)."""

    mean: np.ndarray
    kernel: np.ndarray
    beta: float = 1.0
    gamma: float = 1.0

    @classmethod
    def fit(cls, stats: GaussianStats, n_components: int | None = None, beta: float = 1.0, gamma: float = 1.0) -> Whitening:
        return Eigenbasis.fit(stats).whitening(n_components, beta, gamma)

    @property
    def input_dim(self) -> int:
        return self.kernel.shape[0]

    @property
    def n_components(self) -> int:
        return self.kernel.shape[1]

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        x = checks.vectors(vectors, self.input_dim)
        return ((x - self.beta * self.mean) @ self.kernel).astype(np.float32)
