"""Tests of the gold world's label-noise models: each P(a chosen) by hand, the draws, the docs table."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marginkit.configlib import load_config
from marginkit.data.schema import Pair
from marginkit.data.world import World, WorldConfig, make_world
from marginkit.data.world.labels import (
    CONFIDENCE_LEVELS,
    LABEL_MODELS,
    annotator_probability,
    bt_probability,
    confidence_level,
    count_words,
    draw_labels,
    flip_probability,
    flip_rates_by_gap_quartile,
    length_bias_probability,
    likert,
    normal_cdf,
    thurstone_probability,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "world.md"
MODELS = tuple(LABEL_MODELS)


@pytest.fixture(scope="module")
def world_of() -> Callable[[str], World]:
    """world_of("label_noise=flip ...") -> the seed-0 world with 5000 train pairs (no val, no
    test) under those overrides, built once for the module."""
    cache: dict[str, World] = {}

    def build(overrides: str) -> World:
        if overrides not in cache:
            base = ["seed=0", "n_train=5000", "n_val=0", "n_test=0"]
            cache[overrides] = make_world(load_config(WorldConfig, None, base + overrides.split()))
        return cache[overrides]

    return build


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --- P(a chosen), by hand ------------------------------------------------------------------------


def test_bt_probability_by_hand() -> None:
    # gap 1, T 0.5: sigmoid(1 / 0.5) = sigmoid(2) = 1 / (1 + e^-2) = 1 / 1.135335 = 0.880797
    # gap 0: sigmoid(0) = 0.5; gap -1: 1 - 0.880797 = 0.119203
    np.testing.assert_allclose(
        bt_probability(np.array([1.0, 0.0, -1.0]), 0.5), [0.880797, 0.5, 0.119203], atol=1e-6
    )
    # T = 0: the step, a on the exact tie
    assert bt_probability(np.array([0.3, 0.0, -0.3]), 0.0).tolist() == [1.0, 1.0, 0.0]


def test_thurstone_probability_by_hand() -> None:
    # gap 1, T 0.5: Phi(1 / 0.5) = Phi(2) = (1 + erf(2 / sqrt 2)) / 2 = (1 + erf(1.414214)) / 2
    # = (1 + 0.954500) / 2 = 0.977250; gap -1: Phi(-2) = 1 - 0.977250 = 0.022750
    np.testing.assert_allclose(
        thurstone_probability(np.array([1.0, -1.0]), 0.5), [0.977250, 0.022750], atol=1e-6
    )
    # gap 0: Phi(0) = 0.5; gap 0.5, T 0.5: Phi(1) = (1 + erf(0.707107)) / 2 = (1 + 0.682689) / 2 = 0.841345
    np.testing.assert_allclose(thurstone_probability(np.array([0.0, 0.5]), 0.5), [0.5, 0.841345], atol=1e-6)
    assert thurstone_probability(np.array([0.3, 0.0, -0.3]), 0.0).tolist() == [1.0, 1.0, 0.0]
    # Phi(-10) = 7.62e-24: erfc keeps the lower tail, where 1 + erf(-10 / sqrt 2) rounds to exactly 0
    assert normal_cdf(np.array([-10.0]))[0] == pytest.approx(7.619853e-24, rel=1e-6)


def test_flip_probability_by_hand() -> None:
    # eps 0.2: truly better a -> 1 - 0.2 = 0.8 whatever the gap; truly worse -> 0.2; exact tie -> 0.5
    got = flip_probability(np.array([0.3, 5.0, -2.0, -0.01, 0.0]), 0.2)
    np.testing.assert_allclose(got, [0.8, 0.8, 0.2, 0.2, 0.5])
    assert flip_probability(np.array([0.3, -0.3, 0.0]), 0.0).tolist() == [1.0, 0.0, 0.5]  # eps 0: no flips


def test_annotator_probability_by_hand() -> None:
    # s 0.5, gap 1: Phi(1 / (sqrt 2 * 0.5)) = Phi(1.414214) = (1 + erf(1)) / 2 = (1 + 0.842701) / 2 = 0.921350
    # s 2.0, gap 1: Phi(1 / 2.828427) = Phi(0.353553) = (1 + erf(0.25)) / 2 = (1 + 0.276326) / 2 = 0.638163
    got = annotator_probability(np.array([1.0, 1.0, -1.0]), np.array([0.5, 2.0, 0.5]))
    np.testing.assert_allclose(got, [0.921350, 0.638163, 1 - 0.921350], atol=1e-6)
    # s = 0: the annotator sees the true reward, a step (a on the exact tie)
    assert annotator_probability(np.array([0.2, 0.0, -0.2]), 0.0).tolist() == [1.0, 1.0, 0.0]


def test_length_bias_probability_by_hand() -> None:
    # lambda 0.1, T 0.5, gap 0.2, n_a 10, n_b 4: perceived gap 0.2 + 0.1 * 6 = 0.8;
    # sigmoid(0.8 / 0.5) = sigmoid(1.6) = 1 / (1 + e^-1.6) = 1 / 1.201897 = 0.832018
    # gap -0.6, same lengths: -0.6 + 0.6 = 0 -> 0.5 (length exactly buys back the worse answer)
    got = length_bias_probability(np.array([0.2, -0.6]), np.array([10, 10]), np.array([4, 4]), 0.1, 0.5)
    np.testing.assert_allclose(got, [0.832018, 0.5], atol=1e-6)
    # lambda 0 is bt: sigmoid(0.2 / 0.5) = sigmoid(0.4) = 0.598688
    np.testing.assert_allclose(
        length_bias_probability(np.array([0.2]), [10], [4], 0.0, 0.5), [0.598688], atol=1e-6
    )
    # T 0: the step on the perceived gap: -0.5 + 0.1 * (10 - 4) = 0.1 >= 0 -> a
    assert length_bias_probability(np.array([-0.5]), [10], [4], 0.1, 0.0).tolist() == [1.0]


@given(
    gaps=st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=20),
    temperature=st.floats(0.01, 5.0),
    eps=st.floats(0.0, 0.5),
    lam=st.floats(-1.0, 1.0),
)
@settings(max_examples=100, deadline=None)
def test_every_model_is_a_symmetric_monotone_probability(
    gaps: list, temperature: float, eps: float, lam: float
) -> None:
    """Swapping a and b gives 1 - P(a), and a better a is never less likely to win (words 8 vs 5)."""
    gap = np.sort(np.array(gaps))  # [n], ascending
    n_a, n_b = np.full(len(gap), 8), np.full(len(gap), 5)
    models = {
        "bt": lambda g, swap: bt_probability(g, temperature),
        "thurstone": lambda g, swap: thurstone_probability(g, temperature),
        "flip": lambda g, swap: flip_probability(g, eps),
        "annotators": lambda g, swap: annotator_probability(g, temperature),
        "length_bias": lambda g, swap: length_bias_probability(g, *((n_b, n_a) if swap else (n_a, n_b)), lam, temperature),
    }  # fmt: skip
    for name, p in models.items():
        forward, backward = p(gap, False), p(-gap, True)
        assert np.all((forward >= 0) & (forward <= 1)), name
        np.testing.assert_allclose(forward + backward, 1.0, atol=1e-12, err_msg=name)
        assert np.all(np.diff(forward) >= -1e-12), name


def test_likert_confidence_and_word_counts_by_hand() -> None:
    # floor(4.5 + 2 x + 0.5): x 0.5 -> floor(6.0) = 6; 0.25 -> floor(5.5) = 5; -2 -> floor(0.5) = 0 -> 1;
    # 3 -> floor(11) = 11 -> 10; -0.3 -> floor(4.4) = 4
    assert likert(np.array([0.5, 0.25, -2.0, 3.0, -0.3])).tolist() == [6, 5, 1, 10, 4]
    # |d| thresholds 0.5, 1, 2 (inclusive); the sign of the perceived gap does not matter
    d = np.array([0.0, 0.49, 0.5, 0.99, 1.0, 1.99, 2.0, -2.5, -0.7])
    assert confidence_level(d).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 1]
    assert (
        CONFIDENCE_LEVELS[3] == "significantly better" and CONFIDENCE_LEVELS[0] == "negligibly better/unsure"
    )
    assert count_words("try a lentil curry, no bacon.") == 6  # the comma and the full stop are not words
    assert count_words("") == 0


# --- the draws -----------------------------------------------------------------------------------


def test_default_world_is_unchanged() -> None:
    """label_noise=bt draws exactly what the world drew before label_noise existed: the sha256 of
    every pair's record (less the new metadata key) as recorded at commit 0ab4b52."""
    world = make_world(WorldConfig())
    digest = hashlib.sha256()
    for split in ("train", "val", "test"):
        for pair in getattr(world, split):
            record = pair.to_record()
            assert record["metadata"].pop("label_noise") == "bt" and "margin" not in record
            digest.update(json.dumps(record).encode())
    assert digest.hexdigest() == "348898caa3739b0ab18b265de18e83365481ae4a81d1268a8424546682d9a360"


