"""The one pairwise-accuracy rule (evaluate/accuracy.py): ties count 1/2, everywhere.

Hand-derived values, tensor/array agreement, the complement property, and the places that report an
accuracy (RM evaluation, DPO evaluation, sections, Best-of-N win outcomes) giving the same number on
the same gaps with ties.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch.testing import assert_close

from marginkit.evaluate import metrics as M
from marginkit.evaluate.accuracy import gold_oriented_gap, pair_outcomes, pairwise_accuracy
from marginkit.evaluate.bon import win_outcomes
from marginkit.evaluate.dpo_eval import PreferenceScores, eval_metrics
from marginkit.evaluate.rm_eval import reward_metrics
from marginkit.evaluate.sections import sections_report

# Δ = [1, -2, 0, 3]: outcomes 1, 0, 1/2, 1 -> (2 + 1/2) / 4 = 0.625.
GAP = [1.0, -2.0, 0.0, 3.0]

# Small integers (plenty of exact ties and exact negations) and general floats.
gaps = arrays(np.float64, st.integers(1, 30), elements=st.one_of(
    st.integers(-3, 3).map(float), st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)))


def test_hand_point_and_ties_count_half() -> None:
    assert pairwise_accuracy(np.array(GAP)) == 0.625
    assert pairwise_accuracy(torch.tensor(GAP)) == 0.625
    assert pairwise_accuracy(np.zeros(3)) == 0.5  # all ties: a zero head, or policy = reference
    assert pairwise_accuracy(np.array([-0.0])) == 0.5  # -0 is a tie too
    assert pairwise_accuracy(np.array([2.0, 5.0])) == 1.0
    assert pairwise_accuracy(np.array([-1.0])) == 0.0


def test_outcomes_keep_the_input_kind() -> None:
    t = pair_outcomes(torch.tensor(GAP, dtype=torch.float64))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64
    assert_close(t, torch.tensor([1.0, 0.0, 0.5, 1.0], dtype=torch.float64))
    assert pair_outcomes(torch.tensor([3, 0, -1])).dtype == torch.float32  # integer gaps -> float32
    a = pair_outcomes(np.array(GAP, dtype=np.float32))
    assert isinstance(a, np.ndarray) and a.dtype == np.float64
    np.testing.assert_array_equal(a, [1.0, 0.0, 0.5, 1.0])


def test_empty_or_matrix_raises() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        pairwise_accuracy(np.zeros(0))
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        pairwise_accuracy(torch.zeros(2, 2))


@given(gaps)
def test_tensor_and_array_agree(gap: np.ndarray) -> None:
    np.testing.assert_array_equal(pair_outcomes(torch.from_numpy(gap)).numpy(), pair_outcomes(gap))
    assert pairwise_accuracy(torch.from_numpy(gap)) == pytest.approx(pairwise_accuracy(gap), abs=1e-12)


@given(gaps)
def test_accuracy_of_the_negated_gap_is_the_complement(gap: np.ndarray) -> None:
    # Each pair: 1 + 0, 0 + 1 or 1/2 + 1/2 -- the rule does not depend on which side is called chosen.
    assert pairwise_accuracy(gap) + pairwise_accuracy(-gap) == pytest.approx(1.0, abs=1e-12)


def test_gold_oriented_gap_by_hand() -> None:
    # Δ* = [-1, -1, 2, 0, NaN]: pair 4 has no true preference, pair 5 no gold reward; Δ · sign(Δ*) = [-1, 2, 0].
    oriented = gold_oriented_gap(np.array(GAP + [7.0]), np.array([-1.0, -1.0, 2.0, 0.0, np.nan]))
    np.testing.assert_array_equal(oriented, [-1.0, 2.0, 0.0])
    assert pairwise_accuracy(oriented) == 0.5  # (0 + 1 + 1/2) / 3


def _scores(chosen: np.ndarray, rejected: np.ndarray, gold: np.ndarray) -> PreferenceScores:
    zeros = np.zeros_like(chosen)
    return PreferenceScores(chosen, rejected, zeros, zeros, zeros, zeros, gold)


def test_rm_and_dpo_evaluation_agree_on_gaps_with_ties() -> None:
    # Δ = [1, -2, 0, 3, 0, 0]: (2 + 3/2) / 6 = 7/12. Against the truth Δ* = [1, 1, -1, -2, 0, 1]:
    # oriented Δ = [1, -2, 0, -3, 0] (the true tie left out) -> (1 + 1/2 + 1/2) / 5 = 0.4.
    chosen = np.array([1.0, 0.0, 2.0, 3.0, 0.5, -1.0])
    rejected = np.array([0.0, 2.0, 2.0, 0.0, 0.5, -1.0])
    gold = np.array([1.0, 1.0, -1.0, -2.0, 0.0, 1.0])
    rm = reward_metrics(chosen, rejected, gold, prefix="eval_")  # what RM evaluation during training logs
    dpo = eval_metrics(_scores(chosen, rejected, gold), prefix="eval_")  # what DPO training and eval-dpo log
    assert rm["eval_rewards/accuracies"] == dpo["eval_rewards/accuracies"] == pytest.approx(7 / 12)
    assert rm["eval_rewards/gold_accuracies"] == dpo["eval_rewards/gold_accuracies"] == pytest.approx(0.4)
    for key in ("eval_loss", "eval_rewards/margins", "eval_rewards/chosen", "eval_rewards/rejected"):
        assert rm[key] == dpo[key]
    # The eval-rm / eval-dpo report's accuracy, the sections report and the gold agreement: the same rule.
    gap = chosen - rejected
    assert M.accuracy_with_ci(gap, n_boot=10).value == pytest.approx(7 / 12)
    assert M.pairwise_accuracy(gap) == pytest.approx(7 / 12)
    assert sections_report({"s": gap}, n_boot=10).mean == pytest.approx(7 / 12)
    assert M.gold_agreement(gap, gold).accuracy_vs_true == pytest.approx(0.4)
    assert M.accuracy_by_bucket(gap, np.ones(6), 1)[0].accuracy == pytest.approx(7 / 12)


def test_at_initialisation_every_evaluation_reads_one_half() -> None:
    # A zero head (RM) or a policy equal to its reference (DPO): every reward 0, every pair a tie.
    zeros = np.zeros(5)
    assert reward_metrics(zeros, zeros)["rewards/accuracies"] == 0.5
    assert eval_metrics(_scores(zeros, zeros, np.full(5, np.nan)))["rewards/accuracies"] == 0.5
    assert "rewards/gold_accuracies" not in reward_metrics(zeros, zeros, np.full(5, np.nan))


def test_a_win_outcome_is_the_rule_on_the_difference_of_the_picks() -> None:
    a, b = np.array([3.0, 1.0, 2.0, 0.5]), np.array([2.0, 1.0, 4.0, -0.5])
    np.testing.assert_array_equal(win_outcomes(a, b), pair_outcomes(a - b))
    np.testing.assert_array_equal(win_outcomes(a, b), [1.0, 0.5, 0.0, 1.0])


def test_rm_training_eval_logs_what_dpo_eval_logs(monkeypatch) -> None:
    # train-rm's eval metrics on the same gaps with ties (the scorer replaced by the rewards above): the keys
    # both log are equal, so an RM run and a DPO run report one accuracy.
    from types import SimpleNamespace

    from marginkit.train import rm as rm_train

    chosen = np.array([1.0, 0.0, 2.0, 3.0, 0.5, -1.0])
    rejected = np.array([0.0, 2.0, 2.0, 0.0, 0.5, -1.0])
    gold = np.array([1.0, 1.0, -1.0, -2.0, 0.0, 1.0])
    monkeypatch.setattr(rm_train, "score_encoded", lambda *args, **kwargs: (chosen, rejected))
    acc = SimpleNamespace(unwrap_model=lambda m: m)
    cfg = SimpleNamespace(data=SimpleNamespace(padding_side="right"))
    eval_set = [SimpleNamespace(gold_gap=g) for g in gold]
    rm = rm_train._evaluate(acc, None, eval_set, 0, cfg, step=1)
    dpo = eval_metrics(_scores(chosen, rejected, gold), prefix="eval_")
    assert rm["eval_rewards/accuracies"] == pytest.approx(7 / 12)
    assert rm == {k: dpo[k] for k in rm}  # loss, rewards/{accuracies,gold_accuracies,margins,chosen,rejected}
