"""Building a gold-reward world: config, splits of labelled pairs, the policy and the true reward.

    world = make_world(WorldConfig(seed=0, n_train=2000))
    world.train[0]          # Pair(prompt, chosen, rejected, score_*, gold_*, id, metadata)

Each pair is two samples of the base policy for one prompt of its split. With g_a, g_b their
true rewards, the label is drawn from one of five noise models (`label_noise`; formulas in
`marginkit.data.world.labels`): Bradley-Terry at temperature `noise` (the default:
P(a chosen) = sigmoid((g_a - g_b) / noise), a on exact ties at noise = 0), Thurstone's probit,
a constant flip rate, a pool of annotators of different noise, or annotators who also reward
length. `gold_chosen` and `gold_rejected` keep the true rewards, so `Pair.gold_gap < 0` exactly
when the label flipped. Each response also gets a Likert rating in 1..10 (`score_chosen`,
`score_rejected`): clip(floor(4.5 + 2 * (g + eps) + 0.5), 1, 10) with eps ~ N(0, rating_noise^2)
(annotators: their own perceived reward; length_bias: the reward plus the length bonus).

Draw order per split: all texts first, then the label draws, then the rating noise; so changing
`label_noise` or any of its parameters keeps every text, and changing `rating_noise` keeps every
label.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from marginkit.data.schema import Pair
from marginkit.data.world.labels import LABEL_MODELS, LABEL_PARAMETERS, draw_labels
from marginkit.data.world.lexicon import vocabulary
from marginkit.data.world.policy import BasePolicy
from marginkit.data.world.prompts import SPLITS, sample_prompt, split_of
from marginkit.data.world.reward import true_rewards

__all__ = ["WorldConfig", "World", "make_world", "format_pair"]

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
    label_noise: Literal["bt", "thurstone", "flip", "annotators", "length_bias"] = field(
        default="bt",
        metadata={"help": "How labels are drawn from the true gap (docs/world.md, 'Labels'): bt = "
                  "sigmoid(gap / noise), thurstone = Phi(gap / noise), flip = the truly better one except "
                  "with probability flip_rate, annotators = one annotator of annotator_noises per pair, "
                  "length_bias = sigmoid((gap + length_weight * word-count difference) / noise)."},
    )  # fmt: skip
    noise: float = field(
        default=0.5,
        metadata={"help": "Temperature T of the bt, thurstone and length_bias labels, in true-reward units "
                  "(>= 0): bt P(a chosen) = sigmoid((g_a - g_b) / T); 0 = always the truly better one. "
                  "bt at 0.5 flips about 18% of labels, at 1.0 about 27%."},
    )  # fmt: skip
    flip_rate: float = field(
        default=0.2,
        metadata={"help": "label_noise=flip: probability, in [0, 0.5], that a label goes against the true "
                  "order, whatever the gap (exact ties: a coin)."},
    )  # fmt: skip
    annotator_noises: tuple[float, ...] = field(
        default=(0.1, 0.5, 2.0),
        metadata={"help": "label_noise=annotators: the pool's noise stds s_k (each >= 0); each pair is "
                  "labelled by one annotator drawn uniformly, who sees g + s_k * N(0, 1) per response, "
                  "rates what it sees and states a Llama 2 confidence level (the pair's margin)."},
    )  # fmt: skip
    length_weight: float = field(
        default=0.1,
        metadata={"help": "label_noise=length_bias: reward units per word that annotators add for length, "
                  "in the label and in the ratings (finite; negative = shorter preferred)."},
    )  # fmt: skip
    rating_noise: float = field(
        default=0.5,
        metadata={"help": "Std of the true-reward noise before a response is rated 1..10 (>= 0; "
                  "label_noise=annotators rates with the annotator's own noise instead)."},
    )  # fmt: skip
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
        self._check_label_noise()
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

    def _check_label_noise(self) -> None:
        """label_noise and its parameters; a parameter the chosen model does not read must keep its
        default (set and silently ignored would be worse)."""
        if self.label_noise not in LABEL_MODELS:
            raise ValueError(
                f"WorldConfig.label_noise: {self.label_noise!r} (need one of {tuple(LABEL_MODELS)})"
            )
        if not _is_real(self.flip_rate) or not 0.0 <= self.flip_rate <= 0.5:
            raise ValueError(f"WorldConfig.flip_rate: {self.flip_rate!r} (need a number in [0, 0.5])")
        if isinstance(self.annotator_noises, list):  # a JSON round trip (world.json) gives a list
            object.__setattr__(self, "annotator_noises", tuple(self.annotator_noises))
        s = self.annotator_noises
        if not isinstance(s, tuple) or not s or any(not _is_real(v) or v < 0 for v in s):
            raise ValueError(
                f"WorldConfig.annotator_noises: {s!r} (need a non-empty tuple of finite numbers >= 0)"
            )
        if not _is_real(self.length_weight):
            raise ValueError(f"WorldConfig.length_weight: {self.length_weight!r} (need a finite number)")
        uses = LABEL_MODELS[self.label_noise].uses
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in LABEL_PARAMETERS:
            value = getattr(self, name)
            if name not in uses and value != defaults[name]:
                readers = [m for m, model in LABEL_MODELS.items() if name in model.uses]
                raise ValueError(f"WorldConfig.{name}: {value!r} is not read by label_noise={self.label_noise!r} "
                                 f"(only by {readers}); leave it at its default {defaults[name]!r}")  # fmt: skip


def _is_real(value: object) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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


def _build_split(cfg: WorldConfig, policy: BasePolicy, split: str, n: int) -> list[Pair]:
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split)])
    rows = _draw_texts(cfg, policy, split, n, rng)
    prompts = [row[0] for row in rows]
    gold = true_rewards(prompts + prompts, [row[1] for row in rows] + [row[2] for row in rows])  # [2n]
    gold_ab = np.stack([gold[:n], gold[n:]], axis=1)  # [2n] -> [n, 2] true rewards of (a, b)
    labels = draw_labels(cfg, gold_ab, [(row[1], row[2]) for row in rows], rng)
    pairs = []
    for i, (prompt, a, b, request_key) in enumerate(rows):
        win, lose = (0, 1) if labels.a_wins[i] else (1, 0)
        texts, golds = (a, b), (float(gold_ab[i, 0]), float(gold_ab[i, 1]))
        p_chosen = float(labels.p_a[i] if labels.a_wins[i] else 1.0 - labels.p_a[i])
        pairs.append(Pair(
            prompt=prompt, chosen=texts[win], rejected=texts[lose], margin=labels.margin(i),
            score_chosen=int(labels.ratings[i, win]), score_rejected=int(labels.ratings[i, lose]),
            gold_chosen=golds[win], gold_rejected=golds[lose],
            id=f"world-s{cfg.seed}-{split}-{i:06d}",
            metadata={"p_chosen": p_chosen, "flipped": golds[win] < golds[lose], "request": request_key,
                      "label_noise": cfg.label_noise, **labels.metadata(i)},
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
