"""The result type every pairwise loss returns: per-pair losses plus detached rewards and extras."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["PairLoss", "check_pair_shapes"]


@dataclass(frozen=True)
class PairLoss:
    """losses [B] (with gradient, not reduced); chosen/rejected rewards [B] detached; extras detached."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


def check_pair_shapes(name: str, **tensors: torch.Tensor | None) -> None:
    """Raise ValueError unless every given tensor is 1-D with the same length B.

    A target margin of shape [B, 1] minus a gap of shape [B] broadcasts to [B, B] and silently
    mixes pairs; this check turns that into an error that prints the shapes.
    """
    shapes = {k: tuple(v.shape) for k, v in tensors.items() if v is not None}
    sizes = {s for s in shapes.values()}
    if any(len(s) != 1 for s in sizes) or len(sizes) != 1:
        detail = ", ".join(f"{k}={s}" for k, s in shapes.items())
        raise ValueError(f"{name}: every input must have shape [B] with the same B; got {detail}")
