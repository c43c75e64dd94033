"""Run-level configs, composed from the components' own config dataclasses (each lives in its file).

This module only composes: it imports component modules (data, models, losses, margins, the engine, the
steps, the reference cache) and never a trainer (train/rm.py, sft.py, dpo.py), which import it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from marginkit.data.tokenize import TokenizeConfig
from marginkit.losses.registry import DPOLossSpec, build_dpo_loss
from marginkit.margins.registry import MarginSpec, build_margin
from marginkit.models.policy import PolicyConfig
from marginkit.models.ref_cache import ReferenceConfig
from marginkit.models.reward import ModelConfig
from marginkit.train.engine import DPOTrainConfig, SFTTrainConfig, TrainConfig
from marginkit.train.sft_step import SFTLossConfig

__all__ = ["DataConfig", "RMLossConfig", "RMRunConfig", "DPORunConfig", "SFTRunConfig"]


@dataclass
class DataConfig:
    train: str = field(default="", metadata={"help": "Training pairs: a JSONL/JSON/Parquet file or a saved HF dataset."})
    split: str | None = field(default=None, metadata={
        "help": "The split of data.train to read when it is a `datasets` DatasetDict (a save_to_disk folder with "
                "several splits), or the list-valued key of a JSON object; TRL's dataset_train_split."})
    eval: str | None = field(default=None, metadata={"help": "Held-out pairs evaluated during and after training."})
    eval_split: str | None = field(default=None, metadata={
        "help": "The split of data.eval to read, as data.split for data.train; TRL's dataset_test_split."})
    format: str = field(default="auto", metadata={"help": "Input format (see docs/data.md); auto detects it."})
    on_invalid: Literal["error", "skip"] = field(
        default="error", metadata={"help": "Unusable pairs: error (strict, the default) or skip (counted in the ledger)."})
    padding_side: Literal["right", "left"] = field(default="right", metadata={"help": "Where padding goes."})
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    cache_dir: str | None = field(
        default=None, metadata={"help": "Cache for precomputed margins and embeddings (None: $MARGINKIT_CACHE or "
                                "~/.cache/marginkit)."})

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir or os.environ.get("MARGINKIT_CACHE") or Path.home() / ".cache" / "marginkit")


@dataclass
class RMLossConfig:
    center_rewards_coefficient: float = field(
        default=0.0, metadata={"help": "Weight of the reward-centering term (r_c + r_r)^2 (Eisenstein et al. 2023)."})

    def __post_init__(self) -> None:
        if self.center_rewards_coefficient < 0:
            raise ValueError(f"loss.center_rewards_coefficient={self.center_rewards_coefficient}: must be >= 0")


@dataclass
class RMRunConfig:
    """Everything `marginkit train-rm` needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    margin: MarginSpec = field(default_factory=MarginSpec)
    loss: RMLossConfig = field(default_factory=RMLossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preflight: Literal["error", "warn", "off"] = field(
        default="error", metadata={"help": "Reward-token pre-flight check on the first batches: error, warn or off."})


@dataclass
class DPORunConfig:
    """Everything `marginkit train-dpo` and `marginkit precompute-ref` need."""

    model: PolicyConfig = field(default_factory=PolicyConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: DPOLossSpec = field(default_factory=DPOLossSpec)
    margin: MarginSpec = field(default_factory=MarginSpec, metadata={
        "help": "Per-pair offsets for loss.name=odpo (any margin strategy); must stay none for other losses."})
    train: DPOTrainConfig = field(default_factory=DPOTrainConfig)
    mask_audit: Literal["error", "warn", "off"] = field(default="error", metadata={
        "help": "Loss-mask audit of the first pairs before training (docs/monitor.md): error, warn or off."})

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Cross-section rules: the reference source fits the loss, and a margin strategy is set exactly for ODPO."""
        loss = build_dpo_loss(self.loss)
        src = self.reference.source
        if src in ("model", "precomputed") and not loss.needs_reference:
            raise ValueError(f"reference.source={src}: loss.name={self.loss.name} is reference-free; use "
                             "reference.source=auto or none")
        if src == "none" and loss.needs_reference:
            raise ValueError(f"reference.source=none: loss.name={self.loss.name} needs a reference; use auto, "
                             "model or precomputed (or loss.name=simpo)")
        if loss.uses_offset and self.margin.name == "none":
            raise ValueError(f"loss.name={self.loss.name} takes its per-pair offsets from a margin strategy: set "
                             "margin.name (label, oracle, fixed, ...)")
        if not loss.uses_offset and self.margin.name != "none":
            raise ValueError(f"margin.name={self.margin.name} only applies with loss.name=odpo (the per-pair "
                             f"offset); loss.name={self.loss.name} would ignore it")
        if loss.uses_offset and "embeddings" in build_margin(self.margin).needs:
            raise ValueError(f"margin.name={self.margin.name} reads reward-model hidden states, which a DPO step "
                             "does not produce; use external embeddings or another strategy (label, fixed, oracle, "
                             "confidence)")

    @property
    def reference_source(self) -> str:
        """The resolved reference source: auto becomes model, or none for reference-free losses."""
        if self.reference.source != "auto":
            return self.reference.source
        return "model" if build_dpo_loss(self.loss).needs_reference else "none"


@dataclass
class SFTRunConfig:
    """Everything `marginkit train-sft` needs."""

    model: PolicyConfig = field(default_factory=PolicyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: SFTLossConfig = field(default_factory=SFTLossConfig)
    train: SFTTrainConfig = field(default_factory=SFTTrainConfig)
    mask_audit: Literal["error", "warn", "off"] = field(default="error", metadata={
        "help": "Loss-mask audit of the first pairs before training (docs/monitor.md): error, warn or off."})
