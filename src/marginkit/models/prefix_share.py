"""Prefix sharing: each pair as one sequence [prompt, chosen, rejected] in which the prompt runs once
(the shared-prompt trick of "Accelerating Direct Preference Optimization with Prefix Sharing",
Wang & Hegde 2024, arXiv:2410.20305, 1.1-1.6x on DPO; issue 7).

Layout of pair i (prompt length P, responses of lengths C and R), positions in brackets:

    tokens:    p_0 .. p_{P-1} | c_0 .. c_{C-1}     | r_0 .. r_{R-1}
    positions: 0   .. P-1     | P   .. P+C-1       | P   .. P+R-1     (rejected restarts after the prompt)
    segment:   0              | 1                  | 2

Attention (k <= q within the pair, and never segment 2 -> segment 1):
- prompt tokens see the prompt (causal), exactly as in either padded sequence;
- chosen tokens see prompt + chosen, rejected tokens see prompt + rejected, never each other.
So every hidden state equals the one of the separate forward of [prompt, chosen] or [prompt, rejected]
(RoPE depends on position differences only, and the positions are the separate ones), and the outputs
are read where the separate forwards read them:
- RM: the reward of chosen at c_{C-1}, of rejected at r_{R-1} (the EOS of each);
- DPO: log p(c_0) from p_{P-1}'s logits, log p(c_j) from c_{j-1}'s; log p(r_0) also from p_{P-1}'s,
  log p(r_j) from r_{j-1}'s. In the layout this is one rule: the rejected row's prompt tokens are aliases
  of the shared prompt slots, and each token is predicted from the slot of its predecessor in its own row.
Several pairs are packed into each row as in packing.py (one row for FlexAttention). The mask is not
block-diagonal, so flash-attn varlen cannot run it: sdpa gets a 4D boolean mask, eager an additive one,
FlexAttention a BlockMask (only blocks with allowed pairs are computed).

Compute saved: the prompt's P tokens once instead of twice: with HH-RLHF lengths (P ~ 150, C ~ R ~ 60)
about 270 instead of 420 token positions a pair.
"""

from __future__ import annotations

import torch
from torch import nn

from marginkit.models.packing import (
    Layout,
    Piece,
    attention_of,
    build_layout,
    layout_rewards,
    layout_token_logps,
    row_capacity,
    spans,
)

__all__ = ["prefix_layout", "prefix_shared_rewards", "prefix_shared_response_logps"]


def prefix_layout(input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
                  capacity: int | None = None, multiple: int = 1) -> Layout:
    """The prefix-shared layout of a padded pair batch [2B, T] (rows 0..B-1 chosen, B..2B-1 rejected).

    The prompt of pair i is the real tokens of row i before its first response token; row B+i must start
    with the same tokens (checked: prefix sharing of different prompts would be silently wrong).
    """
    n, width = attention_mask.shape
    if n % 2:
        raise ValueError(f"prefix sharing needs a pair batch [2B, T] (chosen rows then rejected rows); got {n} rows")
    first, lengths = spans(attention_mask)
    resp = response_mask.detach().to("cpu", torch.bool)
    resp_len = resp.sum(1).tolist()
    prompt_len = [length - r for length, r in zip(lengths, resp_len)]
    for row in range(n):  # the response must be the tail of the sequence
        lo, hi = first[row] + prompt_len[row], first[row] + lengths[row]
        if resp_len[row] and not bool(resp[row, lo:hi].all()):
            raise ValueError(f"response_mask row {row} is not the tail of its sequence; prefix sharing needs "
                             "[prompt, response] rows")
    b = n // 2
    _check_same_prompts(input_ids, first, prompt_len, b)
    items = []
    for i in range(b):
        c, r, p = i, b + i, prompt_len[i]
        items.append([piece for piece in (
            Piece(c, first[c], p, 0, 0, alias=(r, first[r])),
            Piece(c, first[c] + p, lengths[c] - p, p, 1),
            Piece(r, first[r] + p, lengths[r] - p, p, 2),
        ) if piece.length])
    return build_layout(items, n, width, "prefix_shared", capacity, multiple)


def _check_same_prompts(input_ids: torch.Tensor, first: list[int], prompt_len: list[int], b: int) -> None:
    """Chosen and rejected of each pair must share their prompt tokens (one device sync)."""
    bad = [i for i in range(b) if prompt_len[i] != prompt_len[b + i]]
    if bad:
        i = bad[0]
        raise ValueError(f"pair {i}: the chosen prompt has {prompt_len[i]} tokens and the rejected {prompt_len[b + i]}; "
                         "prefix sharing needs one prompt per pair (use train.forward=packed)")
    width = input_ids.shape[1]
    idx_c = torch.cat([torch.arange(first[i], first[i] + prompt_len[i]) + i * width for i in range(b)] + [torch.zeros(0, dtype=torch.long)])
    idx_r = torch.cat([torch.arange(first[b + i], first[b + i] + prompt_len[i]) + (b + i) * width for i in range(b)]
                      + [torch.zeros(0, dtype=torch.long)])
    flat = input_ids.reshape(-1)
    same = flat[idx_c.to(flat.device)] == flat[idx_r.to(flat.device)]
    if not bool(same.all()):
        pos = int((~same).nonzero()[0])
        pair = next(i for i in range(b) if pos < sum(prompt_len[:i + 1]))
        raise ValueError(f"pair {pair}: chosen and rejected differ inside the prompt; prefix sharing needs the same "
                         "prompt tokens in both (use train.forward=packed)")


def _layout_for(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
                capacity: int | None) -> Layout:
    attention = attention_of(model)
    if capacity is None:
        _, lengths = spans(attention_mask)
        b = len(lengths) // 2
        resp = response_mask.sum(1).tolist()
        items = [lengths[i] + resp[b + i] for i in range(b)]  # prompt + chosen + rejected response
        capacity = row_capacity(attention, items, attention_mask.shape[1])
    layout = prefix_layout(input_ids, attention_mask, response_mask, capacity,
                           128 if attention == "flex_attention" else 1)
    return layout.to(input_ids.device)


def prefix_shared_rewards(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          response_mask: torch.Tensor, pad_id: int, with_hidden: bool = False,
                          capacity: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rewards [2B] (chosen then rejected, float32) of a padded pair batch with each prompt run once;
    equal to score_batch on the padded batch (tested). Optionally the hidden state at each reward token."""
    layout = _layout_for(model, input_ids, attention_mask, response_mask, capacity)
    return layout_rewards(model, layout, input_ids, pad_id, with_hidden)


def prefix_shared_response_logps(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                                 response_mask: torch.Tensor, pad_id: int, capacity: int | None = None,
                                 chunk: int = 1024) -> torch.Tensor:
    """Per-token response log-probs [2B, T] (float32, 0 off the response) with each prompt run once; equal to
    the padded forward's shifted log-probs (tested)."""
    layout = _layout_for(model, input_ids, attention_mask, response_mask, capacity)
    return layout_token_logps(model, layout, input_ids, response_mask, pad_id, chunk)
