"""The one scorer: tokenise, collate and score pairs exactly as training does (same template,
truncation, pooling), so an RM's evaluation numbers are the numbers training would see."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from marginkit.data.collate import collate_pairs
from marginkit.data.tokenize import EncodedPair
from marginkit.models.reward import score_batch

__all__ = ["score_encoded", "swap_encoded"]


@torch.no_grad()
def score_encoded(
    model: Any, encoded: Sequence[EncodedPair], pad_id: int, padding_side: str = "right", batch_size: int = 32,
    device: torch.device | str | None = None, progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Rewards of chosen and rejected, each [B] float64, in the order of `encoded`. Eval mode, no grad."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    chosen, rejected = [], []
    for start in tqdm(range(0, len(encoded), batch_size), desc="score", disable=not progress):
        batch = collate_pairs(list(encoded[start:start + batch_size]), pad_id, padding_side)  # [2b, T]
        rewards, _ = score_batch(model, batch["input_ids"].to(device), batch["attention_mask"].to(device))
        c, r = rewards.double().cpu().chunk(2)  # [2b] -> [b], [b]
        chosen.append(c)
        rejected.append(r)
    model.train(was_training)
    if not chosen:
        return np.zeros(0), np.zeros(0)
    return torch.cat(chosen).numpy(), torch.cat(rejected).numpy()


def swap_encoded(encoded: Sequence[EncodedPair]) -> list[EncodedPair]:
    """The same pairs with chosen and rejected exchanged (for the swap test)."""
    return [EncodedPair(p.rejected_ids, p.chosen_ids, p.prompt_len, -p.label_margin, -p.score_gap, -p.gold_gap, p.index)
            for p in encoded]
