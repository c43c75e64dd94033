"""Pre-flight check of where each reward is read, on real batches, before any training.

Catches the reward-token bugs behind many "loss stuck at 0.693" reports: reading the reward at a
padding token, inside the prompt, or at a position whose visible prefix is identical for the
chosen and the rejected response (so both must get the same reward: the pad = EOS trap).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from marginkit.models.reward import reward_positions

__all__ = ["PreflightError", "RewardTokenReport", "check_reward_tokens"]


class PreflightError(RuntimeError):
    """The reward would be read at a wrong token; the message shows the decoded evidence and the fix."""


@dataclass(frozen=True)
class RewardTokenReport:
    n_rows: int
    tokens_seen: dict[str, int]  # decoded reward token -> count


def _hf_positions(input_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Where HF's *ForSequenceClassification reads the reward: the right-most non-pad token."""
    positions = torch.arange(input_ids.shape[1])
    return (positions * (input_ids != pad_id)).argmax(dim=-1)


def check_reward_tokens(batch: dict[str, torch.Tensor], tokenizer: Any, encoder: bool) -> RewardTokenReport:
    """Raise PreflightError if any row of a collated [2B, T] batch reads its reward at a wrong token."""
    ids, mask, response = (batch[k].cpu() for k in ("input_ids", "attention_mask", "response_mask"))
    n = ids.shape[0] // 2
    pos = reward_positions(ids, mask, encoder)
    rows = torch.arange(ids.shape[0])
    seen: dict[str, int] = {}
    for r in rows.tolist():
        tok = tokenizer.convert_ids_to_tokens(int(ids[r, pos[r]]))
        seen[tok] = seen.get(tok, 0) + 1
    if encoder:  # bidirectional: [CLS] sees everything; only padding-only rows can go wrong
        if (mask.sum(dim=1) == 0).any():
            raise PreflightError("a row has no real tokens; check the collator")
        return RewardTokenReport(len(rows), seen)
    where = lambda r: f"row {r} ({'chosen' if r < n else 'rejected'} of pair {int(batch['index'][r % n])})"  # noqa: E731
    hf = _hf_positions(ids, tokenizer.pad_token_id)
    for r in rows.tolist():
        context = tokenizer.decode(ids[r, max(0, pos[r] - 8): pos[r] + 1])
        if mask[r, pos[r]] == 0 or ids[r, pos[r]] == tokenizer.pad_token_id:
            cause = ("the tokenizer pads with EOS (pad = EOS), so the EOS the reward is read at counts as padding: "
                     "give the tokenizer its own pad token" if tokenizer.pad_token_id == tokenizer.eos_token_id else
                     f"the pad token {tokenizer.pad_token!r} occurs inside the text or the attention mask is wrong")
            raise PreflightError(f"{where(r)}: the reward token is padding (...{context!r}); {cause}.")
        if hf[r] != pos[r]:
            raise PreflightError(
                f"{where(r)}: Hugging Face would read the reward at position {int(hf[r])} but the last real token "
                f"is at {int(pos[r])} (...{context!r}). The pad token {tokenizer.pad_token!r} (id "
                f"{tokenizer.pad_token_id}) appears as real text, e.g. pad = EOS: give the tokenizer its own pad token.")
        if not response[r, pos[r]]:
            raise PreflightError(f"{where(r)}: the reward token lies inside the prompt (...{context!r}); the "
                                 "response was truncated away or the template puts it before the prompt ends.")
    for i in range(n):
        c, rj = i, i + n
        pc, pr = int(pos[c]), int(pos[rj])
        prefix_c = ids[c][mask[c].bool()][: (mask[c, : pc + 1].sum())]
        prefix_r = ids[rj][mask[rj].bool()][: (mask[rj, : pr + 1].sum())]
        if torch.equal(prefix_c, prefix_r):
            raise PreflightError(
                f"pair {int(batch['index'][i])}: the chosen and rejected rewards are read after identical text "
                f"(...{tokenizer.decode(prefix_c[-8:])!r}); both must get the same reward and the loss stays at "
                "ln 2 = 0.693. Are chosen and rejected identical, or is the reward read inside the shared prompt?")
    return RewardTokenReport(len(rows), seen)
