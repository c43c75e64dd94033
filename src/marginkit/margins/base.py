"""The margin interface: what every margin strategy receives and returns, and the registry.

A strategy turns detached per-pair quantities (current reward gaps, labels, gold rewards,
embeddings) into a target margin m [B] and an `active` mask [B]: pairs where `active` is False
keep plain Bradley-Terry (m = 0). Everything here is computed under `torch.no_grad()`.

`target_margins(strategy, inputs)` is the one call every consumer makes (the RM step, the DPO step's
ODPO offsets, the final-model margin snapshot, the real-data study's frozen heads): it runs the
strategy without gradient, checks that m is [B], and zeroes m on inactive pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

__all__ = ["MarginInputs", "Margins", "MarginStrategy", "MarginSetup", "ScoreRM", "check_margin_shape",
           "target_margins"]

# (model_dir, pairs, device, batch_size) -> gaps [N] float64 of a saved reward-model folder on `pairs`, scored
# as `eval-rm` scores them (NaN where the folder's own settings drop a pair). Injected by the trainer
# (train/setup.py fills it with marginkit.evaluate.scorer.score_rm_dir), so margins/ never imports evaluate/.
ScoreRM = Callable[[Any, Sequence[Any], Any, int], np.ndarray]


@dataclass(frozen=True)
class MarginInputs:
    """Detached per-pair inputs of a margin strategy. B = pairs in the (micro-)batch.

    reward_gap:   [B] current Δ = r_c - r_r, detached.
    label_margin: [B] the data's own margin column, NaN where absent.
    score_gap:    [B] score_chosen - score_rejected, NaN where absent.
    gold_gap:     [B] gold_chosen - gold_rejected (synthetic worlds), NaN where absent.
    step:         optimiser steps taken so far.
    chosen_embeddings / rejected_embeddings: [B, D] detached, when the strategy asks for them.
    index:        [B] long, each pair's position in the training set (MarginSetup.train_set), so
                  strategies with per-pair values precomputed in `prepare` can look them up.
    """

    reward_gap: torch.Tensor
    label_margin: torch.Tensor
    score_gap: torch.Tensor
    gold_gap: torch.Tensor
    step: int = 0
    chosen_embeddings: torch.Tensor | None = None
    rejected_embeddings: torch.Tensor | None = None
    index: torch.Tensor | None = None

    @classmethod
    def from_batch(cls, reward_gap: torch.Tensor, batch: dict[str, torch.Tensor], step: int,
                   chosen_embeddings: torch.Tensor | None = None,
                   rejected_embeddings: torch.Tensor | None = None) -> MarginInputs:
        """The inputs for a collated batch: label_margin, score_gap, gold_gap [B] and, when present, index [B]
        from `batch`; `reward_gap` [B] is detached here."""
        return cls(reward_gap.detach(), batch["label_margin"], batch["score_gap"], batch["gold_gap"], step,
                   chosen_embeddings, rejected_embeddings, batch.get("index"))


@dataclass(frozen=True)
class Margins:
    """A strategy's output: target_margin [B] (detached), active [B] bool, detached diagnostics."""

    target_margin: torch.Tensor
    active: torch.Tensor
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class MarginSetup:
    """What a strategy's `prepare(setup)` receives once before training, to precompute per-pair values
    (a reference RM's gaps, sentence-encoder embeddings) in one pass over the data.

    train_set: the tokenised training pairs (EncodedPair; `.index` is the position in `pairs`).
    pairs:     the Pair records they came from (texts, ids).
    cache_dir: a folder for caches keyed by data and model hashes (reused across runs and seeds).
    score_rm:  scores a saved RM folder on `pairs` (ScoreRM); None where the caller has no scorer, and
               then a strategy that needs one raises.
    """

    train_set: Sequence[Any]
    pairs: Sequence[Any]
    pad_id: int
    padding_side: str
    device: torch.device
    cache_dir: Path
    say: Callable[[str], None] = print
    score_rm: ScoreRM | None = None


class MarginStrategy(Protocol):
    """What the training step calls. `needs` names the optional inputs it reads
    ("label_margin", "score_gap", "gold_gap", "embeddings") so setup can check the data has them.
    `prepare(setup)` is called once before training (a no-op for strategies with nothing to precompute)."""

    needs: frozenset[str]

    def prepare(self, setup: MarginSetup) -> None: ...

    def __call__(self, inputs: MarginInputs) -> Margins: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def check_margin_shape(margin: torch.Tensor, reward_gap: torch.Tensor, name: str) -> None:
    """Raise unless `margin` is [B] like `reward_gap` ([B,1] - [B] would broadcast to [B,B])."""
    if margin.shape != reward_gap.shape or margin.dim() != 1:
        raise ValueError(
            f"margin strategy {name!r} returned target_margin of shape {tuple(margin.shape)}; "
            f"expected [B] = {tuple(reward_gap.shape)}"
        )


@torch.no_grad()
def target_margins(strategy: MarginStrategy, inputs: MarginInputs) -> Margins:
    """The strategy's margins for `inputs`, checked and detached: target_margin [B] with 0 on inactive
    pairs (m = 0 is plain BT there, whatever value the strategy returned), active [B] bool, and the
    strategy's diagnostics detached. Raises ValueError (shapes printed) unless target_margin is [B]."""
    margins = strategy(inputs)
    check_margin_shape(margins.target_margin, inputs.reward_gap, type(strategy).__name__)
    target = torch.where(margins.active, margins.target_margin, 0.0).detach()  # [B]
    return Margins(target, margins.active.detach(), {k: v.detach() for k, v in margins.diagnostics.items()})
