"""Per-pair array checks and JSON conversion shared by the evaluation metrics (buckets, calibration,
distribution, correlation, controls).

Input policy of every metric: each array must be 1-D, non-empty and of equal length B across arguments,
else a ValueError shows the shapes; NaN or infinite inputs raise, except where a docstring says otherwise.
Results are small frozen dataclasses whose `.to_dict()` (`plain`) gives JSON-serialisable values.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["binary", "plain", "positive_int", "same_length", "vector"]


def vector(name: str, x: ArrayLike, *, allow_nan: bool = False) -> np.ndarray:
    """`x` as a float64 [B] array; raises ValueError on a wrong shape, emptiness or non-finite values."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D with shape [B], got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}): need at least one pair")
    bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        allowed = "NaN is allowed here, ±inf is not" if allow_nan else "all values must be finite"
        raise ValueError(
            f"{name} (shape {arr.shape}) has {int(bad.sum())} non-finite value(s), first at index "
            f"{first}: {arr[first]} ({allowed})"
        )
    return arr


def same_length(**arrays: np.ndarray) -> None:
    """Raise ValueError listing every shape when the [B] arrays differ in length."""
    if len({a.shape for a in arrays.values()}) > 1:
        shapes = ", ".join(f"{name} {a.shape}" for name, a in arrays.items())
        raise ValueError(f"per-pair arrays must all have the same shape [B]; got {shapes}")


def binary(name: str, x: ArrayLike) -> np.ndarray:
    """`x` as a float64 [B] array of 0.0 / 1.0; raises ValueError on any other value."""
    arr = vector(name, x)
    bad = (arr != 0.0) & (arr != 1.0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name} (shape {arr.shape}) must hold only 0/1 (or bools); index {first} is {arr[first]}"
        )
    return arr


def positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def plain(value: Any) -> Any:
    """Dataclasses, tuples and numpy scalars turned into dicts, lists and Python scalars."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
