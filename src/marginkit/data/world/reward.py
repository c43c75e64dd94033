"""The true reward of the gold-reward world: parse the prompt's request, parse the response, score.

A prompt asks for a meal for a guest: *wanted* attributes (words in the prompt weigh 1.0; wishes
implied by the guest or the meal weigh 0.5: a student wants cheap and quick, a child sweet and
not spicy, a dessert should be sweet, a breakfast quick), *avoided* attributes ("nothing too
sweet", "who hates spicy food"), and diet restrictions ("who is vegan" forbids meat, fish, dairy
and egg). A response names a dish, ingredients and adjectives. With T_item the attributes its
items carry, T_adj those its adjectives state, and T = T_item | T_adj:

    r(x, y) =   sum_{w wanted} weight_w * s_w                          (satisfaction)
              - 2.0  * #{distinct items carrying a forbidden diet tag}   (broken restriction)
              - 1.0  * sum_{a avoided, a in T} weight_a                  (avoided attribute present)
              - 1.0  * #{ingredients whose flavour clashes with the dish} ("chocolate curry")
              - 1.0  * [no dish named]
              + 0.3  * [an "ingredient dish" bigram is a classic]        ("lentil curry")
              + mean appeal of the distinct ingredients                   (in [-0.2, 0.2])
              - 0.25 * #irrelevant tokens  (an adjective stating nothing wanted or avoided, a
                                            repeated content word, a word outside the vocabulary)
              - 0.05 * max(0, #words - 20)                               (rambling)

    s_w = 1.0 if w in T_item (shown), 0.75 if w only in T_adj (stated, not shown), -0.5 if only
          its opposite is in T (a "quick" request answered with a stew), 0 if neither or both.

Items and adjectives right after a negator ("no cheese", "not spicy") are ignored. The same
"spicy lentil curry" is the best answer to one prompt, breaks the restriction of a second and
ignores the wishes of a third: only the flavour clash, the appeal and the vocabulary terms can
be judged from the response alone. Everything works on any string: unknown words count as
irrelevant, never raise.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from marginkit.data.world.lexicon import (
    ADJECTIVES,
    ATTRIBUTES,
    CLASSIC_PAIRS,
    ITEM_BY_FORM,
    MEAL_HINTS,
    MEALS,
    NEGATORS,
    OPPOSITE,
    PERSONAS,
    PUNCTUATION,
    RESTRICTION_WORDS,
    Item,
    tokenize_words,
    vocabulary,
)

__all__ = [
    "IMPLIED_WEIGHT",
    "RewardWeights",
    "Request",
    "parse_request",
    "make_request",
    "true_reward",
    "true_rewards",
]


@dataclass(frozen=True)
class RewardWeights:
    """The constants of the reward formula (module docstring). The defaults are the world's
    ground truth; other values are for ablations (zero all but one term to isolate it)."""

    shown: float = 1.0  # s_w when an item carries the attribute
    stated: float = 0.75  # s_w when an adjective states the attribute and no item carries it
    contradicted: float = -0.5  # s_w when only the opposite attribute is present
    forbidden: float = 2.0  # per distinct item breaking a diet restriction
    avoided: float = 1.0  # per avoided attribute present
    no_dish: float = 1.0  # penalty when no dish is named at all
    classic: float = 0.3  # bonus for a classic "ingredient dish" bigram
    appeal: float = 1.0  # scale of the mean ingredient appeal
    clash: float = 1.0  # per distinct ingredient whose flavor clashes with the main dish ("chocolate curry")
    irrelevant: float = 0.25  # per irrelevant token
    free_words: int = 20  # words allowed before the length penalty starts
    per_extra_word: float = 0.05


@dataclass(frozen=True)
class Request:
    """What a prompt asks for: meal, forbidden diet tags, and (attribute, weight) pairs wanted or
    avoided, sorted; weight 1.0 when the prompt says it, IMPLIED_WEIGHT when a persona or the
    meal implies it."""

    meal: str | None
    forbidden: frozenset[str]
    wants: tuple[tuple[str, float], ...]
    avoids: tuple[tuple[str, float], ...]

    @property
    def key(self) -> str:
        """A canonical text of the request's meaning (not its wording): decides the split."""
        wants = ",".join(f"{a}:{w:g}" for a, w in self.wants)
        avoids = ",".join(f"{a}:{w:g}" for a, w in self.avoids)
        return f"{self.meal}|{','.join(sorted(self.forbidden))}|{wants}|{avoids}"


IMPLIED_WEIGHT = 0.5
_NEGATION_REACH = 2  # a negator acts on the next two tokens: "nothing too sweet", "no cheese"
_ATTRIBUTE_SET = frozenset(ATTRIBUTES)


def parse_request(prompt: str) -> Request:
    """Read meal, diet restrictions, wanted and avoided attributes from any prompt text."""
    meal: str | None = None
    forbidden: set[str] = set()
    wants: set[str] = set()
    avoids: set[str] = set()
    personas: list[str] = []
    last_negator = -_NEGATION_REACH - 1
    for i, tok in enumerate(tokenize_words(prompt.lower())):
        if tok in NEGATORS:
            last_negator = i
        elif tok in _ATTRIBUTE_SET:
            (avoids if i - last_negator <= _NEGATION_REACH else wants).add(tok)
        elif tok in RESTRICTION_WORDS:
            forbidden |= RESTRICTION_WORDS[tok]
        elif tok in PERSONAS:
            personas.append(tok)
        elif meal is None and tok in MEALS:
            meal = tok
    return make_request(meal, forbidden, wants, avoids, personas)


