"""The margin map (issue 15): the well-specified features, the soft-label loss, the statistics behind the tables,
the shared fitting step, and the `--quick` study end to end. Expected values are worked out by hand below."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from marginkit.data.world import WorldConfig, make_world, true_rewards, vocabulary
from marginkit.data.world.features import FEATURE_NAMES, TRUE_WEIGHTS, features
from marginkit.evaluate.stats import holm, holm_levels, min_detectable_effect, pooled_se_interval, t_test_p
from marginkit.losses import bt_loss, soft_bt_loss
from marginkit.study.margin_map.fit import (
    LinearRM,
    clean_pairs,
    fit_linear,
    pair_step,
    split_tensors,
)
from marginkit.study.margin_map.report import compare, controls_block
from marginkit.study.margin_map.runner import MapConfig, parse_noise, run_map
from marginkit.study.margin_map.variants import VARIANTS

# ----------------------------------------------------------------------------- features: the true reward is linear


def test_true_reward_is_linear_in_the_features_on_world_pairs() -> None:
    world = make_world(WorldConfig(seed=3, n_train=1500, n_val=0, n_test=0))
    prompts = [p.prompt for p in world.train] * 2
    responses = [p.chosen for p in world.train] + [p.rejected for p in world.train]
    phi = features(prompts, responses)
    assert phi.shape == (3000, len(FEATURE_NAMES)) == (3000, 78)
    np.testing.assert_allclose(phi @ TRUE_WEIGHTS, true_rewards(prompts, responses), atol=1e-12)


def test_features_by_hand() -> None:
    # docs/world.md's worked example: "suggest a spicy dinner for a friend who is vegetarian." / "try a lentil
    # curry." = 1.0 (curry is spicy: shown:spicy = weight 1.0) + 0.3 (classic "lentil curry"); lentil is the one
    # ingredient, so appeal:lentil = 1/1 (its appeal is 0.0).
    phi = features(["suggest a spicy dinner for a friend who is vegetarian."], ["try a lentil curry."])[0]
    named = {FEATURE_NAMES[j]: phi[j] for j in np.flatnonzero(phi)}
    assert named == {"shown:spicy": 1.0, "classic": 1.0, "appeal:lentil": 1.0}
    assert phi @ TRUE_WEIGHTS == pytest.approx(1.3)
    # same prompt, "try a spicy beef curry with cheese.": beef breaks the diet (-2), two ingredients share the
    # appeal (beef 0.1, cheese 0.2: mean 0.15), "spicy" is stated but the curry already shows it (shown wins)
    phi = features(["suggest a spicy dinner for a friend who is vegetarian."], ["try a spicy beef curry with cheese."])[0]
    named = {FEATURE_NAMES[j]: phi[j] for j in np.flatnonzero(phi)}
    assert named == {"shown:spicy": 1.0, "diet:beef": 1.0, "appeal:beef": 0.5, "appeal:cheese": 0.5}
    assert phi @ TRUE_WEIGHTS == pytest.approx(1.0 - 2.0 + 0.15)


@given(st.lists(st.sampled_from(vocabulary() + ["zzz", "not"]), max_size=30),
       st.lists(st.sampled_from(vocabulary() + ["zzz", "no"]), max_size=30))
def test_true_reward_is_linear_in_the_features_on_any_text(prompt: list[str], response: list[str]) -> None:
    p, r = " ".join(prompt), " ".join(response)
    assert features([p], [r])[0] @ TRUE_WEIGHTS == pytest.approx(true_rewards([p], [r])[0], abs=1e-12)


# ----------------------------------------------------------------------------- the soft-label loss


def test_soft_bt_loss_by_hand() -> None:
    c = torch.tensor([0.0, math.log(3.0), 2.0])
    r = torch.zeros(3)
    p = torch.tensor([0.3, 0.75, 1.0])
    out = soft_bt_loss(c, r, p).losses
    # Δ = 0: -0.3 ln ½ - 0.7 ln ½ = ln 2 for any p
    assert out[0].item() == pytest.approx(math.log(2.0))
    # Δ = ln 3: σ = 0.75, so -0.75 ln 0.75 - 0.25 ln 0.25 = 0.21576 + 0.34657 = 0.56233 (the target's entropy)
    assert out[1].item() == pytest.approx(0.5623351446, rel=1e-6)
    # p = 1 is plain BT: softplus(-2) = ln(1 + e^-2) = 0.126928
    assert out[2].item() == pytest.approx(0.1269280110, rel=1e-6)
    assert out[2].item() == pytest.approx(bt_loss(c[2:], r[2:]).losses.item())


def test_soft_bt_loss_gradient_is_sigma_minus_p() -> None:
    gap = torch.tensor([0.7, -1.2], requires_grad=True)
    p = torch.tensor([0.9, 0.2])
    soft_bt_loss(gap, torch.zeros(2), p).losses.sum().backward()
    np.testing.assert_allclose(gap.grad.numpy(), (torch.sigmoid(gap.detach()) - p).numpy(), rtol=1e-6)


def test_soft_bt_loss_rejects_bad_targets() -> None:
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        soft_bt_loss(torch.zeros(2), torch.zeros(2), torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="detached"):
        soft_bt_loss(torch.zeros(2), torch.zeros(2), torch.tensor([0.5, 0.5], requires_grad=True))


# ----------------------------------------------------------------------------- statistics of the tables


def test_t_test_p_by_hand() -> None:
    # [1, 2, 3]: mean 2, sd 1, t = 2 / (1/√3) = 3.4641 on 2 df; two-sided p = 0.07418
    assert t_test_p([1.0, 2.0, 3.0]) == pytest.approx(0.0741799, rel=1e-4)
    assert t_test_p([0.5, 0.5]) == 0.0 and t_test_p([0.0, 0.0]) == 1.0 and math.isnan(t_test_p([1.0]))


def test_holm_by_hand() -> None:
    # sorted 0.01, 0.03, 0.04 (m = 3): 3·0.01 = 0.03, 2·0.03 = 0.06, 1·0.04 = 0.04 -> running max 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, math.nan]) == [0.5, pytest.approx(math.nan, nan_ok=True)]
    assert holm([0.4, 0.9]) == pytest.approx([0.8, 0.9])  # 2·0.4 = 0.8, then max(0.8, 1·0.9)
    assert holm_levels([0.01, 0.04, 0.03]) == pytest.approx([1 - 0.05 / 3, 1 - 0.05, 1 - 0.05 / 2])


def test_pooled_interval_and_detectable_effect_by_hand() -> None:
    # d̄ = 0.03, se = sqrt(0.01² + 0.01²) / 2 = 0.0070711, 95%: ± 1.95996 · 0.0070711 = ± 0.013859
    mean, lo, hi = pooled_se_interval([0.02, 0.04], [0.01, 0.01])
    assert (mean, lo, hi) == pytest.approx((0.03, 0.03 - 0.0138590, 0.03 + 0.0138590), abs=1e-6)
    # (t_9(0.975) + t_9(0.8)) · 0.01 / √10 = (2.26216 + 0.88340) · 0.0031623 = 0.0099471
    assert min_detectable_effect(0.01, 10) == pytest.approx(0.0099471, rel=1e-4)


def test_compare_gives_the_paired_seed_interval_and_holm() -> None:
    rows = []
    for seed, (da, db) in enumerate([(0.01, 0.00), (0.02, 0.01), (0.03, -0.01)]):
        for variant, d in (("bt", None), ("label-0.5", da), ("fixed-1", db)):
            row = {"rm": "linear", "noise": "bt:0.5", "n": 250, "seed": seed, "variant": variant, "acc": 0.8,
                   "val_acc": 0.7}
            if d is not None:
                row.update(d_acc=d, se_acc=0.01)
            rows.append(row)
    comps = {c["variant"]: c for c in compare(rows)}
    # label-0.5: d = 1, 2, 3 points -> mean 2, p 0.07418 (as test_t_test_p); fixed-1: 0, 1, -1 -> mean 0, p 1
    assert comps["label-0.5"]["d"] == pytest.approx(2.0) and comps["label-0.5"]["p"] == pytest.approx(0.07418, rel=1e-3)
    assert comps["fixed-1"]["d"] == pytest.approx(0.0) and comps["fixed-1"]["p"] == pytest.approx(1.0)
    # Holm over the 2: 2 · 0.07418 = 0.14836, then max(0.14836, 1.0) = 1.0
    assert comps["label-0.5"]["p_holm"] == pytest.approx(0.14836, rel=1e-3) and comps["fixed-1"]["p_holm"] == 1.0
    assert comps["label-0.5"]["m"] == 2


# ----------------------------------------------------------------------------- the step and the fits


def test_pair_step_uses_the_margin_interface_and_starts_at_ln2() -> None:
    world = make_world(WorldConfig(seed=0, n_train=64, n_val=0, n_test=0))
    data = split_tensors(world.train)
    model = LinearRM(data.xc.shape[1])
    rc, hc = model(data.xc)
    rr, hr = model(data.xr)
    from marginkit.study.margin_map.fit import build_strategy

    idx = torch.arange(64)
    for name in ("bt", "soft", "smooth-0.2", "conf-batch", "ot-2", "label-0.5"):
        loss = pair_step(rc, rr, hc, hr, data.labels, idx, build_strategy(VARIANTS[name], None), 0, VARIANTS[name])
        if name in ("bt", "soft", "smooth-0.2", "conf-batch"):  # zero gaps: margin 0 or no pair below the mean
            assert loss.item() == pytest.approx(math.log(2.0), abs=1e-6), name
    # a fixed margin m at Δ = 0 costs softplus(m) per pair: m = 1 -> ln(1 + e) = 1.313262
    loss = pair_step(rc, rr, hc, hr, data.labels, idx, build_strategy(VARIANTS["fixed-1"], None), 0, VARIANTS["fixed-1"])
    assert loss.item() == pytest.approx(1.3132616, rel=1e-6)
    with pytest.raises(ValueError, match="needs the BT model's gaps"):
        build_strategy(VARIANTS["conf-ref"], None)


def test_clean_pairs_swap_exactly_the_flipped_ones() -> None:
    world = make_world(WorldConfig(seed=1, n_train=400, n_val=0, n_test=0, noise=1.0))
    flipped = [p.gold_gap < 0 for p in world.train]
    assert 50 < sum(flipped) < 200
    clean = clean_pairs(world.train)
    assert all(c.gold_gap >= 0 for c in clean)
    for p, c, f in zip(world.train, clean, flipped, strict=True):
        assert (c.chosen, c.rejected) == ((p.rejected, p.chosen) if f else (p.chosen, p.rejected))
        assert c.score_gap == (-p.score_gap if f else p.score_gap)


def test_linear_rm_positive_control() -> None:
    """Noise-free labels on 1,000 pairs: the well-specified linear RM orders >= 90% of test pairs as the true
    reward does (measured 0.95 at seed 0); BT on the noisy labels of the same pairs is below it."""
    world = make_world(WorldConfig(seed=0, n_train=1000, n_val=300, n_test=600))
    test = split_tensors(world.test)
    gold = test.labels["gold_gap"].numpy()
    accs = {}
    for name in ("clean", "bt"):
        v = VARIANTS[name]
        train = split_tensors(clean_pairs(world.train) if v.labels == "clean" else world.train)
        val = split_tensors(clean_pairs(world.val) if v.labels == "clean" else world.val)
        fit = fit_linear(train, val, v, seed=0, steps=300, batch_size=64, lr=0.05, n_evals=5)
        gaps = fit.gaps(test)
        accs[name] = float(np.mean(((gaps > 0) == (gold > 0))[gold != 0]))
    assert accs["clean"] >= 0.90
    assert accs["clean"] > accs["bt"]


def test_parse_noise() -> None:
    assert parse_noise("bt:0.5") == {"label_noise": "bt", "noise": 0.5}
    assert parse_noise("flip:0.2") == {"label_noise": "flip", "flip_rate": 0.2}
    assert parse_noise("length_bias:0.1") == {"label_noise": "length_bias", "length_weight": 0.1}
    assert parse_noise("annotators") == {"label_noise": "annotators"}
    with pytest.raises(ValueError, match="one of"):
        parse_noise("gauss:1")
    with pytest.raises(ValueError, match="takes no level"):
        parse_noise("annotators:2")


# ----------------------------------------------------------------------------- the --quick study, end to end


def test_quick_map_end_to_end(tmp_path) -> None:
    """`marginkit study map --quick` (the CI form): every unit runs, rows are complete and paired, the
    positive controls pass on the linear RM, and the docs blocks render from the rows."""
    cfg = MapConfig(quick=True, out=str(tmp_path / "map"), export=str(tmp_path / "rows.csv.gz"))
    rows = run_map(cfg, log=lambda s: None)
    lin = [r for r in rows if r["rm"] == "linear"]
    tr = [r for r in rows if r["rm"] == "transformer"]
    # 2 noises x 3 seeds x 2 sizes x 14 variants (conf-level only in annotator worlds: not here)
    assert len(lin) == 2 * 3 * 2 * (len(VARIANTS) - 1)
    assert len(tr) == 1 * 3 * 1 * 4
    for r in rows:
        assert 0.0 <= r["acc"] <= 1.0
        assert (r["variant"] == "bt") == ("d_acc" not in r or r.get("d_acc") is None)
    by = {(r["noise"], r["n"], r["seed"], r["variant"]): r for r in lin}
    for (noise, n, seed, v), r in by.items():
        if v != "bt":
            assert r["d_acc"] == pytest.approx(r["acc"] - by[(noise, n, seed, "bt")]["acc"], abs=1e-9)
    soft_gain = np.mean([by[("bt:0.5", 250, s, "soft")]["acc"] - by[("bt:0.5", 250, s, "bt")]["acc"] for s in range(3)])
    assert soft_gain >= 0.03  # the soft-label ceiling beats BT by >= 3 points at n = 250
    assert np.mean([by[("bt:0.5", 1000, s, "clean")]["acc"] for s in range(3)]) >= 0.90
    from marginkit.study.render import read_rows

    assert len(read_rows(tmp_path / "rows.csv.gz")) == len(rows)
    assert "PASS" in controls_block(rows)
    assert not (tmp_path / "map" / "study.md").exists()  # run_map writes rows; the CLI writes study.md


def test_two_jobs_give_the_rows_of_one(tmp_path) -> None:
    """The docs' rows were made with --jobs 2: units in worker processes give the rows of one process."""
    kw = dict(seeds=[0, 1], sizes=[100], noises=["bt:0.5"], variants=["bt", "label-0.5", "conf-batch"],
              transformer_sizes=[], linear_steps=30, n_evals=3, bon_prompts=10, n_val=50, n_test=100, n_ood=50)
    one = run_map(MapConfig(out=str(tmp_path / "one"), jobs=1, **kw), log=lambda s: None)
    two = run_map(MapConfig(out=str(tmp_path / "two"), jobs=2, **kw), log=lambda s: None)

    def key(rows):
        return sorted(({k: v for k, v in r.items() if k != "seconds"} for r in rows),
                      key=lambda r: (r["seed"], r["variant"]))

    assert len(one) == 2 * 3
    assert key(one) == key(two)
