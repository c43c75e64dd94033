"""The real-data margin study (study/real/): the frozen-feature head, its cache, the summary maths,
an end-to-end run on hand-made data with a judged pool, and the real tasks' splits.

Hand-made parts use a 1-layer random BERT over a word vocabulary, so nothing here needs a hub or the
MiniLM package; the real-task tests skip when ../shared/data is absent."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from marginkit.data.schema import Pair
from marginkit.data.splits import first_user_turn, normalise_prompt
from marginkit.margins import MarginInputs
from marginkit.margins.confidence import ConfidenceMargin, ConfidenceMarginConfig
from marginkit.study.real import (
    FeatureCache,
    RealStudyConfig,
    RewardHead,
    TaskData,
    head_gaps,
    head_step,
    load_task,
    run_real_study,
    sized_config,
    summarize_real,
    train_head,
)

WORDS = "p q r yes no great bad fine awful cats dogs fish food water quick slow".split()


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A 1-layer random BERT with a real WordPiece tokenizer ([CLS] a [SEP] b [SEP]) over WORDS."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("bert") / "encoder"
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])})
    assert tokenizer.unk_token_id not in tokenizer("p q", "yes great")["input_ids"]
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def outcomes(gap) -> np.ndarray:
    """Per-pair outcome, ties 1/2: 1 if Δ > 0, 1/2 if Δ = 0, 0 if Δ < 0."""
    gap = np.asarray(gap, dtype=np.float64)
    return (gap > 0) + 0.5 * (gap == 0)


def percentile_bootstrap(values, n_boot: int, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """The readable bootstrap: n_boot resamples of the values with replacement, drawn one at a time from
    default_rng(seed); the (1 - level)/2 and (1 + level)/2 quantiles of the resample means."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = [values[rng.integers(0, values.size, size=values.size)].mean() for _ in range(n_boot)]
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def t_interval_by_hand(x) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval of two values: half-width t_{0.975, 1} sd / sqrt(2)."""
    assert len(x) == 2
    mean, sd = float(np.mean(x)), float(np.std(x, ddof=1))
    half = 12.706204736 * sd / math.sqrt(2)
    return mean, mean - half, mean + half


def _no_labels(b: int) -> dict[str, torch.Tensor]:
    nan = torch.full((b,), float("nan"))
    return {"label_margin": nan, "score_gap": nan, "gold_gap": nan}


# ----------------------------------------------------------------------------- the head and its step


def _unit_head() -> RewardHead:
    """1 feature, 1 hidden unit: r(x) = gelu(x) (mean 0, std 1, W1 = 1, b1 = 0, w2 = 1, b2 = 0)."""
    head = RewardHead(torch.zeros(1), torch.ones(1), hidden=1)
    with torch.no_grad():
        head.body[0].weight.fill_(1.0)
        head.body[0].bias.zero_()
        head.out.weight.fill_(1.0)
    return head


def test_head_starts_at_ln2():
    head = RewardHead(torch.zeros(5), torch.ones(5), hidden=8)
    xc, xr = torch.randn(4, 5), torch.randn(4, 5)
    from marginkit.margins.none import NoMargin

    loss, target = head_step(head, xc, xr, _no_labels(4), torch.arange(4), NoMargin(), 0)
    assert_close(loss, torch.tensor(math.log(2)))
    assert target.shape == (4,) and not target.requires_grad


def test_head_step_by_hand():
    from marginkit.margins.fixed import FixedMargin, FixedMarginConfig

    head = _unit_head()
    gelu2 = 2 * 0.5 * (1 + math.erf(2 / math.sqrt(2)))  # gelu(2) = 2 Φ(2) = 1.95450
    xc, xr = torch.tensor([[2.0]]), torch.tensor([[0.0]])  # r_c = gelu(2), r_r = gelu(0) = 0
    loss, target = head_step(head, xc, xr, _no_labels(1), torch.arange(1),
                             FixedMargin(FixedMarginConfig(value=0.5)), 0)
    expected = math.log1p(math.exp(-(gelu2 - 0.5)))  # -log σ(Δ - m)
    assert abs(loss.item() - expected) < 1e-6
    assert target.tolist() == [0.5]
    loss.backward()  # the margin is detached: gradient flows through the rewards only
    # L = softplus(m - Δ) with Δ = w2 (gelu(2) - gelu(0)) + (b2 - b2): dL/dw2 = -σ(m - Δ) gelu(2), dL/db2 = 0
    sigma = 1 / (1 + math.exp(-(0.5 - gelu2)))
    assert_close(head.out.weight.grad, torch.tensor([[-sigma * gelu2]]))
    assert_close(head.out.bias.grad, torch.tensor([0.0]))


def test_reference_gaps_by_hand():
    ref = ConfidenceMargin(ConfidenceMarginConfig(filter="none", source="reference", reference_model="head:bt"))
    ref.set_reference_gaps(torch.tensor([[1.0, -2.0, 3.0]]), ["bt"])
    out = ref(MarginInputs(torch.zeros(2), *[torch.full((2,), float("nan"))] * 3, index=torch.tensor([2, 1])))
    assert out.target_margin.tolist() == [3.0, 0.0]  # -2 clipped at min_margin 0
    ens = ConfidenceMargin(ConfidenceMarginConfig(filter="none", source="ensemble", ensemble_models=["a", "b"],
                                                  ensemble_std_coef=0.5))
    ens.set_reference_gaps(torch.tensor([[1.0, 3.0], [3.0, 5.0]]), ["a", "b"])
    out = ens(MarginInputs(torch.zeros(2), *[torch.full((2,), float("nan"))] * 3, index=torch.tensor([0, 1])))
    # mean (2, 4), sample std sqrt(2) each: m = mean - 0.5 sqrt(2)
    assert_close(out.target_margin, torch.tensor([2 - 0.5 * math.sqrt(2), 4 - 0.5 * math.sqrt(2)]))
    with pytest.raises(ValueError, match="one key per row"):
        ref.set_reference_gaps(torch.zeros(2, 3), ["only one"])


def test_label_margin_widens_the_head_gaps():
    # A known effect: with every label gap 8, the label margin asks each pair for Δ >= 0.5 x 8 = 4, where BT's
    # loss is already small at Δ = 1; so the margin's head ends with clearly wider training gaps.
    torch.manual_seed(123)
    xc, xr = torch.randn(40, 6) + 0.5, torch.randn(40, 6)
    pairs = [Pair("p", "c", "r", score_chosen=9.0, score_rejected=1.0) for _ in range(40)]
    cfg = RealStudyConfig(head_epochs=10, head_batch_size=8, head_hidden=8, head_lr=0.1)
    bt, _ = train_head(cfg, xc, xr, pairs, {"name": "none"}, seed=0)
    label, _ = train_head(cfg, xc, xr, pairs, {"name": "label", "label": {"source": "score_gap", "scale": 0.5}}, seed=0)
    # measured: mean training gap 2.9 for BT, 5.4 with the margin
    assert head_gaps(label, xc, xr).mean() > head_gaps(bt, xc, xr).mean() + 1.0


def test_train_head_is_deterministic_per_seed():
    torch.manual_seed(123)
    xc, xr = torch.randn(40, 6) + 0.5, torch.randn(40, 6)
    pairs = [Pair("p", "c", "r") for _ in range(40)]
    cfg = RealStudyConfig(head_epochs=2, head_batch_size=16, head_hidden=8)
    a, curve = train_head(cfg, xc, xr, pairs, {"name": "none"}, seed=0, val=(xc, xr))
    b, _ = train_head(cfg, xc, xr, pairs, {"name": "none"}, seed=0)
    c, _ = train_head(cfg, xc, xr, pairs, {"name": "none"}, seed=1)
    assert np.array_equal(head_gaps(a, xc, xr), head_gaps(b, xc, xr))
    assert not np.array_equal(head_gaps(a, xc, xr), head_gaps(c, xc, xr))
    assert [p["step"] for p in curve] == [3, 6]  # ceil(40 / 16) = 3 steps per epoch
    with pytest.raises(ValueError, match="reference gaps"):
        train_head(cfg, xc, xr, pairs, {"name": "confidence", "confidence": {"source": "reference",
                                                                             "reference_model": "x"}}, seed=0)


# ----------------------------------------------------------------------------- the feature cache


def test_feature_cache_by_hand_and_reuse(bert_dir, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    said: list[str] = []
    cache = FeatureCache(bert_dir, 16, tmp_path, say=said.append)
    feats = cache.get(["p q", "p"], ["yes great", "cats dogs fish"])
    assert feats.shape == (2, 32)  # [CLS] state and masked mean, 16 each
    tok, model = AutoTokenizer.from_pretrained(bert_dir), AutoModel.from_pretrained(bert_dir).eval()
    with torch.no_grad():
        enc = tok("p", "cats dogs fish", return_tensors="pt")
        h = model(**enc).last_hidden_state[0]  # [T, 16], no padding: the mean is over every token
    assert_close(feats[1], torch.cat([h[0], h.mean(0)]), atol=1e-5, rtol=1e-5)
    encoded = [s for s in said if "encoding" in s]
    assert len(encoded) == 1 and "2 new texts" in encoded[0]
    again = FeatureCache(bert_dir, 16, tmp_path, say=said.append)  # from disk: nothing to encode
    assert_close(again.get(["p"], ["cats dogs fish"]), feats[1:])
    assert len([s for s in said if "encoding" in s]) == 1
    again.get(["r"], ["slow"])
    assert "1 new texts" in said[-2] and len(again.index) == 3


# ----------------------------------------------------------------------------- summary maths


def _row(seed, variant, acc, val, ood, family=None):
    return {"seed": seed, "variant": variant, "family": family or variant.split("-")[0], "acc": acc, "val_acc": val,
            "skewness": 0.0, "ood_mean": ood, "sections": {"s": ood}, "train_seconds": 1.0}


def test_summarize_real_by_hand():
    rows = [_row(0, "bt", 0.60, 0.50, 0.55), _row(1, "bt", 0.70, 0.52, 0.57),
            _row(0, "fixed-1", 0.65, 0.49, 0.56), _row(1, "fixed-1", 0.70, 0.51, 0.57),
            _row(0, "fixed-0.5", 0.60, 0.52, 0.55), _row(1, "fixed-0.5", 0.70, 0.54, 0.57)]
    s = summarize_real(rows)
    fixed = next(e for e in s["table"] if e["variant"] == "fixed-1")
    # paired differences 0.05 and 0.00: mean 0.025, sd 0.05/sqrt(2), half-width t_{0.975,1} sd / sqrt(2)
    half = 12.706204736 * (0.05 / math.sqrt(2)) / math.sqrt(2)
    assert_close(torch.tensor(fixed["acc_vs_bt"]), torch.tensor([0.025, 0.025 - half, 0.025 + half]), rtol=1e-6,
                 atol=1e-6)
    assert s["chosen"]["fixed"] == "fixed-0.5"  # mean val 0.53 > 0.50; test accuracy plays no part


def _bon_row(seed, variant, picks_n2):
    """A Best-of-N row over 3 instructions at N = 1 (every RM takes candidate 1: gold 0.5) and N = 2."""
    picks = [[0.5, 0.5, 0.5], picks_n2]
    return {"seed": seed, "variant": variant, "ns": [1, 2], "gold": [float(np.mean(p)) for p in picks],
            "lc_gold": [float(np.mean(p)) for p in picks], "win": None, "lc_win": None, "agree_longest": [1.0, 0.5],
            "pick_chars": [10.0, 12.0], "judge_best": [0.5, 0.9], "pick_gold": picks, "pick_lc_gold": picks}


def test_summarize_real_pair_and_instruction_bootstraps_by_hand():
    correct = {(0, "bt"): [1, 0, 1, 0, 1, 1, 0, 0], (1, "bt"): [1, 1, 0, 0, 1, 0, 1, 0],
               (0, "fixed-1"): [1, 1, 1, 0, 1, 1, 1, 0], (1, "fixed-1"): [1, 1, 0, 1, 1, 1, 1, 1]}
    rows = [{**_row(seed, name, float(np.mean(c)), 0.5, 0.5), "test_correct": c} for (seed, name), c in correct.items()]
    bon = [_bon_row(0, "bt", [0.1, 0.5, 0.9]), _bon_row(1, "bt", [0.1, 0.5, 0.9]),
           _bon_row(0, "fixed-1", [0.9, 0.5, 0.1]), _bon_row(1, "fixed-1", [0.9, 0.2, 0.1])]
    s = summarize_real(rows, bon, n_boot=300)
    fixed = next(e for e in s["table"] if e["variant"] == "fixed-1")
    # per-pair differences (0, 1, 0, 0, 0, 0, 1, 0) and (0, 0, 0, 1, 0, 1, 0, 1): seed-averaged
    # d = (0, 1/2, 0, 1/2, 0, 1/2, 1/2, 1/2), mean 5/16, bootstrapped over the 8 pairs
    d = [0, 0.5, 0, 0.5, 0, 0.5, 0.5, 0.5]
    assert fixed["acc_vs_bt_pairs"] == pytest.approx((5 / 16, *percentile_bootstrap(d, 300)))
    # fixed-1's picks against BT's: N = 1 all ties (1/2); N = 2 outcomes (1, 1/2, 0) and (1, 0, 0) -> per
    # instruction (1, 1/4, 0), mean 5/12, bootstrapped over the 3 instructions
    (win,) = [e["win_instr"] for e in s["bon"] if e["variant"] == "fixed-1"]
    assert win[0] == (0.5, 0.5, 0.5)
    assert win[1] == pytest.approx((5 / 12, *percentile_bootstrap([1, 0.25, 0], 300)))
    assert next(e for e in s["bon"] if e["variant"] == "bt")["win_instr"] is None


# ----------------------------------------------------------------------------- end to end, with a judged pool


def _toy_task() -> TaskData:
    from marginkit.evaluate.offline_bon import JudgedPool

    good, bad = ["yes great", "fine food", "great fish", "quick yes"], ["no bad", "awful water", "bad slow", "no no"]
    def pairs(n, shift):
        return [Pair("p " + WORDS[(i + shift) % 3], good[i % 4], bad[(i + 1) % 4], score_chosen=5.0 + i % 3,
                     score_rejected=2.0) for i in range(n)]
    pool = JudgedPool(instructions=["p", "q", "r"], responses=[["fine", "great yes", "bad"]] * 3,
                      generators=[["ref", "m1", "m2"]] * 3, gold=np.array([[0.5, 0.9, 0.1]] * 3), reference=0)
    return TaskData("alpaca-eval", pairs(24, 0), pairs(8, 1), pairs(8, 2), graded=True, pool=pool)


def test_run_real_study_end_to_end_and_resume(bert_dir, tmp_path):
    cfg = RealStudyConfig(task="alpaca-eval", out=str(tmp_path / "study"), encoder=str(bert_dir), seeds=[0, 1],
                          variants=["bt", "label-0.5", "conf-ref", "ot-2"], max_length=16, sections=[],
                          head_epochs=2, head_batch_size=8, head_hidden=8, n_boot=20)
    said: list[str] = []
    summary = run_real_study(cfg, say=said.append, data=_toy_task(), sections=[])
    rows = [json.loads(x) for x in (tmp_path / "study" / "results.jsonl").read_text().splitlines()]
    assert sorted((r["seed"], r["variant"]) for r in rows) == sorted(
        (s, v) for s in (0, 1) for v in ("bt", "label-0.5", "conf-ref", "ot-2"))
    by = {(r["seed"], r["variant"]): r for r in rows}

    # Each seed-0 row equals the same head trained outside the study (train_head, seed 0) on the study's cached
    # features: BT, the label margin, the confidence margin with the BT head's training gaps as its reference,
    # and OT on the head's hidden layer.
    data = _toy_task()
    cache = FeatureCache(bert_dir, 16, tmp_path / "cache", say=lambda _: None)
    xc, xr = cache.pairs(data.train)
    test = cache.pairs(data.test)
    bt = train_head(cfg, xc, xr, data.train, {"name": "none"}, seed=0)[0]
    reference = torch.from_numpy(head_gaps(bt, xc, xr))[None]
    heads = {"bt": bt,
             "label-0.5": train_head(cfg, xc, xr, data.train, {"name": "label", "label": {
                 "source": "score_gap", "scale": 0.5}}, seed=0)[0],
             "conf-ref": train_head(cfg, xc, xr, data.train, {"name": "confidence", "confidence": {
                 "source": "reference", "reference_model": "head:bt"}}, seed=0, reference_gaps=reference)[0],
             "ot-2": train_head(cfg, xc, xr, data.train, {"name": "ot", "ot": {"scale": 2.0}}, seed=0)[0]}
    labels = np.abs([p.score_gap for p in data.test])  # 3, 4, 5, 3, 4, 5, 3, 4
    for name, head in heads.items():
        gap = head_gaps(head, *test)
        row = by[(0, name)]
        assert row["test_correct"] == outcomes(gap).tolist(), name
        assert row["acc"] == pytest.approx(outcomes(gap).mean()) and row["mean_gap"] == pytest.approx(gap.mean())
        # by |label| quartile: each bucket [low, high) (the last one closed) holds its pairs' outcomes
        assert row["by_label"][0]["low"] == 3 and row["by_label"][-1]["high"] == 5
        assert sum(b["n"] for b in row["by_label"]) == 8
        for j, b in enumerate(row["by_label"]):
            inside = (labels >= b["low"]) & ((labels <= b["high"]) if j == len(row["by_label"]) - 1 else
                                             (labels < b["high"]))
            assert b["n"] == inside.sum() and b["acc"] == pytest.approx(outcomes(gap)[inside].mean()), (name, j)
    assert by[(0, "conf-ref")]["test_correct"] != by[(0, "bt")]["test_correct"] or \
        by[(0, "conf-ref")]["mean_gap"] != pytest.approx(by[(0, "bt")]["mean_gap"])  # the reference margin acts

    # the summary, recomputed from the rows: t-intervals over the 2 seeds, the paired difference to BT per seed,
    # and the bootstrap over test pairs of the seed-averaged per-pair difference (2000 resamples, seed 0)
    table = {e["variant"]: e for e in summary["table"]}
    for name in ("label-0.5", "conf-ref", "ot-2"):
        mine, bts = [by[(s, name)] for s in (0, 1)], [by[(s, "bt")] for s in (0, 1)]
        assert table[name]["acc"] == pytest.approx(t_interval_by_hand([r["acc"] for r in mine]), nan_ok=True)
        assert table[name]["acc_vs_bt"] == pytest.approx(
            t_interval_by_hand([r["acc"] - b["acc"] for r, b in zip(mine, bts)]), nan_ok=True)
        d = (np.array([r["test_correct"] for r in mine]) - np.array([b["test_correct"] for b in bts])).mean(0)  # [8]
        assert table[name]["acc_vs_bt_pairs"] == pytest.approx((d.mean(), *percentile_bootstrap(d, 2000)))

    bon = [json.loads(x) for x in (tmp_path / "study" / "bon.jsonl").read_text().splitlines()]
    assert sorted({b["variant"] for b in bon}) == ["bt", "conf-ref", "label-0.5", "longest", "ot-2"]
    for b in bon:  # the per-instruction picks stored for the bootstrap are offline_best_of_n's picks
        assert [float(np.mean(g)) for g in b["pick_gold"]] == pytest.approx(b["gold"])
        assert [float(np.mean(g)) for g in b["pick_lc_gold"]] == pytest.approx(b["lc_gold"])
    longest = next(b for b in bon if b["variant"] == "longest")
    assert longest["gold"][-1] == pytest.approx(0.9)  # "great yes" is the longest of 3 and the judge's best
    assert [e["variant"] for e in summary["bon"]][0] == "bt"
    # win rate of label-0.5's picks over BT's, per N: outcome (ties 1/2) of the two picks' gold per seed and
    # instruction, averaged over seeds, then bootstrapped over the 3 instructions (2000 resamples, seed 0)
    lab = next(e for e in summary["bon"] if e["variant"] == "label-0.5")
    picks = {(b["seed"], b["variant"]): b for b in bon}
    assert len(lab["win_instr"]) == len(lab["ns"]) == 3
    for j, got in enumerate(lab["win_instr"]):
        w = np.mean([outcomes(np.subtract(picks[(s, "label-0.5")]["pick_gold"][j], picks[(s, "bt")]["pick_gold"][j]))
                     for s in (0, 1)], axis=0)  # [3 instructions]
        assert got == pytest.approx((w.mean(), *percentile_bootstrap(w, 2000))), j
    assert lab["win_instr"][0] == pytest.approx((0.5, 0.5, 0.5))  # N = 1: both take the first candidate
    md = (tmp_path / "study" / "study.md").read_text()
    assert "Offline Best-of-N" in md and "|label gap| quartile" in md and "Length alone" in md
    # test pairs i = 0..7 (shift 2): chosen good[i % 4], rejected bad[(i + 1) % 4]; "longer wins" by hand
    good, bad = ["yes great", "fine food", "great fish", "quick yes"], ["no bad", "awful water", "bad slow", "no no"]
    by_hand = np.mean([1.0 if len(good[i % 4]) > len(bad[(i + 1) % 4]) else 0.5 if len(good[i % 4]) == len(
        bad[(i + 1) % 4]) else 0.0 for i in range(8)])
    assert summary["length_baseline"]["test"] == pytest.approx(by_hand)
    assert (tmp_path / "study" / "study_accuracy.png").exists() and (tmp_path / "study" / "study_bon.png").exists()
    said.clear()
    run_real_study(cfg, say=said.append, data=_toy_task(), sections=[])  # resume: nothing left to train
    assert any("0 runs to do" in s for s in said)
    assert len((tmp_path / "study" / "results.jsonl").read_text().splitlines()) == len(rows)
    with pytest.raises(ValueError, match="other settings.*head_epochs"):  # rows of other settings are never mixed
        run_real_study(RealStudyConfig(**{**cfg.__dict__, "head_epochs": 3}), say=said.append, data=_toy_task(),
                       sections=[])


def test_oracle_and_label_variants_are_refused_where_they_cannot_work():
    with pytest.raises(ValueError, match="no graded labels"):
        RealStudyConfig(task="hh", variants=["label-0.5"]).chosen_variants()
    with pytest.raises(ValueError, match="true rewards"):
        RealStudyConfig(task="ultrafeedback", variants=["oracle-1"]).chosen_variants()
    with pytest.raises(ValueError, match="study task"):
        RealStudyConfig(task="imdb")


def test_sized_config_layers(tmp_path):
    quick = sized_config("alpaca-eval", "quick")
    assert (quick.max_length, quick.max_train_pairs, quick.backbone) == (128, 4000, "frozen")
    assert sized_config("hh", "quick").max_train_pairs == 0
    assert sized_config("hh", "full").max_length == 256
    path = tmp_path / "s.yaml"
    path.write_text("task: ultrafeedback\nhead_epochs: 3\nseeds: [7]\n")
    cfg = sized_config("ultrafeedback", "quick", str(path), ["head_lr=0.01", "seeds=[1,2]"])
    assert (cfg.head_epochs, cfg.head_lr, cfg.seeds, cfg.max_length) == (3, 0.01, [1, 2], 128)


@pytest.mark.parametrize("name", ["configs/study/hh.yaml", "configs/study/ultrafeedback.yaml",
                                  "configs/study/alpaca-eval.yaml"])
def test_shipped_study_configs_load(name):
    root = Path(__file__).resolve().parents[1]
    task = Path(name).stem
    cfg = sized_config(task, "quick", str(root / name))
    code = sized_config(task, "quick")  # the file spells out the code's defaults (the head tuned on validation)
    assert {**cfg.__dict__, "variants": []} == {**code.__dict__, "variants": []}
    assert cfg.chosen_variants() == code.chosen_variants()


# ----------------------------------------------------------------------------- the real tasks


DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.parametrize("task, sizes", [("hh", (1842, 231, 230)), ("ultrafeedback", (895, 99, 199)),
                                         ("alpaca-eval", None)])
def test_real_tasks_split_without_leaks(task, sizes):
    import os

    data = Path(os.environ.get("MARGINKIT_SHARED_DATA", DATA))
    if not data.is_dir():
        pytest.skip(f"shared data folder {data} is absent (set MARGINKIT_SHARED_DATA)")
    td = load_task(RealStudyConfig(task=task, data_dir=str(data)))
    if sizes is not None:
        assert (len(td.train), len(td.val), len(td.test)) == sizes
    key = first_user_turn if task == "hh" else normalise_prompt
    parts = [{key(p.prompt) for p in ps} for ps in (td.train, td.val, td.test)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert td.notes  # what was read, skipped and split is reported
    if task == "alpaca-eval":
        assert (len(parts[0]), len(parts[1]), len(parts[2])) == (644, 80, 81)
        assert len(td.pool) == 81 and td.pool.k == 9
        assert all(math.isfinite(p.score_gap) for p in td.train)
    again = load_task(RealStudyConfig(task=task, data_dir=str(data)))
    assert [p.chosen for p in again.test] == [p.chosen for p in td.test]  # deterministic


def test_finetune_backbone_end_to_end(bert_dir, tmp_path):
    """backbone=finetune trains the whole encoder through train-rm and scores like eval-rm; conf-ref reads
    the gaps of the seed's own BT folder."""
    cfg = RealStudyConfig(task="alpaca-eval", backbone="finetune", out=str(tmp_path / "ft"), encoder=str(bert_dir),
                          seeds=[0], variants=["bt", "conf-ref"], max_length=16, sections=[], batch_size=8,
                          learning_rate=1e-3, n_boot=20)
    summary = run_real_study(cfg, say=lambda _: None, data=_toy_task(), sections=[])
    assert [e["variant"] for e in summary["table"]] == ["bt", "conf-ref"]
    assert (tmp_path / "ft" / "seed0" / "bt" / "model" / "config.json").exists()
    assert (tmp_path / "ft" / "seed0" / "conf-ref" / "model" / "config.json").exists()
    rows = [json.loads(x) for x in (tmp_path / "ft" / "results.jsonl").read_text().splitlines()]
    assert all(r["backbone"] == "finetune" for r in rows)
    # each row's test accuracy is eval-rm's on the saved folder: the tie-half fraction of its test-pair gaps
    from marginkit.evaluate.rm_eval import EvalConfig, evaluate_rm_dir

    for r in rows:
        report = evaluate_rm_dir(tmp_path / "ft" / "seed0" / r["variant"] / "model", _toy_task().test,
                                 EvalConfig(swap_test=False, n_boot=10), progress=False)
        np.testing.assert_allclose(r["test_correct"], outcomes(report.gaps))
        assert r["acc"] == pytest.approx(outcomes(report.gaps).mean()) and r["mean_gap"] == pytest.approx(
            float(np.mean(report.gaps)), rel=1e-5, abs=1e-6)
    assert {b["variant"] for b in summary["bon"]} == {"bt", "conf-ref", "longest"}


