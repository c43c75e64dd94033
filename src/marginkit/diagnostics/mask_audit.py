"""Loss-mask audit before DPO/SFT training: decode collated rows and check that the loss mask, shifted by
one, covers exactly the response tokens, never prompt or padding (issue 5; seed 001's warning: with a
mis-shifted mask "the loss looks normal while the model is supervising prompt tokens").

A causal LM's logits at position t predict token t + 1, so log-probs use

    logits[:, :-1]   predicts   labels = input_ids[:, 1:]      and   loss_mask = response_mask[:, 1:]

(eric-mitchell/direct-preference-optimization `_get_batch_logps`; TRL's `selective_log_softmax` caller).
The mask therefore lives in *label* coordinates, [N, T-1]: loss_mask[i, j] says whether token j + 1 of
row i is supervised. Correct means: loss_mask == response_mask[:, 1:] & attention_mask[:, 1:].

Worked example (pad 0, right padding), one row [5, 6, 7, 8, 0] with a 2-token prompt [5, 6]:

    response_mask = [0, 0, 1, 1, 0]      labels    = [6, 7, 8, 0]
    loss_mask     = [0, 1, 1, 0]         supervises  7, 8 (the response) and nothing else
    not shifted   = [0, 0, 1, 1]         misses 7, supervises the pad: caught
    prompt kept   = [1, 1, 1, 0]         supervises the prompt token 6: caught
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["AuditReport", "MaskAuditError", "RowView", "audit_loss_mask", "expected_loss_mask", "probe_loss_mask"]


class MaskAuditError(RuntimeError):
    """The loss mask (or the batch it comes from) would supervise the wrong tokens; the message shows the
    decoded evidence and the fix."""


@dataclass(frozen=True)
class RowView:
    """One decoded row: what is prompt, what is response, and what the loss mask supervises."""

    row: int
    label: str
    prompt: str
    response: str
    supervised: str


@dataclass(frozen=True)
class AuditReport:
    n_rows: int  # rows checked (all rows of the batch)
    n_supervised: int  # target tokens the loss mask covers
    padding_side: str  # "right", "left" or "none" (no row is padded)
    rows: list[RowView]  # the first n_rows rows, decoded

    def summary(self) -> str:
        lines = [f"mask audit: {self.n_rows} rows, {self.n_supervised} supervised tokens, {self.padding_side} "
                 "padding; the loss covers exactly the response tokens. Decoded:"]
        lines += [f"  {v.label}: prompt {v.prompt!r} | supervised {v.supervised!r}" for v in self.rows]
        return "\n".join(lines)


def expected_loss_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The correct loss mask [N, T-1] in label coordinates: response_mask[:, 1:] & attention_mask[:, 1:]."""
    return batch["response_mask"][:, 1:].bool() & batch["attention_mask"][:, 1:].bool()


def probe_loss_mask(logps_fn: Callable[[torch.Tensor], torch.Tensor], input_ids: torch.Tensor,
                    vocab_size: int) -> torch.Tensor:
    """The loss mask [N, T-1] a log-prob function really applies, found by its gradient.

    `logps_fn(logits)` maps logits [N, T, V] to summed log-probs (any shape; summed here), e.g.
    `lambda lg: sequence_logps(lg, ids, response_mask).sum`. At zero logits every read position t gets a
    non-zero gradient (d log_softmax = onehot - 1/V) and every unread one exactly zero, so
    `read[:, t]` says whether logits[:, t] (which predict token t + 1) enter the sum: read[:, :-1] is the
    mask in label coordinates. Reading logits[:, T-1] (which predict past the end) raises.
    """
    n, t = input_ids.shape
    logits = torch.zeros(n, t, vocab_size, requires_grad=True)
    with torch.enable_grad():
        logps_fn(logits).sum().backward()
    read = logits.grad.abs().sum(-1) > 0  # [N, T]
    if read[:, -1].any():
        rows = read[:, -1].nonzero().flatten().tolist()[:5]
        raise MaskAuditError(f"the log-prob function reads the logits at the last position (rows {rows}), which "
                             "predict past the end: it is not shifted by one (use logits[:, :-1] with labels "
                             "input_ids[:, 1:])")
    return read[:, :-1]


