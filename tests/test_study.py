"""`marginkit study margins`: the statistics by hand, and one tiny study end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from marginkit.study import margins as S


def test_t_interval_by_hand():
    # x = 1, 2, 3: mean 2, sd 1, se 1/sqrt(3) = 0.57735; t(0.975, df=2) = 4.302653
    # half width = 4.302653 * 0.57735 = 2.484138
    mean, low, high = S.t_interval([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert low == pytest.approx(2.0 - 2.484138, abs=1e-5)
    assert high == pytest.approx(2.0 + 2.484138, abs=1e-5)
    # one value: no interval; NaNs are ignored
    assert S.t_interval([0.7])[0] == 0.7 and math.isnan(S.t_interval([0.7])[1])
    assert S.t_interval([1.0, float("nan"), 3.0])[0] == pytest.approx(2.0)


def test_steps_to_reach():
    curve = [{"step": 10, "val_gold_acc": 0.55}, {"step": 20, "val_gold_acc": 0.61}, {"step": 30, "val_gold_acc": 0.60}]
    assert S.steps_to_reach(curve, 0.60) == 20  # first step at or above the target
    assert math.isnan(S.steps_to_reach(curve, 0.62))


def _row(noise, seed, variant, family, acc, val, curve):
    return {"noise": noise, "seed": seed, "variant": variant, "family": family, "acc": acc, "val_acc": val,
            "acc_near_ties": acc - 0.1, "acc_clear": acc + 0.1, "pearson": 0.3, "skewness": 0.0, "acc_labels": acc,
            "train_seconds": 1.0, "curve": [{"step": s, "val_gold_acc": v} for s, v in curve]}


def test_summarize_paired_differences_and_choice_on_validation():
    rows = [
        _row(0.5, 0, "bt", "bt", 0.60, 0.60, [(10, 0.55), (20, 0.60)]),
        _row(0.5, 1, "bt", "bt", 0.62, 0.61, [(10, 0.58), (20, 0.61)]),
        # fixed-a: better on test, worse on validation -> must NOT be chosen
        _row(0.5, 0, "fixed-a", "fixed", 0.64, 0.58, [(10, 0.60), (20, 0.58)]),
        _row(0.5, 1, "fixed-a", "fixed", 0.66, 0.59, [(10, 0.50), (20, 0.59)]),
        _row(0.5, 0, "fixed-b", "fixed", 0.61, 0.63, [(10, 0.56), (20, 0.63)]),
        _row(0.5, 1, "fixed-b", "fixed", 0.63, 0.62, [(10, 0.62), (20, 0.62)]),
    ]
    summary = S.summarize(rows)
    assert summary["chosen"]["fixed"]["0.5"] == "fixed-b"
    entry = {e["variant"]: e for e in summary["table"]}
    # paired differences to BT: fixed-a: 0.04 and 0.04 -> mean 0.04, sd 0 -> interval collapses
    mean, low, high = entry["fixed-a"]["acc_vs_bt"]
    assert mean == pytest.approx(0.04) and low == pytest.approx(0.04) and high == pytest.approx(0.04)
    # steps to BT's final val accuracy: seed 0 target 0.60 -> fixed-a reaches it at step 10; seed 1 target 0.61
    # -> never (0.50, 0.59): median over the reached seeds = 10, reached 1/2
    assert entry["fixed-a"]["steps_to_bt_final"] == 10 and entry["fixed-a"]["reached_bt_final"] == "1/2"
    # fixed-b: seed 0 reaches 0.60 at 20, seed 1 reaches 0.61 at 10 -> median 15
    assert entry["fixed-b"]["steps_to_bt_final"] == 15 and entry["fixed-b"]["reached_bt_final"] == "2/2"
    md = S.format_markdown(summary)
    assert "**fixed-b**" in md and "**fixed-a**" not in md


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="unknown study variants"):
        S.StudyConfig(variants=["nope"]).chosen_variants()


def outcomes(gap) -> np.ndarray:
    """Per-pair outcome, ties 1/2: 1 if Δ > 0, 1/2 if Δ = 0, 0 if Δ < 0."""
    gap = np.asarray(gap, dtype=np.float64)
    return (gap > 0) + 0.5 * (gap == 0)


def t_interval_by_hand(x) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval of two values: half-width t_{0.975, 1} sd / sqrt(2)."""
    mean, sd = float(np.mean(x)), float(np.std(x, ddof=1))
    half = 12.706204736 * sd / math.sqrt(2)
    return mean, mean - half, mean + half


def scored(model_dir, pairs):
    """(Δ [B], true gap [B]) of a saved RM on pairs, tokenised as the study trains (max_length 64)."""
    from marginkit.data.ledger import Ledger
    from marginkit.data.tokenize import TokenizeConfig, encode_pairs
    from marginkit.evaluate.scorer import score_encoded
    from marginkit.models.reward import ModelConfig, load_reward_model

    model, tok = load_reward_model(ModelConfig(name_or_path=str(model_dir), head_init="keep"))
    encoded = encode_pairs(pairs, tok, TokenizeConfig(max_length=64), Ledger())
    assert len(encoded) == len(pairs)
    chosen, rejected = score_encoded(model, encoded, tok.pad_token_id)
    return np.asarray(chosen - rejected, dtype=np.float64), np.array([e.gold_gap for e in encoded])


