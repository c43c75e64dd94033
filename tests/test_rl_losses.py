"""losses/rl.py: every function on a hand-worked example (the derivation in the comments), then properties
over drawn inputs (hypothesis)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.testing import assert_close

from marginkit.losses.rl import (
    KL_ESTIMATORS,
    aggregate_tokens,
    clipped_surrogate,
    gae,
    grpo_advantages,
    kl_k1,
    kl_k2,
    kl_k3,
    rloo_advantages,
    token_weights,
    value_loss,
)

T = torch.tensor


# ----------------------------------------------------------------------------- GRPO and RLOO advantages


def test_grpo_advantages_hand_worked_groups():
    # group 1: [1, 2, 3]: mean 2, deviations [-1, 0, 1], unbiased var (1 + 0 + 1) / 2 = 1, std 1
    # group 2: [2, 4, 6]: mean 4, deviations [-2, 0, 2], unbiased var (4 + 0 + 4) / 2 = 4, std 2
    # group 3: [5, 5, 5]: mean 5, deviations 0, std 0 -> 0 / (0 + eps) = 0 (no signal in an all-equal group)
    rewards = T([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [5.0, 5.0, 5.0]])
    eps = 1e-4
    expected = T([[-1 / (1 + eps), 0.0, 1 / (1 + eps)], [-2 / (2 + eps), 0.0, 2 / (2 + eps)], [0.0, 0.0, 0.0]])
    assert_close(grpo_advantages(rewards, eps=eps), expected)
    # Dr. GRPO (no std scaling): the deviations themselves
    assert_close(grpo_advantages(rewards, scale_rewards=False), T([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [0.0] * 3]))


def test_rloo_advantages_hand_worked_groups():
    # [1, 2, 3]: baselines (2+3)/2 = 2.5, (1+3)/2 = 2, (1+2)/2 = 1.5 -> A = [-1.5, 0, 1.5] (= 3/2 * [-1, 0, 1])
    assert_close(rloo_advantages(T([[1.0, 2.0, 3.0]])), T([[-1.5, 0.0, 1.5]]))
    # [0, 3, 6, 3]: sum 12, baselines (12 - r)/3 = [4, 3, 2, 3] -> A = [-4, 0, 4, 0]
    assert_close(rloo_advantages(T([[0.0, 3.0, 6.0, 3.0]])), T([[-4.0, 0.0, 4.0, 0.0]]))


@pytest.mark.parametrize("fn", [grpo_advantages, rloo_advantages])
def test_advantages_refuse_groups_of_one(fn):
    with pytest.raises(ValueError, match=r"\[P, K\] with K >= 2"):
        fn(T([[1.0], [2.0]]))
    with pytest.raises(ValueError, match=r"\[P, K\]"):
        fn(T([1.0, 2.0]))


groups = st.integers(1, 4).flatmap(lambda p: st.integers(2, 6).flatmap(lambda k: st.lists(
    st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=k, max_size=k), min_size=p, max_size=p)))


@given(groups)
def test_rloo_advantages_sum_to_zero_and_scale_the_centred_rewards(rows):
    r = T(rows)
    k = r.shape[1]
    a = rloo_advantages(r)
    assert_close(a.sum(1), torch.zeros(r.shape[0]), atol=1e-4, rtol=0)  # |r| <= 10, K <= 6: float32 sums
    assert_close(a, k / (k - 1) * grpo_advantages(r, scale_rewards=False), atol=1e-5, rtol=1e-5)


@given(groups)
def test_grpo_advantages_are_centred_and_shift_invariant(rows):
    r = T(rows)
    a = grpo_advantages(r)
    # float32 cancellation, scaled by 1/(std + eps): relative to the largest advantage
    assert_close(a.sum(1), torch.zeros(r.shape[0]), atol=1e-5 * (1 + float(a.abs().max())), rtol=0)
    assert_close(grpo_advantages(r + 3.0, scale_rewards=False), grpo_advantages(r, scale_rewards=False),
                 atol=1e-5, rtol=0)
    assert not a.requires_grad


# ----------------------------------------------------------------------------- GAE


def test_gae_hand_worked_trajectory():
    # γ = λ = 0.5. Row 0: rewards [0, 0, 1], values [0.5, 0.5, 0.5], all three tokens real; V_3 = 0.
    #   δ_2 = 1 + 0.5*0 - 0.5 = 0.5                 A_2 = 0.5
    #   δ_1 = 0 + 0.5*0.5 - 0.5 = -0.25             A_1 = -0.25 + 0.25*0.5 = -0.125
    #   δ_0 = 0 + 0.5*0.5 - 0.5 = -0.25             A_0 = -0.25 + 0.25*(-0.125) = -0.28125
    #   returns = A + V = [0.21875, 0.375, 1.0]
    # Row 1: rewards [0, 1, 99], values [0.5, 0.5, 99], mask [1, 1, 0]: the padded 99s are read as 0.
    #   δ_2 = 0, A_2 = 0;  δ_1 = 1 + 0 - 0.5 = 0.5, A_1 = 0.5;  δ_0 = 0.25 - 0.5 = -0.25, A_0 = -0.25 + 0.25*0.5
    #   = -0.125; returns = [0.375, 1.0, 0]
    rewards = T([[0.0, 0.0, 1.0], [0.0, 1.0, 99.0]])
    values = T([[0.5, 0.5, 0.5], [0.5, 0.5, 99.0]])
    mask = T([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.5, lam=0.5)
    assert_close(adv, T([[-0.28125, -0.125, 0.5], [-0.125, 0.5, 0.0]]))
    assert_close(ret, T([[0.21875, 0.375, 1.0], [0.375, 1.0, 0.0]]))


def test_gae_lambda_limits():
    rewards, values, mask = T([[0.0, 0.0, 1.0]]), T([[0.5, 0.5, 0.5]]), T([[1, 1, 1]])
    # λ = 1: returns = discounted reward-to-go [0.25, 0.5, 1] (γ = 0.5)
    _, ret = gae(rewards, values, mask, gamma=0.5, lam=1.0)
    assert_close(ret, T([[0.25, 0.5, 1.0]]))
    # λ = 0: A_t = δ_t = [-0.25, -0.25, 0.5]
    adv, _ = gae(rewards, values, mask, gamma=0.5, lam=0.0)
    assert_close(adv, T([[-0.25, -0.25, 0.5]]))


def test_gae_refuses_bad_inputs():
    with pytest.raises(ValueError, match="same 2-D shape"):
        gae(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3), 1.0, 0.95)
    with pytest.raises(ValueError, match="gamma=1.5"):
        gae(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3), 1.5, 0.95)


# ----------------------------------------------------------------------------- the clipped surrogate


def test_clipped_surrogate_matches_the_ratio_table():
    # ε = 0.2, so clip(ρ) ∈ [0.8, 1.2]; l = max(-A ρ, -A clip(ρ)):
    #   A    ρ     -Aρ    -A clip(ρ)   l      clipped term larger?
    #   +1   0.5   -0.5   -0.8         -0.5   no
    #   +1   1.0   -1.0   -1.0         -1.0   no (equal)
    #   +1   1.5   -1.5   -1.2         -1.2   yes (high clip: ρ > 1.2 with A > 0)
    #   -1   0.5    0.5    0.8          0.8   yes (low clip: ρ < 0.8 with A < 0)
    #   -1   1.0    1.0    1.0          1.0   no
    #   -1   1.5    1.5    1.2          1.5   no
    #   +2   1.1   -2.2   -2.2         -2.2   no (inside the range)
    ratio = T([[0.5, 1.0, 1.5, 0.5, 1.0, 1.5, 1.1]])
    adv = T([[1.0, 1.0, 1.0, -1.0, -1.0, -1.0, 2.0]])
    old = torch.zeros_like(ratio)
    out = clipped_surrogate(ratio.log(), old, adv, torch.ones_like(ratio), epsilon=0.2)
    assert_close(out.losses, T([[-0.5, -1.0, -1.2, 0.8, 1.0, 1.5, -2.2]]))
    assert out.extras["clipped"].tolist() == [[0, 0, 1, 1, 0, 0, 0]]
    assert_close(out.extras["ratio"], ratio)


def test_clipped_surrogate_decoupled_upper_clip_and_mask():
    # ε = 0.2, ε_high = 0.28 (DAPO): A = +1, ρ = 1.25 is now inside [0.8, 1.28] -> l = -1.25, not clipped;
    # ρ = 1.5 -> -1.28, clipped. The third token is masked: loss 0, never counted as clipped.
    ratio, adv = T([[1.25, 1.5, 1.5]]), T([1.0])  # one advantage per sequence, broadcast over its tokens
    out = clipped_surrogate(ratio.log(), torch.zeros(1, 3), adv, T([[1, 1, 0]]), epsilon=0.2, epsilon_high=0.28)
    assert_close(out.losses, T([[-1.25, -1.28, 0.0]]))
    assert out.extras["clipped"].tolist() == [[0, 1, 0]]


def test_clipped_surrogate_gradient_at_ratio_one_is_reinforce():
    # ρ = 1: l = -A, and d l / d log π = -A ρ = -A (the REINFORCE gradient); a clipped token has zero gradient.
    logps = torch.zeros(1, 3, requires_grad=True)
    adv = T([[2.0, -3.0, 1.0]])
    out = clipped_surrogate(logps, torch.zeros(1, 3), adv, torch.ones(1, 3))
    out.losses.sum().backward()
    assert_close(logps.grad, -adv)
    logps = T([[math.log(1.5)]]).requires_grad_()
    clipped_surrogate(logps, torch.zeros(1, 1), T([[1.0]]), torch.ones(1, 1)).losses.sum().backward()
    assert_close(logps.grad, T([[0.0]]))


@given(st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=1, max_size=8))
def test_clipped_surrogate_at_ratio_one_is_minus_the_advantage(advantages):
    adv = T([advantages])
    logps = torch.randn(1, len(advantages))
    out = clipped_surrogate(logps, logps.clone(), adv, torch.ones_like(adv))
    assert_close(out.losses, -adv)
    assert out.extras["clipped"].sum() == 0


# ----------------------------------------------------------------------------- value loss


def test_value_loss_hand_worked():
    # ε_v = 0.2, returns R = 2.
    # token 0: V = 1.0, V° = 1.5: V - V° = -0.5 -> clipped to -0.2 -> 1.3; (1 - 2)² = 1, (1.3 - 2)² = 0.49
    #          -> ½ max = 0.5 (the unclipped term is larger)
    # token 1: V = 2.0, V° = 1.5: V - V° = 0.5 -> 0.2 -> 1.7; (2 - 2)² = 0, (1.7 - 2)² = 0.09 -> ½ 0.09 = 0.045
    #          (the clipped term is larger: the value may not jump past V° + 0.2 to the return)
    out = value_loss(T([[1.0, 2.0]]), T([[1.5, 1.5]]), T([[2.0, 2.0]]), torch.ones(1, 2), clip_range=0.2)
    assert_close(out.losses, T([[0.5, 0.045]]))
    assert out.extras["clipped"].tolist() == [[0.0, 1.0]]
    plain = value_loss(T([[1.0, 2.0]]), T([[1.5, 1.5]]), T([[2.0, 2.0]]), torch.ones(1, 2), clip_range=None)
    assert_close(plain.losses, T([[0.5, 0.0]]))


# ----------------------------------------------------------------------------- KL estimators


def test_kl_estimators_hand_worked():
    # token 0: log π = 0, log ρ = ln 2 (ratio ρ/π = 2): k1 = -ln 2; k2 = ½ (ln 2)²; k3 = 2 - ln 2 - 1 = 1 - ln 2
    # token 1: log π = 0, log ρ = -ln 2 (ratio ½): k1 = ln 2; k2 = ½ (ln 2)²; k3 = ½ + ln 2 - 1 = ln 2 - ½
    # token 2: π = ρ: every estimator is 0
    ln2 = math.log(2.0)
    logps, ref = torch.zeros(1, 3), T([[ln2, -ln2, 0.0]])
    assert_close(kl_k1(logps, ref), T([[-ln2, ln2, 0.0]]))
    assert_close(kl_k2(logps, ref), T([[0.5 * ln2**2, 0.5 * ln2**2, 0.0]]))
    assert_close(kl_k3(logps, ref), T([[1 - ln2, ln2 - 0.5, 0.0]]))
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3"}


@given(st.lists(st.tuples(st.floats(-8, 0, width=32), st.floats(-8, 0, width=32)), min_size=1, max_size=8))
def test_k3_is_nonnegative_and_zero_only_at_equality(pairs):
    logps, ref = T([[a for a, _ in pairs]]), T([[b for _, b in pairs]])
    k3 = kl_k3(logps, ref)
    assert (k3 >= 0).all()
    assert_close(kl_k3(logps, logps), torch.zeros_like(logps))


def test_k1_and_k3_are_unbiased_for_the_exact_kl():
    # π = [0.5, 0.25, 0.25], ρ = [0.25, 0.25, 0.5]: KL(π‖ρ) = 0.5 ln 2 + 0 + 0.25 ln 0.5 = 0.25 ln 2.
    # E_π[k1] and E_π[k3] (exact expectations over the 3 tokens) both equal it; E_π[k2] does not.
    pi, rho = T([[0.5, 0.25, 0.25]]), T([[0.25, 0.25, 0.5]])
    kl = 0.25 * math.log(2.0)
    assert_close((pi * kl_k1(pi.log(), rho.log())).sum(), T(kl))
    assert_close((pi * kl_k3(pi.log(), rho.log())).sum(), T(kl))


# ----------------------------------------------------------------------------- aggregation


def test_token_aggregations_hand_worked():
    # row 0: tokens [1, 2, 3] (one pad), row 1: token [4] (three pads); N = 2 sequences, 4 tokens, L = 4
    per_token = T([[1.0, 2.0, 3.0, 7.0], [4.0, 9.0, 9.0, 9.0]])  # pads hold garbage that must not count
    mask = T([[1, 1, 1, 0], [1, 0, 0, 0]])
    # grpo: sequence means [2, 4] -> mean 3
    assert_close(aggregate_tokens(per_token, mask, "grpo"), T(3.0))
    # bnpo: (1 + 2 + 3 + 4) / 4 tokens = 2.5
    assert_close(aggregate_tokens(per_token, mask, "bnpo"), T(2.5))
    # dr_grpo: 10 / (N L) = 10 / 8 = 1.25
    assert_close(aggregate_tokens(per_token, mask, "dr_grpo", max_completion_length=4), T(1.25))
    with pytest.raises(ValueError, match="max_completion_length"):
        token_weights(mask, "dr_grpo")
    with pytest.raises(ValueError, match="known: grpo, bnpo, dr_grpo"):
        token_weights(mask, "mean")  # type: ignore[arg-type]


def test_gae_ignores_masked_positions_before_the_first_token():
    # In the labels' alignment a completion starts after its prompt: masked positions first. The hand-worked
    # row 0 of test_gae_hand_worked_trajectory, shifted right by two masked (prompt) positions, gives the same
    # advantages and returns on its tokens and 0 elsewhere.
    rewards, values = T([[5.0, 5.0, 0.0, 0.0, 1.0]]), T([[9.0, 9.0, 0.5, 0.5, 0.5]])
    adv, ret = gae(rewards, values, T([[0, 0, 1, 1, 1]]), gamma=0.5, lam=0.5)
    assert_close(adv, T([[0.0, 0.0, -0.28125, -0.125, 0.5]]))
    assert_close(ret, T([[0.0, 0.0, 0.21875, 0.375, 1.0]]))