def test_every_model_keeps_every_text() -> None:
    worlds = [make_world(WorldConfig(n_train=300, n_val=10, n_test=10, label_noise=m)) for m in MODELS]

    def texts(world: World) -> list:
        return [
            (p.prompt, {p.chosen, p.rejected}, {p.gold_chosen, p.gold_rejected})
            for p in world.train + world.test
        ]

    assert all(texts(w) == texts(worlds[0]) for w in worlds[1:])
    assert all(p.metadata["label_noise"] == m for w, m in zip(worlds, MODELS) for p in w.train)
    chosen = [tuple(p.chosen for p in w.train) for w in worlds]
    assert len(set(chosen)) == len(MODELS)  # ... and each model labels them its own way


def test_thurstone_and_bt_agree_at_zero_temperature() -> None:
    """Both are the step at T = 0 and draw the same uniforms and rating noise: the same world."""
    bt, probit = (make_world(WorldConfig(n_train=300, n_val=0, n_test=0, noise=0.0, label_noise=m))
                  for m in ("bt", "thurstone"))  # fmt: skip
    assert bt.train == probit.train  # Pair equality: texts, scores, gold, ids (metadata not compared)
    assert all(p.gold_gap >= 0 for p in probit.train)


def _p_chosen(cfg: WorldConfig, pair: Pair) -> float:
    """P(chosen) under cfg's model at its defaults: P(a) of the module's formulas with a = chosen."""
    gap = np.array([pair.gold_gap])  # [1] chosen - rejected
    if cfg.label_noise == "bt":
        return _sigmoid(pair.gold_gap / 0.5)
    if cfg.label_noise == "thurstone":
        return float(normal_cdf(gap / 0.5)[0])
    if cfg.label_noise == "flip":
        return float(flip_probability(gap, 0.2)[0])
    if cfg.label_noise == "annotators":
        return float(annotator_probability(gap, cfg.annotator_noises[pair.metadata["annotator"]])[0])
    extra_words = count_words(pair.chosen) - count_words(pair.rejected)  # length_bias
    return _sigmoid((pair.gold_gap + 0.1 * extra_words) / 0.5)