@pytest.mark.slow
def test_tiny_study_end_to_end_and_resume(tmp_path, monkeypatch):
    from marginkit.data.world import WorldConfig, make_world

    size = S.StudySize(n_train=64, n_val=32, n_test=48, epochs=1, hidden=16, layers=1, eval_every=1)
    monkeypatch.setitem(S.STUDY_SIZES, "tiny", size)
    cfg = S.StudyConfig(out=str(tmp_path), size="tiny", seeds=[0, 1], noises=[0.5], variants=["fixed-1"],
                        batch_size=16)
    lines = []
    summary = S.run_study(cfg, log=lines.append)
    rows = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {(r["seed"], r["variant"]) for r in rows} == {(0, "bt"), (1, "bt"), (0, "fixed-1"), (1, "fixed-1")}
    assert all(len(r["curve"]) == 4 for r in rows)  # 64 pairs / 16 = 4 steps, evaluated after each
    assert (tmp_path / "study.md").exists() and (tmp_path / "study_accuracy.png").exists()
    by = {(r["seed"], r["variant"]): r for r in rows}

    # Each row, recomputed from its saved RM on the world the study built (same WorldConfig): accuracy against the
    # true preference (true ties left out), near-ties and clear pairs (lowest and highest |true gap| quartile),
    # r(Δ, true gap), accuracy against the labels; and the last point of the validation curve.
    for seed in (0, 1):
        world = make_world(WorldConfig(seed=seed, n_train=64, n_val=32, n_test=48, noise=0.5))
        for variant in ("bt", "fixed-1"):
            row, folder = by[(seed, variant)], tmp_path / "noise0.5" / f"seed{seed}" / variant / "model"
            gap, gold = scored(folder, world.test)
            assert np.abs(gap).min() > 1e-6  # no model tie within rounding: the outcomes are exact
            decided = gold != 0
            agree = outcomes(gap * np.sign(gold))[decided]
            assert row["acc"] == pytest.approx(agree.mean()), (seed, variant)
            strength = np.abs(gold[decided])
            q1, q3 = np.quantile(strength, [0.25, 0.75])
            assert row["acc_near_ties"] == pytest.approx(agree[strength < q1].mean())
            assert row["acc_clear"] == pytest.approx(agree[strength >= q3].mean())
            assert row["pearson"] == pytest.approx(np.corrcoef(gap, gold)[0, 1], rel=1e-4)
            assert row["acc_labels"] == pytest.approx(outcomes(gap).mean())
            val_gap, val_gold = scored(folder, world.val)
            assert row["val_acc"] == row["curve"][-1]["val_gold_acc"] == pytest.approx(
                outcomes(val_gap * np.sign(val_gold))[val_gold != 0].mean())
        # the variant's own margin reached its trainer and its loss; BT trained without one
        unit = tmp_path / "noise0.5" / f"seed{seed}"
        run_yaml = (unit / "fixed-1" / "config.yaml").read_text()
        assert "name: fixed" in run_yaml and "value: 1.0" in run_yaml
        assert "name: none" in (unit / "bt" / "config.yaml").read_text()
        first = {v: next(json.loads(x) for x in (unit / v / "metrics.jsonl").read_text().splitlines()
                         if "loss" in json.loads(x)) for v in ("bt", "fixed-1")}
        assert first["bt"]["target_margins/mean"] == 0.0 and first["fixed-1"]["target_margins/mean"] == 1.0
        # the first logged window (4 steps): the head barely moves (mean gap within 1e-3 of 0, pairs ~1e-4), so the
        # loss is softplus(m) to 1e-3: softplus(1) = 1.3133 with the margin, ln 2 without it
        assert max(abs(first[v]["rewards/margins"]) for v in first) < 1e-3
        assert first["fixed-1"]["loss"] == pytest.approx(math.log1p(math.e), abs=1e-3)
        assert first["bt"]["loss"] == pytest.approx(math.log(2), abs=1e-3)
        assert first["fixed-1"]["diagnostics/loss_at_zero_gap"] == pytest.approx(math.log1p(math.e))
        assert first["bt"]["diagnostics/loss_at_zero_gap"] == pytest.approx(math.log(2))

    # the summary, recomputed from the rows: t-intervals over the two seeds and the paired difference to BT
    table = {e["variant"]: e for e in summary["table"]}
    for variant in ("bt", "fixed-1"):
        assert table[variant]["acc"] == pytest.approx(t_interval_by_hand([by[(s, variant)]["acc"] for s in (0, 1)]))
    assert table["fixed-1"]["acc_vs_bt"] == pytest.approx(
        t_interval_by_hand([by[(s, "fixed-1")]["acc"] - by[(s, "bt")]["acc"] for s in (0, 1)]))
    assert summary["chosen"]["fixed"]["0.5"] == "fixed-1"  # the family's only variant

    # resume: nothing left to do, rows not duplicated
    S.run_study(cfg, log=lines.append)
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 4
    assert any("0 runs to do (4 done)" in x for x in lines)
