"""Rewards and response log-probs of a collated pair batch, by the forward its collator chose (issue 7).

data/collate.py's LayoutPairCollator writes batch["layout"] ([B], an index into FORWARD_LAYOUTS); a
plain collated batch has none and means "padded". Each function here reads it once and runs:

    padded         the reference forward: models/reward.py `score_batch`, models/logprobs.py `forward_logps`
    packed         models/packing.py (padding-free rows, attention kept inside each sequence)
    prefix_shared  models/prefix_share.py (the prompt once, chosen and rejected after it)

All three give the same numbers (tests/test_packing.py, tests/test_prefix_share.py). This module sits
above the three so that they import in one direction: logprobs <- packing <- prefix_share <- here.
The fast paths are called through their modules (`packing.packed_rewards`), so a test that wraps
one of them sees every call.
"""

from __future__ import annotations

import torch
from torch import nn

from marginkit.data.collate import FORWARD_LAYOUTS
from marginkit.models import packing, prefix_share
from marginkit.models.logprobs import SequenceLogps, forward_logps
from marginkit.models.reward import score_batch

__all__ = ["batch_layout", "score_pairs", "response_logps", "batch_logps"]


def batch_layout(batch: dict[str, torch.Tensor]) -> str:
    """The forward layout a collated batch asks for: batch["layout"] [B] holds an index into FORWARD_LAYOUTS."""
    code = batch.get("layout")
    return "padded" if code is None or code.numel() == 0 else FORWARD_LAYOUTS[int(code.reshape(-1)[0])]


def _pad_id(model: nn.Module) -> int:
    pad = getattr(packing.unwrap(model).config, "pad_token_id", None)
    return 0 if pad is None else int(pad)


def score_pairs(model: nn.Module, batch: dict[str, torch.Tensor],
                with_hidden: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rewards [2B] (and hidden [2B, D]) of a collated pair batch, by the forward its collator chose:
    padded (score_batch), packed (packed_rewards) or prefix-shared (prefix_shared_rewards)."""
    layout = batch_layout(batch)
    if layout == "padded":
        return score_batch(model, batch["input_ids"], batch["attention_mask"], with_hidden)
    if layout == "packed":
        return packing.packed_rewards(model, batch["input_ids"], batch["attention_mask"], _pad_id(model),
                                      with_hidden)
    return prefix_share.prefix_shared_rewards(model, batch["input_ids"], batch["attention_mask"],
                                              batch["response_mask"], _pad_id(model), with_hidden)


def response_logps(model: nn.Module, batch: dict[str, torch.Tensor], chunk: int = 1024) -> torch.Tensor:
    """Per-token response log-probs [2B, T] of a collated pair batch (packed or prefix-shared layouts;
    the padded layout is models/logprobs.py's reference function)."""
    layout = batch_layout(batch)
    if layout == "packed":
        return packing.packed_response_logps(model, batch["input_ids"], batch["attention_mask"],
                                             batch["response_mask"], _pad_id(model), chunk=chunk)
    if layout == "prefix_shared":
        return prefix_share.prefix_shared_response_logps(model, batch["input_ids"], batch["attention_mask"],
                                                         batch["response_mask"], _pad_id(model), chunk=chunk)
    raise ValueError("response_logps: the batch has the padded layout; use the padded log-prob function")


def batch_logps(model: nn.Module, batch: dict[str, torch.Tensor], chunk_size: int | None = None) -> SequenceLogps:
    """Summed response log-probs and token counts (SequenceLogps, [2B] each) of a collated pair batch by
    the forward its collator chose; the padded layout is logprobs.forward_logps itself, and the others
    give the same numbers. chunk_size: positions per float32 log-softmax chunk (None: one chunk padded,
    1024 rows for the packed and prefix-shared paths)."""
    if batch_layout(batch) == "padded":
        return forward_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"], chunk_size)
    per_token = response_logps(model, batch, chunk_size or 1024)  # [2B, T], 0 off the scored tokens
    scored = batch["response_mask"].bool().clone()
    scored[:, 0] = False  # a sequence's first column has no predecessor (as logprobs' shift by one)
    return SequenceLogps(per_token.sum(-1), scored.sum(-1).float())
