"""Best-of-N maths (evaluate/bon.py): picks, judged picks, win rates with ties, bootstrap intervals, KL.

The hand-made case: 3 prompts x 4 samples, two RMs A and B, one judge J.

            sample:   0    1    2    3
    A  p0          0.1  0.5  0.3  0.9
       p1          2.0  1.0  3.0  0.0
       p2          0.0  0.0  1.0  1.0     (ties: the lowest index wins)
    B  p0          0.4  0.2  0.8  0.1
       p1          0.0  5.0  1.0  2.0
       p2          3.0  1.0  0.0  2.0
    J  p0          1    2    3    4
       p1          2    1    1    4       (samples 1 and 2 tie under the judge)
       p2          5    0    5    3
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from marginkit.configlib import ConfigError
from marginkit.evaluate.bon import (
    best_of_n_picks,
    best_of_n_sweep,
    bon_kl,
    mean_with_ci,
    over_optimisation,
    picked,
    win_outcomes,
    win_rate,
    win_rate_with_ci,
)
from marginkit.evaluate.bon_run import parse_ns

A = np.array([[0.1, 0.5, 0.3, 0.9], [2.0, 1.0, 3.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
B = np.array([[0.4, 0.2, 0.8, 0.1], [0.0, 5.0, 1.0, 2.0], [3.0, 1.0, 0.0, 2.0]])
J = np.array([[1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 1.0, 4.0], [5.0, 0.0, 5.0, 3.0]])


def test_picks_by_hand():
    # N=1: only sample 0 exists.
    assert best_of_n_picks(A, 1).tolist() == [0, 0, 0]
    # N=2: A p0 max(0.1, 0.5) -> 1; p1 max(2, 1) -> 0; p2 tie 0 = 0 -> lowest index 0.
    assert best_of_n_picks(A, 2).tolist() == [1, 0, 0]
    assert best_of_n_picks(B, 2).tolist() == [0, 1, 0]
    # N=3: A p0 (0.1, 0.5, 0.3) -> 1; p1 (2, 1, 3) -> 2; p2 (0, 0, 1) -> 2.
    assert best_of_n_picks(A, 3).tolist() == [1, 2, 2]
    assert best_of_n_picks(B, 3).tolist() == [2, 1, 0]
    # N=4: A p2 (0, 0, 1, 1): tie between 2 and 3 -> 2.
    assert best_of_n_picks(A, 4).tolist() == [3, 2, 2]
    assert best_of_n_picks(B, 4).tolist() == [2, 1, 0]


def test_judged_picks_and_win_rates_by_hand():
    # N=2: J of A's picks = [J[0,1], J[1,0], J[2,0]] = [2, 2, 5]; of B's = [J[0,0], J[1,1], J[2,0]] = [1, 1, 5].
    ja, jb = picked(J, best_of_n_picks(A, 2)), picked(J, best_of_n_picks(B, 2))
    assert ja.tolist() == [2.0, 2.0, 5.0] and jb.tolist() == [1.0, 1.0, 5.0]
    # Outcomes: 2 > 1 win, 2 > 1 win, 5 = 5 tie (same sample) -> [1, 1, 0.5]; win rate 2.5 / 3.
    assert win_outcomes(ja, jb).tolist() == [1.0, 1.0, 0.5]
    assert win_rate(win_outcomes(ja, jb)) == pytest.approx(2.5 / 3)
    # N=3: A's picks judged [2, 1, 5], B's [3, 1, 5]: p1 and p2 are *different* samples with equal
    # judge rewards, so ties too -> [0, 0.5, 0.5], win rate 1/3.
    ja, jb = picked(J, best_of_n_picks(A, 3)), picked(J, best_of_n_picks(B, 3))
    assert win_outcomes(ja, jb).tolist() == [0.0, 0.5, 0.5]
    # N=4: A [4, 1, 5], B [3, 1, 5] -> [1, 0.5, 0.5], win rate 2/3.
    ja, jb = picked(J, best_of_n_picks(A, 4)), picked(J, best_of_n_picks(B, 4))
    w = win_rate_with_ci(ja, jb, n_boot=100, seed=0, rm="A", baseline="B", n=4)
    assert (w.value, w.wins, w.ties, w.losses) == (pytest.approx(2 / 3), 1, 2, 0)


def test_sweep_by_hand():
    res = best_of_n_sweep({"B": B, "A": A}, J, [4, 1, 2, 3], n_boot=200, seed=0)  # first RM = baseline
    assert res.ns == [1, 2, 3, 4] and res.baseline == "B"
    assert [w.value for w in res.win_rates["A"]] == pytest.approx([0.5, 2.5 / 3, 1 / 3, 2 / 3])
    # Mean judge reward of the picks: A (1+2+5)/3, (2+2+5)/3, (2+1+5)/3, (4+1+5)/3; B (8, 7, 9, 9)/3.
    assert [m.mean for m in res.per_rm["A"]["judge"]] == pytest.approx([8 / 3, 3.0, 8 / 3, 10 / 3])
    assert [m.mean for m in res.per_rm["B"]["judge"]] == pytest.approx([8 / 3, 7 / 3, 3.0, 3.0])
    # Proxy: A's own score of its pick, N=1 [0.1, 2, 0] -> 0.7; N=4 [0.9, 3, 1] -> 4.9/3.
    assert res.per_rm["A"]["proxy"][0] == pytest.approx(0.7) and res.per_rm["A"]["proxy"][3] == pytest.approx(4.9 / 3)
    # The judge's own best of the first N: N=1 (1+2+5)/3; N=2 (2+2+5)/3; N=3 (3+2+5)/3; N=4 (4+4+5)/3.
    assert res.reference["judge_best"] == pytest.approx([8 / 3, 3.0, 10 / 3, 13 / 3])
    # Unguided pick = mean judge of the first N samples: N=2 (1+2+2+1+5+0)/6.
    assert res.reference["unguided"][1] == pytest.approx(11 / 6)
    # Over-optimisation: A still rising at N=4; B first reaches its maximum 3 at N=3 and stays there.
    oa, ob = res.over_optimisation["A"], res.over_optimisation["B"]
    assert (oa.peak_n, oa.rising_at_end, oa.proxy_gain) == (4, True, pytest.approx(4.9 / 3 - 0.7))
    assert (ob.peak_n, ob.rising_at_end, ob.drop, ob.peak_judge) == (3, False, 0.0, 3.0)
    # Paired judge difference A - B per N: N=2 [2-1, 2-1, 5-5] -> 2/3; N=3 [2-3, 0, 0] -> -1/3.
    assert [m.mean for m in res.judge_diff["A"]] == pytest.approx([0.0, 2 / 3, -1 / 3, 1 / 3])
    assert res.kl == pytest.approx([0.0, math.log(2) - 0.5, math.log(3) - 2 / 3, math.log(4) - 0.75])
    d = res.to_dict()
    assert d["win_rates"]["A"][1]["wins"] == 2 and d["per_rm"]["B"]["judge"][0]["mean"] == pytest.approx(8 / 3)


def test_bootstrap_interval_worked_out():
    # N=2 outcomes [1, 1, 0.5]. A resample of 3 prompts has mean 0.5 only if all three draws are
    # prompt 2 (probability 1/27 = 3.7% > 2.5%), and mean 1 when no draw is prompt 2 (8/27 = 29.6% >
    # 2.5%). With 4000 resamples the 2.5% and 97.5% quantiles are therefore 0.5 and 1.0.
    out = np.array([1.0, 1.0, 0.5])
    w = win_rate_with_ci([2.0, 2.0, 5.0], [1.0, 1.0, 5.0], n_boot=4000, seed=7)
    assert (w.low, w.high) == (0.5, 1.0)
    # The same numbers from a direct loop: resample prompts with default_rng(seed), take quantiles
    # (equal up to rounding: the library's 1 - 0.95 is 0.05 plus 4e-17).
    for seed, n_boot in ((0, 50), (3, 999)):
        rng = np.random.default_rng(seed)
        reps = [out[rng.integers(0, 3, size=3)].mean() for _ in range(n_boot)]
        lo, hi = np.quantile(reps, [0.025, 0.975])
        w = win_rate_with_ci([2.0, 2.0, 5.0], [1.0, 1.0, 5.0], n_boot=n_boot, seed=seed)
        assert (w.low, w.high) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    # The judge-mean interval resamples prompts the same way.
    vals = np.array([2.0, 2.0, 5.0, 3.0])
    rng = np.random.default_rng(5)
    reps = [vals[rng.integers(0, 4, size=4)].mean() for _ in range(300)]
    m = mean_with_ci(vals, n_boot=300, seed=5)
    assert m.mean == 3.0 and [m.low, m.high] == pytest.approx(np.quantile(reps, [0.025, 0.975]), abs=1e-12)


def test_kl_values():
    # log N - (N - 1)/N: 0 at N=1; log 2 - 1/2 = 0.19315 at N=2; log 64 - 63/64 = 3.17452 at N=64.
    assert bon_kl(1) == 0.0
    assert bon_kl(2) == pytest.approx(0.1931471806)
    assert bon_kl(64) == pytest.approx(6 * math.log(2) - 63 / 64)
    with pytest.raises(ValueError, match="N=0"):
        bon_kl(0)


scores_pk = arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 8)),
                   elements=st.integers(-3, 3).map(float))  # small integers: many ties


@settings(max_examples=60, deadline=None)
@given(scores_pk, st.data())
def test_pick_is_best_of_first_k(scores, data):
    k = data.draw(st.integers(1, scores.shape[1]))
    readable = [max(range(k), key=lambda i, row=row: (row[i], -i)) for row in scores]  # max, then lowest index
    assert best_of_n_picks(scores, k).tolist() == readable
    assert (picked(scores, best_of_n_picks(scores, k)) >= scores[:, :1].ravel()).all()


@settings(max_examples=60, deadline=None)
@given(scores_pk, st.data())
def test_n1_is_exactly_half_between_any_two_rms(a, data):
    b = data.draw(arrays(np.float64, a.shape, elements=st.floats(-5, 5)))
    judge = data.draw(arrays(np.float64, a.shape, elements=st.floats(-5, 5)))
    res = best_of_n_sweep({"a": a, "b": b}, judge, [1], n_boot=50)
    w = res.win_rates["b"][0]
    assert (w.value, w.low, w.high, w.ties) == (0.5, 0.5, 0.5, a.shape[0])


@settings(max_examples=40, deadline=None)
@given(scores_pk, st.data())
def test_curve_properties(a, data):
    judge = data.draw(arrays(np.float64, a.shape, elements=st.floats(-5, 5)))
    ns = list(range(1, a.shape[1] + 1))
    res = best_of_n_sweep({"a": a}, judge, ns, n_boot=20)
    proxy = res.per_rm["a"]["proxy"]
    assert all(x <= y + 1e-12 for x, y in zip(proxy, proxy[1:]))  # max over more samples never falls
    assert all(m.mean <= o + 1e-9 for m, o in zip(res.per_rm["a"]["judge"], res.reference["judge_best"]))


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"N=5: need an integer 1 <= N <= 4"):
        best_of_n_picks(A, 5)
    with pytest.raises(ValueError, match="same samples needed"):
        best_of_n_sweep({"a": A}, J[:, :3], [1])
    with pytest.raises(ValueError, match="non-finite value nan at prompt 1, sample 2"):
        best_of_n_picks(np.where(np.arange(12).reshape(3, 4) == 6, np.nan, A), 2)
    with pytest.raises(ValueError, match="baseline 'c'"):
        best_of_n_sweep({"a": A}, J, [1], baseline="c")
    with pytest.raises(ValueError, match="strictly increasing"):
        over_optimisation("a", [2, 1], [0.0, 1.0], [0.0, 1.0])


def test_parse_ns():
    assert parse_ns("1,2,4,...,64") == [1, 2, 4, 8, 16, 32, 64]
    assert parse_ns("1,3,...,27") == [1, 3, 9, 27]
    assert parse_ns("8, 1,2") == [1, 2, 8]
    for bad in ("1,2,4,...,50", "0,1", "a,b", "1,...,8", ""):
        with pytest.raises(ConfigError, match="--n"):
            parse_ns(bad)
