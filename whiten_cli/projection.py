"""Johnson–Lindenstrauss random projection: x ↦ x · R, R of N(0, 1/n) entries, seeded."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from whiten_cli import checks
from whiten_cli.errors import ParameterError, WhitenError


@dataclass(frozen=True)
class RandomProjection:
    matrix: np.ndarray  # (d, n) float32
    seed: int

    @classmethod
    def create(cls, input_dim: int, n_components: int, seed: int = 0) -> RandomProjection:
        for name, value in (("input_dim", input_dim), ("n_components", n_components)):
            if checks.integer(value, name) < 1:
                raise ParameterError(name, f"must be positive, got {value}")
        if checks.integer(seed, "seed") < 0:  # numpy's generators take none; None would be unseeded
            raise ParameterError("seed", f"must be at least 0, got {seed}")
        rng = np.random.default_rng(seed)
        matrix = rng.standard_normal((input_dim, n_components)) / math.sqrt(n_components)
        return cls(matrix.astype(np.float32), int(seed))

    @property
    def input_dim(self) -> int:
        return self.matrix.shape[0]

    @property
    def n_components(self) -> int:
        return self.matrix.shape[1]

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        x = checks.vectors(vectors, self.input_dim, dtype=np.float32)
        return x @ self.matrix


def jl_min_dim(n_samples: int, eps: float) -> int:
    """Smallest n for which the JL lemma keeps all pairwise distances of n_samples points within 1 ± eps."""
    if not 0 < eps < 1:
        raise WhitenError(f"eps must be in (0, 1), got {eps}")
    return math.ceil(4 * math.log(max(n_samples, 2)) / (eps**2 / 2 - eps**3 / 3))


def jl_distortion(n_samples: int, n_components: int) -> float | None:
    """The eps the JL bound guarantees for n_samples points in n_components dims; None if ≥ 1."""
    target = 4 * math.log(max(n_samples, 2)) / n_components  # solve eps²/2 − eps³/3 = target
    if target >= 1 / 6:  # the left side is at most 1/6, reached at eps = 1
        return None
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        if mid**2 / 2 - mid**3 / 3 < target:
            low = mid
        else:
            high = mid
    return high
