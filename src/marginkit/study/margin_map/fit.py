"""Fitting one reward model of the margin map: the shared step, the linear RM and the transformer RM.

Both RM classes train with `pair_step`: rewards -> `margins.target_margins` (the one margin call every
trainer makes, MarginInputs built by `MarginInputs.from_batch`) -> the variant's loss. Only how rewards and
the "hidden" embeddings (OT's input) are computed differs:

- linear:      r(x, y) = φ(x, y) · w over the world's own features (data/world/features.py), w = 0 at the
               start (every loss starts at ln 2). The hidden embedding is φ itself. Well specified: the
               true reward is φ · TRUE_WEIGHTS.
- transformer: a tiny GPT-NeoX from scratch on the world's word tokenizer, the reward read at the last
               token by train-rm's own forward (`models.pair_forward.score_pairs`); hidden = its last hidden
               state there. Its capacity, not the labels, limits it (docs/world.md).

Every fit is scored on the validation split `n_evals` times; the checkpoint with the best validation
accuracy against the *observed* labels (the clean control: against its clean labels) is the one tested.
Every variant gets exactly this choice, so tuning is equal.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from marginkit.data.schema import Pair
from marginkit.study.margin_map.variants import MapVariant

__all__ = ["LABEL_FIELDS", "SplitTensors", "split_tensors", "clean_pairs", "pair_step", "LinearRM", "FitResult",
           "fit_linear", "fit_transformer"]

LABEL_FIELDS = ("label_margin", "score_gap", "gold_gap", "p_chosen")


@dataclass
class SplitTensors:
    """One split's pairs as tensors: labels [N] per LABEL_FIELDS, features [N, D] for chosen and rejected
    (linear RM; None when not built) and the encoded pairs (transformer; None when not built)."""

    pairs: list[Pair]
    labels: dict[str, torch.Tensor]
    xc: torch.Tensor | None = None
    xr: torch.Tensor | None = None
    encoded: list[Any] | None = None

    def __len__(self) -> int:
        return len(self.pairs)


def _f(v: float | None) -> float:
    return math.nan if v is None else float(v)


def split_tensors(pairs: Sequence[Pair], with_features: bool = True) -> SplitTensors:
    """Labels (and the linear RM's features) of a list of world pairs."""
    from marginkit.data.world.features import features

    pairs = list(pairs)
    labels = {
        "label_margin": torch.tensor([_f(p.margin) for p in pairs], dtype=torch.float32),
        "score_gap": torch.tensor([p.score_gap for p in pairs], dtype=torch.float32),
        "gold_gap": torch.tensor([p.gold_gap for p in pairs], dtype=torch.float32),
        "p_chosen": torch.tensor([float(p.metadata.get("p_chosen", 1.0)) for p in pairs], dtype=torch.float32),
    }
    out = SplitTensors(pairs, labels)
    if with_features:
        prompts = [p.prompt for p in pairs]
        out.xc = torch.tensor(features(prompts, [p.chosen for p in pairs]), dtype=torch.float32)
        out.xr = torch.tensor(features(prompts, [p.rejected for p in pairs]), dtype=torch.float32)
    return out


def clean_pairs(pairs: Sequence[Pair]) -> list[Pair]:
    """The same pairs with noise-free labels: chosen = the truly better response (pairs with a negative true gap
    swapped, ratings swapped with them; exact ties kept as drawn), P(chosen) = 1."""
    from dataclasses import replace

    out = []
    for p in pairs:
        if p.gold_gap < 0:
            p = replace(p, chosen=p.rejected, rejected=p.chosen, score_chosen=p.score_rejected,
                        score_rejected=p.score_chosen, gold_chosen=p.gold_rejected, gold_rejected=p.gold_chosen)
        out.append(replace(p, metadata={**p.metadata, "p_chosen": 1.0}))
    return out


def pair_step(chosen: torch.Tensor, rejected: torch.Tensor, emb_c: torch.Tensor | None, emb_r: torch.Tensor | None,
              labels: dict[str, torch.Tensor], index: torch.Tensor, strategy: Any, step: int,
              variant: MapVariant) -> torch.Tensor:
    """The mean loss of one batch: rewards [B] -> target margins [B] (detached) -> the variant's loss."""
    from marginkit.losses import bt_loss, soft_bt_loss
    from marginkit.margins import MarginInputs, target_margins

    inputs = MarginInputs.from_batch(chosen - rejected, {**labels, "index": index}, step, emb_c, emb_r)
    target = target_margins(strategy, inputs).target_margin  # [B]
    if variant.loss == "bt":
        return bt_loss(chosen, rejected, target).losses.mean()
    if variant.loss == "soft":
        return soft_bt_loss(chosen, rejected, labels["p_chosen"]).losses.mean()
    if variant.loss == "smooth":
        return soft_bt_loss(chosen, rejected, torch.full_like(chosen, 1.0 - variant.smoothing)).losses.mean()
    raise ValueError(f"variant {variant.name}: unknown loss {variant.loss!r}")


def build_strategy(variant: MapVariant, reference_gaps: np.ndarray | None) -> Any:
    from marginkit.configlib import from_dict
    from marginkit.margins import MarginSpec, build_margin

    strategy = build_margin(from_dict(MarginSpec, variant.margin))
    if variant.needs_reference:
        if reference_gaps is None:
            raise ValueError(f"variant {variant.name}: needs the BT model's gaps on the training pairs")
        strategy.set_reference_gaps(torch.as_tensor(reference_gaps, dtype=torch.float64)[None], ["bt"])
    return strategy


def accuracy_vs_labels(gaps: np.ndarray) -> float:
    """Share of pairs whose gap agrees with the label (Δ > 0), ties ½."""
    return float(np.mean((gaps > 0) + 0.5 * (gaps == 0))) if len(gaps) else math.nan


class LinearRM(nn.Module):
    """r = φ · w, w = 0 at the start. forward(φ [M, D]) -> (rewards [M], hidden = φ [M, D])."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = nn.Linear(dim, 1, bias=False)
        nn.init.zeros_(self.w.weight)

    def forward(self, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.w(phi).squeeze(-1), phi


@dataclass
class FitResult:
    """The selected checkpoint's gap function and the validation curve [(step, val acc vs labels)]."""

    gaps: Any  # SplitTensors -> np.ndarray [N] (Δ = r_c - r_r, float64)
    curve: list[tuple[int, float]]
    best_step: int
    scorer: Any = None  # (prompts, responses) -> rewards [N], for Best-of-N (linear only)


def _eval_points(total: int, n_evals: int) -> set[int]:
    return {max(1, round(total * k / n_evals)) for k in range(1, n_evals + 1)}


def fit_linear(train: SplitTensors, val: SplitTensors, variant: MapVariant, seed: int, steps: int,
               batch_size: int, lr: float, n_evals: int, reference_gaps: np.ndarray | None = None) -> FitResult:
    """Adam on the linear RM for `steps` steps of `batch_size` pairs (sampled in shuffled epochs), the best of
    `n_evals` validation checkpoints kept."""
    assert train.xc is not None and train.xr is not None and val.xc is not None and val.xr is not None
    torch.manual_seed(seed)
    model = LinearRM(train.xc.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    strategy = build_strategy(variant, reference_gaps)
    gen = torch.Generator().manual_seed(seed)
    n, evals = len(train), _eval_points(steps, n_evals)
    order: list[torch.Tensor] = []
    best = (-math.inf, 0, model.w.weight.detach().clone())
    curve = []
    for step in range(steps):
        if not order:
            order = list(torch.randperm(n, generator=gen).split(batch_size))[::-1]
        idx = order.pop()
        rc, hc = model(train.xc[idx])
        rr, hr = model(train.xr[idx])
        loss = pair_step(rc, rr, hc, hr, {k: v[idx] for k, v in train.labels.items()}, idx, strategy, step, variant)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"linear RM, variant {variant.name}, seed {seed}: loss {loss.item()} at step "
                                     f"{step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step + 1 in evals:
            acc = accuracy_vs_labels(_linear_gaps(model.w.weight.detach(), val))
            curve.append((step + 1, acc))
            if acc > best[0]:
                best = (acc, step + 1, model.w.weight.detach().clone())
    w = best[2][0].double()

    def gaps(split: SplitTensors) -> np.ndarray:
        return _linear_gaps(w[None], split)

    def scorer(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        from marginkit.data.world.features import features

        return features(prompts, responses) @ w.numpy()

    return FitResult(gaps, curve, best[1], scorer)


def _linear_gaps(weight: torch.Tensor, split: SplitTensors) -> np.ndarray:
    assert split.xc is not None and split.xr is not None
    with torch.no_grad():
        return ((split.xc.double() - split.xr.double()) @ weight.double()[0]).numpy()


def fit_transformer(base_dir: Any, train: SplitTensors, val: SplitTensors, variant: MapVariant, seed: int,
                    epochs: int, batch_size: int, lr: float, n_evals: int,
                    reference_gaps: np.ndarray | None = None) -> FitResult:
    """AdamW (weight decay 0.01, 5% warm-up, linear decay) on the tiny transformer RM saved at `base_dir`,
    `epochs` epochs, the best of `n_evals` validation checkpoints kept (its weights copied in memory)."""
    from marginkit.data.collate import collate_pairs
    from marginkit.evaluate.scorer import score_encoded
    from marginkit.models.pair_forward import score_pairs
    from marginkit.models.reward import ModelConfig, load_reward_model

    assert train.encoded is not None and val.encoded is not None
    torch.manual_seed(seed)
    model, tokenizer = load_reward_model(ModelConfig(name_or_path=str(base_dir)))
    pad_id = tokenizer.pad_token_id
    strategy = build_strategy(variant, reference_gaps)
    with_hidden = "embeddings" in strategy.needs
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    n = len(train)
    per_epoch = math.ceil(n / batch_size)
    total = per_epoch * epochs
    warm = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, (total - s) / total))
    gen = torch.Generator().manual_seed(seed)
    evals = _eval_points(total, n_evals)
    best: tuple[float, int, dict[str, torch.Tensor] | None] = (-math.inf, 0, None)
    curve, step = [], 0

    def val_gaps() -> np.ndarray:
        c, r = score_encoded(model, val.encoded, pad_id, batch_size=128)
        return c - r

    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=gen).split(batch_size):
            batch = collate_pairs([train.encoded[i] for i in idx.tolist()], pad_id)
            rewards, hidden = score_pairs(model, batch, with_hidden)
            chosen, rejected = rewards.chunk(2)
            emb_c, emb_r = hidden.detach().chunk(2) if hidden is not None else (None, None)
            loss = pair_step(chosen, rejected, emb_c, emb_r, {k: v[idx] for k, v in train.labels.items()}, idx,
                             strategy, step, variant)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"transformer RM, variant {variant.name}, seed {seed}: loss {loss.item()} "
                                         f"at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step in evals:
                acc = accuracy_vs_labels(val_gaps())
                curve.append((step, acc))
                model.train()
                if acc > best[0]:
                    best = (acc, step, copy.deepcopy(model.state_dict()))
    assert best[2] is not None
    model.load_state_dict(best[2])
    model.eval()

    def gaps(split: SplitTensors) -> np.ndarray:
        assert split.encoded is not None
        c, r = score_encoded(model, split.encoded, pad_id, batch_size=128)
        return c - r

    return FitResult(gaps, curve, best[1])
