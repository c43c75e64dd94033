"""Small helpers shared by margin strategies (clipping, NaN checks)."""

from __future__ import annotations

import torch

__all__ = ["clip", "require_finite"]


def clip(margin: torch.Tensor, low: float | None, high: float | None) -> torch.Tensor:
    """Clamp to [low, high]; None leaves that side open."""
    if low is None and high is None:
        return margin
    return margin.clamp(min=low, max=high)


def require_finite(values: torch.Tensor, strategy: str, what: str) -> None:
    """Raise when a strategy's input has NaN/inf (a pair without the label it needs)."""
    bad = ~torch.isfinite(values)
    if bad.any():
        idx = bad.nonzero().flatten().tolist()[:5]
        raise ValueError(
            f"margin strategy {strategy!r} needs {what} for every pair, but batch positions {idx} have "
            f"none (NaN); give every pair {what}, or pick a strategy that does not need it"
        )
