"""The world's own request-by-response features: a linear model on them can represent the true reward.

`features(prompts, responses)` maps each (prompt, response) to a vector φ [D] such that

    true_reward(x, y) = φ(x, y) · TRUE_WEIGHTS          (exactly, for every string pair; tested)

so a linear reward model r(x, y) = φ(x, y) · w is *well specified*: its hypothesis class contains the
true reward, and what it learns from pairs is limited only by the labels and their number, never by
capacity. Most coordinates are interactions of the request with the response (a wanted attribute shown
by an item, an ingredient that breaks the guest's diet), one per attribute or ingredient, so the model
has to learn that every attribute weighs alike and which ingredient breaks which diet: 78 weights.

| block | coordinate (per request x response) | true weight |
|---|---|---|
| shown:a (8)      | wanted weight of a, if an item carries a              | +1.0 (RewardWeights.shown) |
| stated:a (8)     | wanted weight of a, if only an adjective states a     | +0.75 |
| contra:a (8)     | wanted weight of a, if only its opposite is present   | -0.5 |
| avoided:a (8)    | avoided weight of a, if a is present                  | -1.0 |
| diet:i (14)      | 1 if ingredient i is named and breaks the diet        | -2.0 |
| appeal:i (27)    | 1 / #ingredients named, if ingredient i is named      | i's appeal |
| clash, no_dish, classic, irrelevant, extra_words (5) | the response terms of reward.py | -1, -1, +0.3, -0.25, -0.05 |

The same parse as the true reward (reward.py) produces the coordinates, so the two cannot drift.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from marginkit.data.world.lexicon import ATTRIBUTES, INGREDIENTS, OPPOSITE, vocabulary
from marginkit.data.world.reward import (
    RewardWeights,
    _parse_response,
    _Response,
    _satisfaction,
    parse_request,
)

__all__ = ["FEATURE_NAMES", "TRUE_WEIGHTS", "features"]

_DIET_ITEMS = tuple(it.name for it in INGREDIENTS if it.diet)
_INGREDIENT_NAMES = tuple(it.name for it in INGREDIENTS)
_RW = RewardWeights()

FEATURE_NAMES: tuple[str, ...] = (
    *(f"shown:{a}" for a in ATTRIBUTES), *(f"stated:{a}" for a in ATTRIBUTES),
    *(f"contra:{a}" for a in ATTRIBUTES), *(f"avoided:{a}" for a in ATTRIBUTES),
    *(f"diet:{i}" for i in _DIET_ITEMS), *(f"appeal:{i}" for i in _INGREDIENT_NAMES),
    "clash", "no_dish", "classic", "irrelevant", "extra_words",
)
_COL = {name: j for j, name in enumerate(FEATURE_NAMES)}

TRUE_WEIGHTS: np.ndarray = np.array(
    [_RW.shown] * 8 + [_RW.stated] * 8 + [_RW.contradicted] * 8 + [-_RW.avoided] * 8
    + [-_RW.forbidden] * len(_DIET_ITEMS) + [_RW.appeal * it.appeal for it in INGREDIENTS]
    + [-_RW.clash, -_RW.no_dish, _RW.classic, -_RW.irrelevant, -_RW.per_extra_word], dtype=np.float64)


def _row(out: np.ndarray, request, resp: _Response) -> None:  # noqa: ANN001 (reward.Request)
    tags = resp.item_tags | resp.stated_tags
    for attr, weight in request.wants:
        s = _satisfaction(attr, resp, _RW)
        if s == _RW.shown:
            out[_COL[f"shown:{attr}"]] = weight
        elif s == _RW.stated:
            out[_COL[f"stated:{attr}"]] = weight
        elif s == _RW.contradicted:
            out[_COL[f"contra:{attr}"]] = weight
    for attr, weight in request.avoids:
        if attr in tags:
            out[_COL[f"avoided:{attr}"]] = weight
    for it in resp.items:
        if it.diet & request.forbidden:
            out[_COL[f"diet:{it.name}"]] = 1.0
    ingredients = [it for it in resp.items if it.kind == "ingredient"]
    for it in ingredients:
        out[_COL[f"appeal:{it.name}"]] = 1.0 / len(ingredients)
    dish = next((it for it in resp.items if it.kind == "dish"), None)
    if dish is None:
        out[_COL["no_dish"]] = 1.0
    elif dish.flavor:
        out[_COL["clash"]] = sum(1 for it in resp.items if it.flavor and it.flavor != dish.flavor)
    out[_COL["classic"]] = float(resp.classic)
    relevant = {a for a, _ in request.wants + request.avoids}
    relevant |= {OPPOSITE[a] for a in relevant if a in OPPOSITE}
    out[_COL["irrelevant"]] = (sum(1 for t in resp.statements if not t & relevant) + resp.n_repeats
                               + resp.n_unknown)
    out[_COL["extra_words"]] = max(0, resp.n_words - _RW.free_words)


def features(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """φ [N, D] float64 of N (prompt, response) pairs, D = len(FEATURE_NAMES); φ · TRUE_WEIGHTS is the
    true reward. Works on any strings, as the true reward does."""
    if len(prompts) != len(responses):
        raise ValueError(f"features: {len(prompts)} prompts but {len(responses)} responses")
    known = frozenset(vocabulary())
    requests: dict[str, object] = {}
    parsed: dict[str, _Response] = {}
    out = np.zeros((len(prompts), len(FEATURE_NAMES)), dtype=np.float64)
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        if prompt not in requests:
            requests[prompt] = parse_request(prompt)
        if response not in parsed:
            parsed[response] = _parse_response(response, known)
        _row(out[i], requests[prompt], parsed[response])
    return out
