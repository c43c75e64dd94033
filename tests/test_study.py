"""`marginkit study margins`: the statistics by hand, and one tiny study end to end."""

from __future__ import annotations

import json
import math

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


@pytest.mark.slow
def test_tiny_study_end_to_end_and_resume(tmp_path, monkeypatch):
    monkeypatch.setitem(S.STUDY_SIZES, "tiny", S.StudySize(n_train=64, n_val=32, n_test=48, epochs=1, hidden=16,
                                                           layers=1, eval_every=1))
    cfg = S.StudyConfig(out=str(tmp_path), size="tiny", seeds=[0, 1], noises=[0.5], variants=["fixed-1"],
                        batch_size=16)
    lines = []
    summary = S.run_study(cfg, log=lines.append)
    rows = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {(r["seed"], r["variant"]) for r in rows} == {(0, "bt"), (1, "bt"), (0, "fixed-1"), (1, "fixed-1")}
    assert all(0.0 <= r["acc"] <= 1.0 and len(r["curve"]) == 4 for r in rows)  # 64 pairs / 16 = 4 steps, eval each
    assert (tmp_path / "study.md").exists() and (tmp_path / "study_accuracy.png").exists()
    assert {e["variant"] for e in summary["table"]} == {"bt", "fixed-1"}
    # resume: nothing left to do, rows not duplicated
    S.run_study(cfg, log=lines.append)
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 4
    assert any("0 runs to do (4 done)" in x for x in lines)
