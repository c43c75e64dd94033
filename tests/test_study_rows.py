"""The committed raw rows behind docs/study_real.md, docs/bon.md and docs/dpo.md: the docs' generated tables
equal what the rows give (study/render.py), and each renderer is checked on hand-made rows.

Derivations: a 95% Student-t interval of 3 values with sd s is mean ± t_{0.975,2} s / √3, t_{0.975,2} =
4.302653; of 2 values mean ± 12.706205 s / √2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from marginkit.study.render import read_block, read_rows, render, write_rows

ROOT = Path(__file__).resolve().parents[1]
MINE = ["marginkit.study.real.report:render_docs", "marginkit.study.bon_world:render_docs",
        "marginkit.study.world_pipeline:render_docs"]
T2 = 4.302653  # t_{0.975, 2}


def test_docs_tables_equal_what_the_committed_rows_give():
    assert render(ROOT / "docs", check=True, renderers=MINE) == []


@pytest.mark.parametrize("rows_file", ["real.csv.gz", "bon_world.csv.gz", "world_pipeline.csv.gz"])
def test_committed_rows_are_small(rows_file):
    assert (ROOT / "docs" / "study" / rows_file).stat().st_size < 200_000


def _doc(tmp_path: Path, name: str, blocks: list[str]) -> Path:
    docs = tmp_path / "docs"
    (docs / "study").mkdir(parents=True, exist_ok=True)
    (docs / name).write_text("".join(f"<!-- generated:{b} -->\nold\n<!-- /generated:{b} -->\n" for b in blocks))
    return docs


# ----------------------------------------------------------------------------- the real-data study


def test_outcome_letters_round_trip():
    from marginkit.study.real.rows import decode_outcomes, encode_outcomes

    assert encode_outcomes([1, 0, 0.5, 0]) == "wltl"
    assert decode_outcomes("wltl") == [1.0, 0.0, 0.5, 0.0]
    with pytest.raises(ValueError):
        encode_outcomes([0.3])


def _real_run(seed, variant, family, acc, correct):
    return {"kind": "run", "task": "hh", "backbone": "frozen", "seed": seed, "variant": variant, "family": family,
            "acc": acc, "val_acc": 0.5, "skewness": 0.0, "ood_mean": 0.5, "ood:sec": 0.5, "train_seconds": 1.0,
            "test_correct": correct}


def test_real_renderer_by_hand(tmp_path):
    from marginkit.study.real.report import ROWS, render_docs

    meta = {"kind": "task", "task": "hh", "backbone": "frozen", "about": "toy", "n_train": 10, "n_val": 4,
            "n_test": 4, "n_pool": 0, "size:sec": 4, "len:test": 0.5, "len:sec": 0.25}
    # BT test accuracy 0.50, 0.50, 0.75 over 3 seeds; fixed-1 gains 0.25 on seeds 0 and 1 and nothing on seed 2
    rows = [meta, _real_run(0, "bt", "bt", 0.5, "wwll"), _real_run(1, "bt", "bt", 0.5, "wlwl"),
            _real_run(2, "bt", "bt", 0.75, "wwwl"), _real_run(0, "fixed-1", "fixed", 0.75, "wwwl"),
            _real_run(1, "fixed-1", "fixed", 0.75, "wwwl"), _real_run(2, "fixed-1", "fixed", 0.75, "wwwl")]
    docs = _doc(tmp_path, "study_real.md", ["real-hh"])
    write_rows(docs / ROWS, rows)
    render(docs, renderers=["marginkit.study.real.report:render_docs"])
    block = read_block((docs / "study_real.md").read_text(), "real-hh")
    # BT: mean 0.58333, sd 0.144338, half-width 4.302653 * 0.144338 / √3 = 0.358558 -> [0.225, 0.942]
    assert "| bt | 0.583 [0.225, 0.942] | – | – |" in block
    # fixed-1 - BT per seed: 0.25, 0.25, 0: mean 0.16667, sd 0.144338, same half-width -> [-0.192, 0.525]
    line = next(x for x in block.splitlines() if x.startswith("| **fixed-1** "))
    assert line.startswith("| **fixed-1** | 0.750 [0.750, 0.750] | 0.167 [-0.192, 0.525] | 0.167 [")
    # the test-pair column: per-pair differences averaged over seeds (0, 1/3, 1/3, 0) (seed 0: pair 3 won,
    # seed 1: pair 2 won, seed 2: none), mean 1/6
    assert "Length alone (the longer response wins, ties 1/2): test 0.500, sec 0.250." in block
    assert "Pairs: 10 train / 4 validation / 4 test" in block
    assert (docs / "study" / "real_hh_accuracy.png").stat().st_size > 0
    assert set(render_docs(docs, plots=False)) == {"study_real.md"}


def test_real_rows_round_trip_a_study_folder(tmp_path):
    """flat_rows -> write_rows -> read_rows -> study_summaries gives the summary the study itself printed."""
    from marginkit.study.real.report import format_real_markdown
    from marginkit.study.real.rows import flat_rows, study_summaries
    from marginkit.study.real.summary import summarize_real

    rng = np.random.default_rng(0)
    results, bon = [], []
    for seed in range(3):
        for variant, family in (("bt", "bt"), ("label-0.5", "label")):
            correct = rng.integers(0, 2, size=12).astype(float).tolist()
            results.append({"task": "alpaca-eval", "backbone": "frozen", "seed": seed, "variant": variant,
                            "family": family, "acc": float(np.mean(correct)), "val_acc": 0.25 * (seed + 1),
                            "skewness": 0.5, "mean_gap": 0.1, "test_correct": correct,
                            "sections": {"a": 0.5, "b": 0.75}, "ood_mean": 0.625, "train_seconds": 1.5,
                            "by_label": [{"low": 0.0, "high": 1.0, "n": 6, "acc": 0.5},
                                         {"low": 1.0, "high": 2.0, "n": 6, "acc": 0.75}]})
        picks = {v: [rng.integers(0, 4, size=5).astype(float).tolist() for _ in range(2)] for v in ("bt", "label-0.5")}
        for v in ("bt", "label-0.5"):
            bon.append({"task": "alpaca-eval", "backbone": "frozen", "seed": seed, "variant": v, "ns": [1, 2],
                        "gold": [0.25, 0.5], "lc_gold": [0.125, 0.25], "win": None, "lc_win": None,
                        "agree_longest": [1.0, 0.5], "pick_chars": [1.0, 2.0], "judge_best": [0.25, 0.75],
                        "slope": 0.0, "pick_gold": picks[v], "pick_lc_gold": picks[v]})
    folder = tmp_path / "alpaca-eval"
    folder.mkdir()
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    (folder / "bon.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bon))
    summary = summarize_real(results, bon)
    summary.update(config={"task": "alpaca-eval", "backbone": "frozen", "seeds": [0, 1, 2]}, about="toy",
                   sizes={"train": 20, "validation": 5, "test": 12, "sections": {"a": 3, "b": 4}, "pool": 5},
                   length_baseline={"test": 0.5, "a": 0.25, "b": 0.75})
    (folder / "summary.json").write_text(json.dumps(summary))
    write_rows(tmp_path / "rows.csv.gz", flat_rows(folder))
    (back,) = study_summaries(read_rows(tmp_path / "rows.csv.gz"))
    assert format_real_markdown(back) == format_real_markdown(summary)


# ----------------------------------------------------------------------------- Best-of-N on the gold world


def _pick(seed, rm, n, judge, win=None, wtl=(None, None, None), diff=None):
    return {"kind": "pick", "seed": seed, "rm": rm, "baseline": "bt", "n": n, "n_prompts": 4, "k": 2, "kl": 0.5,
            "judge": judge, "proxy": 0.0, "win": win, "wins": wtl[0], "ties": wtl[1], "losses": wtl[2],
            "judge_diff": diff, "judge_best": 1.0, "unguided": 0.25}


def test_bon_renderer_by_hand(tmp_path):
    from marginkit.study.bon_world import BON_ROWS

    # label's win rate over bt at N = 2: 0.625 (seed 0: 2 wins, 1 tie, 1 loss) and 0.5 (seed 1: 1/2/1)
    rows = [_pick(0, "bt", 2, 0.5), _pick(1, "bt", 2, 0.75),
            _pick(0, "label", 2, 0.75, 0.625, (2, 1, 1), 0.25), _pick(1, "label", 2, 0.75, 0.5, (1, 2, 1), 0.0),
            {"kind": "rm", "seed": 0, "rm": "bt", "acc_labels": 0.5, "acc_true": 0.5},
            {"kind": "rm", "seed": 1, "rm": "bt", "acc_labels": 0.5, "acc_true": 0.75}]
    docs = _doc(tmp_path, "bon.md", ["bon-world"])
    write_rows(docs / BON_ROWS, rows)
    render(docs, renderers=["marginkit.study.bon_world:render_docs"])
    block = read_block((docs / "bon.md").read_text(), "bon-world")
    # win: mean 0.5625, sd 0.0883883, half-width 12.706205 * 0.0883883 / √2 = 0.794138 -> [-0.232, 1.357];
    # wins/ties/losses summed (3/3/2); one seed of two above 1/2
    assert "| 2 | 0.50 | 0.562 [-0.232, 1.357] (3/3/2) 1/2 |" in block
    # bt's pick: 0.5 and 0.75 -> 0.625 ± 12.706205 * 0.176777 / √2 = 1.588276 -> [-0.963, 2.213]; label: 0.75 both
    assert "| 2 | 0.625 [-0.963, 2.213] | 0.750 [0.750, 0.750] | 1.000 [1.000, 1.000] | 0.250 [0.250, 0.250] |" in block
    assert "| 2 | +0.125 [-1.463, +1.713] |" in block  # paired: 0.25 and 0 -> 0.125 ± 1.588276
    assert "bt 0.625 [-0.963, 2.213] (label not evaluated)" in block
    assert (docs / "study" / "bon_world_win_rates.png").stat().st_size > 0


def test_bon_rows_of_a_run_dict():
    from marginkit.study.bon_world import bon_rows

    m = {"mean": 0.5, "low": 0.0, "high": 1.0}
    d = {"seed": 3, "baseline": "bt", "ns": [1, 2], "kl": [0.0, 0.19], "n_prompts": 4, "n_samples": 2,
         "per_rm": {"bt": {"judge": [m, m], "proxy": [0.1, 0.2]}, "label": {"judge": [m, m], "proxy": [0.1, 0.3]}},
         "win_rates": {"label": [{"value": 0.5, "wins": 0, "ties": 4, "losses": 0},
                                 {"value": 0.75, "wins": 2, "ties": 2, "losses": 0}]},
         "judge_diff": {"label": [{"mean": 0.0}, {"mean": 0.25}]},
         "reference": {"judge_best": [0.5, 0.9], "unguided": [0.5, 0.5]}}
    rows = bon_rows(d)
    assert [(r["rm"], r["n"]) for r in rows] == [("bt", 1), ("bt", 2), ("label", 1), ("label", 2)]
    assert rows[1]["win"] is None and rows[3]["win"] == 0.75 and rows[3]["wins"] == 2 and rows[3]["judge_diff"] == 0.25
    assert rows[3]["kl"] == 0.19 and rows[3]["judge_best"] == 0.9 and rows[3]["seed"] == 3


# ----------------------------------------------------------------------------- the DPO world pipeline


def test_pipeline_renderer_by_hand(tmp_path):
    from marginkit.study.world_pipeline import PIPELINE_ROWS, pipeline_rows

    rows = []
    for seed, (base, sft, dpo) in enumerate([(0.25, -0.25, 0.0), (0.25, 0.0, 0.25), (0.25, 0.25, 0.5)]):
        summary = {"seed": seed, "size": "quick", "noise": 0.5, "seconds": 40.0 + 10 * seed,
                   "dpo_test_pairs": {"accuracy": 0.5 + 0.125 * seed, "accuracy_true": 0.75},
                   "scores": [{"name": name, "true_reward": r, "true_reward_low": r - 1, "true_reward_high": r + 1,
                               "kl_to_sft": kl, "mean_words": 6.0, "n_samples": 8}
                              for name, r, kl in (("base policy (world sampler)", base, None), ("sft", sft, 0.0),
                                                  ("dpo", dpo, 2.0 + seed))]}
        rows += pipeline_rows(summary)
    docs = _doc(tmp_path, "dpo.md", ["world-pipeline"])
    write_rows(docs / PIPELINE_ROWS, rows)
    render(docs, renderers=["marginkit.study.world_pipeline:render_docs"])
    block = read_block((docs / "dpo.md").read_text(), "world-pipeline")
    # dpo: 0, 0.25, 0.5 -> mean 0.25, sd 0.25, half-width 4.302653 * 0.25 / √3 = 0.621034; KL 2, 3, 4 -> 3 ± 2.484
    assert "| dpo | +0.250 [-0.371, +0.871] | +0.000, +0.250, +0.500 | 3.00 [0.52, 5.48] | 6.0 [6.0, 6.0] |" in block
    assert "| base policy (world sampler) | +0.250 [+0.250, +0.250] | +0.250, +0.250, +0.250 | — |" in block
    # accuracy 0.5, 0.625, 0.75 -> 0.625 ± 4.302653 * 0.125 / √3 = 0.310517
    assert "at 0.625 [0.314, 0.936] against the labels and 0.750 [0.750, 0.750]" in block
    assert "own clock, on the shared machine): 40 to 60 s." in block
    # DPO minus SFT per seed: 0.25, 0.25, 0.25 -> 0.250 [0.250, 0.250], higher in all 3
    assert "DPO minus sft, paired by seed: +0.250 [+0.250, +0.250], DPO higher in 3 of 3 seeds." in block
    # DPO minus base: -0.25, 0, 0.25 -> 0 ± 4.302653 * 0.25 / √3 = 0.621034, higher in 1 of 3
    assert "DPO minus base policy (world sampler), paired by seed: +0.000 [-0.621, +0.621], DPO higher in 1 of 3" in block
    assert math.isclose(T2 * 0.125 / math.sqrt(3), 0.310517, abs_tol=1e-6)


def test_tune_table_by_hand():
    from marginkit.study.real.rows import format_tune_table

    def tune(lr, epochs, seed, acc):
        return {"kind": "tune", "task": "hh", "backbone": "frozen", "seed": seed, "head_lr": lr,
                "head_epochs": epochs, "val_acc": acc}

    # (1e-3, 2): 0.5, 0.5, 0.5 -> 0.5; (1e-3, 4): 0.5, 0.75, 0.75 -> 0.66667 ± 4.302653 * 0.144338 / √3
    # = 0.358558 -> [0.308, 1.025]: the best; the grid's means run from 0.500 to 0.667
    rows = [tune(1e-3, 2, s, 0.5) for s in range(3)] + [tune(1e-3, 4, s, a) for s, a in enumerate([0.5, 0.75, 0.75])]
    table = format_tune_table(rows)
    assert "| hh | 0.001, 4 | 0.667 [0.308, 1.025] | 0.500 - 0.667 | lr {0.001} x epochs {2, 4} | 0, 1, 2 |" in table
    assert format_tune_table([]) == ""


def test_world_pipeline_run_writes_its_rows(tmp_path):
    from marginkit.study.world_pipeline import WorldPipelineConfig, pipeline_rows, run_world_pipeline

    cfg = WorldPipelineConfig(out=str(tmp_path / "run"), size="tiny", seed=2)
    run_world_pipeline(cfg, console=lambda _: None)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    rows = read_rows(tmp_path / "run" / "rows.csv.gz")
    assert [r["policy"] for r in rows] == ["base policy (world sampler)", "sft", "dpo"]
    assert all(r["seed"] == 2 and r["size"] == "tiny" for r in rows)
    assert rows[2]["acc_labels"] == pytest.approx(summary["dpo_test_pairs"]["accuracy"], rel=1e-5)
    assert len(rows) == len(pipeline_rows(summary))
