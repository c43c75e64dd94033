"""Padding-free packing: the sequences of a padded pair batch laid end to end in a few rows, each token
attending only to its own sequence (TRL's `padding_free`, flash-attn varlen, FlexAttention document masks).

A padded batch [N, T] spends compute on padding: with HH-RLHF lengths about 45% of the positions
(issue 7). Packing moves the real tokens into rows [R, W] with R*W close to the number of real tokens,
restarts the position ids at 0 for every sequence, and keeps attention inside each sequence, so every
reward and log-prob equals the padded forward's (RoPE depends on position differences only, so a
left-padded reference agrees too). This module holds the machinery shared with prefix sharing
(models/prefix_share.py):

- a `Layout`: where each real token of the padded batch sits in the rows (`slot_of`), what fills the
  rows (ids, position ids, sequence ids `doc`, segment codes for the prefix mask);
- the attention: transformers >= 5 builds the block-diagonal mask itself from position ids that
  restart (packed layouts, any backend; flash-attn then runs varlen); layouts that are not
  block-diagonal (prefix sharing) get an explicit mask: a 4D boolean mask for sdpa, an additive
  float mask for eager, a BlockMask for flex_attention;
- reading the outputs back: the reward at each sequence's last token, and the per-token log-prob of
  each response token from the hidden state of the token before it *in its own sequence*, with the
  LM head applied only at those positions (`logits_to_keep`) and the float32 log-softmax taken chunk
  by chunk, so no float32 [N, T, V] tensor is ever built.

Everything runs through the model's own forward (DDP, FSDP and DeepSpeed hook it); the per-token
reward scores are read with a forward hook on the reward head. `use_cache=False` is passed always:
with a cache, transformers ignores restarting position ids and builds one causal mask over the row.
Which forward a collated batch runs (padded, packed, prefix-shared) is chosen in models/pair_forward.py.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from marginkit.models.reward import reward_head

__all__ = ["Attention", "ForwardLayout", "Layout", "Piece", "build_layout", "packed_layout",
           "selective_logps", "dense_mask", "additive_mask", "flex_mask_mod", "flex_block_mask", "run_layout",
           "layout_rewards", "layout_token_logps", "packed_rewards", "packed_response_logps", "attention_of",
           "row_capacity", "spans", "resolve_attention", "select_attention", "check_layout_support",
           "compile_blocks", "unwrap"]

ForwardLayout = Literal["padded", "packed", "prefix_shared"]
Attention = Literal["auto", "sdpa", "eager", "flex_attention", "flash_attention_2"]
_ONE_ROW = ("flash_attention_2", "flash_attention_3", "flex_attention")  # no cost for one long row
_NATIVE_PACKING = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")


@dataclass(frozen=True)
class Piece:
    """A run of `length` consecutive real tokens of padded row `row`, from column `col`, placed with
    position ids `position, position+1, ...` and segment code `segment` (0: a whole sequence or a shared
    prompt, 1: chosen response, 2: rejected response). `alias` = (row, col) of another padded row whose
    tokens are the same and share these slots (prefix sharing: the rejected row's copy of the prompt)."""

    row: int
    col: int
    length: int
    position: int = 0
    segment: int = 0
    alias: tuple[int, int] | None = None


@dataclass(frozen=True)
class Layout:
    """Rows [R, W] holding the real tokens of a padded batch [N, T].

    source:      [R, W] long, flat index (into the padded [N*T]) of the token in each slot, -1 for filler.
    position_ids:[R, W] long, restarting per sequence (filler: 0, 1, ... so it is a sequence of its own).
    doc:         [R, W] long, which item (sequence, or prompt+chosen+rejected) a slot belongs to; filler < 0.
    segment:     [R, W] long, Piece.segment per slot (0 for filler).
    slot_of:     [N, T] long, flat slot (into [R*W]) holding padded token (n, t); -1 for padding.
    last_slot:   [N] long, slot of each padded row's last real token (where its reward is read).
    kind:        "packed" (block-diagonal: transformers builds the mask) or "prefix_shared".
    """

    source: torch.Tensor
    position_ids: torch.Tensor
    doc: torch.Tensor
    segment: torch.Tensor
    slot_of: torch.Tensor
    last_slot: torch.Tensor
    kind: str

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.source.shape)  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> Layout:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in moved.items():
            if isinstance(v, torch.Tensor):
                moved[k] = v.to(device, non_blocking=True)
        return Layout(**moved)

    def input_ids(self, padded_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
        """[R, W] token ids gathered from the padded [N, T] ids (filler: `pad_id`)."""
        flat = padded_ids.reshape(-1)[self.source.clamp(min=0)]  # [R*W]
        return torch.where(self.source >= 0, flat.view(self.shape), pad_id)


def _pack_rows(lengths: Sequence[int], capacity: int) -> tuple[list[int], list[int], list[int]]:
    """First-fit decreasing: the (row, offset) of each item and the fill of each row (capacity >= max length)."""
    row, offset, fills = [0] * len(lengths), [0] * len(lengths), []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((r for r, f in enumerate(fills) if f + lengths[i] <= capacity), len(fills))
        if r == len(fills):
            fills.append(0)
        row[i], offset[i] = r, fills[r]
        fills[r] += lengths[i]
    return row, offset, fills


def build_layout(items: Sequence[Sequence[Piece]], n_rows: int, width: int, kind: str,
                 capacity: int | None = None, multiple: int = 1) -> Layout:
    """Place items (each a list of pieces kept together, in order) into rows of at most `capacity` slots
    (None: one row), the row width rounded up to `multiple`. CPU tensors; see Layout."""
    lengths = [sum(p.length for p in item) for item in items]
    cap = max(max(lengths, default=1), capacity or sum(lengths), 1)
    rows, offsets, fills = _pack_rows(lengths, cap)
    n_packed = max(len(fills), 1)
    w = -(-max(max(fills, default=1), 1) // multiple) * multiple
    source = np.full(n_packed * w, -1, dtype=np.int64)
    position = np.zeros(n_packed * w, dtype=np.int64)
    doc = np.zeros(n_packed * w, dtype=np.int64)
    segment = np.zeros(n_packed * w, dtype=np.int64)
    slot_of = np.full(n_rows * width, -1, dtype=np.int64)
    for k, item in enumerate(items):
        start = rows[k] * w + offsets[k]
        for p in item:
            slots = np.arange(start, start + p.length)
            padded = p.row * width + p.col + np.arange(p.length)
            source[slots], position[slots] = padded, p.position + np.arange(p.length)
            doc[slots], segment[slots] = k, p.segment
            slot_of[padded] = slots
            if p.alias is not None:
                slot_of[p.alias[0] * width + p.alias[1] + np.arange(p.length)] = slots
            start += p.length
    for r in range(n_packed):  # filler: its own sequence per row (never an empty attention row)
        fill = fills[r] if r < len(fills) else 0
        position[r * w + fill:(r + 1) * w] = np.arange(w - fill)
        doc[r * w + fill:(r + 1) * w] = -1 - r
    slot_grid = slot_of.reshape(n_rows, width)
    has = slot_grid >= 0
    last_col = np.where(has.any(1), width - 1 - np.argmax(has[:, ::-1], axis=1), 0)
    last_slot = slot_grid[np.arange(n_rows), last_col]

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a)

    return Layout(t(source).view(n_packed, w), t(position).view(n_packed, w), t(doc).view(n_packed, w),
                  t(segment).view(n_packed, w), t(slot_grid.copy()), t(last_slot), kind)


def spans(attention_mask: torch.Tensor) -> tuple[list[int], list[int]]:
    """(first column, length) of the real tokens of each row of a [N, T] mask; they must be contiguous."""
    mask = attention_mask.detach().to("cpu", torch.bool)
    lengths = mask.sum(1)
    first = mask.int().argmax(1)
    cols = torch.arange(mask.shape[1])
    expected = (cols >= first[:, None]) & (cols < (first + lengths)[:, None])
    if not torch.equal(expected, mask):
        bad = int((expected != mask).any(1).nonzero()[0])
        raise ValueError(f"attention_mask row {bad} has padding between real tokens: {mask[bad].int().tolist()}; "
                         "packing needs each sequence's tokens contiguous (left or right padding)")
    return first.tolist(), lengths.tolist()


def packed_layout(attention_mask: torch.Tensor, capacity: int | None = None, multiple: int = 1) -> Layout:
    """Each row of a padded batch [N, T] becomes one sequence (positions from 0) in the packed rows."""
    first, lengths = spans(attention_mask)
    items = [[Piece(n, first[n], lengths[n])] for n in range(len(lengths)) if lengths[n]]
    return build_layout(items, attention_mask.shape[0], attention_mask.shape[1], "packed", capacity, multiple)


def dense_mask(layout: Layout) -> torch.Tensor:
    """[R, 1, W, W] bool, True where query q may attend to key k: same item, k <= q, and never a rejected
    query (segment 2) on a chosen key (segment 1). For a packed layout this is block-diagonal causal."""
    doc, seg = layout.doc, layout.segment
    idx = torch.arange(doc.shape[1], device=doc.device)
    causal = idx[:, None] >= idx[None, :]  # [W, W]
    same = doc[:, :, None] == doc[:, None, :]  # [R, W, W]
    cross = (seg[:, :, None] == 2) & (seg[:, None, :] == 1)
    return (causal & same & ~cross)[:, None]


def additive_mask(layout: Layout, dtype: torch.dtype) -> torch.Tensor:
    """dense_mask as the additive float mask eager attention expects (0 allowed, dtype min elsewhere)."""
    allowed = dense_mask(layout)
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def flex_mask_mod(layout: Layout):
    """The FlexAttention mask_mod equal to dense_mask (tested against it with create_mask)."""
    doc, seg = layout.doc, layout.segment

    def mask_mod(b, h, q, k):
        return (q >= k) & (doc[b, q] == doc[b, k]) & ~((seg[b, q] == 2) & (seg[b, k] == 1))

    return mask_mod


def flex_block_mask(layout: Layout):
    """A FlexAttention BlockMask for the layout: only blocks that hold allowed pairs are computed."""
    from torch.nn.attention.flex_attention import create_block_mask

    r, w = layout.shape
    return create_block_mask(flex_mask_mod(layout), B=r, H=None, Q_LEN=w, KV_LEN=w, device=layout.doc.device,
                             _compile=layout.doc.is_cuda)


def unwrap(model: nn.Module) -> nn.Module:
    """The HF model inside DDP / FSDP1 / DeepSpeed (`.module`) or torch.compile (`._orig_mod`) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def attention_of(model: nn.Module) -> str:
    return getattr(unwrap(model).config, "_attn_implementation", None) or "eager"


def row_capacity(attention: str, lengths: Sequence[int], width: int) -> int | None:
    """One row for kernels that skip masked blocks (flash varlen, flex); otherwise rows as wide as the padded
    batch: attention then costs sum(tokens) x T, never more than the padded N x T x T."""
    return None if attention in _ONE_ROW else max(width, max(lengths, default=1))


def run_layout(model: nn.Module, layout: Layout, input_ids: torch.Tensor, pad_id: int, **kwargs: Any) -> Any:
    """The model's own forward on the packed rows, with position ids restarting per sequence and attention kept
    inside each sequence (and, for prefix sharing, rejected tokens blind to chosen ones)."""
    attention = attention_of(model)
    ids = layout.input_ids(input_ids, pad_id)  # [R, W]
    if layout.kind == "packed" and attention in _NATIVE_PACKING:
        mask = None  # transformers derives the block-diagonal mask (or flash varlen) from the position ids
    elif attention == "sdpa":
        mask = dense_mask(layout)
    elif attention == "eager":
        mask = additive_mask(layout, next(unwrap(model).parameters()).dtype)
    elif attention == "flex_attention":
        mask = flex_block_mask(layout)
    else:
        raise ValueError(f"attention {attention!r} cannot run a {layout.kind} layout; use sdpa, eager or flex_attention")
    return model(input_ids=ids, position_ids=layout.position_ids, attention_mask=mask, use_cache=False, **kwargs)


def layout_rewards(model: nn.Module, layout: Layout, input_ids: torch.Tensor, pad_id: int,
                   with_hidden: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rewards [N] (float32) read at each padded row's last real token, and optionally the last-layer hidden
    state there [N, D] (detached), as `score_batch` returns them for the padded batch."""
    head = reward_head(model)
    captured: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        out = run_layout(model, layout, input_ids, pad_id, output_hidden_states=with_hidden)
    finally:
        handle.remove()
    scores = captured[-1].reshape(-1)  # [R, W, 1] -> [R*W]: the head's score at every slot
    rewards = scores[layout.last_slot].float()  # [N]
    hidden = None
    if with_hidden:
        last = out.hidden_states[-1]
        hidden = last.reshape(-1, last.shape[-1])[layout.last_slot].detach()  # [N, D]
    return rewards, hidden


def _lse_f32(logits: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(logits.float(), dim=-1)


def selective_logps(logits: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """log_softmax(logits[rows].float())[targets] for M (row, target) pairs, [M] float32.

    Equals the naive `logits.float().log_softmax(-1)[rows, targets]` (tested), computed as
    logits[rows, targets] - logsumexp(logits[rows]) with the logsumexp taken in float32 over `chunk` rows at a
    time and recomputed in backward, so at most one float32 [chunk, V] block exists at once.
    logits: [K, V] (any float dtype); rows, targets: [M] long (a row may serve several targets).
    """
    if len(logits) == 0:
        return logits.new_zeros(len(rows), dtype=torch.float32)
    grad = torch.is_grad_enabled() and logits.requires_grad
    parts = [checkpoint(_lse_f32, block, use_reentrant=False) if grad else _lse_f32(block)
             for block in logits.split(chunk)]
    lse = torch.cat(parts)  # [K]
    return logits[rows, targets].float() - lse[rows]


def layout_token_logps(model: nn.Module, layout: Layout, input_ids: torch.Tensor, response_mask: torch.Tensor,
                       pad_id: int, chunk: int = 1024) -> torch.Tensor:
    """Per-token log-probs [N, T] float32 of the response tokens of a padded batch, 0 elsewhere.

    logp(n, t) = log p(x[n, t] | x[n, <t]), read from the logits at the slot of the token before t in row n
    (slot_of[n, t-1]: for prefix sharing the first rejected token is thus predicted from the shared prompt's
    last token, exactly as in its own sequence). A response token with no real token before it (the first
    token of a sequence) is not scored, as in the shift-by-one of a padded forward.
    """
    n, t = response_mask.shape
    slot_of = layout.slot_of.view(-1)  # [N*T]
    prev = torch.cat([torch.full((n, 1), -1, device=slot_of.device), layout.slot_of[:, :-1]], 1).reshape(-1)
    scored = response_mask.reshape(-1).to(prev.device).bool() & (prev >= 0) & (slot_of >= 0)  # [N*T]
    token_index = scored.nonzero().squeeze(1)  # [M] padded flat index of each scored token
    pred_slot = prev[token_index]  # [M] slot whose logits predict it
    keep = torch.zeros(layout.source.numel(), dtype=torch.bool, device=prev.device)
    keep[pred_slot] = True
    kept_row = keep.long().cumsum(0) - 1  # [R*W] row of each kept slot in the flattened logits
    out = run_layout(model, layout, input_ids, pad_id, logits_to_keep=keep.view(layout.shape))
    logits = out.logits.reshape(-1, out.logits.shape[-1])  # [K, V], slots in row-major order
    targets = input_ids.reshape(-1)[token_index]  # [M]
    logps = selective_logps(logits, kept_row[pred_slot], targets, chunk)  # [M]
    flat = torch.zeros(n * t, dtype=torch.float32, device=logps.device)
    return flat.index_put((token_index,), logps).view(n, t)


def packed_rewards(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_id: int,
                   with_hidden: bool = False, capacity: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rewards [N] of a padded batch [N, T] computed padding-free; equal to score_batch's (tested)."""
    first, lengths = spans(attention_mask)
    attention = attention_of(model)
    cap = capacity if capacity is not None else row_capacity(attention, lengths, attention_mask.shape[1])
    items = [[Piece(i, first[i], lengths[i])] for i in range(len(lengths)) if lengths[i]]
    layout = build_layout(items, *attention_mask.shape, "packed", cap, 128 if attention == "flex_attention" else 1)
    return layout_rewards(model, layout.to(input_ids.device), input_ids, pad_id, with_hidden)


def packed_response_logps(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          response_mask: torch.Tensor, pad_id: int, capacity: int | None = None,
                          chunk: int = 1024) -> torch.Tensor:
    """Per-token response log-probs [N, T] (float32, 0 off the response) of a padded batch, computed
    padding-free with the LM head applied only where a response token is predicted; see layout_token_logps."""
    first, lengths = spans(attention_mask)
    attention = attention_of(model)
    cap = capacity if capacity is not None else row_capacity(attention, lengths, attention_mask.shape[1])
    items = [[Piece(i, first[i], lengths[i])] for i in range(len(lengths)) if lengths[i]]
    layout = build_layout(items, *attention_mask.shape, "packed", cap, 128 if attention == "flex_attention" else 1)
    return layout_token_logps(model, layout.to(input_ids.device), input_ids, response_mask, pad_id, chunk)


# ---- setup: attention backend, support checks, compilation ----

def resolve_attention(forward: str, requested: str, cuda: bool) -> str | None:
    """The attention implementation to set for a forward layout (None: keep the model's own).

    auto: on CUDA, flash-attn varlen for packing when the `flash_attn` package is installed, else
    FlexAttention (block-sparse masks, torch >= 2.5); on CPU, sdpa with a materialised mask.
    """
    if requested != "auto":
        return requested
    if forward == "padded":
        return None
    if not cuda:
        return "sdpa"
    if forward == "packed" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "flex_attention" if importlib.util.find_spec("torch.nn.attention.flex_attention") else "sdpa"


def check_layout_support(model: nn.Module, forward: str, attention: str | None = None) -> None:
    """Refuse, before training, a layout this model, attention kernel or transformers cannot run exactly
    (`attention`: the kernel that will run, default the model's current one)."""
    if forward == "padded":
        return
    from marginkit.models.reward import is_encoder

    inner = unwrap(model)
    if is_encoder(inner):
        raise ValueError(f"train.forward={forward!r} needs a causal LM backbone; {type(inner).__name__} is a "
                         "bidirectional encoder (its [CLS] pooling sees the whole row). Use train.forward=padded")
    try:
        from transformers.masking_utils import find_packed_sequence_indices  # noqa: F401
        from transformers.modeling_utils import slice_logits_to_keep  # noqa: F401
    except ImportError as e:
        import transformers

        raise ValueError(f"train.forward={forward!r} needs transformers >= 5 (packed position ids, boolean "
                         f"logits_to_keep); installed {transformers.__version__}. Use train.forward=padded") from e
    attention = attention or attention_of(inner)
    if forward == "prefix_shared" and attention.startswith("flash_attention"):
        raise ValueError(f"train.forward=prefix_shared cannot run on {attention}: varlen kernels only express "
                         "block-diagonal masks. Use train.attention=flex_attention or sdpa")
    if attention not in _NATIVE_PACKING:
        raise ValueError(f"train.forward={forward!r}: attention {attention!r} is not supported; use sdpa, eager, "
                         "flex_attention or (packed only) flash_attention_2")


def select_attention(model: nn.Module, forward: str, requested: str = "auto") -> str:
    """Check the layout is supported, then set the attention implementation chosen by resolve_attention on the
    model (before Accelerate wraps it). Returns the implementation in use."""
    inner = unwrap(model)
    impl = resolve_attention(forward, requested, torch.cuda.is_available())
    check_layout_support(inner, forward, impl)
    if impl is not None and impl != attention_of(inner):
        inner.set_attn_implementation(impl)
    return attention_of(inner)


def compile_blocks(model: nn.Module, **compile_kwargs: Any) -> int:
    """torch.compile each repeated transformer block in place (regional compilation: one compile reused by
    every layer; state-dict keys unchanged, so checkpoints and resume are unaffected). Returns the count."""
    count = 0
    for module in unwrap(model).modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1 and len({type(m) for m in module}) == 1:
            for block in module:
                block.compile(**compile_kwargs)
                count += 1
    if not count:
        raise ValueError(f"train.torch_compile: found no repeated blocks to compile in {type(unwrap(model)).__name__}")
    return count