def _row_label(batch: dict[str, torch.Tensor], row: int) -> str:
    index = batch.get("index")
    if index is not None and batch["input_ids"].shape[0] == 2 * len(index):
        n = len(index)
        return f"row {row} ({'chosen' if row < n else 'rejected'} of pair {int(index[row % n])})"
    return f"row {row}" + (f" (example {int(index[row])})" if index is not None and len(index) > row else "")


def _decode(tokenizer: Any, ids: torch.Tensor) -> str:
    return tokenizer.decode(ids.tolist(), skip_special_tokens=False)


def _check_rows(batch: dict[str, torch.Tensor], tokenizer: Any) -> None:
    """The batch itself: one contiguous run of real tokens per row, a non-empty response that ends at the
    last real token, and (for [2B] pair batches) the same prompt for chosen and rejected."""
    ids, attn, resp = batch["input_ids"].cpu(), batch["attention_mask"].cpu().bool(), batch["response_mask"].cpu().bool()
    for r in range(ids.shape[0]):
        real = attn[r].nonzero().flatten()
        where = _row_label(batch, r)
        if len(real) == 0 or int(real[-1] - real[0]) + 1 != len(real):
            raise MaskAuditError(f"{where}: the attention mask is not one contiguous run of real tokens "
                                 f"({attn[r].int().tolist()}); padding must sit on one side only")
        if (resp[r] & ~attn[r]).any():
            raise MaskAuditError(f"{where}: the response mask covers padding positions "
                                 f"{(resp[r] & ~attn[r]).nonzero().flatten().tolist()}; check the collator")
        span = resp[r].nonzero().flatten()
        if len(span) == 0:
            raise MaskAuditError(f"{where}: no response tokens ({_decode(tokenizer, ids[r][attn[r]])!r}); the "
                                 "response was truncated away: raise max_length or shorten prompts")
        if span[0] == real[0]:
            raise MaskAuditError(f"{where}: the response starts at the first real token, so nothing predicts it "
                                 "(the loss can never cover it); start every row with a prompt or a BOS token")
        if int(span[-1] - span[0]) + 1 != len(span) or span[-1] != real[-1]:
            raise MaskAuditError(
                f"{where}: the response mask {resp[r].int().tolist()} is not one run that ends at the last real "
                f"token (real tokens {int(real[0])}..{int(real[-1])}); check "
                "the collator's prompt length")
    index = batch.get("index")
    if index is None or ids.shape[0] != 2 * len(index):
        return
    n = len(index)
    for i in range(n):
        pc, pr = ids[i][attn[i] & ~resp[i]], ids[i + n][attn[i + n] & ~resp[i + n]]
        if not torch.equal(pc, pr):
            raise MaskAuditError(
                f"pair {int(index[i])}: chosen and rejected rows have different prompts under the response mask "
                f"({_decode(tokenizer, pc)!r} vs {_decode(tokenizer, pr)!r}): the response mask starts at the "
                "wrong place in one of them (a wrong prompt length), so prompt tokens would be trained on")


