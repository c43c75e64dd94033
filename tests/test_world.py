"""Tests of the gold-reward world: the reward formula by hand, interaction, labels, splits, policy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marginkit.data.world import (
    BasePolicy,
    World,
    WorldConfig,
    format_pair,
    make_world,
    parse_request,
    tokenize_words,
    true_reward,
    true_rewards,
    vocabulary,
)
from marginkit.data.world._random import Uniforms
from marginkit.data.world.prompts import _draw

DOCS = Path(__file__).resolve().parents[1] / "docs" / "world.md"


@pytest.fixture(scope="module")
def world() -> World:
    """The default world (2000 / 500 / 1000 pairs), built once for the module."""
    return make_world(WorldConfig())


@pytest.fixture(scope="module")
def big_world() -> World:
    """More pairs, for statistics whose noise must be small."""
    return make_world(WorldConfig(seed=1, n_train=5000, n_val=100, n_test=2000))


def _skewness(x: np.ndarray) -> float:
    centred = x - x.mean()
    return float((centred**3).mean() / (centred**2).mean() ** 1.5)


# --- text -------------------------------------------------------------------------------------


def test_tokenize_words_splits_whitespace_and_punctuation() -> None:
    assert tokenize_words("try a quick curry, with rice. ok?!") == [
        "try", "a", "quick", "curry", ",", "with", "rice", ".", "ok", "?", "!",
    ]  # fmt: skip
    assert tokenize_words("a;b:c  d\n") == ["a", ";", "b", ":", "c", "d"]
    assert tokenize_words("") == []


def test_vocabulary_covers_every_generated_token(world: World) -> None:
    vocab = set(world.vocabulary())
    assert len(vocab) < 600
    assert vocab == set(vocabulary())
    texts = [t for p in world.train + world.test for t in (p.prompt, p.chosen, p.rejected)]
    texts += [r for row in world.policy.sample(world.sample_prompts(50, seed=3), 8, seed=0) for r in row]
    assert {tok for text in texts for tok in tokenize_words(text)} <= vocab


def test_prompt_and_response_lengths(world: World) -> None:
    def n_words(text: str) -> int:
        return sum(tok not in ",.?!;:" for tok in tokenize_words(text))

    prompt_words = np.array([n_words(p.prompt) for p in world.train])
    response_words = np.array([n_words(r) for p in world.train for r in (p.chosen, p.rejected)])
    assert 7 <= prompt_words.min() and np.percentile(prompt_words, 95) <= 22
    assert 3 <= response_words.min() and response_words.max() <= 25


# --- the true reward, by hand -----------------------------------------------------------------

VEGETARIAN_SPICY = "suggest a spicy dinner for a friend who is vegetarian."
VEGAN_SPICY = "suggest a spicy dinner for my sister who is vegan."
SWEET_DESSERT = "i need a dessert idea for my brother, something sweet."
QUICK_LUNCH = "suggest a quick lunch for my brother."
WARM_FOR_STUDENT = "suggest a warm dinner for a student."

HAND_WORKED = [
    # wants spicy:1, forbids meat and fish. "lentil curry": curry carries spicy -> +1.0 (shown);
    # lentil and curry are both savory, no clash; ("lentil", "curry") is classic -> +0.3; appeal
    # mean(lentil 0.0) = 0; no adjective, no unknown word, 4 words. r = 1.0 + 0.3 = 1.3
    (VEGETARIAN_SPICY, "try a lentil curry.", 1.3),
    # spicy shown by curry -> +1.0 (the adjective "spicy" is relevant: no penalty); beef is meat
    # -> -2.0 (cheese is dairy, allowed); all savory; not classic; appeal mean(0.1, 0.2) = 0.15.
    # r = 1.0 - 2.0 + 0.15 = -0.85
    (VEGETARIAN_SPICY, "try a spicy beef curry with cheese.", -0.85),
    # wants sweet:1 (the dessert's implied sweet is already explicit). cake and chocolate carry
    # sweet -> +1.0; ("chocolate", "cake") classic -> +0.3; appeal 0.2; "sweet" relevant.
    # r = 1.0 + 0.3 + 0.2 = 1.5
    (SWEET_DESSERT, "try a sweet chocolate cake.", 1.5),
    # The same response for a vegan who wants spicy: spicy 0; chocolate is dairy -> -2.0; the
    # adjective "sweet" states nothing wanted or avoided -> -0.25; classic +0.3; appeal +0.2.
    # r = -2.0 - 0.25 + 0.3 + 0.2 = -1.75
    (VEGAN_SPICY, "try a sweet chocolate cake.", -1.75),
    # wants quick:1. A stew is slow, the opposite of quick, and nothing is quick -> -0.5.
    (QUICK_LUNCH, "try a stew.", -0.5),
    # "quick" stated but the stew is slow: both present -> 0. r = 0
    (QUICK_LUNCH, "try a quick stew.", 0.0),
    # wants quick: stated only (no quick item) -> 0.75; honey is sweet, soup savory -> clash -1.0;
    # appeal 0.1. r = 0.75 - 1.0 + 0.1 = -0.15
    (QUICK_LUNCH, "try a quick soup with honey.", -0.15),
    # wants warm:1 and, for a student, cheap:0.5 and quick:0.5. porridge carries warm and cheap
    # -> 1.0 + 0.5 * 1.0; quick missing -> 0; rice is neutral, porridge too: no clash; appeal 0.
    # r = 1.5
    (WARM_FOR_STUDENT, "cook a rice porridge.", 1.5),
    # "no bacon": a negated item is ignored, so no broken restriction. r as "try a lentil curry."
    # plus nothing: 1.3 (the classic bigram is still "lentil curry").
    (VEGETARIAN_SPICY, "try a lentil curry, no bacon.", 1.3),
    # No dish -> -1.0; spicy stated, rice carries nothing -> +0.75; appeal of rice 0. r = -0.25
    (VEGETARIAN_SPICY, "eat rice, spicy!", -0.25),
    # Unknown words ("zorp", "blorf") -> -0.25 each; otherwise "try a lentil curry." r = 0.8
    (VEGETARIAN_SPICY, "try a zorp lentil curry blorf.", 0.8),
]


@pytest.mark.parametrize(("prompt", "response", "expected"), HAND_WORKED)
def test_true_reward_hand_worked(prompt: str, response: str, expected: float) -> None:
    assert true_reward(prompt, response) == pytest.approx(expected, abs=1e-9)


def test_parse_request_reads_wishes_limits_and_personas() -> None:
    request = parse_request(
        "i need a dessert idea for a child who is vegan, something cold. no crunchy food, please."
    )
    assert request.meal == "dessert"
    assert request.forbidden == {"meat", "fish", "dairy", "egg"}
    # cold is asked for; a child implies sweet (0.5) and no spicy (0.5); the dessert's sweet is the same wish
    assert request.wants == (("cold", 1.0), ("sweet", 0.5))
    assert request.avoids == (("crunchy", 1.0), ("spicy", 0.5))


def test_parse_request_round_trips_every_drawn_prompt() -> None:
    """The split of a drawn prompt is decided from its structure; its text must parse back to it."""
    u = Uniforms(np.random.default_rng(0))
    for _ in range(2000):
        draw = _draw(u)
        assert parse_request(draw.text()) == draw.request(), draw.text()


@given(st.text(max_size=200))
@settings(max_examples=200, deadline=None)
def test_true_reward_is_finite_on_any_text(text: str) -> None:
    assert math.isfinite(true_reward(text, text))
    assert math.isfinite(true_reward(VEGETARIAN_SPICY, text))


def test_true_reward_robust_to_odd_input() -> None:
    assert true_reward("", "") == -1.0  # no dish named, nothing else
    assert true_reward(VEGETARIAN_SPICY, "") == -1.0
    assert true_reward(VEGETARIAN_SPICY, "TRY A LENTIL CURRY.") == pytest.approx(1.3)  # case-insensitive
    assert true_reward(VEGETARIAN_SPICY, "…!!,,") == pytest.approx(-1.25)  # "…" unknown, no dish
    assert true_reward("zzz qqq", "try a lentil curry.") == pytest.approx(0.3)  # no request: classic only


def test_true_rewards_matches_true_reward(world: World) -> None:
    pairs = world.test[:50]
    prompts, responses = [p.prompt for p in pairs], [p.chosen for p in pairs]
    batch = true_rewards(prompts, responses)
    assert batch.shape == (50,) and batch.dtype == np.float64
    assert batch.tolist() == [true_reward(p, r) for p, r in zip(prompts, responses, strict=True)]
    assert world.true_rewards(prompts, responses).tolist() == batch.tolist()
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        true_rewards(["a", "b"], ["c"])


# --- the reward needs the prompt ----------------------------------------------------------------


def test_same_response_scores_very_differently_under_two_prompts() -> None:
    response = "try a sweet chocolate cake."
    assert true_reward(SWEET_DESSERT, response) - true_reward(VEGAN_SPICY, response) == pytest.approx(3.25)


def test_reward_is_mostly_prompt_response_interaction(world: World) -> None:
    """Rewards of every prompt x every response: the part explained by neither the prompt
    alone nor the response alone (two-way ANOVA residual) carries much of the variance."""
    prompts = world.sample_prompts(40, seed=5)
    responses = [r for row in world.policy.sample(prompts[:20], 5, seed=6) for r in row]
    grid = world.true_rewards([p for p in prompts for _ in responses], responses * len(prompts))
    grid = grid.reshape(len(prompts), len(responses))
    residual = grid - grid.mean(0, keepdims=True) - grid.mean(1, keepdims=True) + grid.mean()
    assert residual.var() / grid.var() > 0.4  # measured 0.69 (seed 0)


def _bag_of_words(texts: list[str], index: dict[str, int]) -> np.ndarray:
    counts = np.zeros((len(texts), len(index)))
    for i, text in enumerate(texts):
        for tok in tokenize_words(text):
            counts[i, index[tok]] += 1
    return counts


def test_response_only_linear_model_falls_well_short_of_the_true_reward(big_world: World) -> None:
    """Ridge regression of the true gap on response word-count differences (the best a model
    blind to the prompt can do linearly) ranks held-out pairs far worse than the true reward."""
    index = {tok: i for i, tok in enumerate(big_world.vocabulary())}

    def features(pairs: list) -> tuple[np.ndarray, np.ndarray]:
        diff = _bag_of_words([p.chosen for p in pairs], index) - _bag_of_words(
            [p.rejected for p in pairs], index
        )
        return diff, np.array([p.gold_gap for p in pairs])

    x_train, y_train = features(big_world.train)
    x_test, y_test = features(big_world.test)
    beta = np.linalg.solve(x_train.T @ x_train + np.eye(len(index)), x_train.T @ y_train)
    decided = y_test != 0
    linear_accuracy = np.mean(np.sign(x_test @ beta)[decided] == np.sign(y_test)[decided])
    assert 0.55 < linear_accuracy < 0.75  # measured 0.62-0.66; the true reward scores 1.0


# --- gaps and labels --------------------------------------------------------------------------


def test_gaps_are_right_skewed_with_many_near_ties(big_world: World) -> None:
    gaps = np.abs([p.gold_gap for p in big_world.train])
    assert _skewness(gaps) > 0.5  # measured 1.66
    assert np.mean(gaps < 0.5) > 0.25  # measured 0.39
    assert np.mean(gaps > 2.0) > 0.05  # and some clear wins


def test_flip_rate_matches_bradley_terry(big_world: World) -> None:
    gaps = np.abs([p.gold_gap for p in big_world.train])
    flipped = np.array([p.metadata["flipped"] for p in big_world.train])
    noise = big_world.config.noise
    # P(flip) = sigmoid(-|gap| / noise); on an exact tie the coin picks a winner but no order is flipped
    expected = np.where(gaps > 0, 1.0 / (1.0 + np.exp(gaps / noise)), 0.0)
    stderr = math.sqrt(expected.mean() * (1 - expected.mean()) / len(gaps))
    assert abs(flipped.mean() - expected.mean()) < 4 * stderr
    assert 0.10 <= flipped.mean() <= 0.25  # the default noise
    near, clear = gaps < 0.25, gaps > 2.0
    assert flipped[near].mean() > 0.25 and flipped[clear].mean() < 0.05


def test_labels_are_consistent(world: World) -> None:
    for pair in world.train:
        assert pair.chosen != pair.rejected
        assert pair.metadata["flipped"] == (pair.gold_gap < 0)
        sigmoid = 1.0 / (1.0 + math.exp(-pair.gold_gap / world.config.noise))
        assert pair.metadata["p_chosen"] == pytest.approx(sigmoid)
        assert pair.gold_chosen == pytest.approx(true_reward(pair.prompt, pair.chosen))


def test_zero_noise_labels_are_the_true_order() -> None:
    quiet = make_world(WorldConfig(n_train=500, n_val=0, n_test=0, noise=0.0))
    assert all(p.gold_gap >= 0 for p in quiet.train)
    assert not any(p.metadata["flipped"] for p in quiet.train)


def test_noise_changes_labels_not_texts() -> None:
    base = WorldConfig(n_train=300, n_val=10, n_test=10)
    a, b = (
        make_world(base),
        make_world(WorldConfig(n_train=300, n_val=10, n_test=10, noise=2.0, rating_noise=0.0)),
    )
    assert [(p.prompt, {p.chosen, p.rejected}) for p in a.train] == [
        (p.prompt, {p.chosen, p.rejected}) for p in b.train
    ]
    assert [p.chosen for p in a.train] != [p.chosen for p in b.train]


def test_ratings_are_coarse_and_track_the_true_reward(big_world: World) -> None:
    gold = np.array([g for p in big_world.train for g in (p.gold_chosen, p.gold_rejected)])
    ratings = np.array([s for p in big_world.train for s in (p.score_chosen, p.score_rejected)])
    assert set(np.unique(ratings)) <= set(range(1, 11))
    deciles = np.quantile(gold, np.linspace(0, 1, 6))
    bins = np.digitize(gold, deciles[1:-1])
    means = [ratings[bins == b].mean() for b in range(5)]
    assert all(lo < hi for lo, hi in zip(means, means[1:]))  # monotone on average
    assert np.corrcoef(gold, ratings)[0, 1] > 0.7  # noisy, not exact


# --- splits, determinism, files ----------------------------------------------------------------


def test_same_seed_same_world_other_seed_other_world(world: World) -> None:
    again = make_world(WorldConfig())
    assert again.train == world.train and again.val == world.val and again.test == world.test
    assert [p.metadata for p in again.train] == [p.metadata for p in world.train]
    other = make_world(WorldConfig(seed=1))
    assert [p.prompt for p in other.train] != [p.prompt for p in world.train]


def test_no_prompt_or_request_crosses_splits(world: World) -> None:
    prompts = {split: {p.prompt for p in getattr(world, split)} for split in ("train", "val", "test")}
    requests = {
        split: {p.metadata["request"] for p in getattr(world, split)} for split in ("train", "val", "test")
    }
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not prompts[a] & prompts[b]
        assert not requests[a] & requests[b]  # not even reworded
    for split in ("train", "val", "test"):
        assert all(world.split_of(p.prompt) == split for p in getattr(world, split))


def test_sample_prompts_stay_in_their_split(world: World) -> None:
    fresh = world.sample_prompts(100, seed=9, split="test")
    assert fresh == world.sample_prompts(100, seed=9, split="test")
    assert all(world.split_of(p) == "test" for p in fresh)
    train_requests = {p.metadata["request"] for p in world.train}
    assert not {parse_request(p).key for p in fresh} & train_requests
    with pytest.raises(ValueError, match="split"):
        world.sample_prompts(1, seed=0, split="dev")


def test_ids_and_sizes(world: World) -> None:
    assert (len(world.train), len(world.val), len(world.test)) == (2000, 500, 1000)
    assert world.train[123].id == "world-s0-train-000123"
    assert world.test[0].id == "world-s0-test-000000"


def test_save_writes_jsonl_splits_and_config(world: World, tmp_path: Path) -> None:
    world.save(tmp_path / "w")
    for split in ("train", "val", "test"):
        lines = (tmp_path / "w" / f"{split}.jsonl").read_text().splitlines()
        assert [json.loads(line) for line in lines] == [p.to_record() for p in getattr(world, split)]
    config = json.loads((tmp_path / "w" / "world.json").read_text())
    assert WorldConfig(**{**config, "split_fractions": tuple(config["split_fractions"])}) == world.config


@pytest.mark.parametrize(
    ("field", "value"),
    [("seed", -1), ("n_train", 0), ("n_val", 1.5), ("noise", -0.1), ("noise", math.inf), ("rating_noise", -1.0),
     ("policy_skill", 1.0), ("policy_concentration", 0.0), ("policy_redraw", 0.0), ("split_fractions", (0.5, 0.5, 0.0))],
)  # fmt: skip
def test_config_rejects_bad_values_naming_field_and_value(field: str, value: object) -> None:
    with pytest.raises(
        ValueError, match=rf"WorldConfig\.{field}: {value!r}".replace("(", r"\(").replace(")", r"\)")
    ):
        WorldConfig(**{field: value})


def test_config_fields_have_help() -> None:
    import dataclasses

    assert all(f.metadata.get("help") for f in dataclasses.fields(WorldConfig))


# --- the base policy ---------------------------------------------------------------------------


def test_policy_is_reproducible_by_seed(world: World) -> None:
    prompts = world.sample_prompts(20, seed=1)
    a = world.policy.sample(prompts, 16, seed=7)
    assert a == world.policy.sample(prompts, 16, seed=7)
    assert a != world.policy.sample(prompts, 16, seed=8)
    assert [row[:4] for row in a] == world.policy.sample(prompts, 4, seed=7)  # n=4 is a prefix of n=16
    assert world.policy.sample(prompts[:1], 0, seed=7) == [[]]
    assert BasePolicy() == world.policy


def test_best_of_n_improves_with_n(world: World) -> None:
    prompts = world.sample_prompts(200, seed=2)
    samples = world.policy.sample(prompts, 16, seed=0)
    rewards = world.true_rewards([p for p in prompts for _ in range(16)], [r for row in samples for r in row])
    rewards = rewards.reshape(len(prompts), 16)
    best = {n: rewards[:, :n].max(axis=1).mean() for n in (1, 4, 16)}
    assert best[1] + 0.3 < best[4] and best[4] + 0.2 < best[16]  # measured 0.32, 1.08, 1.47
    assert rewards.std() > 0.8  # quality varies: good, mediocre and bad samples


# --- docs ----------------------------------------------------------------------------------------


def test_docs_show_real_pairs(world: World) -> None:
    """docs/world.md prints `format_pair(world.train[i])` for the default world; keep it true."""
    text = DOCS.read_text()
    for pair in world.train[:3]:
        assert format_pair(pair) in text


def test_docs_name_every_knob_and_the_hand_worked_values() -> None:
    import dataclasses

    text = DOCS.read_text()
    for f in dataclasses.fields(WorldConfig):
        assert f"`{f.name}`" in text, f.name
    assert "= **1.3**" in text and "= **-0.85**" in text and "= **1.5**" in text  # HAND_WORKED rows 1, 2, 8
