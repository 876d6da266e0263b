"""Streaming, mergeable Gaussian statistics of vectors: count, mean and covariance, in float64.

A corpus never has to be held in memory, and shards can be fitted apart and merged.

The textbook ``(Σxxᵀ − n·μμᵀ)/(n−1)`` cancels catastrophically when the mean is large against the
spread: its relative error grows like ε·(μ/σ)² (measured: 8e-3 at mean/sd = 1e6, 66× off at 1e8).
So the sums are taken around a shift ``s``, the mean of the first batch: Σ(x − s) and
Σ(x − s)(x − s)ᵀ. The error left grows like ε·(μ − s)²/σ², harmless while the first batch is a
fair sample of the corpus. Statistics with the same shift merge by adding their sums (the same as
accumulating both inputs together, to rounding); with different shifts they merge by Chan et al.'s
pairwise formula on mean and centred scatter, so no large mean is ever squared.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from whiten_cli import checks
from whiten_cli.errors import ParameterError, WhitenError


@dataclass
class GaussianStats:
    count: int
    shift: np.ndarray | None  # (d,) float64: the point the sums are taken around; None: the first batch's mean
    shifted_sum: np.ndarray  # (d,) float64: Σ (x − shift)
    shifted_outer: np.ndarray  # (d, d) float64: Σ (x − shift)(x − shift)ᵀ

    @classmethod
    def empty(cls, dim: int, shift: np.ndarray | None = None) -> GaussianStats:
        """No vectors yet. ``shift`` defaults to the mean of the first batch; give shards fitted apart
        the same shift (a sample's mean) and their merge is a plain sum."""
        dim = checks.integer(dim, "dim")
        if dim < 1:
            raise ParameterError("dim", f"must be at least 1, got {dim}")
        if shift is not None:
            if np.shape(shift) != (dim,):
                raise ParameterError("shift", f"must have shape ({dim},), got {np.shape(shift)}")
            shift = checks.vectors(np.reshape(shift, (1, dim)), dim, "shift")[0].copy()
        return cls(0, shift, np.zeros(dim), np.zeros((dim, dim)))

    @classmethod
    def of(cls, vectors: np.ndarray) -> GaussianStats:
        shape = np.shape(vectors)
        if len(shape) != 2 or shape[1] < 1:
            raise ParameterError("vectors", f"must have shape (n, d), got {shape}")
        return cls.empty(shape[1]).update(vectors)

    @property
    def dim(self) -> int:
        return self.shifted_sum.shape[0]

    def update(self, vectors: np.ndarray) -> GaussianStats:
        """Add a batch of row vectors (n, d) in place; returns self. A NaN or infinite value is
        refused: it would make the mean and the whole covariance NaN."""
        centred = checks.vectors(vectors, self.dim)
        if isinstance(vectors, np.ndarray) and np.may_share_memory(centred, vectors):
            centred = centred.copy()  # centred in place below: never the caller's array
        if centred.shape[0] == 0:
            return self
        if self.shift is None:
            self.shift = centred.mean(axis=0)
        centred -= self.shift
        self.count += centred.shape[0]
        self.shifted_sum += centred.sum(axis=0)
        self.shifted_outer += centred.T @ centred
        return self

    def merge(self, other: GaussianStats) -> GaussianStats:
        """Statistics of both inputs together (a new object, around ``self``'s shift)."""
        if not isinstance(other, GaussianStats):
            raise ParameterError("other", f"must be GaussianStats, got {type(other).__name__}")
        if other.dim != self.dim:
            raise WhitenError(f"cannot merge statistics of dimension {self.dim} and {other.dim}")
        if other.count == 0 or self.count == 0:
            source = self if other.count == 0 else other
            shift = None if source.shift is None else source.shift.copy()
            return GaussianStats(source.count, shift, source.shifted_sum.copy(), source.shifted_outer.copy())
        count = self.count + other.count
        if np.array_equal(self.shift, other.shift):
            return GaussianStats(count, self.shift.copy(), self.shifted_sum + other.shifted_sum,
                                 self.shifted_outer + other.shifted_outer)
        # Chan et al.: mean offsets from each shift, centred scatters, then the pairwise update.
        offset_self = self.shifted_sum / self.count
        offset_other = other.shifted_sum / other.count
        delta = (other.shift - self.shift) + (offset_other - offset_self)  # mean(other) − mean(self)
        scatter = (self._centred_scatter() + other._centred_scatter()
                   + np.outer(delta, delta) * (self.count * other.count / count))
        offset = offset_self + delta * (other.count / count)  # merged mean − self.shift
        return GaussianStats(count, self.shift.copy(), offset * count, scatter + np.outer(offset, offset) * count)

    def _centred_scatter(self) -> np.ndarray:
        """Σ (x − μ)(x − μ)ᵀ."""
        return self.shifted_outer - np.outer(self.shifted_sum, self.shifted_sum) / self.count

    @property
    def mean(self) -> np.ndarray:
        if self.count == 0:
            raise WhitenError("no vectors: cannot compute a mean")
        return self.shift + self.shifted_sum / self.count

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased (N−1) covariance."""
        if self.count < 2:
            raise WhitenError(f"need at least 2 vectors to estimate a covariance, got {self.count}")
        cov = self._centred_scatter() / (self.count - 1)
        return (cov + cov.T) / 2
