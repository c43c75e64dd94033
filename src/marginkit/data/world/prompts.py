"""Prompts of the gold-reward world: requests for a meal, for a guest, with wishes and limits.

A prompt is drawn as a structure (meal, person, restriction clause, 1-3 wanted attributes,
maybe one avoided attribute) and rendered through one of several templates, e.g.
"suggest a spicy and quick dinner for a friend who is vegetarian." The split a prompt belongs to
is a seeded hash of its *meaning* (`Request.key`), not of its wording, so no request reaches two
splits under two phrasings or two persons with no wishes of their own.

The structure's request is built with `make_request`, the function `parse_request` ends in, so
the split of a drawn prompt is known before its text is rendered; a test checks that
`parse_request(text)` gives back the same request.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from marginkit.data.world._random import Uniforms
from marginkit.data.world.lexicon import ATTRIBUTES, MEALS, OPPOSITE, PERSONAS, RESTRICTION_WORDS
from marginkit.data.world.reward import Request, make_request, parse_request

__all__ = ["SPLITS", "PERSONS", "CLAUSES", "sample_prompt", "split_of"]

SPLITS: tuple[str, ...] = ("train", "val", "test")

PERSONS: tuple[str, ...] = (
    "my brother", "my sister", "a friend", "my mother", "my father", "a neighbour",
    "my grandmother", "a coworker", "a student", "an athlete", "a child", "my uncle",
    "my aunt", "a guest", "my partner",
)  # fmt: skip

# (clause, attribute it makes avoided or None)
CLAUSES: tuple[tuple[str, str | None], ...] = (
    ("who is vegetarian", None),
    ("who is vegan", None),
    ("who cannot eat nuts", None),
    ("who does not eat dairy", None),
    ("who does not eat meat", None),
    ("who hates spicy food", "spicy"),
    ("who dislikes sweet food", "sweet"),
)
_P_CLAUSE = 0.75  # most guests have a restriction: the interaction a response-only model misses
_P_AVOID = 0.15  # "nothing too sweet."
_N_WANTS_CDF = (0.5, 0.9)  # P(1 wanted attribute) = 0.5, P(2) = 0.4, P(3) = 0.1

_TEMPLATES: tuple[str, ...] = (
    "suggest a {wants} {meal} for {guest}.",
    "i am cooking {meal} for {guest}. i want something {wants}.",
    "what should i make for {meal}? {guest} is coming and wants it {wants}.",
    "{guest} wants a {wants} {meal}. any ideas?",
    "help me plan a {meal} for {guest}. it should be {wants}.",
    "i need a {meal} idea for {guest}, something {wants}.",
)
_AVOID_SENTENCES: tuple[str, ...] = (" nothing too {a}.", " no {a} food, please.")


def _restrictions(clause: str) -> frozenset[str]:
    return frozenset().union(*(RESTRICTION_WORDS.get(w, frozenset()) for w in clause.split()))


def _join(words: list[str]) -> str:
    """["a"] -> "a"; ["a", "b"] -> "a and b"; ["a", "b", "c"] -> "a, b and c"."""
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " and " + words[-1]


@dataclass(frozen=True)
class _Draw:
    """A prompt as drawn, before rendering: indices into the tables above."""

    meal: str
    person: str
    clause: int | None
    wants: tuple[str, ...]
    avoid: str | None
    template: int
    avoid_sentence: int

    def request(self) -> Request:
        clause, clause_avoid = CLAUSES[self.clause] if self.clause is not None else ("", None)
        avoids = [a for a in (self.avoid, clause_avoid) if a is not None]
        personas = [w for w in self.person.split() if w in PERSONAS]
        return make_request(self.meal, _restrictions(clause), self.wants, avoids, personas)

    def text(self) -> str:
        guest = self.person if self.clause is None else f"{self.person} {CLAUSES[self.clause][0]}"
        text = _TEMPLATES[self.template].format(meal=self.meal, guest=guest, wants=_join(list(self.wants)))
        if self.avoid is not None:
            text += _AVOID_SENTENCES[self.avoid_sentence].format(a=self.avoid)
        return text


def _draw(u: Uniforms) -> _Draw:
    """One prompt structure from the whole prompt space."""
    meal, person = u.choice(MEALS), u.choice(PERSONS)
    clause = u.index(len(CLAUSES)) if u.random() < _P_CLAUSE else None
    banned = {CLAUSES[clause][1]} if clause is not None else set()
    avoid = u.choice(ATTRIBUTES) if u.random() < _P_AVOID else None
    avoid = None if avoid in banned else avoid
    banned.add(avoid)  # at most 2 of the 8 attributes: 3 compatible wants always remain
    n_wants = u.categorical(_N_WANTS_CDF) + 1
    wants: list[str] = []
    while len(wants) < n_wants:
        attr = u.choice(ATTRIBUTES)
        if attr not in banned and attr not in wants and OPPOSITE.get(attr) not in wants:
            wants.append(attr)
    return _Draw(meal, person, clause, tuple(wants), avoid, u.index(len(_TEMPLATES)),
                 u.index(len(_AVOID_SENTENCES)))  # fmt: skip


def _owner(request: Request, seed: int, fractions: tuple[float, float, float]) -> str:
    # crc32, not hash(): Python salts hash() per process, and splits must not move.
    u = zlib.crc32(f"{seed}|{request.key}".encode()) / 2**32
    edge = 0.0
    for name, fraction in zip(SPLITS, fractions, strict=True):
        edge += fraction
        if u < edge:
            return name
    return SPLITS[-1]  # u within float rounding of 1.0


def split_of(prompt: str, seed: int, fractions: tuple[float, float, float]) -> str:
    """The split owning this prompt's request: a seeded hash of `Request.key` in [0, 1),
    cut at the cumulative `fractions` of (train, val, test)."""
    return _owner(parse_request(prompt), seed, fractions)


def sample_prompt(rng: np.random.Generator, split: str, seed: int,
                  fractions: tuple[float, float, float]) -> tuple[str, Request]:  # fmt: skip
    """A prompt owned by `split`, and its request: draw from the whole space until the
    request's hash lands in the split (about 1 / fraction draws)."""
    if split not in SPLITS:
        raise ValueError(f"split: {split!r} is not one of {SPLITS}")
    u = Uniforms(rng)
    while True:
        draw = _draw(u)
        request = draw.request()
        if _owner(request, seed, fractions) == split:
            return draw.text(), request
