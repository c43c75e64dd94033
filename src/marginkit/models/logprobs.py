"""Per-sequence log-probabilities of response tokens under a causal LM: the shift by one and the mask.

A causal LM's logits at position t predict the token at t + 1. For input ids x_0 .. x_{T-1}:

    log π(x_{t+1} | x_{<=t}) = log_softmax(logits[:, t])[x_{t+1}],     t = 0 .. T-2

so `logits[:, :-1]` pair with the labels `input_ids[:, 1:]`, and the response mask shifts with the
labels: `response_mask[:, 1:]`. A mask that does not shift trains on the last prompt token and
drops the last response token (EOS), and the loss still looks normal (seed 001; the reference
code, eric-mitchell/direct-preference-optimization `_get_batch_logps`, shifts labels and mask
together the same way). Masks always come from the collator's lengths, never from pad ids, so a
pad id equal to EOS cannot hide or add tokens.

Worked example (one row, T = 4, prompt = x_0 x_1, response = x_2 x_3):
    labels        x_1  x_2  x_3          (input_ids[:, 1:])
    shifted mask   0    1    1           (response_mask[:, 1:] = [0, 1, 1] from [0, 0, 1, 1])
    sum = log π(x_2 | x_0 x_1) + log π(x_3 | x_0 x_1 x_2), read from logits[:, 1] and logits[:, 2];
    logits[:, 0] (predicts a prompt token) and logits[:, 3] (predicts past the end) are never read.

`token_logps` never materialises a float32 [N, T, V] log-softmax: it works over chunks of the
sequence, each `logit[label] - logsumexp(logits)` in float32, and with gradients on it recomputes
each chunk in backward (activation checkpointing) instead of keeping its float32 copy. It equals
the naive one-liner `naive_token_logps` (tested):

    torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)

This is the padded reference forward; a collated batch with a packed or prefix-shared layout goes
through models/pair_forward.py `batch_logps`, which gives the same numbers.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["SequenceLogps", "naive_token_logps", "token_logps", "sequence_logps", "position_ids_from_mask",
           "forward_logps"]


@dataclass(frozen=True)
class SequenceLogps:
    """Summed response log-probs and response token counts of N sequences.

    sum:      [N] Σ_t log π(y_t | x, y_<t) over response tokens, float32 (with grad if the logits had it).
    n_tokens: [N] response tokens counted, float32.
    """

    sum: torch.Tensor
    n_tokens: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        """[N] length-averaged log-prob, sum / |y| (a row with no response token gives 0)."""
        return self.sum / self.n_tokens.clamp(min=1.0)

    def split(self) -> tuple[SequenceLogps, SequenceLogps]:
        """Rows [2B] (chosen first, then rejected, as collated) -> chosen [B], rejected [B]."""
        if self.sum.shape[0] % 2:
            raise ValueError(f"SequenceLogps.split: {self.sum.shape[0]} rows; expected 2B (chosen then rejected)")
        (s_c, s_r), (n_c, n_r) = self.sum.chunk(2), self.n_tokens.chunk(2)
        return SequenceLogps(s_c, n_c), SequenceLogps(s_r, n_r)

    def detach(self) -> SequenceLogps:
        return SequenceLogps(self.sum.detach(), self.n_tokens)


def _check_shapes(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor | None = None) -> None:
    if logits.dim() != 3 or input_ids.dim() != 2 or logits.shape[:2] != input_ids.shape:
        raise ValueError(f"logits must be [N, T, V] and input_ids [N, T]; got logits {tuple(logits.shape)}, "
                         f"input_ids {tuple(input_ids.shape)}")
    if response_mask is not None and response_mask.shape != input_ids.shape:
        raise ValueError(f"response_mask {tuple(response_mask.shape)} must match input_ids {tuple(input_ids.shape)}")
    if input_ids.shape[1] < 2:
        raise ValueError(f"sequences of length {input_ids.shape[1]}: need at least 2 tokens (a prompt token and a response token)")


def naive_token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """[N, T-1] log π(input_ids[:, t+1] | ...) by the readable one-liner (the reference for `token_logps`)."""
    _check_shapes(logits, input_ids)
    return torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)


def _chunk_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[N, t] logit[label] - logsumexp(logit) in float32 for one chunk [N, t, V] of positions."""
    picked = logits.gather(-1, labels[..., None]).squeeze(-1).float()  # [N, t]
    return picked - torch.logsumexp(logits.float(), dim=-1)  # [N, t]


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """[N, T-1] float32 per-token log-probs of the labels input_ids[:, 1:] under logits[:, :-1].

    chunk_size: positions per chunk (None or 0: one chunk). With gradients enabled each chunk is
    checkpointed, so backward recomputes its float32 log-normaliser rather than storing it: peak
    extra memory is one chunk's [N, chunk, V] in float32 instead of the whole sequence's.
    """
    _check_shapes(logits, input_ids)
    shifted, labels = logits[:, :-1], input_ids[:, 1:]  # [N, T-1, V], [N, T-1]
    width = labels.shape[1]
    step = width if not chunk_size or chunk_size <= 0 else chunk_size
    keep_graph = torch.is_grad_enabled() and logits.requires_grad
    parts = []
    for start in range(0, width, step):
        piece, lab = shifted[:, start:start + step], labels[:, start:start + step]
        if keep_graph and step < width:
            parts.append(checkpoint(_chunk_logps, piece, lab, use_reentrant=False))
        else:
            parts.append(_chunk_logps(piece, lab))
    return torch.cat(parts, dim=1)  # [N, T-1]


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor,
                   chunk_size: int | None = None) -> SequenceLogps:
    """Summed response log-probs [N] and token counts [N] (module docstring: shift and mask).

    logits [N, T, V] (any float dtype), input_ids [N, T], response_mask [N, T] (True on response
    tokens, as collated: prompt and padding False). The mask shifts with the labels.
    """
    _check_shapes(logits, input_ids, response_mask)
    per_token = token_logps(logits, input_ids, chunk_size)  # [N, T-1]
    mask = response_mask[:, 1:].bool()  # [N, T-1], aligned with the labels input_ids[:, 1:]
    per_token = torch.where(mask, per_token, torch.zeros_like(per_token))  # where, not *, so a masked -inf adds 0
    return SequenceLogps(per_token.sum(-1), mask.sum(-1).float())


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[N, T] positions counted over real tokens only (0 at each row's first real token).

    With left padding, HF causal LMs otherwise number positions from the first *pad*; generate()
    uses these same positions, so passing them makes left and right padding score alike.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _accepts_position_ids(model: nn.Module) -> bool:
    inner = getattr(model, "module", model)  # DDP hides the model's own forward signature
    try:
        return "position_ids" in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False


def forward_logps(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  response_mask: torch.Tensor, chunk_size: int | None = None) -> SequenceLogps:
    """One forward of a causal LM over N rows, then `sequence_logps` of the response tokens."""
    kwargs = {"position_ids": position_ids_from_mask(attention_mask)} if _accepts_position_ids(model) else {}
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs).logits  # [N, T, V]
    return sequence_logps(logits, input_ids, response_mask, chunk_size)
