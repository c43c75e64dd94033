"""Pairwise preference losses: pure functions returning per-pair losses (no reduction inside)."""

from marginkit.losses.bt import bt_loss, centering_penalty
from marginkit.losses.types import PairLoss, check_pair_shapes

__all__ = ["PairLoss", "bt_loss", "centering_penalty", "check_pair_shapes"]
