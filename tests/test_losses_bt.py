"""Bradley-Terry loss with margins: hand-derived values, reductions, gradient signs, shape guards."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from marginkit.losses import bt_loss, centering_penalty

LN2 = math.log(2.0)


def test_zero_gap_is_ln2():
    # Δ = 0 and m = 0: -log σ(0) = -log(1/2) = ln 2 = 0.693147...
    out = bt_loss(torch.zeros(3), torch.zeros(3))
    assert_close(out.losses, torch.full((3,), LN2))


def test_hand_computed_points():
    # pair 0: Δ = 1 - 0 = 1, m = 0      -> softplus(-1) = ln(1 + e^-1) = ln(1.367879) = 0.313262
    # pair 1: Δ = 0.5 - 2.5 = -2, m = 0 -> softplus(2)  = ln(1 + e^2)  = ln(8.389056) = 2.126928
    # pair 2: Δ = 3 - 1 = 2, m = 2      -> softplus(0)  = ln 2 = 0.693147
    # pair 3: Δ = 0, m = 1              -> softplus(1)  = ln(1 + e) = 1.313262
    chosen = torch.tensor([1.0, 0.5, 3.0, 0.0])
    rejected = torch.tensor([0.0, 2.5, 1.0, 0.0])
    margin = torch.tensor([0.0, 0.0, 2.0, 1.0])
    out = bt_loss(chosen, rejected, margin)
    assert_close(out.losses, torch.tensor([0.313262, 2.126928, 0.693147, 1.313262]), atol=1e-6, rtol=0)


def test_zero_margin_reduces_to_bt():
    c, r = torch.randn(5), torch.randn(5)
    assert_close(bt_loss(c, r, torch.zeros(5)).losses, bt_loss(c, r).losses)


def test_gradient_signs():
    c = torch.tensor([0.3, -1.0], requires_grad=True)
    r = torch.tensor([0.1, 0.4], requires_grad=True)
    bt_loss(c, r, torch.tensor([1.0, 0.0])).losses.sum().backward()
    # d/dc softplus(m - Δ) = -σ(m - Δ) < 0: descending raises the chosen reward, lowers the rejected one.
    assert (c.grad < 0).all() and (r.grad > 0).all()
    # pair 0: σ(1 - 0.2) = σ(0.8) = 0.689974
    assert_close(c.grad[0], torch.tensor(-0.689974), atol=1e-6, rtol=0)


def test_swap_symmetry():
    # swapping chosen and rejected turns softplus(-Δ) into softplus(Δ); their difference is -Δ.
    c, r = torch.tensor([2.0, -0.5]), torch.tensor([0.0, 0.5])
    diff = bt_loss(c, r).losses - bt_loss(r, c).losses
    assert_close(diff, -(c - r))


def test_margin_shape_b1_is_rejected():
    # [B,1] - [B] would broadcast to [B,B] and mix pairs: must raise, printing shapes.
    with pytest.raises(ValueError, match=r"target_margin=\(3, 1\)"):
        bt_loss(torch.zeros(3), torch.zeros(3), torch.zeros(3, 1))


def test_margin_with_grad_is_rejected():
    with pytest.raises(ValueError, match="requires grad"):
        bt_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2, requires_grad=True))


def test_large_gaps_do_not_overflow():
    # log(1 + exp(1000)) overflows in float32; softplus does not: the loss is ~1000.
    out = bt_loss(torch.tensor([-500.0]), torch.tensor([500.0]))
    assert torch.isfinite(out.losses).all() and abs(out.losses.item() - 1000.0) < 1e-3


def test_bf16_inputs_computed_in_float32():
    out = bt_loss(torch.zeros(2, dtype=torch.bfloat16), torch.zeros(2, dtype=torch.bfloat16))
    assert out.losses.dtype == torch.float32
    assert_close(out.losses, torch.full((2,), LN2))


def test_centering_penalty():
    # (r_c + r_r)^2: (1 + 2)^2 = 9, (-1 + 1)^2 = 0
    assert_close(centering_penalty(torch.tensor([1.0, -1.0]), torch.tensor([2.0, 1.0])), torch.tensor([9.0, 0.0]))


def test_rewards_are_detached():
    c = torch.zeros(2, requires_grad=True)
    out = bt_loss(c, torch.zeros(2))
    assert out.losses.requires_grad and not out.chosen_rewards.requires_grad


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(-20, 20), st.floats(-20, 20), st.floats(0, 5)), min_size=1, max_size=16),
       st.randoms(use_true_random=False))
def test_permutation_invariance(rows, rnd):
    c, r, m = (torch.tensor(col, dtype=torch.float32) for col in zip(*rows))
    perm = list(range(len(rows)))
    rnd.shuffle(perm)
    p = torch.tensor(perm)
    assert_close(bt_loss(c, r, m).losses[p], bt_loss(c[p], r[p], m[p]).losses)
