"""Rewards of sampled completions for online RL: one interface, three sources (issue 16).

A `RewardFn` maps (prompts, completions) -> one float per completion. `load_reward(spec)` builds one from
a string, the form `train-grpo reward=...` takes:

    world            the gold world's true reward (data/world/reward.py): known exactly, cheap, the judge
                     every world experiment reads
    PATH             a marginkit reward-model folder (train-rm's output), scored as eval-rm scores a pair's
                     chosen response (evaluate/scorer.py `score_encoded`, the RM's own tokenizer, template and
                     truncation settings), in eval mode, no grad
    module:function  any Python callable f(prompts, completions) -> list[float] (importable from the
                     current environment; `module` may be a dotted path)

Anything else is refused with the three forms listed. Rewards come back as a float64 numpy array [N].
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from marginkit.configlib import ConfigError
from marginkit.data.ledger import Ledger
from marginkit.data.schema import Pair
from marginkit.data.tokenize import EncodedPair, TokenizeConfig, encode_pair

__all__ = ["RewardFn", "WorldReward", "RMFolderReward", "CallableReward", "load_reward", "REWARD_FORMS"]

REWARD_FORMS = ("world (the gold world's true reward), a reward-model folder written by train-rm, or "
                "module:function (a callable f(prompts, completions) -> list[float])")


class RewardFn(Protocol):
    """Rewards of N completions, one per (prompt, completion): [N] float64."""

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str]) -> np.ndarray: ...


def _checked(name: str, values: Any, n: int) -> np.ndarray:
    out = np.asarray(values, dtype=np.float64).reshape(-1)
    if out.shape[0] != n:
        raise ValueError(f"reward {name}: returned {out.shape[0]} values for {n} completions (need one each)")
    if not np.isfinite(out).all():
        bad = int(np.flatnonzero(~np.isfinite(out))[0])
        raise ValueError(f"reward {name}: completion {bad} got a non-finite reward ({out[bad]}); rewards must be finite")
    return out


class WorldReward:
    """The gold world's true reward r(prompt, completion) (docs/world.md); prompts must be plain text."""

    name = "world"

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str]) -> np.ndarray:
        from marginkit.data.world import true_rewards

        return _checked(self.name, true_rewards(list(prompts), list(completions)), len(completions))


class RMFolderReward:
    """A marginkit RM folder, loaded once onto `device`, scoring each (prompt, completion) as eval-rm scores a
    pair's chosen response. Two completions share one collated pair slot (chosen row, rejected row), so a
    batch of B slots scores 2B completions in one forward."""

    def __init__(self, folder: str | Path, device: torch.device | str = "cpu", batch_size: int = 32):
        from marginkit.configlib import from_dict
        from marginkit.models.reward import ModelConfig, is_encoder, load_reward_model, load_scorer_settings

        self.name = str(folder)
        settings = load_scorer_settings(folder)
        self.model, self.tokenizer = load_reward_model(ModelConfig(name_or_path=str(folder), head_init="keep"))
        self.model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenize = from_dict(TokenizeConfig, settings.get("tokenize", {}))
        self.padding_side = settings.get("padding_side", "right")
        self.encoder, self.device, self.batch_size = is_encoder(self.model), device, batch_size
        self.ledger = Ledger()  # truncations of over-long completions, counted across calls

    def _row(self, prompt: Any, text: str, i: int) -> list[int]:
        enc = encode_pair(Pair(prompt, text, text), i, self.tokenizer, self.tokenize, self.ledger, self.encoder)
        if enc is None:
            raise ValueError(f"reward {self.name}: completion {i} is dropped by the RM's tokenize.on_too_long=drop "
                             f"(max_length={self.tokenize.max_length}); lower max_new_tokens or save the RM with "
                             "on_too_long=truncate")
        return enc.chosen_ids

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str]) -> np.ndarray:
        from marginkit.evaluate.scorer import score_encoded

        if not completions:
            return np.zeros(0)
        rows = [self._row(p, c, i) for i, (p, c) in enumerate(zip(prompts, completions, strict=True))]
        pairs = list(range(0, len(rows), 2))
        # the prompt length only sets the response mask, which scoring does not read
        slots = [EncodedPair(rows[a], rows[min(a + 1, len(rows) - 1)], 0, np.nan, np.nan, np.nan, a) for a in pairs]
        first, second = score_encoded(self.model, slots, self.tokenizer.pad_token_id, self.padding_side,
                                      self.batch_size, device=self.device)
        out = np.empty(len(rows))
        out[0::2], out[1::2] = first, second[: len(rows) // 2]
        return _checked(self.name, out, len(completions))


class CallableReward:
    """`module:function`, imported once; called as f(list of prompts, list of completion texts)."""

    def __init__(self, spec: str):
        module, _, attr = spec.partition(":")
        try:
            self.fn: Callable[..., Any] = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"reward={spec}: cannot import {attr!r} from module {module!r} ({e}); give "
                              f"{REWARD_FORMS}") from None
        if not callable(self.fn):
            raise ConfigError(f"reward={spec}: {attr} in {module} is not callable")
        self.name = spec

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str]) -> np.ndarray:
        return _checked(self.name, self.fn(list(prompts), list(completions)), len(completions))


def load_reward(spec: str, device: torch.device | str = "cpu") -> WorldReward | RMFolderReward | CallableReward:
    """The reward `spec` names (module docstring); ConfigError for anything else."""
    if spec == "world":
        return WorldReward()
    if spec and Path(spec).is_dir():
        if not (Path(spec) / "config.json").exists():
            raise ConfigError(f"reward={spec}: the folder holds no model (no config.json); give {REWARD_FORMS}")
        return RMFolderReward(spec, device)
    module, sep, attr = spec.partition(":")
    if sep and module and attr and all(part.isidentifier() for part in module.split(".")) and attr.isidentifier():
        return CallableReward(spec)
    raise ConfigError(f"reward={spec!r}: not a folder and not module:function; give {REWARD_FORMS}")