def test_tune_head_ranks_by_validation(bert_dir, tmp_path):
    from marginkit.study.real import tune_head

    cfg = RealStudyConfig(task="alpaca-eval", out=str(tmp_path / "t" / "alpaca-eval"), encoder=str(bert_dir),
                          max_length=16, head_batch_size=8, head_hidden=8)
    rows = tune_head(cfg, lrs=(1e-3, 1e-2), epochs=(1, 2), seeds=(0,), say=lambda _: None, data=_toy_task())
    assert len(rows) == 4 and [r["val_acc"][0] for r in rows] == sorted((r["val_acc"][0] for r in rows), reverse=True)


def test_paired_test_pair_bootstrap_by_hand():
    from marginkit.study.real import paired_pair_bootstrap

    bt = [{"test_correct": [1, 0, 1, 0]}, {"test_correct": [1, 1, 0, 0]}]
    var = [{"test_correct": [1, 1, 1, 0]}, {"test_correct": [1, 1, 0, 1]}]
    # per-seed differences (0, 1, 0, 0) and (0, 0, 0, 1): seed-averaged d = (0, 0.5, 0, 0.5), mean 0.25
    mean, low, high = paired_pair_bootstrap(var, bt, n_boot=500)
    assert mean == 0.25 and (low, high) == pytest.approx(percentile_bootstrap([0, 0.5, 0, 0.5], 500, seed=0))
    # the same difference on every test pair: every resample has mean 0.5, the interval collapses onto it
    assert paired_pair_bootstrap(var[:1], [{"test_correct": [0.5, 0.5, 0.5, -0.5]}], n_boot=50) == (0.5, 0.5, 0.5)
    assert paired_pair_bootstrap(var, bt, n_boot=500) == (mean, low, high)  # seeded
    assert all(math.isnan(v) for v in paired_pair_bootstrap(var, bt[:1], n_boot=10))


