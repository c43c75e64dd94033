"""Confidence margin (Qin, Feng & Yang 2024, "Towards Understanding the Influence of Reward Margin on
Preference Model Performance", arXiv:2404.04932): a batch-wise margin with threshold filtering, its
value taken from the batch or from the reward confidence of frozen reference RMs.

What the source says (its equations 4-7 are not public to us): the loss is BT with a margin,
-log σ(Δ_i - m_i) (its eq. 4); margins are estimated from *reward confidence* instead of human labels;
each sample's current margin is compared with the average margin of its batch, and threshold
filtering applies the margin loss only to the samples *below* that average, the others keeping the
plain ranking loss, which shifts the margin distribution to the right. Our reading, with the open
choices as options (design.md sec. 2):

    Δ_i  = sg[r(x_i, y_c,i) - r(x_i, y_r,i)]                 current gap, detached   [B]
    μ_B  = (1/|B|) Σ_{i∈B} Δ_i                                batch average margin    []
    a_i  = filter:  below_batch_mean  [Δ_i < μ_B]      (default, as the source states)
                    none              1
                    below_confidence  [σ(Δ_i) < τ]     (the model is not yet confident)
    v_i  = source:  batch_mean  μ_B                    (default: pull laggards up to the batch level)
                    reference   Δ^ref_i                (a frozen RM's gap: its reward confidence)
                    ensemble    mean_k Δ^k_i - κ std_k Δ^k_i   (K RMs differing only by seed)
    m_i  = a_i · clip(α v_i, m_min, m_max)             m_min = 0, m_max = ∞ by default
    loss_i = -log σ(Δ_i - m_i)                         (train/rm_step.py; a_i = 0 is plain BT)

Choices where the source is vague, and why:
- Strict "<": a pair exactly at μ_B is not below it, so a batch of one pair, or of equal gaps, has no
  active pair (its loss is BT).
- The batch is the global micro-batch (`train.batch_size` pairs, over all processes: one all-reduce
  of two numbers, so 2 processes equal 1), not the optimiser step's accumulated pairs.
- m_min = 0: a negative μ_B (early training) or a reference that disagrees with the label would
  demand *less* than BT does; the design's reading is m = max(μ_B, 0). Set `min_margin: null` to
  keep signed values.
- Ensemble disagreement: by default (κ = 0) the margin is the plain mean gap, the preference
  strength of "Secrets of RLHF II" (arXiv:2401.06080, sec. 2.1). κ > 0 takes a lower confidence
  bound, mean - κ·std (sample std over the K models), so pairs the seeds disagree on are asked for
  a smaller margin. The per-pair std is logged either way (`ensemble_std`).
- τ has no value in the source, so it has no default: set it when filter=below_confidence.
- Reference and ensemble gaps are computed once in `prepare` (margins/reference.py, scored by the
  injected `MarginSetup.score_rm`: the RM's own tokenizer and scorer settings, as eval-rm scores;
  cached on disk by data and model hashes) and looked up per batch by the pair's index, so training
  costs what BT costs.

Diagnostics (logged as target_margins/<name>, averaged over the logging window's pairs):
`batch_mean_gap` (μ_B), `active_mean` (mean m_i over the global micro-batch's active pairs, 0 when none;
the window's exact value is target_margins/mean divided by target_margins/active_fraction), and
`ensemble_std` (mean std_k Δ^k_i, ensemble only). The share of pairs with a_i = 0 is the step's own
`target_margins/filtered_fraction` (1 - active, for every strategy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist

from marginkit.margins._util import clip
from marginkit.margins.base import MarginInputs, Margins, MarginSetup
from marginkit.margins.reference import ensemble_gaps, pairs_fingerprint, reference_gaps

__all__ = ["ConfidenceMarginConfig", "ConfidenceMargin", "FILTERS", "batch_mean"]


@dataclass
class ConfidenceMarginConfig:
    filter: Literal["below_batch_mean", "none", "below_confidence"] = field(
        default="below_batch_mean",
        metadata={"help": "Which pairs get the margin: below_batch_mean (current gap < batch mean μ_B, as the paper), "
                  "none (all pairs), or below_confidence (σ(gap) < tau). The others keep plain BT."})
    tau: float | None = field(
        default=None, metadata={"help": "Confidence threshold in (0, 1) for filter=below_confidence (required "
                                "there, rejected otherwise): pairs with σ(gap) < tau get the margin."})
    source: Literal["batch_mean", "reference", "ensemble"] = field(
        default="batch_mean",
        metadata={"help": "Margin value: batch_mean (μ_B of the current gaps), reference (a frozen RM's gap on the "
                  "pair), or ensemble (mean gap of several RMs that differ only by seed)."})
    reference_model: str | None = field(
        default=None, metadata={"help": "source=reference: folder of a trained RM (saved by marginkit or plain HF)."})
    ensemble_models: list[str] = field(
        default_factory=list, metadata={"help": "source=ensemble: folders of K >= 2 trained RMs differing only by seed."})
    ensemble_std_coef: float = field(
        default=0.0, metadata={"help": "source=ensemble: κ >= 0 in m = mean - κ·std over the models (0: plain mean)."})
    scale: float = field(default=1.0, metadata={"help": "α >= 0, multiplier on the margin value before clipping."})
    min_margin: float | None = field(
        default=0.0, metadata={"help": "Lower clip of m (0: never demand less than BT; null: keep signed values)."})
    max_margin: float | None = field(default=None, metadata={"help": "Upper clip of m (null: no clip)."})
    global_batch_mean: bool = field(
        default=True, metadata={"help": "μ_B over the whole micro-batch across processes (one all-reduce; 2 "
                                "processes equal 1); false: over each process's shard."})
    score_batch_size: int = field(
        default=32, metadata={"help": "source=reference/ensemble: pairs per forward when scoring with the RMs."})

    def __post_init__(self) -> None:
        where = "margin.confidence"
        if self.filter == "below_confidence":
            if self.tau is None or not 0.0 < self.tau < 1.0:
                raise ValueError(f"{where}.tau={self.tau}: filter=below_confidence needs a threshold in (0, 1), "
                                 "e.g. 0.75 (pairs with σ(gap) < 0.75 get the margin)")
        elif self.tau is not None:
            raise ValueError(f"{where}.tau={self.tau} is only used with filter=below_confidence (filter={self.filter})")
        if self.source == "reference" and not self.reference_model:
            raise ValueError(f"{where}.reference_model is empty: source=reference needs a trained RM folder")
        if self.source != "reference" and self.reference_model:
            raise ValueError(f"{where}.reference_model is only used with source=reference (source={self.source})")
        if self.source == "ensemble" and len(self.ensemble_models) < 2:
            raise ValueError(f"{where}.ensemble_models={self.ensemble_models}: source=ensemble needs >= 2 RM folders "
                             "(for one, use source=reference)")
        if self.source != "ensemble" and (self.ensemble_models or self.ensemble_std_coef):
            raise ValueError(f"{where}.ensemble_models/ensemble_std_coef are only used with source=ensemble "
                             f"(source={self.source})")
        if self.ensemble_std_coef < 0:
            raise ValueError(f"{where}.ensemble_std_coef={self.ensemble_std_coef}: must be >= 0")
        if self.scale < 0:
            raise ValueError(f"{where}.scale={self.scale}: must be >= 0")
        if self.min_margin is not None and self.max_margin is not None and self.min_margin > self.max_margin:
            raise ValueError(f"{where}: min_margin={self.min_margin} > max_margin={self.max_margin}")
        if self.score_batch_size < 1:
            raise ValueError(f"{where}.score_batch_size={self.score_batch_size}: must be >= 1")


def batch_mean(gap: torch.Tensor, across_processes: bool = True) -> torch.Tensor:
    """μ_B = Σ Δ_i / |B| over the micro-batch, in float64; with torch.distributed running (and
    `across_processes`), over every process's shard of it (a sync point: one all-reduce of [Σ Δ, |B|])."""
    # float64: a float32 mean of equal gaps can land one ulp above them, and every pair would then sit
    # "below the batch mean" (hypothesis found [a, a, a]); the sum also stops depending on the order
    stats = torch.stack([gap.double().sum(), torch.tensor(float(gap.numel()), dtype=torch.float64,
                                                          device=gap.device)])  # [2]
    if across_processes and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(stats)
    return stats[0] / stats[1]