def _explain(batch: dict[str, torch.Tensor], tokenizer: Any, mask: torch.Tensor, want: torch.Tensor) -> str:
    """Name what is wrong with `mask` against `want` ([N, T-1] each), with decoded tokens of the first bad row."""
    ids, attn = batch["input_ids"].cpu(), batch["attention_mask"].cpu().bool()
    labels, label_real = ids[:, 1:], attn[:, 1:]
    label_prompt = label_real & ~batch["response_mask"].cpu().bool()[:, 1:]
    extra, missing = mask & ~want, want & ~mask
    on_prompt, on_pad = extra & label_prompt, extra & ~label_real
    r = int((extra | missing).any(dim=1).nonzero()[0])
    tokens = lambda m: _decode(tokenizer, labels[r][m[r]])  # noqa: E731
    parts = []
    if on_prompt.any():
        parts.append(f"it covers {int(on_prompt.sum())} prompt token(s) (e.g. {_row_label(batch, r)}: "
                     f"{tokens(on_prompt)!r})")
    if on_pad.any():
        parts.append(f"it covers {int(on_pad.sum())} padding target(s)")
    if missing.any():
        parts.append(f"it misses {int(missing.sum())} response token(s) (e.g. {_row_label(batch, r)}: "
                     f"{tokens(missing)!r})")
    unshifted = batch["response_mask"].cpu().bool()[:, :-1] & attn[:, :-1]
    cause = ("it is not shifted by one: it marks the positions whose token is a response token, but the "
             "labels are input_ids[:, 1:], so the mask must be response_mask[:, 1:]"
             if torch.equal(mask, unshifted) else
             "it must equal response_mask[:, 1:] & attention_mask[:, 1:] (labels are input_ids[:, 1:])")
    return (f"loss mask is wrong: {'; '.join(parts)}. Likely cause: {cause}. Row as seen: "
            f"{_decode(tokenizer, ids[r][attn[r]])!r}, supervised now {tokens(mask)!r}, should be {tokens(want)!r}.")


def audit_loss_mask(batch: dict[str, torch.Tensor], tokenizer: Any, n_rows: int = 4,
                    loss_mask: torch.Tensor | None = None) -> AuditReport:
    """Check a collated batch's loss mask; raise MaskAuditError with decoded evidence, else report.

    Args:
        batch: a collated batch (data/collate.py): input_ids, attention_mask, response_mask [N, T] (N = 2B
            chosen-then-rejected rows for pairs, with `index` [B]; any N for SFT rows).
        tokenizer: decodes the evidence and the report.
        n_rows: rows decoded into the report (every row is checked).
        loss_mask: the mask the trainer's log-prob code actually applies, [N, T-1] aligned with the labels
            input_ids[:, 1:]. None: audit the mask derived from the batch (`expected_loss_mask`), which checks
            the batch (prompt lengths, padding) but not the trainer's shift.
    """
    for key in ("input_ids", "attention_mask", "response_mask"):
        if key not in batch:
            raise MaskAuditError(f"batch has no {key!r}; audit a batch from data/collate.py")
    n, t = batch["input_ids"].shape
    if t < 2 or batch["response_mask"].shape != (n, t) or batch["attention_mask"].shape != (n, t):
        raise MaskAuditError(f"input_ids, attention_mask, response_mask must share a shape [N, T] with T >= 2; got "
                             f"{[tuple(batch[k].shape) for k in ('input_ids', 'attention_mask', 'response_mask')]}")
    _check_rows(batch, tokenizer)
    want = expected_loss_mask(batch).cpu()
    mask = want if loss_mask is None else loss_mask.detach().cpu()
    if mask.shape != (n, t - 1):
        hint = (": it has one position per token, so it was not shifted by one (use response_mask[:, 1:])"
                if mask.shape == (n, t) else "")
        raise MaskAuditError(f"loss mask has shape {tuple(mask.shape)}; expected [N, T-1] = {(n, t - 1)} aligned with "
                             f"the labels input_ids[:, 1:]{hint}")
    mask = mask.bool()
    if not torch.equal(mask, want):
        raise MaskAuditError(_explain(batch, tokenizer, mask, want))
    return _report(batch, tokenizer, mask, n_rows)


def _report(batch: dict[str, torch.Tensor], tokenizer: Any, mask: torch.Tensor, n_rows: int) -> AuditReport:
    ids, attn, resp = batch["input_ids"].cpu(), batch["attention_mask"].cpu().bool(), batch["response_mask"].cpu().bool()
    padded = ~attn.all(dim=1)
    side = "none" if not padded.any() else ("left" if (~attn[padded][:, 0]).any() else "right")
    views = [RowView(r, _row_label(batch, r), _decode(tokenizer, ids[r][attn[r] & ~resp[r]]),
                     _decode(tokenizer, ids[r][resp[r]]), _decode(tokenizer, ids[r, 1:][mask[r]]))
             for r in range(min(n_rows, ids.shape[0]))]
    return AuditReport(ids.shape[0], int(mask.sum()), side, views)
