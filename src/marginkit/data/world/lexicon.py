"""Word lists of the gold-reward world: dishes, ingredients, adjectives, people, and the tokeniser.

Everything the true reward knows about words lives here, as immutable tables:

- an *attribute* is a property a prompt can ask for (`ATTRIBUTES`: spicy, quick, cheap, ...);
  `slow` is an extra tag that only contradicts `quick` (see `OPPOSITE`);
- a *diet tag* (meat, fish, dairy, egg, nut) is what a guest's restriction forbids;
- an `Item` is a dish or an ingredient with the attributes and diet tags it carries, and its
  flavour (sweet, savory or neutral). A model has to learn these (chili is spicy, a stew is slow,
  bacon is meat, chocolate contains dairy): the prompt names the attribute or the restriction,
  never the item;
- an adjective states attributes directly ("fast" states quick); a few synonyms are deliberate,
  so copying the prompt's words is not the whole story.

Tokens are whitespace-separated words with the punctuation `,.?!;:` split off
(`tokenize_words`); a word-level tokenizer can be built from `vocabulary()`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "ATTRIBUTES",
    "OPPOSITE",
    "DIET_TAGS",
    "MEALS",
    "Item",
    "DISHES",
    "INGREDIENTS",
    "ITEM_BY_FORM",
    "ADJECTIVES",
    "CLASSIC_PAIRS",
    "RESTRICTION_WORDS",
    "NEGATORS",
    "PERSONAS",
    "MEAL_HINTS",
    "FUNCTION_WORDS",
    "PUNCTUATION",
    "tokenize_words",
    "vocabulary",
]

# What a prompt can ask for or ask to avoid.
ATTRIBUTES: tuple[str, ...] = ("spicy", "quick", "cheap", "warm", "cold", "sweet", "crunchy", "healthy")
# Contradicting tags: a "quick" stew is not quick, because a stew is slow.
OPPOSITE = MappingProxyType({"warm": "cold", "cold": "warm", "quick": "slow", "slow": "quick"})
DIET_TAGS: tuple[str, ...] = ("meat", "fish", "dairy", "egg", "nut")
MEALS: tuple[str, ...] = ("breakfast", "lunch", "dinner", "dessert")
PUNCTUATION = ",.?!;:"

_TOKEN_RE = re.compile(r"[^\s,.?!;:]+|[,.?!;:]")


def tokenize_words(text: str) -> list[str]:
    """Split on whitespace and split off each of `,.?!;:` as its own token; no lower-casing.

    >>> tokenize_words("try a quick curry, with rice.")
    ['try', 'a', 'quick', 'curry', ',', 'with', 'rice', '.']
    """
    return _TOKEN_RE.findall(text)


@dataclass(frozen=True)
class Item:
    """A dish or an ingredient. `forms` are its surface words (singular, plural); the first is
    the canonical name. `appeal` (ingredients, in [-0.2, 0.2]) is a small taste term that breaks
    ties between similar answers; `flavor` is "sweet", "savory" or "" (goes with both)."""

    forms: tuple[str, ...]
    kind: str  # "dish" or "ingredient"
    tags: frozenset[str]
    diet: frozenset[str]
    flavor: str
    appeal: float = 0.0

    @property
    def name(self) -> str:
        return self.forms[0]


def _dish(forms: str, tags: str, flavor: str) -> Item:
    return Item(tuple(forms.split()), "dish", frozenset(tags.split()), frozenset(), flavor)


def _ing(forms: str, tags: str, diet: str, appeal: float, flavor: str) -> Item:
    return Item(
        tuple(forms.split()), "ingredient", frozenset(tags.split()), frozenset(diet.split()), flavor, appeal
    )


# fmt: off
DISHES: tuple[Item, ...] = (
    _dish("curry", "warm spicy", "savory"),
    _dish("salad", "cold healthy", "savory"),
    _dish("soup", "warm", "savory"),
    _dish("stew", "warm slow", "savory"),
    _dish("noodles", "warm", "savory"),
    _dish("sandwich", "cold", "savory"),
    _dish("omelette", "warm quick", "savory"),
    _dish("porridge", "warm cheap", ""),
    _dish("pancakes", "warm sweet", "sweet"),
    _dish("cake", "sweet slow", "sweet"),
    _dish("smoothie", "cold sweet", "sweet"),
    _dish("tacos", "crunchy", "savory"),
)

INGREDIENTS: tuple[Item, ...] = (
    _ing("chicken", "", "meat", 0.1, "savory"),
    _ing("beef", "", "meat", 0.1, "savory"),
    _ing("bacon", "", "meat", 0.2, "savory"),
    _ing("pork", "", "meat", 0.0, "savory"),
    _ing("salmon", "", "fish", 0.2, "savory"),
    _ing("tuna", "", "fish", -0.1, "savory"),
    _ing("shrimp", "", "fish", 0.1, "savory"),
    _ing("tofu", "", "", -0.1, "savory"),
    _ing("lentil lentils", "", "", 0.0, "savory"),
    _ing("bean beans", "", "", -0.1, "savory"),
    _ing("potato potatoes", "", "", 0.0, "savory"),
    _ing("rice", "", "", 0.0, ""),
    _ing("mushroom mushrooms", "", "", 0.1, "savory"),
    _ing("spinach", "healthy", "", -0.1, "savory"),
    _ing("chili chilies", "spicy", "", 0.1, "savory"),
    _ing("ginger", "spicy", "", 0.0, "savory"),
    _ing("cheese", "", "dairy", 0.2, "savory"),
    _ing("yogurt", "", "dairy", 0.0, ""),
    _ing("butter", "", "dairy", 0.1, ""),
    _ing("egg eggs", "", "egg", 0.0, "savory"),
    _ing("peanut peanuts", "crunchy", "nut", 0.1, ""),
    _ing("almond almonds", "crunchy", "nut", 0.0, ""),
    _ing("apple apples", "sweet", "", 0.0, "sweet"),
    _ing("banana bananas", "sweet", "", 0.0, "sweet"),
    _ing("berry berries", "sweet", "", 0.1, "sweet"),
    _ing("honey", "sweet", "", 0.1, "sweet"),
    _ing("chocolate", "sweet", "dairy", 0.2, "sweet"),
)

ITEM_BY_FORM = MappingProxyType({form: item for item in DISHES + INGREDIENTS for form in item.forms})

ADJECTIVES = MappingProxyType({
    "spicy": frozenset({"spicy"}), "fiery": frozenset({"spicy"}),
    "quick": frozenset({"quick"}), "fast": frozenset({"quick"}),
    "cheap": frozenset({"cheap"}), "warm": frozenset({"warm"}), "cold": frozenset({"cold"}),
    "sweet": frozenset({"sweet"}), "crunchy": frozenset({"crunchy"}), "crispy": frozenset({"crunchy"}),
    "healthy": frozenset({"healthy"}), "baked": frozenset({"warm", "slow"}),
})

# "ingredient dish" bigrams that read as a known good dish: a small bonus.
CLASSIC_PAIRS: frozenset[tuple[str, str]] = frozenset({
    ("lentil", "curry"), ("chicken", "salad"), ("bean", "tacos"), ("berry", "smoothie"),
    ("chocolate", "cake"), ("banana", "pancakes"), ("cheese", "sandwich"), ("spinach", "omelette"),
})

# Prompt words that forbid diet tags.
RESTRICTION_WORDS = MappingProxyType({
    "vegetarian": frozenset({"meat", "fish"}),
    "vegan": frozenset({"meat", "fish", "dairy", "egg"}),
    "meat": frozenset({"meat"}), "dairy": frozenset({"dairy"}),
    "nut": frozenset({"nut"}), "nuts": frozenset({"nut"}),
})
# A negator up to two tokens before an attribute turns a request into an avoidance
# ("nothing too sweet"), and before an item or adjective in a response cancels it ("no cheese").
NEGATORS: frozenset[str] = frozenset({"not", "no", "nothing", "without", "hates", "avoids", "dislikes"})

# Words that imply wishes (weight `reward.IMPLIED_WEIGHT`): (wanted, avoided) attributes.
PERSONAS = MappingProxyType({
    "student": (frozenset({"cheap", "quick"}), frozenset()),
    "athlete": (frozenset({"healthy"}), frozenset()),
    "child": (frozenset({"sweet"}), frozenset({"spicy"})),
})
MEAL_HINTS = MappingProxyType({
    "breakfast": (frozenset({"quick"}), frozenset()),
    "lunch": (frozenset(), frozenset()),
    "dinner": (frozenset(), frozenset()),
    "dessert": (frozenset({"sweet"}), frozenset()),
})
# fmt: on

# Words with no meaning for the reward: the glue of the prompt and response templates. A word
# outside `vocabulary()` counts as an irrelevant mention.
FUNCTION_WORDS: frozenset[str] = frozenset(
    """
    a an some it is and with for to be me my i you who what should could make cook cooking
    am want wants something coming any ideas help plan idea need too please food
    cannot eat does try how about suggest top add on serve family loves
    brother sister friend mother father neighbour coworker uncle aunt guest partner grandmother
""".split()
)


def vocabulary() -> list[str]:
    """Every token that can appear in a prompt or a response of the world, sorted."""
    words = set(FUNCTION_WORDS) | set(ADJECTIVES) | set(MEALS) | set(RESTRICTION_WORDS)
    words |= set(NEGATORS) | set(PERSONAS) | set(PUNCTUATION)
    for item in DISHES + INGREDIENTS:
        words.update(item.forms)
    return sorted(words)
