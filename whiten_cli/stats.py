"""Streaming, mergeable Gaussian statistics of vectors: count, sum and sum of outer products.

Accumulated in float64 so that a corpus never has to be held in memory, and shards can be
fitted apart and merged: statistics of the shards added together are the statistics of the whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from whiten_cli.errors import WhitenError


@dataclass
class GaussianStats:
    count: int
    total: np.ndarray  # (d,) float64: sum of x
    outer: np.ndarray  # (d, d) float64: sum of x xᵀ

    @classmethod
    def empty(cls, dim: int) -> GaussianStats:
        return cls(0, np.zeros(dim), np.zeros((dim, dim)))

    @classmethod
    def of(cls, vectors: np.ndarray) -> GaussianStats:
        return cls.empty(np.asarray(vectors).shape[1]).update(vectors)

    @property
    def dim(self) -> int:
        return self.total.shape[0]

    def update(self, vectors: np.ndarray) -> GaussianStats:
        """Add a batch of row vectors (n, d) in place; returns self."""
        x = np.asarray(vectors, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise WhitenError(f"expected vectors of dimension {self.dim}, got shape {x.shape}")
        self.count += x.shape[0]
        self.total += x.sum(axis=0)
        self.outer += x.T @ x
        return self

    def merge(self, other: GaussianStats) -> GaussianStats:
        """Statistics of both inputs together (a new object)."""
        if other.dim != self.dim:
            raise WhitenError(f"cannot merge statistics of dimension {self.dim} and {other.dim}")
        return GaussianStats(self.count + other.count, self.total + other.total, self.outer + other.outer)

    @property
    def mean(self) -> np.ndarray:
        if self.count == 0:
            raise WhitenError("no vectors: cannot compute a mean")
        return self.total / self.count

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased (N−1) covariance."""
        if self.count < 2:
            raise WhitenError(f"need at least 2 vectors to estimate a covariance, got {self.count}")
        mean = self.mean
        cov = (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)
        return (cov + cov.T) / 2