def make_request(meal: str | None, forbidden: Iterable[str], wants: Iterable[str], avoids: Iterable[str],
                 personas: Iterable[str]) -> Request:  # fmt: skip
    """The request of explicit wishes plus those implied by personas and the meal (weight
    IMPLIED_WEIGHT), which never override what the prompt says: an explicit avoid beats a want,
    and an implied wish is dropped when the prompt names it or its opposite."""
    avoided = set(avoids)
    wanted = {a: 1.0 for a in wants if a not in avoided}
    avoided_w = dict.fromkeys(avoided, 1.0)
    explicit = set(wanted) | avoided
    explicit |= {OPPOSITE[a] for a in explicit if a in OPPOSITE}
    hints = [PERSONAS[p] for p in personas] + ([MEAL_HINTS[meal]] if meal in MEAL_HINTS else [])
    for hinted_wants, hinted_avoids in hints:
        for attr in hinted_wants - explicit:
            wanted.setdefault(attr, IMPLIED_WEIGHT)
        for attr in hinted_avoids - explicit:
            avoided_w.setdefault(attr, IMPLIED_WEIGHT)
    return Request(
        meal, frozenset(forbidden), tuple(sorted(wanted.items())), tuple(sorted(avoided_w.items()))
    )


@dataclass(frozen=True)
class _Response:
    items: tuple[Item, ...]  # distinct, in order of first mention, negated ones left out
    item_tags: frozenset[str]
    stated_tags: frozenset[str]
    statements: tuple[frozenset[str], ...]  # one per adjective token, for the irrelevance count
    classic: bool
    n_repeats: int
    n_unknown: int
    n_words: int


def _parse_response(response: str, known: frozenset[str]) -> _Response:
    items: dict[str, Item] = {}
    statements: list[frozenset[str]] = []
    seen: set[str] = set()
    n_repeats = n_unknown = n_words = 0
    classic = False
    last_negator = -_NEGATION_REACH - 1
    prev_item: Item | None = None  # the item right before this token, for classic bigrams
    for i, tok in enumerate(tokenize_words(response.lower())):
        item, stated = ITEM_BY_FORM.get(tok), ADJECTIVES.get(tok)
        n_words += tok not in PUNCTUATION
        if item is None and stated is None:
            if tok in NEGATORS:
                last_negator = i
            n_unknown += tok not in known
            prev_item = None
            continue
        n_repeats += tok in seen
        seen.add(tok)
        if i - last_negator <= _NEGATION_REACH:
            prev_item = None
        elif item is not None:
            items.setdefault(item.name, item)
            classic = classic or (prev_item is not None and (prev_item.name, item.name) in CLASSIC_PAIRS)
            prev_item = item
        else:
            statements.append(stated)
            prev_item = None
    distinct = tuple(items.values())
    item_tags = frozenset().union(*(it.tags for it in distinct))
    stated_tags = frozenset().union(*statements)
    return _Response(
        distinct, item_tags, stated_tags, tuple(statements), classic, n_repeats, n_unknown, n_words
    )


def _satisfaction(attr: str, resp: _Response, rw: RewardWeights) -> float:
    anti = OPPOSITE.get(attr)
    has = attr in resp.item_tags or attr in resp.stated_tags
    has_anti = anti is not None and (anti in resp.item_tags or anti in resp.stated_tags)
    if has_anti:
        return 0.0 if has else rw.contradicted
    if attr in resp.item_tags:
        return rw.shown
    return rw.stated if has else 0.0


def _score(request: Request, resp: _Response, rw: RewardWeights) -> float:
    """The reward formula of the module docstring on parsed inputs."""
    tags = resp.item_tags | resp.stated_tags
    total = sum(w * _satisfaction(a, resp, rw) for a, w in request.wants)
    total -= rw.forbidden * sum(1 for it in resp.items if it.diet & request.forbidden)
    total -= rw.avoided * sum(w for a, w in request.avoids if a in tags)
    dish = next((it for it in resp.items if it.kind == "dish"), None)
    if dish is None:
        total -= rw.no_dish
    elif dish.flavor:
        total -= rw.clash * sum(1 for it in resp.items if it.flavor and it.flavor != dish.flavor)
    total += rw.classic * resp.classic
    appeals = [it.appeal for it in resp.items if it.kind == "ingredient"]
    total += rw.appeal * sum(appeals) / len(appeals) if appeals else 0.0
    relevant = {a for a, _ in request.wants + request.avoids}
    relevant |= {OPPOSITE[a] for a in relevant if a in OPPOSITE}
    n_irrelevant = sum(1 for tags_ in resp.statements if not tags_ & relevant)
    n_irrelevant += resp.n_repeats + resp.n_unknown
    total -= rw.irrelevant * n_irrelevant
    total -= rw.per_extra_word * max(0, resp.n_words - rw.free_words)
    return float(total)


def true_reward(prompt: str, response: str, weights: RewardWeights | None = None) -> float:
    """The true reward r(prompt, response) of the module docstring; works on any strings."""
    return true_rewards([prompt], [response], weights)[0].item()


def true_rewards(
    prompts: Sequence[str], responses: Sequence[str], weights: RewardWeights | None = None
) -> np.ndarray:
    """Batch form of `true_reward`: [N] float64 for N (prompt, response) pairs."""
    if len(prompts) != len(responses):
        raise ValueError(f"true_rewards: {len(prompts)} prompts but {len(responses)} responses")
    rw = weights if weights is not None else RewardWeights()
    known = frozenset(vocabulary())
    requests: dict[str, Request] = {}
    out = np.empty(len(prompts), dtype=np.float64)
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        if prompt not in requests:
            requests[prompt] = parse_request(prompt)
        out[i] = _score(requests[prompt], _parse_response(response, known), rw)
    return out