@pytest.mark.parametrize("model", MODELS)
def test_p_chosen_is_the_models_probability_of_the_drawn_label(model: str) -> None:
    cfg = WorldConfig(n_train=400, n_val=0, n_test=0, label_noise=model)
    for pair in make_world(cfg).train:
        assert pair.metadata["p_chosen"] == pytest.approx(_p_chosen(cfg, pair), abs=1e-12), pair.id
        assert pair.metadata["flipped"] == (pair.gold_gap < 0)
        assert (pair.margin is not None) == (model == "annotators")


def test_flip_rate_is_gap_independent_and_matches_epsilon(world_of: Callable[[str], World]) -> None:
    pairs = world_of("label_noise=flip").train
    gaps = np.array([p.gold_gap for p in pairs])
    decided = gaps != 0
    flips = gaps[decided] < 0
    # Binomial(n, 0.2): std of the rate = sqrt(0.2 * 0.8 / n), about 0.0058 at n = 4753
    stderr = math.sqrt(0.2 * 0.8 / decided.sum())
    assert abs(flips.mean() - 0.2) < 4 * stderr
    for rate in flip_rates_by_gap_quartile(pairs)[:4]:  # each quartile, about 1190 pairs
        assert abs(rate - 0.2) < 4 * math.sqrt(0.2 * 0.8 / (decided.sum() / 4))
    ties = [p for p in pairs if p.gold_gap == 0]
    assert ties and all(p.metadata["p_chosen"] == 0.5 for p in ties)


