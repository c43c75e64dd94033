"""data/splits.py: grouped splits are deterministic by seed, never put one prompt in two splits, and meet
their fractions up to one group's size; real HH-RLHF, UltraFeedback and AlpacaEval split cleanly."""

from __future__ import annotations

import doctest
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import shared_data_dir
from marginkit.data import splits as splits_module
from marginkit.data.schema import Pair
from marginkit.data.splits import SplitConfig, first_user_turn, normalise_prompt, split_keys, split_pairs


def test_module_docstring_example_runs():
    result = doctest.testmod(splits_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_normalised_keys():
    assert normalise_prompt("  Hello\n\tWORLD  ") == normalise_prompt("hello world") == "hello world"
    messages = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi  there"})
    assert normalise_prompt(messages) == "system: be brief. user: hi there"
    # first_user_turn: the text between the first "Human:" and the next "Assistant:" of an HH dialogue
    hh_a = "\n\nHuman: How do I  bake bread?\n\nAssistant: Flour.\n\nHuman: And then?\n\nAssistant:"
    hh_b = "\n\nHuman: how do i bake bread?\n\nAssistant:"
    assert first_user_turn(hh_a) == first_user_turn(hh_b) == "how do i bake bread?"
    assert normalise_prompt(hh_a) != normalise_prompt(hh_b)
    assert first_user_turn(messages) == "hi there"
    assert first_user_turn("No markers here") == "no markers here"


def test_fractions_by_hand_with_singleton_groups():
    # 10 groups of 1 under unit="groups": midpoints 0.05, 0.15, ..., 0.95 whatever the order.
    # Boundaries (0.8, 0.9, 1.0): midpoints < 0.8 are the first 8 -> train, 0.85 -> validation, 0.95 -> test.
    labels, report = split_keys([f"k{i}" for i in range(10)], SplitConfig(unit="groups"))
    assert report.items == {"train": 8, "validation": 1, "test": 1}
    assert report.fractions == {"train": 0.8, "validation": 0.1, "test": 0.1}
    # 4 singletons, halves: midpoints 0.125, 0.375 -> train; 0.625, 0.875 -> test
    _, report = split_keys(list("abcd"), SplitConfig(fractions=(0.5, 0.5), names=("train", "test")))
    assert report.items == {"train": 2, "test": 2}


def test_a_group_is_never_cut():
    # Group A has 3 pairs, B has 1; halves of N = 4 pairs. A first: A's midpoint 1.5/4 = 0.375 -> train,
    # B's (3 + 0.5)/4 = 0.875 -> test. B first: B's 0.5/4 = 0.125 -> train, A's (1 + 1.5)/4 = 0.625 -> test.
    # Either way the two groups land apart, whole: counts {3, 1}.
    keys = ["A", "A", "B", "A"]
    cfg = SplitConfig(fractions=(0.5, 0.5), names=("train", "test"))
    for seed in range(6):
        cfg.seed = seed
        labels, report = split_keys(keys, cfg)
        assert labels[0] == labels[1] == labels[3] != labels[2]
        assert report.items[labels[0]] == 3 and report.items[labels[2]] == 1


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="sum to 1"):
        SplitConfig(fractions=(0.5, 0.4, 0.05))
    with pytest.raises(ValueError, match="one fraction per split name"):
        SplitConfig(fractions=(0.5, 0.5))
    with pytest.raises(ValueError, match="repeat"):
        SplitConfig(fractions=(0.5, 0.5), names=("a", "a"))


# prompts drawn from a small pool with case and whitespace variants, so many pairs share a group
_BASE = st.sampled_from(["cats", "dogs and cats", "a long question about birds", "fish?", "why", "Hi"])
_VARIANT = st.tuples(_BASE, st.sampled_from(["", " ", "  ", "\n"]), st.booleans()).map(
    lambda t: (t[1] + (t[0].upper() if t[2] else t[0]) + t[1]))


