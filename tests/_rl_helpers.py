"""Shared pieces of the online-RL tests: the tiny world policy, a run config, and the logged metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from marginkit.configlib import from_dict
from marginkit.data.world import WorldConfig, make_world
from marginkit.models.tiny import build_word_tokenizer, make_tiny_model_dir
from marginkit.train.rl_config import GRPORunConfig


def make_world_lm(folder: Path) -> Path:
    """A 1-layer GPT-NeoX (hidden 16) with the world's word tokenizer, randomly initialised, saved in `folder`."""
    world = make_world(WorldConfig(seed=0, n_train=1, n_val=0, n_test=0))
    return make_tiny_model_dir(folder, build_word_tokenizer(world.vocabulary()), hidden_size=16, num_layers=1,
                               max_positions=128, seed=0)


def rl_config(model_dir: Any, out: Any, cls: type = GRPORunConfig, **sections: Any) -> Any:
    """A 3-step run on world prompts (2 prompts x 3 completions, 8 new tokens); `sections` update the defaults
    (a dict merges into its section, anything else replaces it)."""
    base: dict[str, Any] = {
        "model": {"name_or_path": str(model_dir)}, "reward": "world",
        "rollout": {"prompts": "world:train", "prompt_pool": 16, "prompts_per_step": 2, "num_generations": 3,
                    "max_new_tokens": 8},
        "loss": {"num_iterations": 2, "num_minibatches": 2},
        "train": {"output_dir": str(out), "max_steps": 3, "learning_rate": 1e-2, "mixed_precision": "no",
                  "progress_bar": False, "seed": 1}}
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return from_dict(cls, base)


def metric_rows(out: Path) -> list[dict]:
    """Every row of a run's metrics.jsonl."""
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
