"""Online RL for language models (GRPO, RLOO, PPO): advantages, the clipped surrogate and KL estimators, as pure functions.

Notation. A rollout batch holds P prompts with K completions each (N = P K sequences, T completion tokens):
    r_ik      the scalar reward of completion k of prompt i                                  [P, K]
    m_t       the completion mask: 1 on completion tokens up to and including EOS           [N, T]
    log π_t   log-prob of completion token t under the policy being trained (with grad)     [N, T]
    log π°_t  the same under the policy that sampled the rollout ("old", detached)          [N, T]
    log ρ_t   the same under the frozen reference (detached)                                [N, T]
    ρ_t       = exp(log π_t - log π°_t), the importance ratio (1 on the first epoch over a rollout)

Each function returns per-token or per-sequence values, never a reduction over the batch, except
`aggregate_tokens`, the one place where a [N, T] per-token loss becomes a scalar (the three ways papers
and TRL do it, by name). Maths in float32. Names and defaults follow TRL's GRPOTrainer (`loss_type`,
`epsilon`, `beta`, `scale_rewards`) where it has them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

__all__ = ["TokenLoss", "grpo_advantages", "rloo_advantages", "gae", "clipped_surrogate", "value_loss",
           "kl_k1", "kl_k2", "kl_k3", "KL_ESTIMATORS", "LossAggregation", "token_weights", "aggregate_tokens"]

Tensor = torch.Tensor
LossAggregation = Literal["grpo", "bnpo", "dr_grpo"]


@dataclass(frozen=True)
class TokenLoss:
    """losses [N, T] per token (with gradient, not reduced, 0 where the mask is 0); extras detached [N, T]."""

    losses: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)


def _check_same(name: str, dims: int, **tensors: Tensor) -> None:
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if len(set(shapes.values())) != 1 or any(len(s) != dims for s in shapes.values()):
        detail = ", ".join(f"{k}={s}" for k, s in shapes.items())
        raise ValueError(f"{name}: every input must have the same {dims}-D shape; got {detail}")


def grpo_advantages(rewards: Tensor, scale_rewards: bool = True, eps: float = 1e-4) -> Tensor:
    """GRPO's group-relative advantage: A_ik = (r_ik - mean_k r_ik) / (std_k r_ik + eps)  [P, K].

    Shao et al. 2024 (DeepSeekMath, arXiv:2402.03300, section 4.1.2, "outcome supervision"): every token
    of completion k gets A_ik. std is the unbiased (Bessel) standard deviation over the K completions of
    the prompt and eps = 1e-4, as TRL's GRPOTrainer (`std(dim=1)`, `+ 1e-4`). scale_rewards=False is Dr.
    GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv:2503.20783, section 3.1): A_ik =
    r_ik - mean_k r_ik, which removes the question-difficulty bias of dividing by a small std. A group
    whose rewards are all equal gets A = 0 either way (no signal). Needs K >= 2.
    rewards: [P, K] float; returns [P, K] float32, detached.
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"grpo_advantages: rewards must be [P, K] with K >= 2 completions per prompt; got "
                         f"{tuple(rewards.shape)}")
    r = rewards.detach().float()
    centred = r - r.mean(dim=1, keepdim=True)  # [P, K]
    if not scale_rewards:
        return centred
    return centred / (r.std(dim=1, keepdim=True) + eps)  # unbiased std, [P, 1]


