"""evaluate/offline_bon.py: the offline Best-of-N on a judged pool picks, scores and compares exactly as
worked out by hand; pool loading and graded pairs go through the alpaca_eval converter; real AlpacaEval."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest

from conftest import shared_data_dir
from marginkit.data.ledger import Ledger
from marginkit.data.schema import DataError, Pair
from marginkit.data.splits import SplitConfig, normalise_prompt
from marginkit.evaluate.offline_bon import (
    JudgedPool,
    alpaca_eval_files,
    candidate_orders,
    format_offline_bon,
    in_order,
    length_controlled,
    length_slope,
    load_alpaca_pool,
    offline_best_of_n,
    pool_pairs,
    score_pool,
    split_pool,
)

# ---- the hand-made pool ------------------------------------------------------------------------------
# 2 instructions x 3 responses (columns 0, 1, 2).
GOLD = np.array([[0.5, 0.9, 0.1],
                 [0.5, 0.2, 0.8]])
# x = log(1 + chars) chosen as round numbers: row 0 x = [1, 2, 3], row 1 x = [2, 1, 3]
X = np.array([[1.0, 2.0, 3.0],
              [2.0, 1.0, 3.0]])
LENGTHS = np.expm1(X)
ORDER = np.array([[2, 0, 1],   # instruction 0 shows column 2 first, then 0, then 1
                  [1, 2, 0]])
REWARDS = {"b": np.array([[1.0, 0.0, 2.0], [0.0, 2.0, 1.0]]),  # the baseline (first entry)
           "a": np.array([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])}
# In order (value at ORDER[i, j]):
#   gold: row 0 [0.1, 0.5, 0.9], row 1 [0.2, 0.8, 0.5]
#   a:    row 0 [1, 0, 3],       row 1 [0, 1, 2]
#   b:    row 0 [2, 1, 0],       row 1 [2, 1, 0]
#   x:    row 0 [3, 1, 2],       row 1 [1, 3, 2]


@pytest.fixture(scope="module")
def result():
    return offline_best_of_n(REWARDS, GOLD, LENGTHS, order=ORDER, n_boot=200, seed=0)


def test_in_order():
    assert in_order(GOLD, ORDER).tolist() == [[0.1, 0.5, 0.9], [0.2, 0.8, 0.5]]


def test_picks_and_gold_by_hand(result):
    judge = {name: [m.mean for m in d["judge"]] for name, d in result.raw.per_rm.items()}
    # N=1: everyone takes position 0: gold (0.1 + 0.2) / 2 = 0.15
    # N=2: a takes row 0 pos 0 (1 > 0) -> 0.1, row 1 pos 1 (1 > 0) -> 0.8: mean 0.45;
    #      b takes pos 0 twice (2 > 1) -> 0.1, 0.2: mean 0.15
    # N=3: a takes pos 2 twice (3, 2) -> 0.9, 0.5: mean 0.7; b still pos 0 -> 0.15
    # longest (x in order): N=2 row 0 pos 0 (3 > 1) 0.1, row 1 pos 1 (3 > 1) 0.8 -> 0.45; N=3 the same
    np.testing.assert_allclose(judge["a"], [0.15, 0.45, 0.7])
    np.testing.assert_allclose(judge["b"], [0.15, 0.15, 0.15])
    np.testing.assert_allclose(judge["longest"], [0.15, 0.45, 0.45])
    # the judge's own best of the first N: N=1 0.15, N=2 (0.5 + 0.8)/2 = 0.65, N=3 (0.9 + 0.8)/2 = 0.85
    np.testing.assert_allclose(result.raw.reference["judge_best"], [0.15, 0.65, 0.85])


def test_win_rates_by_hand(result):
    wins = result.raw.win_rates["a"]
    # N=1: same pick twice -> ties -> 1/2, interval [1/2, 1/2]
    # N=2: row 0 both pick pos 0 (tie, 1/2), row 1 0.8 > 0.2 (1): (0.5 + 1) / 2 = 0.75
    # N=3: 0.9 > 0.1 and 0.5 > 0.2: 1.0
    assert [w.value for w in wins] == [0.5, 0.75, 1.0]
    assert (wins[0].low, wins[0].high) == (0.5, 0.5) and (wins[0].ties, wins[0].wins) == (2, 0)
    assert (wins[1].wins, wins[1].ties, wins[1].losses) == (1, 1, 0)
    # intervals: percentile bootstrap (200 resamples, seed 0) of the per-instruction outcomes, drawn one resample
    # at a time: N=2 outcomes (1/2, 1); N=3 outcomes (1, 1), every resample 1
    rng = np.random.default_rng(0)
    means = [np.array([0.5, 1.0])[rng.integers(0, 2, size=2)].mean() for _ in range(200)]
    assert (wins[1].low, wins[1].high) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    assert (wins[2].low, wins[2].high) == (1.0, 1.0)
    assert "b" not in result.raw.win_rates and result.baseline == "b"


def test_agreement_with_longest_by_hand(result):
    # longest of the first N (in order): N=1 pos 0, pos 0; N=2 pos 0 (3 > 1), pos 1 (3 > 1); N=3 the same
    # a's picks: N=2 (0, 1) -> agrees twice; N=3 (2, 2) -> never.  b's picks: always (0, 0) -> row 0 only at N >= 2
    assert result.agree_longest["a"] == [1.0, 1.0, 0.0]
    assert result.agree_longest["b"] == [1.0, 0.5, 0.5]
    assert result.agree_longest["longest"] == [1.0, 1.0, 1.0]
    # mean characters of a's picks at N=3: both picks have x = 2 -> e^2 - 1
    assert result.pick_chars["a"][2] == pytest.approx(math.expm1(2.0))


def test_length_controlled_by_hand(result):
    # within-instruction slope: row 0 dx = [-1, 0, 1], dg = [0, 0.4, -0.4]; row 1 dx = [0, -1, 1], dg = [0, -0.3, 0.3]
    # b = (0.4*0 - 0.4 + 0.3 + 0.3) / (2 + 2) = 0.2 / 4 = 0.05
    assert length_slope(GOLD, LENGTHS) == pytest.approx(0.05)
    assert result.slope == pytest.approx(0.05)
    # g_lc = g - 0.05 dx: row 0 [0.55, 0.9, 0.05], row 1 [0.5, 0.25, 0.75]
    np.testing.assert_allclose(length_controlled(GOLD, LENGTHS, 0.05), [[0.55, 0.9, 0.05], [0.5, 0.25, 0.75]])
    # the same picks, judged by g_lc (in order: row 0 [0.05, 0.55, 0.9], row 1 [0.25, 0.75, 0.5]):
    # a: N=1 (0.05 + 0.25)/2 = 0.15, N=2 (0.05 + 0.75)/2 = 0.4, N=3 (0.9 + 0.5)/2 = 0.7; b: 0.15 throughout
    np.testing.assert_allclose([m.mean for m in result.lc.per_rm["a"]["judge"]], [0.15, 0.4, 0.7])
    np.testing.assert_allclose([m.mean for m in result.lc.per_rm["b"]["judge"]], [0.15, 0.15, 0.15])
    # longest at N=3: picks (pos 0, pos 1) -> (0.05 + 0.75)/2 = 0.4 (raw 0.45: the length bonus is removed)
    assert result.lc.per_rm["longest"]["judge"][2].mean == pytest.approx(0.4)
    assert [w.value for w in result.lc.win_rates["a"]] == [0.5, 0.75, 1.0]


def test_reward_ties_go_to_the_earliest_in_order():
    rewards = {"flat": np.zeros((2, 3))}
    res = offline_best_of_n(rewards, GOLD, LENGTHS, order=ORDER, n_boot=10, with_longest=False)
    # all scores equal: the first candidate in order is picked for every N -> 0.15
    np.testing.assert_allclose([m.mean for m in res.raw.per_rm["flat"]["judge"]], [0.15, 0.15, 0.15])


def test_candidate_orders_are_seeded_permutations():
    a, b = candidate_orders(50, 9, seed=1), candidate_orders(50, 9, seed=1)
    assert (a == b).all() and (np.sort(a, axis=1) == np.arange(9)).all()
    assert (candidate_orders(50, 9, seed=2) != a).any()
    # the default order is candidate_orders(I, K, seed)
    res = offline_best_of_n(REWARDS, GOLD, LENGTHS, seed=5, n_boot=10)
    explicit = offline_best_of_n(REWARDS, GOLD, LENGTHS, seed=5, order=candidate_orders(2, 3, 5), n_boot=10)
    assert res.to_dict() == explicit.to_dict()


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="permutation"):
        offline_best_of_n(REWARDS, GOLD, LENGTHS, order=np.array([[0, 0, 1], [0, 1, 2]]))
    with pytest.raises(ValueError, match="same"):
        offline_best_of_n(REWARDS, GOLD, LENGTHS[:, :2])
    with pytest.raises(ValueError, match="longest"):
        offline_best_of_n({"longest": GOLD}, GOLD, LENGTHS)


def test_table_mentions_every_rm(result):
    table = format_offline_bon(result)
    assert "| a | 3 | 0.700" in table and "| longest | 2 |" in table and "slope b = 0.0500" in table


# ---- pools and graded pairs --------------------------------------------------------------------------


def _annotations(model: str, rows: list[tuple[str, str, str, float]]) -> list[dict]:
    return [{"instruction": inst, "output_1": ref, "generator_1": "ref", "output_2": out, "generator_2": model,
             "preference": 1.0 + p, "dataset": "test"} for inst, ref, out, p in rows]


def _write(tmp_path, model: str, rows) -> str:
    path = tmp_path / model / "annotations.json.gz"
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt") as f:
        json.dump(_annotations(model, rows), f)
    return path


def test_load_pool_and_graded_pairs_by_hand(tmp_path):
    f1 = _write(tmp_path, "m1", [("Say hi.", "Hello.", "Hi!", 0.8), ("Count.", "1 2 3", "one", 0.2)])
    f2 = _write(tmp_path, "m2", [("Say hi.", "Hello.", "Yo", 0.2), ("Count.", "1 2 3", "1, 2, 3, 4", 0.9)])
    ledger = Ledger()
    pool = load_alpaca_pool([f1, f2], ledger)
    assert pool.instructions == ["Say hi.", "Count."] and pool.k == 3 and pool.reference == 0
    assert pool.responses[0] == ["Hello.", "Hi!", "Yo"] and pool.generators[1] == ["ref", "m1", "m2"]
    np.testing.assert_allclose(pool.gold, [[0.5, 0.8, 0.2], [0.5, 0.2, 0.9]])
    assert (ledger.rows_read, ledger.merged) == (4, 2)
    # instruction "Say hi.": logit scores 0 (ref), ln 4 (Hi!), -ln 4 (Yo); all pairs, best first:
    # (Hi!, Hello.) gap ln 4, (Hi!, Yo) gap 2 ln 4, (Hello., Yo) gap ln 4
    pairs, _ = pool_pairs(pool.subset([0]))
    got = sorted((p.chosen, p.rejected, round(p.score_gap, 6)) for p in pairs)
    ln4 = round(math.log(4), 6)
    assert got == sorted([("Hi!", "Hello.", ln4), ("Hi!", "Yo", round(2 * math.log(4), 6)), ("Hello.", "Yo", ln4)])
    # without the reference: only (Hi!, Yo); on the probability scale its gap is 0.8 - 0.2
    pairs, _ = pool_pairs(pool.subset([0]), score="probability", include_reference=False)
    assert [(p.chosen, p.rejected) for p in pairs] == [("Hi!", "Yo")] and pairs[0].score_gap == pytest.approx(0.6)


def test_pool_rejects_a_generator_with_two_outputs(tmp_path):
    f1 = _write(tmp_path, "m1", [("Say hi.", "Hello.", "Hi!", 0.8)])
    f2 = _write(tmp_path, "m1b", [("Say hi.", "Hello.", "Other", 0.8)])
    rows = json.loads(gzip.open(f2, "rt").read())
    rows[0]["generator_2"] = "m1"
    with gzip.open(f2, "wt") as f:
        json.dump(rows, f)
    with pytest.raises(DataError, match="two different outputs"):
        load_alpaca_pool([f1, f2])


def test_split_pool_by_instruction():
    pool = JudgedPool([f"instruction {i}" for i in range(20)], [["a", "b"]] * 20, [["r", "m"]] * 20,
                      np.full((20, 2), 0.5))
    parts, report = split_pool(pool, SplitConfig(fractions=(0.5, 0.5), names=("train", "test"), seed=0))
    # unit "groups": 20 singleton instructions -> exactly 10 and 10
    assert report.items == {"train": 10, "test": 10}
    assert not set(parts["train"].instructions) & set(parts["test"].instructions)


def test_score_pool_matches_pair_scoring(tmp_path, tiny_model_dir):
    """Each response scored alone gives the rewards eval-rm's pair scorer gives the same two responses."""
    from marginkit.data.tokenize import TokenizeConfig
    from marginkit.evaluate.rm_eval import evaluate_pairs
    from marginkit.models.reward import ModelConfig, load_reward_model, save_reward_model

    model, tok = load_reward_model(ModelConfig(name_or_path=str(tiny_model_dir), head_init="normal"))
    rm_dir = tmp_path / "rm"
    save_reward_model(model, tok, rm_dir, {"tokenize": {"max_length": 64}, "padding_side": "right"})
    pool = JudgedPool(["please help me", "the question is about cats"],
                      [["yes good answer", "no", "maybe fine"], ["cats cats", "dogs", "fish food water"]],
                      [["r", "m1", "m2"]] * 2, np.array([[0.5, 0.1, 0.9], [0.5, 0.7, 0.3]]))
    scores = score_pool(rm_dir, pool, cache_dir=tmp_path / "cache")
    assert scores.shape == (2, 3)
    pairs = [Pair(pool.instructions[i], pool.responses[i][0], pool.responses[i][k]) for i in range(2) for k in (1, 2)]
    report = evaluate_pairs(model, tok, pairs, TokenizeConfig(max_length=64), "right", False)
    expected = np.array([scores[i, 0] - scores[i, k] for i in range(2) for k in (1, 2)])
    np.testing.assert_allclose(report.gaps, expected, rtol=1e-5, atol=1e-6)
    assert (score_pool(rm_dir, pool, cache_dir=tmp_path / "cache") == scores).all()  # the cached copy


