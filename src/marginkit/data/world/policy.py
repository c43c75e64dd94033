"""The base policy of the gold-reward world: a sampler of short meal suggestions of uneven quality.

A response is a few parts: an opener, adjectives, a main ingredient, a dish, a side and maybe a
second sentence ("try a spicy lentil curry with rice. top it with chilies."). Each draft draws a
*skill* s ~ Beta(skill_mean * c, (1 - skill_mean) * c), c the concentration, and every choice
reads the prompt with probability s:

- attentive: pick a wanted attribute not yet covered, then an item carrying it (or an
  adjective stating it, mostly the prompt's own word), rejecting items that break the
  restriction, carry an avoided attribute or clash with the dish's flavour;
- inattentive: any item by habit (chicken, beef, salmon, cheese and eggs twice as likely), any
  adjective.

Attentive choices do not check every want, so even a careful answer can contradict one ("a
quick stew"). Samples of one prompt are related, like samples of one model at one temperature:
a first draft is drawn per prompt, then each response redraws each part with probability
`redraw` from a fresh draft. A few samples are good, many mediocre, some break the guest's
restriction, so Best-of-N under the true reward improves with N.

Sampling is a pure function of (prompt, n, seed): the generator of a prompt is seeded from
(seed, crc32(prompt)) and the n responses are drawn in order, so the first 4 of n=16 are the
responses of n=4.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from marginkit.data.world._random import Uniforms
from marginkit.data.world.lexicon import ADJECTIVES, ATTRIBUTES, DISHES, INGREDIENTS, Item
from marginkit.data.world.reward import Request, parse_request

__all__ = ["BasePolicy"]

_OPENERS: tuple[str, ...] = ("try", "how about", "you could make", "i suggest", "make", "cook")
_EXTRAS: tuple[str, ...] = (
    "top it with {ing}.",
    "serve it with {ing}.",
    "add some {ing} on top.",
    "it is {adj} and {adj2}.",
    "my family loves it.",
)
_ADJECTIVE_WORDS: tuple[str, ...] = tuple(ADJECTIVES)
_P_INGREDIENT, _P_SIDE, _P_EXTRA = 0.9, 0.45, 0.35
_N_ADJ_CDF = (0.35, 0.75)  # P(0 adjectives before the dish) = 0.35, P(1) = 0.4, P(2) = 0.25
_P_OWN_WORD = 0.85  # an attentive adjective repeats the prompt's word; else a synonym
_TRIES = 3  # carriers of a missing want an attentive choice inspects before any acceptable item
_SAFE_TRIES = 8  # uniform items it then inspects for an acceptable one before taking the last


def _carriers(items: tuple[Item, ...]) -> MappingProxyType:
    """attribute -> the items carrying it."""
    return MappingProxyType({a: tuple(it for it in items if a in it.tags) for a in ATTRIBUTES})


_DISHES_WITH = _carriers(DISHES)
_INGREDIENTS_WITH = _carriers(INGREDIENTS)
_HABITUAL = INGREDIENTS + tuple(
    it for it in INGREDIENTS if it.name in {"chicken", "beef", "salmon", "cheese", "egg"}
)
# Adjectives that state exactly one attribute, by attribute ("fast" for quick, not "baked").
_ADJECTIVES_FOR = MappingProxyType(
    {a: tuple(w for w, tags in ADJECTIVES.items() if tags == frozenset({a})) for a in ATTRIBUTES}
)


def _acceptable(item: Item, request: Request, flavor: str) -> bool:
    if item.diet & request.forbidden or any(a in item.tags for a, _ in request.avoids):
        return False
    return not (item.flavor and flavor and item.flavor != flavor)


def _pick(u: Uniforms, items: tuple[Item, ...], request: Request, covered: frozenset[str],
          flavor: str, informed: bool) -> Item:  # fmt: skip
    """An item: by habit if not informed; else one carrying a missing want, if acceptable."""
    if not informed:
        habitual = _HABITUAL if items is INGREDIENTS else items
        return u.choice(habitual)
    carriers = _DISHES_WITH if items is DISHES else _INGREDIENTS_WITH
    missing = [a for a, _ in request.wants if a not in covered]
    for _ in range(_TRIES if missing else 0):
        options = carriers[u.choice(missing)]
        if options:
            item = u.choice(options)
            if _acceptable(item, request, flavor):
                return item
    for _ in range(_SAFE_TRIES):  # no carrier fits: any acceptable item, found by rejection
        item = u.choice(items)
        if _acceptable(item, request, flavor):
            return item
    return item


def _adjective(u: Uniforms, request: Request, covered: frozenset[str], informed: bool) -> str | None:
    """An adjective: uniform if not informed; else one stating a missing want (None if none)."""
    if not informed:
        return u.choice(_ADJECTIVE_WORDS)
    missing = [a for a, _ in request.wants if a not in covered]
    if not missing:
        return None
    want = u.choice(missing)
    options = _ADJECTIVES_FOR[want]
    return want if u.random() < _P_OWN_WORD else u.choice(options)


def _extra(u: Uniforms, request: Request, covered: frozenset[str], flavor: str, skill: float) -> str:
    """A second sentence: a topping or side, a statement about the dish, or filler."""
    template = u.choice(_EXTRAS)
    if "{ing}" in template:
        ing = _pick(u, INGREDIENTS, request, covered, flavor, u.random() < skill)
        return template.format(ing=ing.forms[-1])
    if "{adj}" not in template:
        return template
    adj = _adjective(u, request, covered, u.random() < skill)
    if adj is None:  # nothing left to state
        return "my family loves it."
    adj2 = _adjective(u, request, covered | ADJECTIVES[adj], u.random() < skill)
    if adj2 is None or adj2 == adj:
        return f"it is {adj}."
    return template.format(adj=adj, adj2=adj2)


@dataclass(frozen=True)
class _Parts:
    """A response before rendering; a sample may redraw each field."""

    opener: str
    adjectives: tuple[str, ...]
    main: Item | None
    dish: Item
    side: Item | None
    extra: str | None

    def text(self) -> str:
        words = [*self.adjectives, *([self.main.name] if self.main else []), self.dish.name]
        article = "some" if self.dish.name.endswith("s") else "an" if words[0][0] in "aeiou" else "a"
        text = f"{self.opener} {article} {' '.join(words)}"
        text += f" with {self.side.forms[-1]}." if self.side else "."
        return text + (f" {self.extra}" if self.extra else "")


_PART_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(_Parts))


def _draft(request: Request, u: Uniforms, skill: float) -> _Parts:
    """A whole response; every choice reads the request with probability `skill`."""
    dish = _pick(u, DISHES, request, frozenset(), "", u.random() < skill)
    covered = dish.tags
    main = None
    if u.random() < _P_INGREDIENT:
        main = _pick(u, INGREDIENTS, request, covered, dish.flavor, u.random() < skill)
        covered |= main.tags
    adjectives: list[str] = []
    for _ in range(u.categorical(_N_ADJ_CDF)):
        adj = _adjective(u, request, covered, u.random() < skill)
        if adj is not None and adj not in adjectives:
            adjectives.append(adj)
            covered |= ADJECTIVES[adj]
    side = None
    if u.random() < _P_SIDE:
        side = _pick(u, INGREDIENTS, request, covered, dish.flavor, u.random() < skill)
        covered |= side.tags
    extra = _extra(u, request, covered, dish.flavor, skill) if u.random() < _P_EXTRA else None
    return _Parts(u.choice(_OPENERS), tuple(adjectives), main, dish, side, extra)


@dataclass(frozen=True)
class BasePolicy:
    """Samples responses (module docstring). Immutable: all randomness comes from the caller."""

    skill_mean: float = 0.45
    skill_concentration: float = 3.0
    redraw: float = 0.5

    def sample(self, prompts: Sequence[str], n: int, seed: int) -> list[list[str]]:
        """n responses for each prompt: [len(prompts)][n] strings, reproducible by seed."""
        if n < 0:
            raise ValueError(f"n: {n} is negative (ask for n >= 0 responses per prompt)")
        out = []
        for prompt in prompts:
            rng = np.random.default_rng([seed, zlib.crc32(prompt.encode())])
            out.append(self.respond(parse_request(prompt), rng, n))
        return out

    def respond(self, request: Request, rng: np.random.Generator, n: int = 1) -> list[str]:
        """n responses to a parsed request, drawn in order from `rng`: a first draft, then per
        response a fresh draft whose parts replace the first draft's with probability `redraw`."""
        u = Uniforms(rng)
        first = _draft(request, u, self._skill(u))
        out = []
        for _ in range(n):
            fresh = _draft(request, u, self._skill(u))
            parts = {
                name: getattr(fresh if u.random() < self.redraw else first, name) for name in _PART_NAMES
            }
            out.append(_Parts(**parts).text())
        return out

    def _skill(self, u: Uniforms) -> float:
        a = self.skill_mean * self.skill_concentration
        return float(u.rng.beta(a, self.skill_concentration - a))