def rloo_advantages(rewards: Tensor) -> Tensor:
    """REINFORCE leave-one-out: A_ik = r_ik - (1 / (K - 1)) Σ_{j≠k} r_ij = K / (K - 1) (r_ik - mean_k r_ik).

    Kool et al. 2019 ("Buy 4 REINFORCE samples, get a baseline for free!"); Ahmadian et al. 2024 (arXiv:
    2402.14740, eq. 6) for LLMs. The baseline of a sample is the mean reward of the other K - 1 samples of
    the same prompt, so it is independent of the sample and the estimator stays unbiased; the K advantages
    of a group sum to zero. Needs K >= 2. rewards [P, K]; returns [P, K] float32, detached.
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rloo_advantages: rewards must be [P, K] with K >= 2 completions per prompt; got "
                         f"{tuple(rewards.shape)}")
    r = rewards.detach().float()
    k = r.shape[1]
    baseline = (r.sum(dim=1, keepdim=True) - r) / (k - 1)  # [P, K]: mean of the other K - 1
    return r - baseline


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation: (advantages, returns), each [N, T] float32, detached.

        δ_t = r_t + γ V_{t+1} - V_t,        A_t = δ_t + γ λ A_{t+1},        returns_t = A_t + V_t

    Schulman et al. 2016 (arXiv:1506.02438, eq. 16), as the reverse loop of cleanrl `ppo.py`. Each row is
    one episode that ends after its last masked token: V and r are read as 0 at and after the first mask-0
    position (TRL's PPOTrainer masks them the same way), so V_{T} = 0 and a padded position gets A = 0.
    λ = 1 gives returns = the discounted reward-to-go; λ = 0 gives A_t = δ_t. Typical γ = 1, λ = 0.95 for
    language models (TRL's PPOConfig). rewards, values, mask: [N, T], each row's tokens contiguous; masked
    positions before them (a prompt, in the labels' alignment) change nothing and get A = 0 (tested).
    """
    _check_same("gae", 2, rewards=rewards, values=values, mask=mask)
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gae: gamma={gamma} and lam={lam} must both be in [0, 1]")
    m = mask.detach().float()
    r, v = rewards.detach().float() * m, values.detach().float() * m  # [N, T], 0 after the episode
    advantages = torch.zeros_like(r)
    next_value = torch.zeros_like(r[:, 0])  # [N]: V_T = 0
    next_advantage = torch.zeros_like(r[:, 0])  # [N]: A_T = 0
    for t in reversed(range(r.shape[1])):
        delta = r[:, t] + gamma * next_value - v[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = next_advantage
        next_value = v[:, t]
    advantages = advantages * m
    return advantages, advantages + v


def clipped_surrogate(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, epsilon: float = 0.2,
                      epsilon_high: float | None = None) -> TokenLoss:
    """PPO's clipped surrogate, per token: l_t = max(-A_t ρ_t, -A_t clip(ρ_t, 1 - ε, 1 + ε_high)).

    Schulman et al. 2017 (arXiv:1707.06347, eq. 7), written as a loss (the negated objective) as cleanrl
    `ppo.py` (`pg_loss = max(pg_loss1, pg_loss2)`) and TRL's GRPOTrainer do; GRPO uses it with the group
    advantage on every token (DeepSeekMath eq. 3). ε_high (None: ε) is DAPO's decoupled upper clip (Yu et
    al. 2025, arXiv:2503.14476, eq. 10). With ρ = 1 (the first pass over a rollout) l_t = -A_t and its
    gradient is -A_t ∇log π_t: the REINFORCE gradient. Typical ε = 0.2 (TRL: 0.2).
    logps [N, T] (with grad), old_logps [N, T] (detached), advantages [N, T] or [N] (one per sequence,
    broadcast over its tokens), mask [N, T]. Returns losses [N, T] (0 off the mask) and detached extras:
    `ratio` [N, T]; `clipped` [N, T] 1.0 where the clipped term is the larger (its gradient is zero), which
    TRL counts as `clip_ratio` (low: ρ < 1 - ε with A < 0; high: ρ > 1 + ε_high with A > 0).
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logps)  # [N] -> [N, T]
    _check_same("clipped_surrogate", 2, logps=logps, old_logps=old_logps, advantages=advantages, mask=mask)
    high = epsilon if epsilon_high is None else epsilon_high
    if not (0.0 <= epsilon < 1.0 and high >= 0.0):
        raise ValueError(f"clipped_surrogate: epsilon={epsilon} must be in [0, 1) and epsilon_high={high} >= 0")
    a = advantages.detach().float()
    ratio = torch.exp(logps.float() - old_logps.detach().float())  # [N, T]
    unclipped = -a * ratio
    clipped = -a * torch.clamp(ratio, 1.0 - epsilon, 1.0 + high)
    m = mask.bool()
    losses = torch.where(m, torch.maximum(unclipped, clipped), torch.zeros_like(unclipped))
    is_clipped = ((clipped > unclipped) & m).float()
    return TokenLoss(losses, {"ratio": ratio.detach(), "clipped": is_clipped.detach()})


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
               clip_range: float | None = 0.2) -> TokenLoss:
    """PPO's clipped value loss per token: l_t = ½ max((V_t - R_t)², (V°_t + clip(V_t - V°_t, -ε_v, ε_v) - R_t)²).

    cleanrl `ppo.py` (`clip_vloss`) and TRL's PPOTrainer (`cliprange_value`, 0.2): the value may move at
    most ε_v from the value at rollout time before the loss stops pulling it further. clip_range None: the
    plain ½ (V_t - R_t)². values [N, T] (with grad), old_values and returns [N, T] (detached), mask [N, T].
    Returns losses [N, T] (0 off the mask) and extras `clipped` [N, T] (the clipped term was the larger).
    """
    _check_same("value_loss", 2, values=values, old_values=old_values, returns=returns, mask=mask)
    v, v_old, ret = values.float(), old_values.detach().float(), returns.detach().float()
    unclipped = (v - ret) ** 2
    m = mask.bool()
    if clip_range is None:
        return TokenLoss(torch.where(m, 0.5 * unclipped, torch.zeros_like(v)), {"clipped": torch.zeros_like(v)})
    if clip_range < 0:
        raise ValueError(f"value_loss: clip_range={clip_range} must be >= 0 (None: no clipping)")
    v_clipped = v_old + torch.clamp(v - v_old, -clip_range, clip_range)
    clipped = (v_clipped - ret) ** 2
    losses = torch.where(m, 0.5 * torch.maximum(unclipped, clipped), torch.zeros_like(v))
    return TokenLoss(losses, {"clipped": ((clipped > unclipped) & m).float().detach()})


def kl_k1(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k1 = log π_t - log ρ_t [N, T]: the plain log-ratio, an unbiased estimate of KL(π ‖ ρ) for tokens
    sampled from π, but negative on some tokens and high-variance (Schulman 2020, "Approximating KL
    divergence", http://joschu.net/blog/kl-approx.html). The KL penalty added to PPO's reward (TRL's
    PPOTrainer `kl_estimator="k1"`)."""
    _check_same("kl_k1", 2, logps=logps, ref_logps=ref_logps)
    return logps.float() - ref_logps.float()


def kl_k2(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k2 = ½ (log ρ_t - log π_t)² [N, T]: biased, low variance, >= 0 (Schulman 2020, same note)."""
    _check_same("kl_k2", 2, logps=logps, ref_logps=ref_logps)
    return 0.5 * (ref_logps.float() - logps.float()) ** 2


def kl_k3(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k3 = exp(log ρ_t - log π_t) - (log ρ_t - log π_t) - 1 [N, T]: unbiased for KL(π ‖ ρ) under π, and
    >= 0 on every token (e^x >= 1 + x), low variance (Schulman 2020, same note). GRPO's KL loss term
    (DeepSeekMath eq. 4; TRL's GRPOTrainer `per_token_kl`). 0 where π = ρ."""
    _check_same("kl_k3", 2, logps=logps, ref_logps=ref_logps)
    log_ratio = ref_logps.float() - logps.float()
    return torch.exp(log_ratio) - log_ratio - 1.0


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def token_weights(mask: Tensor, aggregation: LossAggregation, max_completion_length: int | None = None, *,
                  n_rows: int | None = None, n_tokens: Tensor | float | None = None) -> Tensor:
    """[N, T] weights w such that Σ_t,n w_nt l_nt is the batch loss, for the three aggregations in use:

        grpo     (1/N) Σ_n (1/|o_n|) Σ_t l_nt   each sequence's mean, then the mean over sequences
                                                  (DeepSeekMath eq. 3; TRL loss_type="grpo")
        bnpo     Σ_n Σ_t l_nt / Σ_n |o_n|       the mean over every token of the batch (DAPO's token-level
                                                  loss, arXiv:2503.14476 eq. 8; TRL loss_type="bnpo")
        dr_grpo  Σ_n Σ_t l_nt / (N L)           a constant normaliser, L = max_completion_length (Dr. GRPO
                                                  section 3.1: no length bias; TRL loss_type="dr_grpo")

    Under "grpo" a token of a long completion weighs less than one of a short completion, so a wrong long
    answer is penalised less per token (the length bias Dr. GRPO removes). A row with no token weighs 0.

    Data-parallel training: each process holds some rows of the batch, and DDP averages the processes'
    gradients. N and Σ_n |o_n| are then the *whole* batch's (n_rows, n_tokens: every process passes the
    same), so the weights of all processes together are the one-process weights and the sum of their losses
    is the one-process loss; the caller multiplies by the number of processes to undo DDP's average. None:
    this batch's own N and token count (one process).
    """
    m = mask.float()
    rows = m.shape[0] if n_rows is None else n_rows
    if aggregation == "grpo":
        return m / m.sum(-1, keepdim=True).clamp(min=1.0) / rows
    if aggregation == "bnpo":
        tokens = m.sum() if n_tokens is None else torch.as_tensor(n_tokens, dtype=m.dtype, device=m.device)
        return m / tokens.clamp(min=1.0)
    if aggregation == "dr_grpo":
        if not max_completion_length or max_completion_length < 1:
            raise ValueError(f"token_weights: aggregation=dr_grpo needs max_completion_length >= 1; got "
                             f"{max_completion_length}")
        return m / (rows * max_completion_length)
    raise ValueError(f"token_weights: aggregation={aggregation!r}; known: grpo, bnpo, dr_grpo")


def aggregate_tokens(per_token: Tensor, mask: Tensor, aggregation: LossAggregation,
                     max_completion_length: int | None = None, *, n_rows: int | None = None,
                     n_tokens: Tensor | float | None = None) -> Tensor:
    """The scalar Σ w_nt l_nt with w = `token_weights(mask, aggregation, ...)` (per_token [N, T], with grad);
    n_rows, n_tokens: the whole batch's, when these rows are one process's share of it (`token_weights`)."""
    _check_same("aggregate_tokens", 2, per_token=per_token, mask=mask)
    weights = token_weights(mask, aggregation, max_completion_length, n_rows=n_rows, n_tokens=n_tokens)
    return (per_token.float() * weights).sum()