def _active_mean(margin: torch.Tensor, active: torch.Tensor, across_processes: bool) -> torch.Tensor:
    """[] mean m_i over the micro-batch's active pairs (0 when none); over every process's shard with
    torch.distributed running and `across_processes` (one all-reduce of [Σ m_i, Σ a_i], so 2 processes log
    what 1 does)."""
    stats = torch.stack([margin.double().sum(), active.double().sum()])  # [2]
    if across_processes and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(stats)
    return (stats[0] / stats[1].clamp(min=1)).to(margin.dtype)


def _below_batch_mean(gap: torch.Tensor, mu: torch.Tensor, tau: float | None) -> torch.Tensor:
    return gap < mu


def _no_filter(gap: torch.Tensor, mu: torch.Tensor, tau: float | None) -> torch.Tensor:
    return torch.ones_like(gap, dtype=torch.bool)


def _below_confidence(gap: torch.Tensor, mu: torch.Tensor, tau: float | None) -> torch.Tensor:
    return torch.sigmoid(gap) < tau


# filter name -> (Δ [B], μ_B [], τ) -> active [B] bool
FILTERS: dict[str, Callable[[torch.Tensor, torch.Tensor, float | None], torch.Tensor]] = {
    "below_batch_mean": _below_batch_mean,
    "none": _no_filter,
    "below_confidence": _below_confidence,
}


