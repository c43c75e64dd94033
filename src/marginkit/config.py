"""Run-level configs, composed from the components' own config dataclasses (each lives in its file)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from marginkit.data.tokenize import TokenizeConfig
from marginkit.margins.registry import MarginSpec
from marginkit.models.reward import ModelConfig
from marginkit.train.engine import TrainConfig

__all__ = ["DataConfig", "RMLossConfig", "RMRunConfig"]


@dataclass
class DataConfig:
    train: str = field(default="", metadata={"help": "Training pairs: a JSONL/JSON/Parquet file or a saved HF dataset."})
    eval: str | None = field(default=None, metadata={"help": "Held-out pairs evaluated during and after training."})
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