@settings(max_examples=60, deadline=None)
@given(prompts=st.lists(_VARIANT, min_size=1, max_size=40), seed=st.integers(0, 10_000),
       unit=st.sampled_from(["pairs", "groups"]))
def test_no_prompt_in_two_splits_and_deterministic(prompts, seed, unit):
    pairs = [Pair(p, f"c{i}", f"r{i}", id=str(i)) for i, p in enumerate(prompts)]
    cfg = SplitConfig(seed=seed, unit=unit)
    split = split_pairs(pairs, cfg)
    where = {}
    for name, part in split.pairs.items():
        for pair in part:
            assert where.setdefault(normalise_prompt(pair.prompt), name) == name  # no key in two splits
    assert sorted(p.id for part in split.pairs.values() for p in part) == sorted(p.id for p in pairs)
    # deterministic: the same seed gives the same splits, and so does any order of the input
    again = split_pairs(pairs, SplitConfig(seed=seed, unit=unit))
    assert {n: [p.id for p in v] for n, v in again.pairs.items()} == {n: [p.id for p in v] for n, v in split.pairs.items()}
    shuffled = list(pairs)
    random.Random(seed).shuffle(shuffled)
    by_id = {p.id: n for n, part in split_pairs(shuffled, cfg).pairs.items() for p in part}
    assert by_id == {p.id: n for n, part in split.pairs.items() for p in part}
    # fractions are met up to one group's weight (a group is never cut)
    sizes = {}
    for p in pairs:
        sizes[normalise_prompt(p.prompt)] = sizes.get(normalise_prompt(p.prompt), 0) + 1
    total = len(pairs) if unit == "pairs" else len(sizes)
    biggest = max(sizes.values()) if unit == "pairs" else 1
    for name, target in zip(cfg.names, cfg.fractions):
        assert abs(split.report.fractions[name] * total - target * total) <= biggest + 1e-9


def test_seeds_give_different_splits():
    keys = [f"prompt {i}" for i in range(200)]
    a, _ = split_keys(keys, SplitConfig(seed=0))
    b, _ = split_keys(keys, SplitConfig(seed=1))
    assert a != b


# ---- real data ---------------------------------------------------------------------------------------


def _real(relative: str):
    path = shared_data_dir() / relative
    if not path.exists():
        pytest.skip(f"shared data file {path} is absent (set MARGINKIT_SHARED_DATA)")
    return path


@pytest.mark.shared_data
@pytest.mark.parametrize("group_by", ["prompt", "first_user_turn"])
def test_hh_split_no_leak(group_by):
    from marginkit.data.load import load_pairs

    pairs, ledger = load_pairs(_real("hh-rlhf/harmless-base/test.jsonl.gz"), on_invalid="skip")
    assert ledger.n_dropped == 9  # the 5 rows whose prefixes disagree + 4 empty chosen (tests/test_shared_data.py)
    split = split_pairs(pairs, SplitConfig(seed=3, group_by=group_by))
    key = splits_module.GROUP_KEYS[group_by]
    keys = {name: {key(p.prompt) for p in part} for name, part in split.pairs.items()}
    assert not (keys["train"] & keys["validation"]) and not (keys["train"] & keys["test"])
    assert not (keys["validation"] & keys["test"])
    assert sum(split.report.items.values()) == len(pairs) == 2303
    for name, target in (("train", 0.8), ("validation", 0.1), ("test", 0.1)):
        assert abs(split.report.fractions[name] - target) < 0.02


@pytest.mark.shared_data
def test_ultrafeedback_split_by_prompt():
    from marginkit.data.load import load_pairs

    pairs, _ = load_pairs(_real("ultrafeedback-binarized-1k2/train_clean.jsonl.gz"), on_invalid="skip")
    split = split_pairs(pairs, SplitConfig(fractions=(0.9, 0.1), names=("train", "validation"), seed=0))
    train = {normalise_prompt(p.prompt) for p in split["train"]}
    assert not train & {normalise_prompt(p.prompt) for p in split["validation"]}
    assert split.report.items["train"] + split.report.items["validation"] == len(pairs) == 994