# ---- real AlpacaEval ---------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_real_alpaca_pool():
    try:
        files = alpaca_eval_files(shared_data_dir())
    except DataError as err:
        pytest.skip(f"AlpacaEval files absent: {err}")
    if len(files) != 8:
        pytest.skip(f"expected 8 AlpacaEval annotation files, found {len(files)}")
    pool = load_alpaca_pool(files)
    # PROVENANCE.md: 805 instructions x 9 responses (reference + 8 models), the reference at p = 1/2
    assert (len(pool), pool.k) == (805, 9) and (pool.gold[:, 0] == 0.5).all()
    assert all(g[0] == "gpt4_1106_preview" for g in pool.generators) and pool.empty_responses == 2
    pairs, ledger = pool_pairs(pool, include_reference=False)
    # the same 22,540 cross-model candidates as load_pairs(files, include_reference=False) (test_shared_data.py)
    assert len(pairs) + ledger.n_dropped == 22540 and ledger.dropped['tie (dropped by ties="drop")'] == 104
    parts, report = split_pool(pool, SplitConfig(seed=0))
    # one unit per instruction: midpoints (j + 1/2)/805 < 0.8 for j <= 643, < 0.9 for j <= 723
    assert report.items == {"train": 644, "validation": 80, "test": 81}
    seen = [set(map(normalise_prompt, p.instructions)) for p in parts.values()]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    # length alone: at N = 9 the longest response wins clearly over a random pick, and not after length control
    res = offline_best_of_n({"random": np.random.default_rng(0).normal(size=pool.gold.shape)}, pool.gold,
                            pool.lengths(), seed=0, n_boot=100)
    assert res.raw.win_rates["longest"][-1].value > 0.65
    assert abs(res.lc.win_rates["longest"][-1].value - 0.5) < 0.05
