"""Checks of argument values at the library's edge (the public functions and classes).

A bad value is refused with a :class:`~whiten_cli.errors.ParameterError` naming the parameter,
instead of failing later as a numpy, torch or FAISS error, or giving a wrong result without a
word: a float where a count belongs would be truncated or fail as a slice, a bool would count as
1, a NaN among the vectors would turn every statistic and every output into NaN.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from whiten_cli.errors import ParameterError

SEED_MAX = 2**31 - 1  # FAISS keeps its k-means seed in a C int


def integer(value, name: str) -> int:
    """``value`` as an int; a bool, a float (even 4.0) or a string is refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ParameterError(name, f"must be an integer, got {value!r}")
    return int(value)


def fraction(value, name: str) -> float:
    """``value`` as a float in [0, 1] (β and γ); NaN, a bool or a string is refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ParameterError(name, f"must be a number in [0, 1], got {value!r}")
    if not 0 <= value <= 1:
        raise ParameterError(name, f"must be in [0, 1], got {value}")
    return float(value)


def flag(value, name: str) -> bool:
    """``value`` as a bool: a string such as "no" would count as true."""
    if not isinstance(value, (bool, np.bool_)):
        raise ParameterError(name, f"must be True or False, got {value!r}")
    return bool(value)


def seed(value, name: str = "seed") -> int:
    """A seed numpy's generators and FAISS's k-means both take: 0 to 2³¹ − 1."""
    value = integer(value, name)
    if not 0 <= value <= SEED_MAX:
        raise ParameterError(name, f"must be between 0 and {SEED_MAX}, got {value}")
    return value


def real_array(value, name: str) -> np.ndarray:
    """``value`` as an array of integers or floats (objects converted where they are numbers); complex
    values, strings, objects and bools are refused."""
    array = np.asarray(value)
    if array.dtype.kind == "O":
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError):
            raise ParameterError(name, "must hold real numbers, got dtype object") from None
    if array.dtype.kind not in "iuf":
        raise ParameterError(name, f"must hold real numbers, got dtype {array.dtype}")
    return array


def vectors(value, dim: int, name: str = "vectors", dtype=np.float64) -> np.ndarray:
    """``value`` as an (n, ``dim``) array of ``dtype``: real numbers, finite once cast.

    Integers and floats of any width are taken; complex values (whose imaginary part the cast
    would drop), strings, objects and bools are refused, and so is a value that overflows
    ``dtype`` (1e39 in float32)."""
    array = real_array(value, name)
    if array.ndim != 2 or array.shape[1] != dim:
        raise ParameterError(name, f"must have shape (n, {dim}) (n vectors of dimension {dim}), got {array.shape}")
    given = array
    with np.errstate(over="ignore"):
        array = array.astype(dtype, copy=False)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        beyond = f" ({np.dtype(dtype).name} overflows)" if np.isfinite(given[row]).all() else ""
        raise ParameterError(name, f"holds NaN or infinite values{beyond} (first in row {row})")
    return array


def real(value, name: str) -> float:
    """``value`` as a float, not NaN; a bool or a string is refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise ParameterError(name, f"must be a number, got {value!r}")
    return float(value)