class ConfidenceMargin:
    """Batch-mean-filtered margin with a batch, reference-RM or ensemble value (formulas: module docstring).

    Contract: call `prepare(setup)` once before training when source is reference or ensemble (train-rm
    does); each call then needs `inputs.index`. State: the cache keys of the reference gaps in use, so a
    resumed run refuses different reference models.
    """

    needs: frozenset[str] = frozenset()

    def __init__(self, config: ConfidenceMarginConfig | None = None) -> None:
        self.config = config or ConfidenceMarginConfig()
        self._filter = FILTERS[self.config.filter]
        self._source_value = self._batch_value if self.config.source == "batch_mean" else self._table_value
        self._value: torch.Tensor | None = None  # [N] v_i per training pair (reference/ensemble), float32
        self._std: torch.Tensor | None = None  # [N] ensemble std per pair
        self._keys: list[str] = []  # cache file names of the reference gaps in use
        self._expected_keys: list[str] | None = None  # from a checkpoint, checked against prepare

    @property
    def model_dirs(self) -> list[str]:
        """The reference RM folders this configuration scores with (none for source=batch_mean)."""
        cfg = self.config
        return {"batch_mean": [], "reference": [cfg.reference_model or ""], "ensemble": list(cfg.ensemble_models)}[
            cfg.source]

    def prepare(self, setup: MarginSetup) -> None:
        """Score setup.pairs with each reference RM (or load the cached gaps) and keep v_i per pair."""
        if not self.model_dirs:
            return
        if setup.score_rm is None:
            raise ValueError(f"confidence margin: source={self.config.source} scores reference RMs, but this run "
                             "gives no scorer (MarginSetup.score_rm); train-rm and train-dpo pass one")
        data_key = pairs_fingerprint(setup.pairs)
        found = [reference_gaps(d, setup.pairs, setup.cache_dir, setup.device, setup.score_rm,
                                self.config.score_batch_size, setup.say, data_key) for d in self.model_dirs]
        gaps = torch.from_numpy(np.stack([f.gaps for f in found]))  # [K, N] float64
        _require_scored(gaps, setup, self.model_dirs)
        self.set_reference_gaps(gaps, [f.path.name for f in found], setup.device)

    def set_reference_gaps(self, gaps: torch.Tensor, keys: list[str], device: torch.device | str = "cpu") -> None:
        """Use precomputed reference gaps [K, N] (K = 1 reference or K >= 2 ensemble members, N training
        pairs) instead of scoring RM folders; `keys` name them (kept in the state for resume checks).
        `prepare` ends here; the real-data study calls it with gaps from frozen-encoder heads."""
        gaps = torch.as_tensor(gaps)
        if gaps.dim() != 2 or len(keys) != gaps.shape[0]:
            raise ValueError(f"confidence margin: reference gaps of shape {tuple(gaps.shape)} with {len(keys)} keys; "
                             "expected [K, N] and one key per row")
        if gaps.shape[0] == 1:
            value, std = gaps[0], None  # [N]
        else:
            mean, std = ensemble_gaps(gaps)  # [K, N] -> [N], [N]
            value = mean - self.config.ensemble_std_coef * std
        self._value = value.float().to(device)
        self._std = None if std is None else std.float().to(device)
        self._keys = list(keys)
        self._check_keys()

    @torch.no_grad()
    def __call__(self, inputs: MarginInputs) -> Margins:
        cfg = self.config
        gap = inputs.reward_gap.detach()  # [B]
        mu = batch_mean(gap, cfg.global_batch_mean)  # []
        active = self._filter(gap, mu, cfg.tau)  # [B] bool
        value = self._source_value(inputs, mu)  # [B]
        margin = clip(cfg.scale * value, cfg.min_margin, cfg.max_margin)  # [B]
        margin = torch.where(active, margin, 0.0).to(gap.dtype)  # [B]; inactive pairs: plain BT
        diagnostics = {  # the filtered share is the step's target_margins/filtered_fraction (1 - active)
            "batch_mean_gap": mu.to(gap.dtype),
            "active_mean": _active_mean(margin, active, cfg.global_batch_mean),
        }
        if self._std is not None:
            diagnostics["ensemble_std"] = self._lookup(self._std, inputs)  # [B]
        return Margins(margin, active, diagnostics)

    def _batch_value(self, inputs: MarginInputs, mu: torch.Tensor) -> torch.Tensor:
        return mu.expand_as(inputs.reward_gap)  # [] -> [B]

    def _table_value(self, inputs: MarginInputs, mu: torch.Tensor) -> torch.Tensor:
        if self._value is None:
            raise RuntimeError(f"confidence margin: source={self.config.source} needs prepare(setup) before training "
                               "(train-rm calls it); it was not called")
        return self._lookup(self._value, inputs)

    @staticmethod
    def _lookup(table: torch.Tensor, inputs: MarginInputs) -> torch.Tensor:
        """table[index]: [N] -> [B], on the gap's device and in its dtype."""
        if inputs.index is None:
            raise ValueError("confidence margin: source=reference/ensemble needs MarginInputs.index (each pair's "
                             "position in the training set)")
        return table[inputs.index.to(table.device)].to(device=inputs.reward_gap.device, dtype=inputs.reward_gap.dtype)

    def _check_keys(self) -> None:
        if self._expected_keys is not None and self._keys and self._expected_keys != self._keys:
            raise ValueError(f"confidence margin: the checkpoint was trained with reference gaps {self._expected_keys}, "
                             f"but this run's reference models give {self._keys}: resume with the same "
                             "reference_model/ensemble_models and data")

    def state_dict(self) -> dict[str, Any]:
        return {"reference_keys": list(self._keys)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._expected_keys = list(state.get("reference_keys", []))
        self._check_keys()


def _require_scored(gaps: torch.Tensor, setup: MarginSetup, model_dirs: list[str]) -> None:
    """Every training pair needs a finite gap from every model (an RM whose own settings drop a pair has none)."""
    index = torch.tensor([enc.index for enc in setup.train_set], dtype=torch.long)  # [n_train]
    bad = ~torch.isfinite(gaps[:, index])  # [K, n_train]
    if not bad.any():
        return
    k, j = (int(v) for v in bad.nonzero()[0])
    i = int(index[j])
    pair_id = getattr(setup.pairs[i], "id", None)
    raise ValueError(
        f"confidence margin: reference RM {model_dirs[k]} gives no finite gap for training pair {i}"
        + (f" (id {pair_id})" if pair_id else "") + f" ({int(bad.sum())} such pairs in all): its own scorer settings "
        "(marginkit_scorer.json) drop it, e.g. tokenize.on_too_long=drop; set on_too_long=truncate there, or "
        "remove those pairs from the training data")
