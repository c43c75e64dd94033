"""DPO-family losses: a hand-derived value for each, values at h = 0, reductions to the parent loss,
gradient signs, swap and permutation symmetry, robust DPO's unbiasedness, β-DPO's state, the registry."""

import math
import typing

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from marginkit.losses import (
    DPO_LOSSES,
    BetaDPO,
    DPOLossSpec,
    PreferenceLogps,
    beta_dpo_beta,
    build_dpo_loss,
    cdpo_loss,
    chosen_nll,
    dpo_sigmoid_loss,
    hinge_loss,
    ipo_loss,
    log_ratio_gap,
    odpo_loss,
    robust_dpo_loss,
    simpo_loss,
)
from marginkit.losses.dpo import BetaDPOConfig
from marginkit.losses.registry import IPOConfig, LossName, ODPOConfig

LN2, LN3, LN4 = math.log(2.0), math.log(3.0), math.log(4.0)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def with_gap(h: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(π_c, π_r, ρ_c, ρ_r) with raw gap h: π_c = h - 5 and ρ_c = -5, π_r = ρ_r = -7, so h = (π_c - ρ_c) - 0."""
    return h - 5.0, torch.full_like(h, -7.0), torch.full_like(h, -5.0), torch.full_like(h, -7.0)


# ---- hand-computed points ----------------------------------------------------------------------


def test_dpo_sigmoid_by_hand():
    # β = 0.5.
    # pair 0: π_c - ρ_c = -1 - (-1 - 2 ln 3) = 2 ln 3, π_r - ρ_r = 0 -> h = 2 ln 3, β h = ln 3,
    #         σ(ln 3) = 3 / (3 + 1) = 3/4 -> loss = -ln(3/4) = ln(4/3) = 0.287682
    # pair 1: the same pair swapped: h = -2 ln 3, σ(-ln 3) = 1/4 -> loss = ln 4 = 1.386294
    # pair 2: policy = reference: h = 0 -> loss = ln 2
    # rewards: chosen β (π_c - ρ_c) = 0.5 * 2 ln 3 = ln 3 (pair 0), 0 (pair 1: π_c = ρ_c), 0 (pair 2);
    #          rejected 0, ln 3, 0.
    pc, pr = t(-1.0, -4.0, -2.0), t(-4.0, -1.0, -3.0)
    rc, rr = t(-1.0 - 2 * LN3, -4.0, -2.0), t(-4.0, -1.0 - 2 * LN3, -3.0)
    out = dpo_sigmoid_loss(pc, pr, rc, rr, beta=0.5)
    assert_close(out.losses, t(math.log(4 / 3), LN4, LN2))
    assert_close(out.chosen_rewards, t(LN3, 0.0, 0.0))
    assert_close(out.rejected_rewards, t(0.0, LN3, 0.0))
    assert_close(log_ratio_gap(pc, pr, rc, rr), t(2 * LN3, -2 * LN3, 0.0))


def test_ipo_by_hand():
    # β = τ = 0.25: the target gap is 1 / (2 * 0.25) = 2.
    # h = 3 -> (3 - 2)^2 = 1; h = 0 -> (0 - 2)^2 = 4 = 1/(4 β^2); h = 2 -> 0.
    out = ipo_loss(*with_gap(t(3.0, 0.0, 2.0)), beta=0.25)
    assert_close(out.losses, t(1.0, 4.0, 0.0))
    # rewards β (π_c - ρ_c) = 0.25 * h: 0.75, 0, 0.5
    assert_close(out.chosen_rewards, t(0.75, 0.0, 0.5))


def test_ipo_length_normalised_through_the_registry():
    # Sums π_c = -2 over 2 tokens, ρ_c = -8 over 2 tokens -> averages -1 and -4 -> +3 per token;
    # rejected -4 and -4 over 4 tokens -> 0. Averaged h = 3, β = 0.25 -> (3 - 2)^2 = 1.
    # On sums instead: h = 6 -> (6 - 2)^2 = 16.
    x = PreferenceLogps(t(-2.0), t(-4.0), t(-8.0), t(-4.0), t(2.0), t(4.0))
    avg = build_dpo_loss(DPOLossSpec(name="ipo", beta=0.25))
    assert_close(avg(x).losses, t(1.0))
    summed = build_dpo_loss(DPOLossSpec(name="ipo", beta=0.25, ipo=IPOConfig(length_normalized=False)))
    assert_close(summed(x).losses, t(16.0))


def test_hinge_by_hand():
    # β = 0.5: relu(1 - 0.5 h). h = 1 -> 0.5; h = 4 -> relu(-1) = 0; h = -2 -> 2; h = 0 -> 1.
    out = hinge_loss(*with_gap(t(1.0, 4.0, -2.0, 0.0)), beta=0.5)
    assert_close(out.losses, t(0.5, 0.0, 2.0, 1.0))


def test_cdpo_by_hand():
    # β = 1, ε = 1/4, h = ln 3: σ(ln 3) = 3/4, σ(-ln 3) = 1/4.
    # loss = -(3/4) ln(3/4) - (1/4) ln(1/4) = (3/4) ln(4/3) + (1/4) ln 4 = 0.215762 + 0.346574 = 0.562335
    # h = 0: -(3/4) ln(1/2) - (1/4) ln(1/2) = ln 2 for any ε.
    out = cdpo_loss(*with_gap(t(LN3, 0.0)), beta=1.0, label_smoothing=0.25)
    assert_close(out.losses, t(0.75 * math.log(4 / 3) + 0.25 * LN4, LN2))


def test_robust_by_hand():
    # β = 1, ε = 1/4, h = ln 3:
    # [-(3/4) ln(3/4) + (1/4) ln(1/4)] / (1 - 1/2) = 2 [(3/4)(ln 4 - ln 3) - (1/4) ln 4]
    #   = (3/2) ln 4 - (3/2) ln 3 - (1/2) ln 4 = ln 4 - (3/2) ln 3 = -0.261624 (negative: allowed)
    # h = -ln 3 (the pair looks flipped): 2 [(3/4) ln 4 + (1/4)(ln 3 - ln 4)] = ln 4 + (1/2) ln 3
    out = robust_dpo_loss(*with_gap(t(LN3, -LN3, 0.0)), beta=1.0, label_smoothing=0.25)
    assert_close(out.losses, t(LN4 - 1.5 * LN3, LN4 + 0.5 * LN3, LN2))
    # Unbiased under flips at rate ε: (3/4)(ln 4 - (3/2) ln 3) + (1/4)(ln 4 + (1/2) ln 3) = ln 4 - ln 3,
    # which is the clean DPO loss -ln σ(ln 3) = ln(4/3).
    assert_close(0.75 * out.losses[0] + 0.25 * out.losses[1], torch.tensor(math.log(4 / 3)))


def test_simpo_by_hand():
    # β = 2, γ = 1.
    # pair 0: averages -4/4 = -1 and -9/3 = -3; rewards 2 * -1 = -2 and 2 * -3 = -6; gap 4;
    #         4 - γ = 3 -> loss = -ln σ(3) = ln(1 + e^-3) = 0.048587
    # pair 1: averages -2/2 = -1 and -3/2 = -1.5; rewards -2 and -3; gap 1; 1 - γ = 0 -> ln 2
    out = simpo_loss(t(-4.0, -2.0), t(-9.0, -3.0), t(4.0, 2.0), t(3.0, 2.0), beta=2.0, gamma=1.0)
    assert_close(out.losses, t(math.log(1 + math.exp(-3.0)), LN2))
    assert_close(out.chosen_rewards, t(-2.0, -2.0))
    assert_close(out.rejected_rewards, t(-6.0, -3.0))


def test_odpo_by_hand():
    # β = 1, h = 1 + ln 3, Δ = 1 -> β h - Δ = ln 3 -> ln(4/3); h = 0, Δ = 2 -> softplus(2) = ln(1 + e^2)
    out = odpo_loss(*with_gap(t(1.0 + LN3, 0.0)), beta=1.0, offset=t(1.0, 2.0))
    assert_close(out.losses, t(math.log(4 / 3), math.log(1 + math.exp(2.0))))


def test_odpo_offset_from_a_margin_through_the_registry():
    # transform log, α = 2: Δ = 2 ln(e) = 2 from a margin m = e; h = 2 + ln 3, β = 1 -> ln(4/3).
    loss = build_dpo_loss(DPOLossSpec(name="odpo", beta=1.0, odpo=ODPOConfig(alpha=2.0, transform="log")))
    pc, pr, rc, rr = with_gap(t(2.0 + LN3))
    x = PreferenceLogps(pc, pr, rc, rr, t(1.0), t(1.0))
    assert loss.uses_offset
    assert_close(loss(x, t(math.e)).losses, t(math.log(4 / 3)))
    with pytest.raises(ValueError, match="needs every margin > 0"):
        loss(x, t(0.0))
    with pytest.raises(ValueError, match="needs a per-pair offset"):
        loss(x, None)


def test_chosen_nll_by_hand():
    # -π_c / |y_c|: -(-6) / 3 = 2; -(-1) / 1 = 1
    assert_close(chosen_nll(t(-6.0, -1.0), t(3.0, 1.0)), t(2.0, 1.0))


def test_beta_dpo_beta_by_hand():
    # β_0 = 0.1, α = 0.5, M = 3, M_0 = 2: 0.1 (1 + 0.5 (3 - 2)) = 0.15
    assert_close(beta_dpo_beta(torch.tensor(3.0), 2.0, beta=0.1, alpha=0.5), torch.tensor(0.15))
    # M = -100: 0.1 (1 + 0.5 (-102)) = -5 -> clamped to β_min = 1e-3
    assert_close(beta_dpo_beta(torch.tensor(-100.0), 2.0, beta=0.1, alpha=0.5), torch.tensor(1e-3))


def test_beta_dpo_two_batches_by_hand():
    loss = BetaDPO(BetaDPOConfig(alpha=0.5, momentum=0.5, filter_fraction=0.0), beta=0.1)
    # batch 1: h = [1, 2, 3, 6], mean 3; the first batch sets M_0 = 3; β = 0.1 (1 + 0.5 (3 - 3)) = 0.1
    h1 = t(1.0, 2.0, 3.0, 6.0)
    out1 = loss(PreferenceLogps(*with_gap(h1), t(1, 1, 1, 1), t(1, 1, 1, 1)))
    assert_close(out1.extras["beta"], torch.full((4,), 0.1))
    assert_close(out1.losses, torch.nn.functional.softplus(-0.1 * h1))
    # batch 2: h = [4, 5, 6, 9], mean 6; M_0 = 0.5 * 3 + 0.5 * 6 = 4.5 (updated first);
    #          β = 0.1 (1 + 0.5 (6 - 4.5)) = 0.175
    h2 = t(4.0, 5.0, 6.0, 9.0)
    state = loss.state_dict()
    out2 = loss(PreferenceLogps(*with_gap(h2), t(1, 1, 1, 1), t(1, 1, 1, 1)))
    assert loss.reference_margin == pytest.approx(4.5)
    assert_close(out2.extras["beta"], torch.full((4,), 0.175))
    assert_close(out2.losses, torch.nn.functional.softplus(-0.175 * h2))
    assert_close(out2.extras["pair_weight"], torch.ones(4))
    # rewards keep β_0 = 0.1: chosen 0.1 h, rejected 0
    assert_close(out2.chosen_rewards, 0.1 * h2)
    # resume: a fresh loss with the saved state gives batch 2 exactly
    again = BetaDPO(BetaDPOConfig(alpha=0.5, momentum=0.5, filter_fraction=0.0), beta=0.1)
    again.load_state_dict(state)
    assert_close(again(PreferenceLogps(*with_gap(h2), t(1, 1, 1, 1), t(1, 1, 1, 1))).losses, out2.losses)


def test_beta_dpo_filtering_drops_the_outlier():
    loss = BetaDPO(BetaDPOConfig(alpha=0.0, momentum=0.99, filter_fraction=0.25), beta=0.1)
    loss.load_state_dict({"reference_margin": 1.0, "reference_std": 0.1, "generator": loss.generator.get_state()})
    # M_0 <- 0.99 * 1 + 0.01 * mean([1, 1.1, 0.9, 50]) = 1.1225; σ_0 stays near 0.3, so the gap 50 lies
    # ~160 σ out: weight exp(-z^2 / 2) = 0. k = max(1, floor(4 * 0.75)) = 3 pairs are kept: the other three.
    h = t(1.0, 1.1, 0.9, 50.0)
    out = loss(PreferenceLogps(*with_gap(h), t(1, 1, 1, 1), t(1, 1, 1, 1)))
    assert out.extras["selected"].tolist() == [1.0, 1.0, 1.0, 0.0]
    # pair weights B / k = 4/3 on kept pairs: the step's sum / B is the mean over the kept three
    assert_close(out.extras["pair_weight"], t(4 / 3, 4 / 3, 4 / 3, 0.0))


# ---- properties shared by the family -------------------------------------------------------------

SPECS = {
    "sigmoid": DPOLossSpec(name="sigmoid", beta=0.5),
    "ipo": DPOLossSpec(name="ipo", beta=0.5),
    "hinge": DPOLossSpec(name="hinge", beta=0.5),
    "cdpo": DPOLossSpec(name="cdpo", beta=0.5),
    "robust": DPOLossSpec(name="robust", beta=0.5),
    "simpo": DPOLossSpec(name="simpo", beta=0.5),
    "odpo": DPOLossSpec(name="odpo", beta=0.5),
    "beta_dpo": DPOLossSpec(name="beta_dpo", beta=0.5),
}
# value at policy = reference (h = 0; SimPO: equal averages), β = 0.5, defaults otherwise, ODPO offset 1
AT_ZERO = {"sigmoid": LN2, "ipo": 1 / (4 * 0.25), "hinge": 1.0, "cdpo": LN2, "robust": LN2,
           "simpo": math.log(1 + math.e), "odpo": math.log(1 + math.e), "beta_dpo": LN2}


def test_registry_matches_the_config_choices():
    """DPO_LOSSES is the one list of names: loss.name's Literal and its help text are built from it."""
    assert list(DPO_LOSSES) == list(typing.get_args(LossName)) and set(DPO_LOSSES) == set(SPECS)
    assert typing.get_type_hints(DPOLossSpec)["name"] == LossName
    help_text = DPOLossSpec.__dataclass_fields__["name"].metadata["help"]
    assert all(f"{name} ({builder.__doc__})" in help_text for name, builder in DPO_LOSSES.items())
    with pytest.raises(ValueError, match="unknown DPO loss 'dpo_typo'; known: \\['beta_dpo'"):
        build_dpo_loss(_named("dpo_typo"))


def _named(name: str) -> DPOLossSpec:
    spec = DPOLossSpec()
    spec.name = name  # type: ignore[assignment]  # bypass the Literal to reach the registry check
    return spec


def _zero_gap_inputs(n: int = 3) -> PreferenceLogps:
    same = t(*[-2.0 - i for i in range(n)])
    return PreferenceLogps(same.clone().requires_grad_(True), same.clone().requires_grad_(True), same, same,
                           t(*[2.0] * n), t(*[2.0] * n))


@pytest.mark.parametrize("name", sorted(SPECS))
def test_value_at_zero_gap(name):
    loss = build_dpo_loss(SPECS[name])
    x = _zero_gap_inputs()
    offset = torch.ones(3) if loss.uses_offset else None
    out = loss(x, offset)
    assert out.losses.shape == (3,) and out.losses.dtype == torch.float32
    assert_close(out.losses, torch.full((3,), AT_ZERO[name]))
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
    assert all(not v.requires_grad for v in out.extras.values())


@pytest.mark.parametrize("name", sorted(SPECS))
def test_gradient_raises_chosen_and_lowers_rejected(name):
    loss = build_dpo_loss(SPECS[name])
    x = _zero_gap_inputs()
    out = loss(x, torch.ones(3) if loss.uses_offset else None)
    g_c, g_r = torch.autograd.grad(out.losses.sum(), [x.policy_chosen, x.policy_rejected])
    assert (g_c < 0).all() and (g_r > 0).all()


@pytest.mark.parametrize("name", ["cdpo", "robust", "odpo", "beta_dpo"])
def test_reduces_to_dpo(name):
    # ε = 0, Δ = 0, α = 0 without filtering: each is plain sigmoid DPO
    spec = DPOLossSpec(name=name, beta=0.3)
    spec.cdpo.label_smoothing = spec.robust.label_smoothing = 0.0
    spec.beta_dpo.alpha, spec.beta_dpo.filter_fraction = 0.0, 0.0
    h = t(-2.0, 0.5, 3.0)
    x = PreferenceLogps(*with_gap(h), t(1, 1, 1), t(1, 1, 1))
    out = build_dpo_loss(spec)(x, torch.zeros(3))
    assert_close(out.losses, dpo_sigmoid_loss(*with_gap(h), beta=0.3).losses)


def test_simpo_with_zero_gamma_is_sigmoid_on_averages_without_reference():
    pc, pr, lc, lr = t(-6.0, -1.0), t(-2.0, -8.0), t(3.0, 1.0), t(2.0, 4.0)
    out = simpo_loss(pc, pr, lc, lr, beta=2.0, gamma=0.0)
    zero = torch.zeros(2)
    assert_close(out.losses, dpo_sigmoid_loss(pc / lc, pr / lr, zero, zero, beta=2.0).losses)


def test_swap_symmetry_of_sigmoid():
    # -log σ(z) - (-log σ(-z)) = -z: swapping chosen and rejected changes the loss by exactly β h
    h = t(2.0, -1.0, 0.25)
    pc, pr, rc, rr = with_gap(h)
    diff = dpo_sigmoid_loss(pc, pr, rc, rr, 0.5).losses - dpo_sigmoid_loss(pr, pc, rr, rc, 0.5).losses
    assert_close(diff, -0.5 * h)


def test_shape_and_offset_guards():
    with pytest.raises(ValueError, match=r"offset=\(3, 1\)"):
        odpo_loss(*with_gap(t(0.0, 0.0, 0.0)), beta=1.0, offset=torch.zeros(3, 1))
    with pytest.raises(ValueError, match="requires grad"):
        odpo_loss(*with_gap(t(0.0)), beta=1.0, offset=torch.zeros(1, requires_grad=True))
    with pytest.raises(ValueError, match="label_smoothing=0.5"):
        robust_dpo_loss(*with_gap(t(0.0)), beta=1.0, label_smoothing=0.5)
    with pytest.raises(ValueError, match="every input must have shape"):
        dpo_sigmoid_loss(t(0.0, 1.0), t(0.0), t(0.0), t(0.0), beta=0.1)


def test_large_gaps_stay_finite_and_bf16_is_computed_in_float32():
    big = with_gap(t(600.0, -600.0))  # seed 001's exploded gap, both ways
    out = dpo_sigmoid_loss(*big, beta=1.0)
    assert torch.isfinite(out.losses).all() and out.losses[1].item() == pytest.approx(600.0)
    half = [v.to(torch.bfloat16) for v in with_gap(t(0.0, 0.0))]
    assert dpo_sigmoid_loss(*half, beta=0.1).losses.dtype == torch.float32


@settings(max_examples=60, deadline=None)
@given(h=st.floats(-30, 30), beta=st.floats(0.01, 2.0), eps=st.floats(0.0, 0.45))
def test_robust_is_unbiased_under_flips(h, beta, eps):
    # (1 - ε) L(h) + ε L(-h) = -log σ(β h) for every h, β and ε < 1/2 (Chowdhury et al. 2024, Lemma 3.1)
    gap = t(h, -h)
    out = robust_dpo_loss(*with_gap(gap), beta=beta, label_smoothing=eps).losses
    clean = dpo_sigmoid_loss(*with_gap(t(h)), beta=beta).losses[0]
    assert_close((1 - eps) * out[0] + eps * out[1], clean, atol=1e-4, rtol=1e-4)  # /(1-2ε) amplifies float32 error


@settings(max_examples=30, deadline=None)
@given(rows=st.lists(st.tuples(st.floats(-20, 0), st.floats(-20, 0), st.floats(-20, 0), st.floats(-20, 0),
                               st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=8),
       name=st.sampled_from(sorted(set(SPECS) - {"beta_dpo"})), rnd=st.randoms(use_true_random=False))
def test_permuting_pairs_permutes_losses(rows, name, rnd):
    cols = [torch.tensor(c, dtype=torch.float32) for c in zip(*rows)]
    perm = list(range(len(rows)))
    rnd.shuffle(perm)
    p = torch.tensor(perm)
    loss = build_dpo_loss(SPECS[name])
    offset = torch.linspace(0, 1, len(rows)) if loss.uses_offset else None
    a = loss(PreferenceLogps(*cols), offset).losses[p]
    b = loss(PreferenceLogps(*[c[p] for c in cols]), offset[p] if offset is not None else None).losses
    assert_close(a, b)


def test_rewards_method_matches_the_loss_and_leaves_beta_dpo_state_alone():
    x = PreferenceLogps(*with_gap(t(1.0, 2.0)), t(1, 1), t(1, 1))
    for name in ("sigmoid", "odpo"):
        loss = build_dpo_loss(SPECS[name])
        out = loss(x, torch.zeros(2) if loss.uses_offset else None)
        c, r = loss.rewards(x)
        assert_close(c, out.chosen_rewards)
        assert_close(r, out.rejected_rewards)
    beta_dpo = build_dpo_loss(SPECS["beta_dpo"])
    beta_dpo.rewards(x)
    assert beta_dpo.state_dict()["reference_margin"] is None