def test_win_bootstrap_by_hand():
    from marginkit.study.real import win_bootstrap

    # 2 seeds x 3 instructions: outcomes (1, 0.5, 0) and (1, 0, 0) -> per instruction (1, 0.25, 0), mean 5/12
    mean, low, high = win_bootstrap([[0.9, 0.5, 0.1], [0.9, 0.2, 0.1]], [[0.1, 0.5, 0.9], [0.1, 0.5, 0.9]], 400)
    assert mean == pytest.approx(5 / 12) and (low, high) == pytest.approx(percentile_bootstrap([1, 0.25, 0], 400))
    # A always ahead: every instruction's outcome is 1, every resample's mean too
    assert win_bootstrap([[0.9, 0.5]], [[0.1, 0.2]], 50) == (1.0, 1.0, 1.0)


def test_seeds_in_parallel_processes_give_the_same_rows(bert_dir, tmp_path):
    base = dict(task="alpaca-eval", encoder=str(bert_dir), seeds=[0, 1], variants=["bt", "label-0.5"], max_length=16,
                sections=[], head_epochs=2, head_batch_size=8, head_hidden=8, n_boot=20)
    one = run_real_study(RealStudyConfig(out=str(tmp_path / "a" / "t"), **base), say=lambda _: None, data=_toy_task(),
                         sections=[])
    two = run_real_study(RealStudyConfig(out=str(tmp_path / "b" / "t"), jobs=2, **base), say=lambda _: None,
                         data=_toy_task(), sections=[])

    def rows(folder):
        out = [json.loads(x) for x in (tmp_path / folder / "t" / "results.jsonl").read_text().splitlines()]
        return sorted(((r["seed"], r["variant"]), r["acc"], r["mean_gap"]) for r in out)

    a, b = rows("a"), rows("b")
    assert [r[0] for r in a] == [r[0] for r in b] and [r[1] for r in a] == [r[1] for r in b]
    assert [r[2] for r in a] == pytest.approx([r[2] for r in b], abs=1e-5)
    assert [e["variant"] for e in one["bon"]] == [e["variant"] for e in two["bon"]]