def test_annotators_without_noise_read_the_true_reward() -> None:
    """One annotator with s = 0 perceives g exactly: true-order labels, ratings Likert(g), and a
    confidence from the true gap. Worked pairs of the default world (docs/world.md): pair 0 has
    gaps 0.90 - (-0.35) = 1.25 -> "better" (1 <= 1.25 < 2), ratings Likert(0.90) = floor(6.8) = 6,
    Likert(-0.35) = floor(4.3) = 4; pair 2: 0.60 - (-0.45) = 1.05 -> "better", ratings 6 and 4."""
    world = make_world(
        WorldConfig(n_train=500, n_val=0, n_test=0, label_noise="annotators", annotator_noises=(0.0,))
    )
    for pair in world.train:
        assert pair.gold_gap >= 0 and pair.metadata["p_chosen"] == 1.0 and pair.metadata["annotator"] == 0
        assert (pair.score_chosen, pair.score_rejected) == tuple(
            likert(np.array([pair.gold_chosen, pair.gold_rejected]))
        )
        assert pair.margin == float(confidence_level(np.array([pair.gold_gap]))[0])
        assert pair.metadata["confidence"] == CONFIDENCE_LEVELS[int(pair.margin)]
    first, third = world.train[0], world.train[2]
    assert (first.gold_chosen, first.gold_rejected) == pytest.approx((0.90, -0.35))
    assert (first.score_chosen, first.score_rejected, first.metadata["confidence"]) == (6, 4, "better")
    assert (third.gold_chosen, third.gold_rejected) == pytest.approx((0.60, -0.45))
    assert (third.score_chosen, third.score_rejected, third.metadata["confidence"]) == (6, 4, "better")


def test_annotator_draws_follow_the_perceived_rewards() -> None:
    """Replay the documented draw order (annotator indices [n], then eta [n, 2]) from the same seed:
    label, ratings and confidence all come from g_hat = g + s_k eta."""
    rng = np.random.default_rng(7)
    gold = rng.normal(0.5, 1.0, size=(2000, 2))  # [n, 2]
    cfg = WorldConfig(label_noise="annotators")
    labels = draw_labels(cfg, gold, [("x", "y")] * len(gold), np.random.default_rng(3))
    replay = np.random.default_rng(3)
    k = replay.integers(3, size=len(gold))  # [n]
    perceived = gold + np.array(cfg.annotator_noises)[k][:, None] * replay.standard_normal(
        gold.shape
    )  # [n, 2]
    d = perceived[:, 0] - perceived[:, 1]
    assert labels.annotator.tolist() == k.tolist()
    assert labels.a_wins.tolist() == (d >= 0).tolist()
    assert labels.ratings.tolist() == likert(perceived).tolist()
    level = np.where(np.abs(d) >= 2, 3, np.where(np.abs(d) >= 1, 2, np.where(np.abs(d) >= 0.5, 1, 0)))
    assert labels.confidence.tolist() == level.tolist()
    # Noisier annotators flip more: P(flip | k) = Phi(-|gap| / (sqrt 2 s_k)) grows with s_k
    true_gap = gold[:, 0] - gold[:, 1]
    flip_rate = [np.mean((d[k == j] >= 0) != (true_gap[k == j] >= 0)) for j in range(3)]
    assert flip_rate[0] < flip_rate[1] < flip_rate[2]


def test_length_bias_prefers_longer_answers_and_rates_them_up() -> None:
    """T = 0 and no rating noise make the model exact: the chosen response has the higher
    perceived reward g + lambda n, and each rating is Likert(g + lambda (n - 7))."""
    lam = 0.3
    cfg = WorldConfig(n_train=400, n_val=0, n_test=0, label_noise="length_bias", length_weight=lam, noise=0.0,
                      rating_noise=0.0)  # fmt: skip
    world = make_world(cfg)
    for pair in world.train:
        n_c, n_r = count_words(pair.chosen), count_words(pair.rejected)
        assert pair.gold_gap + lam * (n_c - n_r) >= -1e-12, pair.id
        expected = likert(
            np.array([pair.gold_chosen + lam * (n_c - 7), pair.gold_rejected + lam * (n_r - 7)])
        )
        assert (pair.score_chosen, pair.score_rejected) == tuple(expected)
    # Against the truth, that means flips towards length: some truly worse but longer answers win
    flipped = [p for p in world.train if p.gold_gap < 0]
    assert flipped and all(count_words(p.chosen) > count_words(p.rejected) for p in flipped)


