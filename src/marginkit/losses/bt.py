"""Bradley-Terry reward-model losses, with an optional per-pair target margin (Llama 2, arXiv:2307.09288).

    loss_i = -log sigmoid(r_c,i - r_r,i - m_i)        (Touvron et al. 2023, eq. 2)

m_i = 0 is plain BT (Bradley & Terry 1952; Ouyang et al. 2022, eq. 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from marginkit.losses.types import PairLoss, check_pair_shapes

__all__ = ["bt_loss", "soft_bt_loss", "centering_penalty"]


def bt_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    target_margin: torch.Tensor | None = None,
) -> PairLoss:
    """Bradley-Terry loss with a margin, per pair, not reduced.

    loss_i = -log σ(Δ_i - m_i) = softplus(m_i - Δ_i), where Δ_i = r_c,i - r_r,i is the reward gap
    and m_i the target margin (0 when None).

    Args:
        chosen_rewards:   [B] r(x, y_c), with gradient.
        rejected_rewards: [B] r(x, y_r), with gradient.
        target_margin:    [B] m, must not require grad (margins are targets, not parameters).

    Value at a known point: Δ = 0, m = 0 gives ln 2 = 0.6931 (a zero-initialised head);
    Δ = 0, m gives softplus(m). The maths runs in float32 even under bf16 autocast.
    Returned rewards and extras are detached.
    """
    check_pair_shapes("bt_loss", chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards,
                      target_margin=target_margin)
    if target_margin is not None and target_margin.requires_grad:
        raise ValueError("bt_loss: target_margin requires grad; margins must be detached targets")
    reward_gap = chosen_rewards.float() - rejected_rewards.float()
    if target_margin is not None:
        reward_gap = reward_gap - target_margin.float()
    losses = -F.logsigmoid(reward_gap)
    return PairLoss(losses, chosen_rewards.detach(), rejected_rewards.detach())


def soft_bt_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, p_chosen: torch.Tensor) -> PairLoss:
    """Bradley-Terry with soft labels: the cross-entropy of σ(Δ) to a target probability, per pair.

    loss_i = -p_i log σ(Δ_i) - (1 - p_i) log σ(-Δ_i) = softplus(-Δ_i) + (1 - p_i) Δ_i,  Δ_i = r_c,i - r_r,i.

    p_i = 1 is plain BT; p_i = 1 - ε for every pair is label smoothing (the conservative loss for an assumed
    flip rate ε, cDPO's form for a reward model); p_i = the probability with which the labeller chose y_c
    (known in a synthetic world) is the soft-label ceiling: it trains on what the label *means*, the gap.

    Args:
        chosen_rewards, rejected_rewards: [B], with gradient.
        p_chosen: [B] target P(y_c ≻ y_r) in [0, 1], must not require grad.

    Values: Δ = 0 gives ln 2 for every p; Δ = ln 3, p = 0.75 gives the target's entropy
    -0.75 ln 0.75 - 0.25 ln 0.25 = 0.5623 (σ(ln 3) = 0.75, the minimum over Δ).
    """
    check_pair_shapes("soft_bt_loss", chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards,
                      p_chosen=p_chosen)
    if p_chosen.requires_grad:
        raise ValueError("soft_bt_loss: p_chosen requires grad; targets must be detached")
    if bool(((p_chosen < 0) | (p_chosen > 1) | ~torch.isfinite(p_chosen)).any()):
        raise ValueError("soft_bt_loss: p_chosen must lie in [0, 1]")
    reward_gap = chosen_rewards.float() - rejected_rewards.float()
    losses = F.softplus(-reward_gap) + (1.0 - p_chosen.float()) * reward_gap
    return PairLoss(losses, chosen_rewards.detach(), rejected_rewards.detach())


def centering_penalty(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Reward-centering term per pair, (r_c + r_r)^2 [B] (Eisenstein et al. 2023, arXiv:2312.09244).

    Added to the loss with a small coefficient (TRL's `center_rewards_coefficient`), it pins the
    mean reward near 0 without changing which response is preferred. Zero for zero rewards.
    """
    check_pair_shapes("centering_penalty", chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    return (chosen_rewards.float() + rejected_rewards.float()) ** 2
