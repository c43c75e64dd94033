"""Tests for marginkit.evaluate.metrics: hand-derived values on small inputs, plus properties."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.testing import assert_allclose

from marginkit.evaluate.metrics import (
    BucketedAccuracy,
    accuracy_by_bucket,
    accuracy_with_ci,
    bootstrap_ci,
    calibration,
    gap_distribution,
    gold_agreement,
    length_baseline,
    pairwise_accuracy,
    pearson,
    sigmoid,
    skewness,
    spearman,
    swap_test,
    worst_pairs,
)

LN3 = math.log(3.0)  # σ(ln 3) = 1 / (1 + 1/3) = 3/4, σ(-ln 3) = 1/4

finite = st.floats(min_value=-30.0, max_value=30.0, allow_nan=False, allow_infinity=False)


def gap_arrays(min_size: int = 1, max_size: int = 40):
    return arrays(np.float64, st.integers(min_size, max_size), elements=finite)


# --- accuracy ---------------------------------------------------------------------------------


def test_pairwise_accuracy_counts_a_tie_as_half() -> None:
    # Δ = [1, -2, 0, 3]: wins 1, 0, ½, 1 -> 2.5 / 4 = 0.625.
    assert pairwise_accuracy([1.0, -2.0, 0.0, 3.0]) == 0.625
    # All ties -> ½.
    assert pairwise_accuracy([0.0, 0.0]) == 0.5


@settings(deadline=None)
@given(gap_arrays())
def test_accuracy_of_negated_gap_is_complement(gap: np.ndarray) -> None:
    assert_allclose(pairwise_accuracy(gap) + pairwise_accuracy(-gap), 1.0)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.zeros((3, 1)), r"\(3, 1\)"),
        (np.zeros(0), "empty"),
        (np.array([0.0, np.nan]), "non-finite"),
        (np.array([np.inf]), "non-finite"),
    ],
)
def test_pairwise_accuracy_rejects_bad_input(bad: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pairwise_accuracy(bad)


# --- bootstrap --------------------------------------------------------------------------------


def test_bootstrap_is_deterministic_by_seed() -> None:
    values = np.arange(20.0)
    assert bootstrap_ci(values, n_boot=200, seed=3) == bootstrap_ci(values, n_boot=200, seed=3)
    assert bootstrap_ci(values, n_boot=200, seed=3) != bootstrap_ci(values, n_boot=200, seed=4)


def test_bootstrap_interval_has_the_binomial_width() -> None:
    # 100 pairs, half right: the mean's standard error is sqrt(.5 * .5 / 100) = 0.05, so the 95 %
    # interval is about 0.5 ± 1.96 * 0.05 = [0.40, 0.60]; the bootstrap must land near it.
    scores = np.tile([0.0, 1.0], 50)
    low, high = bootstrap_ci(scores, n_boot=1000, level=0.95, seed=0)
    assert 0.37 < low < 0.43 and 0.57 < high < 0.63
    # A narrower level gives a narrower interval inside it.
    low50, high50 = bootstrap_ci(scores, n_boot=1000, level=0.5, seed=0)
    assert low < low50 < 0.5 < high50 < high


def test_bootstrap_constant_values_and_custom_statistic() -> None:
    assert bootstrap_ci(np.full(7, 2.5), n_boot=50) == (2.5, 2.5)
    # The median of any resample of {0, 10, 10, 10, ...} with 9 of 10 values = 10 is almost surely 10.
    values = np.array([0.0] + [10.0] * 9)
    assert bootstrap_ci(values, statistic=np.median, n_boot=200) == (10.0, 10.0)


def test_accuracy_with_ci_contains_the_point_estimate() -> None:
    gap = np.array([1.0, -1.0, 2.0, 0.0, 3.0, 0.5, -0.2, 4.0, 1.0, 2.0])
    # Scores 1, 0, 1, ½, 1, 1, 0, 1, 1, 1 -> 7.5 / 10.
    est = accuracy_with_ci(gap, n_boot=500, seed=1)
    assert est.value == 0.75 and est.n == 10 and est.level == 0.95
    assert est.low <= est.value <= est.high
    assert est.low < est.high
    assert json.loads(json.dumps(est.to_dict()))["value"] == 0.75


def test_bootstrap_rejects_bad_level() -> None:
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0, 2.0], level=1.0)


# --- buckets ----------------------------------------------------------------------------------


def test_bucket_split_of_eight_pairs() -> None:
    # key = 1..8, 4 buckets: linear quantiles at positions 0, 1.75, 3.5, 5.25, 7 of the sorted keys
    # -> edges 1, 2.75, 4.5, 6.25, 8, so buckets {1,2}, {3,4}, {5,6}, {7,8}.
    key = np.array([8.0, 1.0, 7.0, 2.0, 6.0, 3.0, 5.0, 4.0])
    # Δ for keys 8,1,7,2,6,3,5,4: bucket {1,2}: Δ = -1, 1 -> ½; {3,4}: 0, 1 -> ¾;
    # {5,6}: -1, -1 -> 0; {7,8}: 1, 1 -> 1.
    gap = np.array([1.0, -1.0, 1.0, 1.0, -1.0, 0.0, -1.0, 1.0])
    result = accuracy_by_bucket(gap, key, n_buckets=4)
    assert [(b.lo, b.hi, b.n) for b in result] == [(1, 2.75, 2), (2.75, 4.5, 2), (4.5, 6.25, 2), (6.25, 8, 2)]
    assert [b.accuracy for b in result] == [0.5, 0.75, 0.0, 1.0]
    assert result.n_excluded == 0


def test_bucket_tied_quantiles_give_fewer_buckets() -> None:
    # key = 0,0,0,0,0,1,2,3: quantile positions 1.75, 3.5 fall among the zeros, 5.25 -> 1 + .25 = 1.25.
    # Edges 0, 0, 0, 1.25, 3 -> unique 0, 1.25, 3: buckets [0, 1.25) = 6 pairs, [1.25, 3] = 2 pairs.
    key = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0])
    gap = np.array([1.0, 1.0, 1.0, -1.0, -1.0, -1.0, 1.0, 1.0])  # 3/6 right, then 2/2 right
    result = accuracy_by_bucket(gap, key)
    assert [(b.lo, b.hi, b.n, b.accuracy) for b in result] == [(0.0, 1.25, 6, 0.5), (1.25, 3.0, 2, 1.0)]


def test_bucket_between_data_points_is_merged_not_empty() -> None:
    # key = [0, 10]: edges 0, 2.5, 5, 7.5, 10; [2.5, 5) and [5, 7.5) hold nothing and merge into the
    # last bucket, leaving [0, 2.5) and [2.5, 10].
    result = accuracy_by_bucket([1.0, -1.0], [0.0, 10.0])
    assert [(b.lo, b.hi, b.n, b.accuracy) for b in result] == [(0.0, 2.5, 1, 1.0), (2.5, 10.0, 1, 0.0)]


def test_bucket_excludes_and_counts_nan_keys_and_defaults_to_abs_gap() -> None:
    result = accuracy_by_bucket([1.0, -1.0, 2.0], [np.nan, 5.0, np.nan])
    assert result.n_excluded == 2 and [(b.lo, b.hi, b.n, b.accuracy) for b in result] == [(5, 5, 1, 0.0)]
    assert accuracy_by_bucket([1.0, 2.0], [np.nan, np.nan]).buckets == ()
    # Default key |Δ| = 3, 1, 2, 4 with 2 buckets: median 2.5 -> {1, 2} holds Δ = -1, 2, {3, 4} holds 3, -4.
    by_abs = accuracy_by_bucket([3.0, -1.0, 2.0, -4.0], n_buckets=2)
    assert [(b.lo, b.hi, b.n, b.accuracy) for b in by_abs] == [(1.0, 2.5, 2, 0.5), (2.5, 4.0, 2, 0.5)]
    assert json.loads(json.dumps(result.to_dict()))["n_excluded"] == 2


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 40).flatmap(
        lambda b: st.tuples(
            arrays(np.float64, b, elements=finite),
            arrays(np.float64, b, elements=st.one_of(st.just(np.nan), st.sampled_from([0.0, 1.0]), finite)),
            st.integers(1, 12),
        )
    )
)
def test_bucket_counts_every_pair_exactly_once(args: tuple[np.ndarray, np.ndarray, int]) -> None:
    gap, key, n_buckets = args
    result = accuracy_by_bucket(gap, key, n_buckets=n_buckets)
    assert isinstance(result, BucketedAccuracy)
    assert sum(b.n for b in result) + result.n_excluded == gap.size
    assert result.n_excluded == int(np.isnan(key).sum())
    assert all(b.n > 0 for b in result) and len(result) <= n_buckets
    # Buckets tile the key range in order, and each holds exactly the keys in [lo, hi).
    for j, b in enumerate(result):
        last = j == len(result) - 1
        inside = (key >= b.lo) & ((key <= b.hi) if last else (key < b.hi))
        assert inside.sum() == b.n
        assert b.accuracy == pairwise_accuracy(gap[inside])
        if not last:
            assert b.hi == result[j + 1].lo


def test_bucket_shape_mismatch_shows_shapes() -> None:
    with pytest.raises(ValueError, match=r"reward_gap \(3,\), key \(2,\)"):
        accuracy_by_bucket([1.0, 2.0, 3.0], [1.0, 2.0])


# --- distribution -----------------------------------------------------------------------------


def test_skewness_by_hand() -> None:
    # x = [0, 0, 3]: mean 1, deviations -1, -1, 2; m2 = (1 + 1 + 4)/3 = 2, m3 = (-1 - 1 + 8)/3 = 2;
    # g1 = 2 / 2^{3/2} = 1/√2.
    assert_allclose(skewness([0.0, 0.0, 3.0]), 1.0 / math.sqrt(2.0))
    # x = [0, 0, 0, 4]: mean 1, deviations -1, -1, -1, 3; m2 = 12/4 = 3, m3 = 24/4 = 6; g1 = 6 / 3^{3/2}.
    assert_allclose(skewness([0.0, 0.0, 0.0, 4.0]), 6.0 / 3.0**1.5)
    assert_allclose(skewness([4.0, 4.0, 4.0, 0.0]), -6.0 / 3.0**1.5)
    assert skewness([2.0, 2.0, 2.0]) == 0.0


def test_gap_distribution_by_hand() -> None:
    # Δ = [0, 0, 3]: mean 1, population variance 2 -> std √2, skewness 1/√2 (above).
    # Linear quantiles on positions q * 2: 5 % -> 0.1 -> 0; 50 % -> 1 -> 0; 75 % -> 1.5 -> 1.5;
    # 95 % -> 1.9 -> 0 + 0.9 * 3 = 2.7. Histogram with 3 bins over [0, 3]: edges 0, 1, 2, 3, counts 2, 0, 1.
    dist = gap_distribution([0.0, 0.0, 3.0], bins=3)
    assert dist.n == 3 and dist.mean == 1.0
    assert_allclose([dist.std, dist.skewness], [math.sqrt(2.0), 1.0 / math.sqrt(2.0)])
    assert_allclose([dist.p05, dist.p25, dist.p50, dist.p75, dist.p95], [0.0, 0.0, 0.0, 1.5, 2.7])
    assert dist.hist_counts == (2, 0, 1)
    assert_allclose(dist.hist_edges, [0.0, 1.0, 2.0, 3.0])
    plain = json.loads(json.dumps(dist.to_dict()))
    assert plain["hist_counts"] == [2, 0, 1] and plain["skewness"] == dist.skewness


# --- calibration ------------------------------------------------------------------------------


def test_sigmoid_is_stable_and_exact_at_known_points() -> None:
    assert_allclose(sigmoid([0.0, LN3, -LN3]), [0.5, 0.75, 0.25])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # no overflow at the extremes
        assert_allclose(sigmoid([-800.0, 800.0]), [0.0, 1.0])


def test_calibration_two_bins_by_hand_with_outcome() -> None:
    # p = σ(Δ) = ¾, ¾, ¾, ¾, ¼, ¼; outcomes 1, 1, 1, 0 in the upper bin and 0, 1 in the lower.
    # Upper bin [½, 1]: mean p ¾, positive rate ¾ -> error 0, weight 4/6.
    # Lower bin [0, ½): mean p ¼, positive rate ½ -> error ¼, weight 2/6.   ECE = ¼ · 2/6 = 1/12
    # (an unweighted mean over bins would give ⅛).
    # Brier: y = 1 at p = ¾: (¼)² = 1/16 three times; y = 0 at ¾: 9/16; y = 0 at ¼: 1/16;
    # y = 1 at ¼: 9/16. Sum = 3/16 + 9/16 + 1/16 + 9/16 = 22/16; / 6 = 11/48.
    gap = [LN3, LN3, LN3, LN3, -LN3, -LN3]
    cal = calibration(gap, outcome=[1, 1, 1, 0, 0, 1], n_bins=2)
    assert_allclose([cal.ece, cal.brier], [1.0 / 12.0, 11.0 / 48.0])
    assert not cal.symmetrised and cal.n == 6
    assert [(b.lo, b.hi, b.n) for b in cal.bins] == [(0.0, 0.5, 2.0), (0.5, 1.0, 4.0)]
    assert_allclose([(b.p_mean, b.frac_positive) for b in cal.bins], [(0.25, 0.5), (0.75, 0.75)])


def test_calibration_two_bins_by_hand_symmetrised() -> None:
    # Human data (chosen always won), Δ = [ln 3, ln 3, -ln 3]. Both-ways points:
    # (¾, 1), (¾, 1), (¼, 1) and (¼, 0), (¼, 0), (¾, 0).
    # Upper bin: p ¾ ×3, positives 2/3 -> |¾ - ⅔| = 1/12, weight 3/6.
    # Lower bin: p ¼ ×3, positives 1/3 -> |¼ - ⅓| = 1/12, weight 3/6.   ECE = 1/12.
    # Brier = (1/B) Σ (1 - σ(Δ))² = (1/16 + 1/16 + 9/16) / 3 = 11/48.
    cal = calibration([LN3, LN3, -LN3], n_bins=2)
    assert cal.symmetrised and cal.n == 6
    assert_allclose([cal.ece, cal.brier], [1.0 / 12.0, 11.0 / 48.0])
    assert_allclose(
        [(b.p_mean, b.frac_positive, b.n) for b in cal.bins], [(0.25, 1 / 3, 3), (0.75, 2 / 3, 3)]
    )
    # Without symmetrisation (all outcomes 1) the same model looks different: not the same numbers.
    assert calibration([LN3, LN3, -LN3], outcome=[1, 1, 1], n_bins=2).ece != cal.ece


def test_calibration_ties_split_between_central_bins() -> None:
    # Δ = 0 gives p = ½, the edge between the two bins; each evaluation point counts ½ in each bin.
    # All-tie model on human data: points (½, 1), (½, 0) -> each bin: mean ½, positive rate ½ -> ECE 0.
    cal = calibration([0.0, 0.0], n_bins=2)
    assert cal.ece == 0.0 and cal.brier == 0.25
    assert [(b.p_mean, b.frac_positive, b.n) for b in cal.bins] == [(0.5, 0.5, 2.0), (0.5, 0.5, 2.0)]
    # With an odd bin count ½ is mid-bin: one bin [0.4, 0.6] with all 4 points.
    odd = calibration([0.0, 0.0], n_bins=5)
    assert [(b.lo, b.hi, b.n) for b in odd.bins] == [(0.4, 0.6, 4.0)]


def test_calibration_edge_points_go_to_the_bin_nearer_half() -> None:
    # With 4 bins, σ(-ln 3) = ¼ and σ(ln 3) = ¾ are exactly on edges (exact in float64). Both go to
    # the bin nearer ½, [¼, ½) and [½, ¾], so the two orientations of a pair land in mirrored bins.
    cal = calibration([-LN3, LN3], outcome=[0, 1], n_bins=4)
    assert [(b.lo, b.hi, b.p_mean, b.frac_positive) for b in cal.bins] == [
        (0.25, 0.5, 0.25, 0.0),
        (0.5, 0.75, 0.75, 1.0),
    ]
    # Each bin: |¼ - 0| and |¾ - 1| = ¼, so ECE = ¼; Brier = (1/16 + 1/16) / 2 = 1/16.
    assert_allclose([cal.ece, cal.brier], [0.25, 0.0625])


def test_calibration_rejects_non_binary_outcome() -> None:
    with pytest.raises(ValueError, match="0/1"):
        calibration([1.0, 2.0], outcome=[1.0, 0.3])
    with pytest.raises(ValueError, match=r"reward_gap \(2,\), outcome \(3,\)"):
        calibration([1.0, 2.0], outcome=[1, 0, 1])


def _cal_summary(cal) -> list[tuple[float, float, float]]:
    return [(b.p_mean, b.frac_positive, b.n) for b in cal.bins]


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 30).flatmap(
        lambda b: st.tuples(
            arrays(np.float64, b, elements=st.one_of(st.just(0.0), finite)),
            arrays(np.bool_, b),
            arrays(np.bool_, b),
            st.integers(1, 12),
        )
    )
)
def test_symmetrised_calibration_does_not_depend_on_pair_orientation(
    args: tuple[np.ndarray, np.ndarray, np.ndarray, int],
) -> None:
    # Presenting any subset of pairs the other way round (Δ -> -Δ and outcome -> 1 - outcome)
    # leaves the both-ways point set, hence ECE, Brier and every bin, unchanged.
    gap, outcome, flip, n_bins = args[0], args[1].astype(float), args[2], args[3]
    ref = calibration(gap, outcome, n_bins=n_bins, symmetrise=True)
    flipped = calibration(
        np.where(flip, -gap, gap), np.where(flip, 1.0 - outcome, outcome), n_bins=n_bins, symmetrise=True
    )
    assert_allclose([flipped.ece, flipped.brier], [ref.ece, ref.brier], atol=1e-12)
    assert_allclose(_cal_summary(flipped), _cal_summary(ref), atol=1e-12)
    # Its reliability diagram is point-symmetric about (½, ½): bin b <-> n_bins - 1 - b, p -> 1 - p.
    bins = _cal_summary(ref)
    assert_allclose([(1 - p, 1 - f, n) for p, f, n in reversed(bins)], bins, atol=1e-12)
    # Human data (outcome None) is the same as outcome 1 for every pair, symmetrised.
    human = calibration(np.where(flip, -gap, gap), n_bins=n_bins)
    ones = calibration(np.where(flip, -gap, gap), np.ones_like(gap), n_bins=n_bins, symmetrise=True)
    assert human.symmetrised and (human.ece, human.brier, human.bins) == (ones.ece, ones.brier, ones.bins)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 30).flatmap(
        lambda b: st.tuples(
            arrays(np.float64, b, elements=st.one_of(st.just(0.0), finite)),
            arrays(np.bool_, b),
            st.integers(1, 12),
        )
    )
)
def test_flipping_every_pair_mirrors_the_diagram(args: tuple[np.ndarray, np.ndarray, int]) -> None:
    # Explicit outcomes, used directly: flipping the orientation of every pair maps each point
    # (p, y) to (1 - p, 1 - y) in the mirrored bin, so ECE and Brier stay and the bins mirror,
    # ties included (they are split evenly between the two central bins for even n_bins).
    gap, outcome, n_bins = args[0], args[1].astype(float), args[2]
    ref = calibration(gap, outcome, n_bins=n_bins)
    flipped = calibration(-gap, 1.0 - outcome, n_bins=n_bins)
    assert not ref.symmetrised and ref.n == gap.size
    assert_allclose([flipped.ece, flipped.brier], [ref.ece, ref.brier], atol=1e-12)
    mirrored = [(1 - p, 1 - f, n) for p, f, n in reversed(_cal_summary(flipped))]
    assert_allclose(mirrored, _cal_summary(ref), atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(gap_arrays(max_size=30), st.integers(1, 12))
def test_symmetrised_is_explicit_evaluation_both_ways(gap: np.ndarray, n_bins: int) -> None:
    sym = calibration(gap, n_bins=n_bins)
    both = calibration(np.concatenate([gap, -gap]), np.repeat([1.0, 0.0], gap.size), n_bins=n_bins)
    assert_allclose([sym.ece, sym.brier, sym.n], [both.ece, both.brier, both.n])
    assert_allclose(_cal_summary(sym), _cal_summary(both))


def test_symmetrised_calibration_is_not_invariant_to_negating_gaps() -> None:
    # Negating every gap with the outcomes kept (chosen still won) describes a model that prefers
    # the losers, so ECE must change. n_bins = 2, both-ways points:
    # Δ = [ln 3]:  (¾, 1), (¼, 0) -> ½|¾ - 1| + ½|¼ - 0| = ¼.
    # Δ = [-ln 3]: (¼, 1), (¾, 0) -> ½|¼ - 1| + ½|¾ - 0| = ¾.
    assert_allclose(calibration([LN3], n_bins=2).ece, 0.25)
    assert_allclose(calibration([-LN3], n_bins=2).ece, 0.75)


def test_unsymmetrised_calibration_needs_an_outcome() -> None:
    with pytest.raises(ValueError, match="symmetrise=False needs an explicit outcome"):
        calibration([1.0], symmetrise=False)


# --- correlations, length, swap, worst, gold --------------------------------------------------


def test_pearson_and_spearman_by_hand() -> None:
    # x = [1, 2, 3], y = [1, 3, 2]: deviations (-1, 0, 1), (-1, 1, 0); Σ products = 1;
    # Σx'² = Σy'² = 2 -> r = 1/2.
    assert_allclose(pearson([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]), 0.5)
    assert pearson([1.0, 1.0], [1.0, 2.0]) is None
    # Spearman with a tie: x = [10, 20, 20, 40] -> ranks 1, 2.5, 2.5, 4; y = [1, 2, 3, 4] -> 1..4.
    # Rank deviations (-1.5, 0, 0, 1.5) and (-1.5, -0.5, 0.5, 1.5): Σ = 4.5, Σx'² = 4.5, Σy'² = 5
    # -> ρ = 4.5 / sqrt(22.5) = sqrt(0.9).
    assert_allclose(spearman([10.0, 20.0, 20.0, 40.0], [1.0, 2.0, 3.0, 4.0]), math.sqrt(0.9))


def test_length_baseline_by_hand() -> None:
    # Lengths: chosen [3, 2, 1, 2], rejected [1, 2, 3, 0] -> longer chosen wins 1, ½, 0, 1 -> 0.625.
    # Rewards: chosen [1, 0, 0, 0], rejected [0, 0, 1, 0] -> Δ = [1, 0, -1, 0].
    # corr_length_gap: d = [2, 0, -2, 2], mean ½, deviations (1.5, -.5, -2.5, 1.5); Δ deviations
    #   (1, 0, -1, 0): Σ = 1.5 + 2.5 = 4; Σd'² = 2.25 + .25 + 6.25 + 2.25 = 11; ΣΔ'² = 2 -> 4/√22.
    # corr_length_reward over 8 responses: L = [3,2,1,2,1,2,3,0] (mean 1.75), R = [1,0,0,0,0,0,1,0]
    #   (mean ¼): Σ L R - 8·1.75·¼ = 6 - 3.5 = 2.5; ΣL² - 8·1.75² = 32 - 24.5 = 7.5;
    #   ΣR² - 8·(¼)² = 2 - 0.5 = 1.5 -> 2.5 / sqrt(11.25).
    result = length_baseline([3, 2, 1, 2], [1, 2, 3, 0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0])
    assert result.accuracy_longer_wins == 0.625 and result.n == 4
    assert_allclose(
        [result.corr_length_gap, result.corr_length_reward], [4 / math.sqrt(22), 2.5 / math.sqrt(11.25)]
    )
    no_rewards = length_baseline([3, 2], [1, 2])
    assert (no_rewards.accuracy_longer_wins, no_rewards.corr_length_reward) == (0.75, None)
    with pytest.raises(ValueError, match="both"):
        length_baseline([3, 2], [1, 2], chosen_rewards=[1.0, 2.0])


def test_swap_test_pass_and_fail() -> None:
    gap = np.array([1.0, -2.0, 0.0])
    ok = swap_test(gap, -gap + np.array([5e-5, 0.0, 0.0]))
    assert ok.passed and ok.fraction_flipped == 1.0
    assert_allclose(ok.max_abs_sum, 5e-5)
    # A position-biased model: the swapped gaps are Δ' = -Δ + 1.5 = [0.5, 3.5, 1.5]:
    # sums 1.5 each; signs (+, +, +) vs -sign(Δ) = (-, +, 0): only the middle pair flips -> 1/3.
    bad = swap_test(gap, -gap + 1.5)
    assert not bad.passed and bad.max_abs_sum == 1.5
    assert_allclose(bad.fraction_flipped, 1 / 3)
    assert json.loads(json.dumps(bad.to_dict()))["passed"] is False


def test_worst_pairs_most_negative_first() -> None:
    gap = np.array([0.5, -3.0, 2.0, -1.0, -3.0])
    assert worst_pairs(gap, k=3).tolist() == [1, 4, 3]  # -3 (index 1), -3 (index 4, stable), -1
    assert worst_pairs(gap, k=10).tolist() == [1, 4, 3, 0, 2]
    assert worst_pairs(gap, k=0).tolist() == []


def test_gold_agreement_by_hand() -> None:
    # Δ = [1, -1, 2, 0, 3], Δ* = [2, 1, 0, -1, 3]. Pair 2 has Δ* = 0: excluded, counted.
    # Others: (1, 2) agree 1; (-1, 1) disagree 0; (0, -1) estimated tie ½; (3, 3) agree 1 -> 2.5/4.
    # Pearson over all 5: Δ deviations (0, -2, 1, -1, 2), Δ* deviations (1, 0, -1, -2, 2) (both means 1);
    #   Σ = 0 + 0 - 1 + 2 + 4 = 5, Σ squares 10 and 10 -> ½.
    # Spearman: ranks (3, 1, 4, 2, 5) and (4, 3, 2, 1, 5), deviations from 3 are the same as above -> ½.
    result = gold_agreement([1.0, -1.0, 2.0, 0.0, 3.0], [2.0, 1.0, 0.0, -1.0, 3.0])
    assert (result.accuracy_vs_true, result.n, result.n_gold_ties) == (0.625, 5, 1)
    assert_allclose([result.pearson, result.spearman], [0.5, 0.5])
    all_ties = gold_agreement([1.0, 2.0], [0.0, 0.0])
    assert all_ties.accuracy_vs_true is None and all_ties.pearson is None and all_ties.n_gold_ties == 2
    assert json.loads(json.dumps(all_ties.to_dict()))["spearman"] is None
