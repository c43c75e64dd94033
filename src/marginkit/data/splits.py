"""Deterministic train / validation / test splits with no prompt in two splits (grouped hold-out).

Pairs that answer the same prompt share a lot (the prompt itself, often a response): if they fall
on both sides of a split, held-out accuracy measures memory of the prompt, not generalisation. So
pairs are grouped by a normalised key (the prompt by default) and whole groups are assigned:

    key(pair)  = casefold(collapse_whitespace(prompt_text(prompt)))           (group_by="prompt")
    order      = groups sorted by sha256(f"{seed}\\x1f{key}")                  (a seeded shuffle)
    split(g)   = the split k whose cumulative-fraction interval
                 [F_{k-1}, F_k) holds the group's midpoint (c_g + n_g / 2) / N,
                 c_g = pairs in the groups before g, n_g = pairs of g, N = all pairs.

The order of a group depends only on (seed, key), never on where the pair sat in the input, so a
group lands in the same split whatever the file order; fractions are met in pairs up to one
group's size (a group is never cut). `unit="groups"` counts every group as 1 instead of its pairs,
which is what "split the AlpacaEval pool by instruction" means.

`group_by="first_user_turn"` groups HH-style dialogues ("\\n\\nHuman: ... \\n\\nAssistant: ...") or
message lists by their first user message only, a stricter key: two multi-turn dialogues that open
with the same request then also stay together.

Worked example (run as a test): 4 prompts, two of which differ only by case and spaces.

>>> from marginkit.data.schema import Pair
>>> pairs = [Pair("Hi", "a", "b"), Pair(" hi ", "c", "d"), Pair("Bye", "e", "f"), Pair("Why?", "g", "h")]
>>> split = split_pairs(pairs, SplitConfig(fractions=(0.5, 0.5), names=("train", "test"), seed=0))
>>> {name: [p.chosen for p in part] for name, part in split.pairs.items()}
{'train': ['a', 'c'], 'test': ['e', 'g']}
>>> split.report.groups
{'train': 1, 'test': 2}
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from marginkit.data.schema import Message, Pair, prompt_text

__all__ = ["SplitConfig", "SplitReport", "Split", "normalise_prompt", "first_user_turn", "split_keys", "split_pairs",
           "GROUP_KEYS"]

_SPACE = re.compile(r"\s+")
_HH_HUMAN = "\n\nHuman:"
_HH_ASSISTANT = "\n\nAssistant:"


def normalise_prompt(prompt: str | tuple[Message, ...] | Sequence[Message]) -> str:
    """The grouping key of a prompt: its plain text, whitespace runs collapsed to one space, casefolded."""
    text = prompt_text(tuple(prompt)) if not isinstance(prompt, str) else prompt
    return _SPACE.sub(" ", text).strip().casefold()


def first_user_turn(prompt: str | tuple[Message, ...] | Sequence[Message]) -> str:
    """The normalised first user message: a message list's first "user" content, or the text between
    the first "\\n\\nHuman:" and the next "\\n\\nAssistant:" of an HH dialogue; else the whole prompt."""
    if not isinstance(prompt, str):
        users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
        return normalise_prompt(users[0] if users else tuple(prompt))
    start = prompt.find(_HH_HUMAN)
    if start < 0:
        return normalise_prompt(prompt)
    start += len(_HH_HUMAN)
    end = prompt.find(_HH_ASSISTANT, start)
    return normalise_prompt(prompt[start:] if end < 0 else prompt[start:end])


# group_by option -> prompt -> key; a plain dict read once at setup
GROUP_KEYS: dict[str, Callable[[Any], str]] = {"prompt": normalise_prompt, "first_user_turn": first_user_turn}


@dataclass
class SplitConfig:
    fractions: tuple[float, ...] = field(
        default=(0.8, 0.1, 0.1), metadata={"help": "Share of each split (sums to 1), in the order of `names`."})
    names: tuple[str, ...] = field(default=("train", "validation", "test"), metadata={"help": "Split names."})
    seed: int = field(default=0, metadata={"help": "Seed of the group order; the same seed gives the same splits."})
    group_by: Literal["prompt", "first_user_turn"] = field(
        default="prompt", metadata={"help": "Group key: the whole normalised prompt, or only its first user turn."})
    unit: Literal["pairs", "groups"] = field(
        default="pairs", metadata={"help": "What the fractions count: pairs (a group weighs its size) or groups."})

    def __post_init__(self) -> None:
        self.fractions, self.names = tuple(self.fractions), tuple(self.names)
        if len(self.fractions) != len(self.names) or not self.names:
            raise ValueError(f"split: {len(self.fractions)} fractions {self.fractions} for {len(self.names)} names "
                             f"{self.names}; give one fraction per split name")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"split: names {self.names} repeat a name")
        if any(f < 0 for f in self.fractions) or abs(sum(self.fractions) - 1.0) > 1e-6:
            raise ValueError(f"split: fractions {self.fractions} must be >= 0 and sum to 1 (they sum to "
                             f"{sum(self.fractions):.6g})")
        if self.group_by not in GROUP_KEYS:
            raise ValueError(f"split: group_by={self.group_by!r}; known: {sorted(GROUP_KEYS)}")
        if self.unit not in ("pairs", "groups"):
            raise ValueError(f"split: unit={self.unit!r}; expected 'pairs' or 'groups'")


@dataclass(frozen=True)
class SplitReport:
    """Counts per split: items (pairs), groups, and the realised fraction of the unit counted."""

    seed: int
    items: dict[str, int]
    groups: dict[str, int]
    fractions: dict[str, float]  # realised share of `unit`
    target: dict[str, float]
    unit: str
    group_by: str

    def summary(self) -> str:
        parts = [f"{name}: {self.items[name]} pairs in {self.groups[name]} groups ({self.fractions[name]:.1%} of "
                 f"{self.unit}, target {self.target[name]:.1%})" for name in self.items]
        return f"split by {self.group_by} (seed {self.seed}): " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Split:
    """The pairs of each split (input order kept inside a split) and the report."""

    pairs: dict[str, list[Pair]]
    report: SplitReport

    def __getitem__(self, name: str) -> list[Pair]:
        return self.pairs[name]


def _rank(seed: int, key: str) -> bytes:
    return hashlib.sha256(f"{seed}\x1f{key}".encode()).digest()


def split_keys(keys: Sequence[Hashable], cfg: SplitConfig) -> tuple[list[str], SplitReport]:
    """The split name of each item, given each item's group key [n]; and the counts.

    Items with equal keys always share a split. Keys are compared as given (normalise them first);
    the shuffle hashes `str(key)`.
    """
    sizes: dict[Hashable, int] = {}
    for key in keys:
        sizes[key] = sizes.get(key, 0) + 1
    ordered = sorted(sizes, key=lambda k: (_rank(cfg.seed, str(k)), str(k)))  # str tie-break: total order
    weight = {k: (sizes[k] if cfg.unit == "pairs" else 1) for k in ordered}
    total = sum(weight.values())
    bounds, acc = [], 0.0
    for f in cfg.fractions:
        acc += f
        bounds.append(acc)
    bounds[-1] = float("inf")  # rounding never leaves a group unassigned
    assigned: dict[Hashable, str] = {}
    before = 0
    for k in ordered:
        mid = (before + weight[k] / 2) / total
        assigned[k] = cfg.names[next(i for i, b in enumerate(bounds) if mid < b)]
        before += weight[k]
    labels = [assigned[k] for k in keys]
    items = {n: 0 for n in cfg.names}
    groups = {n: 0 for n in cfg.names}
    units = {n: 0 for n in cfg.names}
    for label in labels:
        items[label] += 1
    for k, name in assigned.items():
        groups[name] += 1
        units[name] += weight[k]
    report = SplitReport(
        seed=cfg.seed, items=items, groups=groups,
        fractions={n: (units[n] / total if total else 0.0) for n in cfg.names},
        target=dict(zip(cfg.names, cfg.fractions)), unit=cfg.unit, group_by=cfg.group_by,
    )
    return labels, report


def split_pairs(pairs: Sequence[Pair], cfg: SplitConfig | None = None) -> Split:
    """Split pairs by group (see the module docstring); every pair lands in exactly one split."""
    cfg = cfg or SplitConfig()
    key_of = GROUP_KEYS[cfg.group_by]
    labels, report = split_keys([key_of(p.prompt) for p in pairs], cfg)
    out: dict[str, list[Pair]] = {n: [] for n in cfg.names}
    for pair, label in zip(pairs, labels):
        out[label].append(pair)
    return Split(out, report)