def test_flip_rates_by_gap_quartile_by_hand() -> None:
    # |gaps| sorted: 0 (tie, left out), then 0.1 0.2 | 0.3 0.4 | 0.5 0.6 | 0.7 0.8 (8 decided pairs,
    # 2 a quartile); negative gaps (labels against the true order) at -0.1, -0.4, -0.6 and -0.7
    gaps = [0.0, -0.1, 0.2, 0.3, -0.4, 0.5, -0.6, -0.7, 0.8]
    pairs = [Pair("p", "c", "r", gold_chosen=g, gold_rejected=0.0) for g in gaps]
    # Q1 1/2, Q2 1/2, Q3 1/2, Q4 1/2, all 4/8
    assert flip_rates_by_gap_quartile(pairs) == (0.5, 0.5, 0.5, 0.5, 0.5)
    pairs[1] = Pair("p", "c", "r", gold_chosen=0.1, gold_rejected=0.0)  # Q1 no longer flipped: 0/2, all 3/8
    assert flip_rates_by_gap_quartile(pairs) == (0.0, 0.5, 0.5, 0.5, 0.375)


# --- config --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"label_noise": "logit"}, r"WorldConfig.label_noise: 'logit' \(need one of"),
        ({"label_noise": "flip", "flip_rate": 0.6}, r"WorldConfig.flip_rate: 0.6 \(need a number in \[0, 0.5\]\)"),
        ({"label_noise": "flip", "flip_rate": -0.1}, r"WorldConfig.flip_rate: -0.1 \(need"),
        ({"label_noise": "annotators", "annotator_noises": ()}, r"WorldConfig.annotator_noises: \(\) \(need a non-empty"),
        ({"label_noise": "annotators", "annotator_noises": (0.5, -1.0)}, r"WorldConfig.annotator_noises: \(0.5, -1.0\)"),
        ({"label_noise": "length_bias", "length_weight": math.nan}, "WorldConfig.length_weight: nan"),
        # a parameter the chosen model does not read is rejected, not ignored
        ({"flip_rate": 0.3}, r"WorldConfig.flip_rate: 0.3 is not read by label_noise='bt' \(only by \['flip'\]\)"),
        ({"label_noise": "flip", "noise": 1.0}, "WorldConfig.noise: 1.0 is not read by label_noise='flip'"),
        ({"label_noise": "annotators", "rating_noise": 0.2}, "WorldConfig.rating_noise: 0.2 is not read by"),
        ({"label_noise": "thurstone", "length_weight": 0.5}, "WorldConfig.length_weight: 0.5 is not read by"),
        ({"annotator_noises": (1.0,)}, r"WorldConfig.annotator_noises: \(1.0,\) is not read by label_noise='bt'"),
    ],
)  # fmt: skip
def test_config_rejects_bad_label_noise_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WorldConfig(**kwargs)


def test_config_parses_from_overrides_and_round_trips_through_world_json(tmp_path: Path) -> None:
    cfg = load_config(
        WorldConfig, None, ["label_noise=annotators", "annotator_noises=[0.2, 1]", "n_train=20"]
    )
    assert cfg.annotator_noises == (0.2, 1.0)
    make_world(cfg).save(tmp_path)
    saved = json.loads((tmp_path / "world.json").read_text())
    assert saved["label_noise"] == "annotators" and saved["annotator_noises"] == [0.2, 1.0]
    # annotator_noises comes back a list and is made a tuple again
    assert WorldConfig(**{**saved, "split_fractions": tuple(saved["split_fractions"])}) == cfg


# --- docs ----------------------------------------------------------------------------------------


def test_docs_flip_rate_table_is_measured(world_of: Callable[[str], World]) -> None:
    """docs/world.md's flip-rate table: each row's config rebuilt (seed 0, 5000 train pairs) and
    `flip_rates_by_gap_quartile` printed as the doc prints it."""
    rows = re.findall(r"^\| `(label_noise=[^`]*)` \|(.*)\|$", DOCS.read_text(), flags=re.MULTILINE)
    assert {r[0].split()[0] for r in rows} == {f"label_noise={m}" for m in MODELS}
    assert "label_noise=bt noise=1.0" in [r[0] for r in rows]
    for overrides, cells in rows:
        measured = [f"{100 * rate:.1f}%" for rate in flip_rates_by_gap_quartile(world_of(overrides).train)]
        assert [c.strip() for c in cells.split("|")] == measured, overrides
    ties = np.mean([p.gold_gap == 0 for p in world_of("label_noise=bt").train])
    assert f"the {100 * ties:.1f}% of pairs that tie exactly" in DOCS.read_text()
