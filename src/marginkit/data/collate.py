"""Collation of encoded pairs into one [2B, T] batch: chosen rows first, then rejected rows.

One padded tensor holds both sides so a single forward scores chosen and rejected together.
Worked example (pad id 0, right padding), pairs ([5,6,7],[5,6,8,9], prompt_len 2) and
([5,7],[5,8], prompt_len 1):

    input_ids      = [[5,6,7,0],[5,7,0,0],[5,6,8,9],[5,8,0,0]]
    attention_mask = [[1,1,1,0],[1,1,0,0],[1,1,1,1],[1,1,0,0]]
    response_mask  = [[0,0,1,0],[0,1,0,0],[0,0,1,1],[0,1,0,0]]
"""

from __future__ import annotations

from typing import Literal

import torch

from marginkit.data.tokenize import EncodedPair

__all__ = ["collate_pairs", "PairCollator", "LayoutPairCollator", "FORWARD_LAYOUTS"]


def _pad(rows: list[list[int]], prompt_lens: list[int], pad_id: int, side: str, multiple: int) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    width = -(-width // multiple) * multiple
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    response = torch.zeros((n, width), dtype=torch.bool)
    for i, (row, plen) in enumerate(zip(rows, prompt_lens)):
        start = 0 if side == "right" else width - len(row)
        input_ids[i, start:start + len(row)] = torch.tensor(row, dtype=torch.long)
        attention[i, start:start + len(row)] = 1
        response[i, start + plen:start + len(row)] = True
    return {"input_ids": input_ids, "attention_mask": attention, "response_mask": response}


def collate_pairs(
    pairs: list[EncodedPair], pad_id: int, padding_side: Literal["right", "left"] = "right", pad_to_multiple_of: int = 1
) -> dict[str, torch.Tensor]:
    """Pad B encoded pairs into input_ids / attention_mask / response_mask [2B, T] plus per-pair [B] fields."""
    rows = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    prompt_lens = [p.prompt_len for p in pairs] * 2
    batch = _pad(rows, prompt_lens, pad_id, padding_side, pad_to_multiple_of)
    batch["label_margin"] = torch.tensor([p.label_margin for p in pairs], dtype=torch.float32)
    batch["score_gap"] = torch.tensor([p.score_gap for p in pairs], dtype=torch.float32)
    batch["gold_gap"] = torch.tensor([p.gold_gap for p in pairs], dtype=torch.float32)
    batch["index"] = torch.tensor([p.index for p in pairs], dtype=torch.long)
    return batch


class PairCollator:
    """Picklable collate_fn for DataLoader workers."""

    def __init__(self, pad_id: int, padding_side: Literal["right", "left"] = "right", pad_to_multiple_of: int = 1):
        self.pad_id, self.padding_side, self.pad_to_multiple_of = pad_id, padding_side, pad_to_multiple_of

    def __call__(self, pairs: list[EncodedPair]) -> dict[str, torch.Tensor]:
        return collate_pairs(pairs, self.pad_id, self.padding_side, self.pad_to_multiple_of)


FORWARD_LAYOUTS = ("padded", "packed", "prefix_shared")  # batch["layout"] holds an index into this


class LayoutPairCollator(PairCollator):
    """PairCollator whose batches also say which forward the step runs: batch["layout"] [B] long, the index of
    `layout` in FORWARD_LAYOUTS (one entry per pair, so the engine's per-process split keeps it).

    The padded tensors are unchanged: packing and prefix sharing rebuild the rows on the device after the
    engine has split the global batch between processes (models/packing.py), so every process packs
    exactly its own pairs. Worked example (pad id 0), pairs ([5,6,7],[5,6,8,9], prompt_len 2) and
    ([5,7],[5,8], prompt_len 1) with layout "prefix_shared": the batch of collate_pairs (module
    docstring) plus layout = [2, 2].
    """

    def __init__(self, pad_id: int, layout: str, padding_side: Literal["right", "left"] = "right",
                 pad_to_multiple_of: int = 1):
        if layout not in FORWARD_LAYOUTS:
            raise ValueError(f"LayoutPairCollator: layout={layout!r}; known: {list(FORWARD_LAYOUTS)}")
        super().__init__(pad_id, padding_side, pad_to_multiple_of)
        self.layout = layout

    def __call__(self, pairs: list[EncodedPair]) -> dict[str, torch.Tensor]:
        batch = super().__call__(pairs)
        batch["layout"] = torch.full((len(pairs),), FORWARD_LAYOUTS.index(self.layout), dtype=torch.long)
        return batch
