"""Building a gold-reward world: config, splits of labelled pairs, the policy and the true reward.

    world = make_world(WorldConfig(seed=0, n_train=2000))
    world.train[0]          # Pair(prompt, chosen, rejected, score_*, gold_*, id, metadata)

Each pair is two samples of the base policy for one prompt of its split. With g_a, g_b their
true rewards, the label is drawn from Bradley-Terry at temperature `noise`:
P(a chosen) = sigmoid((g_a - g_b) / noise) (noise = 0: the truly better one, a on exact ties),
so near-ties are coin flips and clear wins are almost never flipped. `gold_chosen` and
`gold_rejected` keep the true rewards, so `Pair.gold_gap < 0` exactly when the label flipped.
Each response also gets a Likert rating in 1..10 (`score_chosen`, `score_rejected`):
clip(floor(4.5 + 2 * (g + eps) + 0.5), 1, 10) with eps ~ N(0, rating_noise^2).

Draw order per split: all texts first, then the label uniforms, then the rating noise; so
changing `noise` or `rating_noise` keeps every text and changing `rating_noise` keeps every label.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from marginkit.data.schema import Pair
from marginkit.data.world.lexicon import vocabulary
from marginkit.data.world.policy import BasePolicy
from marginkit.data.world.prompts import SPLITS, sample_prompt, split_of
from marginkit.data.world.reward import true_rewards

__all__ = ["WorldConfig", "World", "make_world", "format_pair"]

_RATING_OFFSET, _RATING_SCALE = 4.5, 2.0  # the policy's median reward (~0.5) rates 5-6 of 10
_RESAMPLE_POOL = 8  # responses drawn when a prompt's first two coincide


@dataclass(frozen=True)
class WorldConfig:
    """Knobs of the gold-reward world. Same config, same world, byte for byte."""

    seed: int = field(
        default=0, metadata={"help": "Seed of everything: split ownership, prompts, responses, labels."}
    )
    n_train: int = field(default=2000, metadata={"help": "Pairs in the train split (>= 1)."})
    n_val: int = field(default=500, metadata={"help": "Pairs in the val split (>= 0)."})
    n_test: int = field(default=1000, metadata={"help": "Pairs in the test split (>= 0)."})
    noise: float = field(
        default=0.5,
        metadata={"help": "Bradley-Terry temperature of the labels, in true-reward units (>= 0): "
                  "P(a chosen) = sigmoid((g_a - g_b) / noise); 0 = always the truly better one. "
                  "0.5 flips about 18% of labels, 1.0 about 27%."},
    )  # fmt: skip
    rating_noise: float = field(
        default=0.5,
        metadata={"help": "Std of the true-reward noise before a response is rated 1..10 (>= 0)."},
    )
    policy_skill: float = field(
        default=0.45,
        metadata={"help": "Mean skill of the base policy, in (0, 1): how often a choice reads the prompt."},
    )
    policy_concentration: float = field(
        default=3.0,
        metadata={
            "help": "Concentration of the policy's Beta skill distribution (> 0); lower = more uneven."
        },
    )
    policy_redraw: float = field(
        default=0.5,
        metadata={"help": "Probability, in (0, 1], that a sample redraws each part of the prompt's first "
                  "draft; 1 = independent samples, lower = more similar pairs and more near-ties."},
    )  # fmt: skip
    split_fractions: tuple[float, float, float] = field(
        default=(0.6, 0.15, 0.25),
        metadata={"help": "Shares of the request space owned by train, val, test (each > 0, sum 1)."},
    )

    def __post_init__(self) -> None:
        for name in ("seed", "n_train", "n_val", "n_test"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"WorldConfig.{name}: {value!r} (need an integer >= 0)")
        if self.n_train < 1:
            raise ValueError(f"WorldConfig.n_train: {self.n_train!r} (need at least 1 train pair)")
        for name in ("noise", "rating_noise"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"WorldConfig.{name}: {value!r} (need a finite number >= 0)")
        if not 0.0 < self.policy_skill < 1.0:
            raise ValueError(f"WorldConfig.policy_skill: {self.policy_skill!r} (need 0 < policy_skill < 1)")
        if not self.policy_concentration > 0.0:
            raise ValueError(f"WorldConfig.policy_concentration: {self.policy_concentration!r} (need > 0)")
        if not 0.0 < self.policy_redraw <= 1.0:
            raise ValueError(
                f"WorldConfig.policy_redraw: {self.policy_redraw!r} (need 0 < policy_redraw <= 1)"
            )
        fr = self.split_fractions
        if len(fr) != 3 or any(not f > 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-9:
            raise ValueError(f"WorldConfig.split_fractions: {fr!r} (need 3 values > 0 summing to 1)")


@dataclass(frozen=True)
class World:
    """A built world: the three splits of pairs, the base policy and the true reward."""

    config: WorldConfig
    train: list[Pair]
    val: list[Pair]
    test: list[Pair]
    policy: BasePolicy

    def true_reward(self, prompt: str, response: str) -> float:
        """The true reward of any (prompt, response) text; see `marginkit.data.world.reward`."""
        return float(true_rewards([prompt], [response])[0])

    def true_rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """[N] true rewards of N (prompt, response) pairs."""
        return true_rewards(prompts, responses)

    def split_of(self, prompt: str) -> str:
        """The split ("train", "val" or "test") owning this prompt's request, whatever its wording."""
        return split_of(prompt, self.config.seed, self.config.split_fractions)

    def sample_prompts(self, n: int, seed: int, split: str = "test") -> list[str]:
        """n prompts owned by `split` (never by another split), reproducible by seed. They may
        repeat the split's own pair prompts; they never leak another split's requests."""
        if split not in SPLITS:
            raise ValueError(f"split: {split!r} is not one of {SPLITS}")
        rng = np.random.default_rng([seed, SPLITS.index(split), 1])
        return [sample_prompt(rng, split, self.config.seed, self.config.split_fractions)[0] for _ in range(n)]

    def vocabulary(self) -> list[str]:
        """Every token a prompt or a response of this world can contain, sorted."""
        return vocabulary()

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write train.jsonl, val.jsonl, test.jsonl (one `Pair.to_record()` per line) and
        world.json (the config), each to a temporary name first, then renamed."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        for split in SPLITS:
            lines = "".join(json.dumps(p.to_record()) + "\n" for p in getattr(self, split))
            _write_atomic(out / f"{split}.jsonl", lines)
        _write_atomic(out / "world.json", json.dumps(dataclasses.asdict(self.config), indent=2) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _draw_texts(cfg: WorldConfig, policy: BasePolicy, split: str, n: int,
                rng: np.random.Generator) -> list[tuple[str, str, str, str]]:  # fmt: skip
    """n (prompt, a, b, request key) rows: two different policy samples for each prompt."""
    rows: list[tuple[str, str, str, str]] = []
    while len(rows) < n:
        prompt, request = sample_prompt(rng, split, cfg.seed, cfg.split_fractions)
        a, b = policy.respond(request, rng, 2)
        if a == b:  # related samples coincide now and then (~0.5% of prompts): draw a fresh set once
            pool = policy.respond(request, rng, _RESAMPLE_POOL)
            a, b = pool[0], next((t for t in pool[1:] if t != pool[0]), pool[0])
        if a != b:  # else: a prompt whose answers all coincide; draw another prompt
            rows.append((prompt, a, b, request.key))
    return rows


def _bt_probability(gap: np.ndarray, noise: float) -> np.ndarray:
    """[N] P(a chosen) = sigmoid(gap / noise); the step function (1 on ties) at noise = 0."""
    if noise == 0:
        return (gap >= 0).astype(np.float64)
    return 0.5 * (1.0 + np.tanh(gap / (2.0 * noise)))  # = sigmoid(gap / noise), overflow-free


def _ratings(gold: np.ndarray, rating_noise: float, rng: np.random.Generator) -> np.ndarray:
    """Integer Likert ratings 1..10, same shape as gold (module docstring)."""
    noisy = gold + rating_noise * rng.standard_normal(gold.shape)
    return np.clip(np.floor(_RATING_OFFSET + _RATING_SCALE * noisy + 0.5), 1, 10).astype(np.int64)


def _build_split(cfg: WorldConfig, policy: BasePolicy, split: str, n: int) -> list[Pair]:
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split)])
    rows = _draw_texts(cfg, policy, split, n, rng)
    prompts = [row[0] for row in rows]
    gold = true_rewards(prompts + prompts, [row[1] for row in rows] + [row[2] for row in rows])  # [2n]
    gold_a, gold_b = gold[:n], gold[n:]  # [n], [n]
    p_a = _bt_probability(gold_a - gold_b, cfg.noise)  # [n]
    u = rng.random(n)  # [n], drawn even at noise 0 so that the ratings' draws do not move
    a_wins = u < p_a if cfg.noise > 0 else p_a == 1.0  # [n]
    ratings = _ratings(np.stack([gold_a, gold_b], axis=1), cfg.rating_noise, rng)  # [n, 2]
    pairs = []
    for i, (prompt, a, b, request_key) in enumerate(rows):
        win, lose = (0, 1) if a_wins[i] else (1, 0)
        texts, golds = (a, b), (float(gold_a[i]), float(gold_b[i]))
        p_chosen = float(p_a[i] if a_wins[i] else 1.0 - p_a[i])
        pairs.append(Pair(
            prompt=prompt, chosen=texts[win], rejected=texts[lose],
            score_chosen=int(ratings[i, win]), score_rejected=int(ratings[i, lose]),
            gold_chosen=golds[win], gold_rejected=golds[lose],
            id=f"world-s{cfg.seed}-{split}-{i:06d}",
            metadata={"p_chosen": p_chosen, "flipped": golds[win] < golds[lose], "request": request_key},
        ))  # fmt: skip
    return pairs


def make_world(config: WorldConfig) -> World:
    """Build the world of a config: deterministic, pure Python and numpy, no files read."""
    policy = BasePolicy(config.policy_skill, config.policy_concentration, config.policy_redraw)
    sizes = {"train": config.n_train, "val": config.n_val, "test": config.n_test}
    splits = {split: _build_split(config, policy, split, sizes[split]) for split in SPLITS}
    return World(config=config, policy=policy, **splits)


def format_pair(pair: Pair) -> str:
    """A pair as a few readable lines (docs/world.md shows `format_pair(world.train[i])`)."""
    meta = pair.metadata
    return (
        f"prompt:   {pair.prompt}\n"
        f"chosen:   {pair.chosen}  (true reward {pair.gold_chosen:+.2f}, rating {pair.score_chosen})\n"
        f"rejected: {pair.rejected}  (true reward {pair.gold_rejected:+.2f}, rating {pair.score_rejected})\n"
        f"label:    P(chosen) = {meta['p_chosen']:.2f}, flipped = {meta['flipped']}, id = {pair.id}"
    )
