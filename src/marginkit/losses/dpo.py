"""DPO-family losses (Rafailov et al. 2023, arXiv:2305.18290): pure functions of per-pair log-probs.

Notation, per pair i of a batch of B (all [B]):
    π_c, π_r   summed log π_θ(y|x) of the chosen / rejected response tokens (the policy, with grad)
    ρ_c, ρ_r   the same under the frozen reference π_ref (no grad)
    h          = (π_c - ρ_c) - (π_r - ρ_r), the raw, unscaled log-ratio gap
    r(x, y)    = β (log π_θ(y|x) - log π_ref(y|x)), the implicit reward (DPO eq. 5), so β h = r_c - r_r

Every loss returns `PairLoss(losses [B] with grad, chosen_rewards [B], rejected_rewards [B], extras)`,
rewards and extras detached, nothing reduced: weighting, filtering and averaging happen in the step.
The maths runs in float32. With policy = reference, h = 0 and sigmoid DPO gives ln 2 = 0.6931.
Each variant is its own function; `build_dpo_loss` (losses/registry.py) looks one up by name in
`DPO_LOSSES` once, at setup.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from marginkit.losses.types import PairLoss, check_pair_shapes
from marginkit.margins.global_batch import gather_rows

__all__ = [
    "PreferenceLogps", "log_ratio_gap", "dpo_sigmoid_loss", "ipo_loss", "hinge_loss", "robust_dpo_loss",
    "cdpo_loss", "simpo_loss", "odpo_loss", "beta_dpo_beta", "chosen_nll", "DPOLoss", "BetaDPO", "BetaDPOConfig",
]

Tensor = torch.Tensor


def log_ratio_gap(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, reference_chosen_logps: Tensor,
                  reference_rejected_logps: Tensor) -> Tensor:
    """[B] h = (π_c - ρ_c) - (π_r - ρ_r) in float32: the unscaled gap seed 001 saw reach 599."""
    check_pair_shapes("log_ratio_gap", policy_chosen_logps=policy_chosen_logps,
                      policy_rejected_logps=policy_rejected_logps, reference_chosen_logps=reference_chosen_logps,
                      reference_rejected_logps=reference_rejected_logps)
    return ((policy_chosen_logps.float() - reference_chosen_logps.float())
            - (policy_rejected_logps.float() - reference_rejected_logps.float()))


def _implicit_rewards(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, beta: float | Tensor) -> tuple[Tensor, Tensor]:
    """Detached β (π - ρ) for chosen and rejected [B] (TRL's `rewards/chosen`, `rewards/rejected`)."""
    return (beta * (pc.float() - rc.float())).detach(), (beta * (pr.float() - rr.float())).detach()


def dpo_sigmoid_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, reference_chosen_logps: Tensor,
                     reference_rejected_logps: Tensor, beta: float | Tensor) -> PairLoss:
    """DPO: loss_i = -log σ(β h_i)  (Rafailov et al. 2023, arXiv:2305.18290, eq. 7).

    Matches eric-mitchell/direct-preference-optimization `preference_loss` (label_smoothing 0) and
    TRL `loss_type="sigmoid"`. β: typically 0.1 (0.01-0.5); smaller lets the policy move further
    from the reference. At h = 0 (policy = reference) the loss is ln 2 = 0.6931.
    Inputs [B]; `beta` a float or a 0-dim tensor (β-DPO passes its batch value).
    """
    h = log_ratio_gap(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    losses = -F.logsigmoid(beta * h)
    return PairLoss(losses, *_implicit_rewards(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                                               reference_rejected_logps, beta))


def ipo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, reference_chosen_logps: Tensor,
             reference_rejected_logps: Tensor, beta: float) -> PairLoss:
    """IPO: loss_i = (h_i - 1/(2τ))^2 with τ = β  (Azar et al. 2023, arXiv:2310.12036, eq. 17).

    A squared loss regresses h to the finite target 1/(2β) instead of pushing it to infinity, so it
    cannot over-fit deterministic preferences the way the sigmoid can. Matches TRL `loss_type="ipo"`;
    TRL feeds it length-averaged log-probs (see IPOConfig). β (τ): typically 0.01-1; the target gap
    1/(2β) is 5 at β = 0.1. At h = 0 the loss is 1/(4β^2).
    """
    if beta <= 0:
        raise ValueError(f"ipo_loss: beta={beta} must be > 0 (the target gap is 1/(2 beta))")
    h = log_ratio_gap(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    losses = (h - 1.0 / (2.0 * beta)) ** 2
    return PairLoss(losses, *_implicit_rewards(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                                               reference_rejected_logps, beta))


def hinge_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, reference_chosen_logps: Tensor,
               reference_rejected_logps: Tensor, beta: float) -> PairLoss:
    """Hinge (SLiC-HF): loss_i = max(0, 1 - β h_i)  (Zhao et al. 2023, arXiv:2305.10425, eq. 3 with
    the reference log-ratio as in TRL `loss_type="hinge"`). Zero once β h >= 1, i.e. h >= 1/β: a
    built-in margin of 1/β nats. β: typically 0.1-1. At h = 0 the loss is 1."""
    h = log_ratio_gap(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    losses = torch.relu(1.0 - beta * h)
    return PairLoss(losses, *_implicit_rewards(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                                               reference_rejected_logps, beta))


def _check_smoothing(name: str, eps: float, upper_inclusive: bool) -> None:
    ok = 0.0 <= eps <= 0.5 if upper_inclusive else 0.0 <= eps < 0.5
    if not ok:
        raise ValueError(f"{name}: label_smoothing={eps} must be in [0, 0.5{']' if upper_inclusive else ')'}")


def cdpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, reference_chosen_logps: Tensor,
              reference_rejected_logps: Tensor, beta: float, label_smoothing: float) -> PairLoss:
    """Conservative DPO: loss_i = -(1 - ε) log σ(β h_i) - ε log σ(-β h_i)  (Mitchell 2023,
    "A note on DPO with noisy preferences", eq. 3; eric-mitchell `preference_loss` with
    label_smoothing; TRL sigmoid with label_smoothing).

    Cross-entropy against soft labels (1 - ε, ε): the optimum is a finite gap β h = log((1-ε)/ε)
    rather than infinity. ε: the assumed flip rate, in [0, 0.5]; 0 gives DPO, 0.5 a constant
    gradient-free ln 2 at h = 0. At h = 0 the loss is ln 2 for every ε.
    """
    _check_smoothing("cdpo_loss", label_smoothing, upper_inclusive=True)
    h = log_ratio_gap(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    return PairLoss(losses, *_implicit_rewards(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                                               reference_rejected_logps, beta))


def robust_dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, reference_chosen_logps: Tensor,
                    reference_rejected_logps: Tensor, beta: float, label_smoothing: float) -> PairLoss:
    """Robust DPO: loss_i = [-(1 - ε) log σ(β h_i) + ε log σ(-β h_i)] / (1 - 2ε)  (Chowdhury et al.
    2024, "Provably Robust DPO", arXiv:2403.00409, eq. 8; TRL `loss_type="robust"`).

    Unbiased under label flips at rate ε: (1 - ε) L(h) + ε L(-h) = -log σ(β h), the clean DPO loss
    (tested). Unlike cDPO it keeps DPO's optimum. ε: the known flip rate, in [0, 0.5); 0 gives DPO.
    At h = 0 the loss is ln 2. Can be negative for pairs that look flipped (β h << 0).
    """
    _check_smoothing("robust_dpo_loss", label_smoothing, upper_inclusive=False)
    h = log_ratio_gap(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    eps = label_smoothing
    losses = (-(1.0 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1.0 - 2.0 * eps)
    return PairLoss(losses, *_implicit_rewards(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                                               reference_rejected_logps, beta))


def odpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, reference_chosen_logps: Tensor,
              reference_rejected_logps: Tensor, beta: float, offset: Tensor) -> PairLoss:
    """ODPO: loss_i = -log σ(β h_i - Δ_i), a per-pair offset Δ  (Amini, Vieira & Cotterell 2024,
    "Direct Preference Optimization with an Offset", arXiv:2402.10571, eq. 9).

    The implicit reward gap must exceed Δ_i, which grows with how much better y_c is: the DPO
    counterpart of the reward-model margin. Δ comes from anywhere (the data's label margin, a gold
    gap, a trained RM's gap through a marginkit margin strategy); the paper uses Δ = α log(s_c - s_r)
    with α = 1. `offset` [B] must be detached. Δ = 0 gives DPO; at h = 0 the loss is softplus(Δ).
    """
    check_pair_shapes("odpo_loss", policy_chosen_logps=policy_chosen_logps, offset=offset)
    if offset.requires_grad:
        raise ValueError("odpo_loss: offset requires grad; offsets are detached targets")
    h = log_ratio_gap(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    losses = -F.logsigmoid(beta * h - offset.float())
    return PairLoss(losses, *_implicit_rewards(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                                               reference_rejected_logps, beta))


def simpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, chosen_lengths: Tensor,
               rejected_lengths: Tensor, beta: float, gamma: float) -> PairLoss:
    """SimPO: loss_i = -log σ(β π_c/|y_c| - β π_r/|y_r| - γ)  (Meng, Xia & Chen 2024,
    arXiv:2405.14734, eq. 6). Reference-free: the reward is the length-averaged log-prob,
    r(x, y) = β log π_θ(y|x) / |y|, and γ is a target reward margin.

    β: typically 2.0-2.5 (far larger than DPO's, since averaged log-probs are small); γ: 0.5-1.5
    (the paper tunes γ/β in 0.3-0.8). Lengths [B] count response tokens. At equal averaged
    log-probs the loss is softplus(γ); γ = 0 gives ln 2.
    """
    check_pair_shapes("simpo_loss", policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                      chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    chosen_rewards = beta * policy_chosen_logps.float() / chosen_lengths.float().clamp(min=1.0)
    rejected_rewards = beta * policy_rejected_logps.float() / rejected_lengths.float().clamp(min=1.0)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return PairLoss(losses, chosen_rewards.detach(), rejected_rewards.detach())


def beta_dpo_beta(batch_margin: Tensor, reference_margin: float | Tensor, beta: float, alpha: float,
                  min_beta: float = 1e-3) -> Tensor:
    """β-DPO's batch β: β_batch = max(β_0 [1 + α (M_batch - M_0)], β_min)  (Wu et al. 2024,
    "β-DPO: Direct Preference Optimization with Dynamic β", arXiv:2407.08639, eq. 7).

    M_batch: the batch's mean raw gap h (0-dim); M_0: the running reference value. A batch whose
    pairs are already well separated (M > M_0: informative, easy) gets a larger β, a noisy batch a
    smaller one. α: typically 0.2-1 (the authors' example 0.6); α = 0 gives a constant β_0.
    Returns a detached 0-dim tensor; the authors' code clamps at β_min = 1e-3 too.
    """
    value = beta * (1.0 + alpha * (batch_margin.detach().float() - reference_margin))
    return value.clamp(min=min_beta)


def chosen_nll(policy_chosen_logps: Tensor, chosen_lengths: Tensor) -> Tensor:
    """[B] length-averaged negative log-likelihood of the chosen response, -π_c / |y_c|.

    Added with a weight α to any DPO-family loss it is RPO (Pang et al. 2024, "Iterative Reasoning
    Preference Optimization", arXiv:2404.19733, eq. 1; TRL `rpo_alpha`): it keeps the chosen
    log-probs from falling while the margin grows. Typical α: 0.1-1.
    """
    check_pair_shapes("chosen_nll", policy_chosen_logps=policy_chosen_logps, chosen_lengths=chosen_lengths)
    return -policy_chosen_logps.float() / chosen_lengths.float().clamp(min=1.0)


# ---------------------------------------------------------------------------------------------
# Inputs and the interface of a configured loss (built in losses/registry.py)


@dataclass(frozen=True)
class PreferenceLogps:
    """What the step hands a DPO loss, per pair [B]: summed policy log-probs (with grad), summed
    reference log-probs (no grad; None when reference-free) and response token counts."""

    policy_chosen: Tensor
    policy_rejected: Tensor
    reference_chosen: Tensor | None
    reference_rejected: Tensor | None
    chosen_lengths: Tensor
    rejected_lengths: Tensor

    def summed(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(π_c, π_r, ρ_c, ρ_r) summed over tokens."""
        if self.reference_chosen is None or self.reference_rejected is None:
            raise ValueError("this loss needs reference log-probs, but none were given")
        return self.policy_chosen, self.policy_rejected, self.reference_chosen, self.reference_rejected

    def averaged(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(π_c, π_r, ρ_c, ρ_r) each divided by its response length."""
        lc, lr = self.chosen_lengths.float().clamp(min=1.0), self.rejected_lengths.float().clamp(min=1.0)
        pc, pr, rc, rr = self.summed()
        return pc / lc, pr / lr, rc / lc, rr / lr


class DPOLoss(Protocol):
    """A configured loss, built once at setup. `__call__` is the training loss (it may update state,
    as β-DPO does); `rewards` gives the detached implicit rewards [B] exactly as the loss defines them,
    for evaluation, without touching state."""

    name: str
    beta: float
    needs_reference: bool
    uses_offset: bool

    def __call__(self, x: PreferenceLogps, offset: Tensor | None = None) -> PairLoss: ...

    def rewards(self, x: PreferenceLogps) -> tuple[Tensor, Tensor]: ...

    def loss_at_zero_gap(self, like: Tensor, offset: Tensor | None = None) -> Tensor | None:
        """[B] (shape and device of `like`) the loss when policy = reference (h = 0): what a first
        step must log; None for reference-free losses, whose starting value depends on the model."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class BetaDPOConfig:
    alpha: float = field(default=0.6, metadata={"help": "Scale α of β's response to the batch margin (authors' example 0.6)."})
    momentum: float = field(default=0.9, metadata={"help": "Momentum of the running reference margin M_0 (authors' code 0.9)."})
    filter_fraction: float = field(default=0.2, metadata={
        "help": "Fraction of each batch dropped by β-guided filtering, in [0, 1) (authors' example 0.2; 0: off)."})
    min_beta: float = field(default=1e-3, metadata={"help": "Lower clamp of the batch β (authors' code 1e-3)."})

    def __post_init__(self) -> None:
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"beta_dpo.momentum={self.momentum}: must be in [0, 1)")
        if not 0.0 <= self.filter_fraction < 1.0:
            raise ValueError(f"beta_dpo.filter_fraction={self.filter_fraction}: must be in [0, 1)")
        if self.min_beta <= 0:
            raise ValueError(f"beta_dpo.min_beta={self.min_beta}: must be > 0")


# ---------------------------------------------------------------------------------------------
# β-DPO: the one stateful loss


class BetaDPO:
    """β-DPO (Wu et al. 2024, arXiv:2407.08639; the authors' code junkangwu/beta-DPO `trainers.py`).

    Per (micro-)batch, with h the raw gaps [B]:
    1. running statistics, updated first: M_0 <- m M_0 + (1 - m) mean(h), σ_0 <- m σ_0 + (1 - m) std(h)
       (the first batch sets them; the authors start from 0, which biases M_0 low early on);
    2. β-guided filtering (optional): keep k = max(1, floor(B (1 - ρ))) pairs drawn without
       replacement with weights exp(-(h - M_0)^2 / (2 σ_0^2)) (uniform when σ_0 = 0), i.e. drop the
       pairs whose gap is an outlier against the running distribution;
    3. β_batch = max(β_0 [1 + α (mean(h over kept) - M_0)], β_min);
    4. loss_i = -log σ(β_batch h_i) on the kept pairs.
    The kept pairs come back as extras["pair_weight"] = (B / k) on kept, 0 on dropped, so the step's
    sum divided by B is the mean over kept pairs. Rewards use β_0, as in the authors' code, so
    `rewards/*` stay comparable with plain DPO; extras["beta"] holds β_batch. With torch.distributed
    running, steps 1-3 run on the global micro-batch (every process's gaps gathered), so the result does not
    depend on the number of processes. Filtering draws come from a private generator
    whose state is saved, so resume is exact.
    """

    name = "beta_dpo"
    needs_reference = True
    uses_offset = False

    def __init__(self, config: BetaDPOConfig, beta: float, seed: int = 0) -> None:
        self.config, self.beta = config, beta
        self.reference_margin: float | None = None  # M_0
        self.reference_std: float | None = None  # σ_0
        self.generator = torch.Generator().manual_seed(seed)

    def rewards(self, x: PreferenceLogps) -> tuple[Tensor, Tensor]:
        return _implicit_rewards(*x.summed(), self.beta)

    def loss_at_zero_gap(self, like: Tensor, offset: Tensor | None = None) -> Tensor | None:
        return torch.full_like(like, math.log(2.0), dtype=torch.float32)  # -log σ(β 0) for any β

    @torch.no_grad()
    def _update(self, h: Tensor) -> None:
        n = h.numel()
        mean = (h.sum() / n).item()
        std = math.sqrt(max(((h * h).sum() / n).item() - mean * mean, 0.0))  # population std: defined for B = 1
        m = self.config.momentum
        first = self.reference_margin is None
        self.reference_margin = mean if first else m * self.reference_margin + (1 - m) * mean
        self.reference_std = std if first else m * self.reference_std + (1 - m) * std

    @torch.no_grad()
    def _select(self, h: Tensor) -> Tensor:
        """[B] bool: the pairs kept by β-guided filtering."""
        n = h.numel()
        k = max(1, int(n * (1.0 - self.config.filter_fraction)))
        if k >= n:
            return torch.ones_like(h, dtype=torch.bool)
        sigma = self.reference_std or 0.0
        z = (h.float().cpu() - self.reference_margin) / sigma if sigma > 0 else torch.zeros(n)
        weights = torch.exp(-0.5 * z * z)
        if not (weights.sum() > 0):  # every gap far out: draw uniformly
            weights = torch.ones(n)
        keep = torch.multinomial(weights, k, replacement=False, generator=self.generator)
        mask = torch.zeros(n, dtype=torch.bool)
        mask[keep] = True
        return mask.to(h.device)

    def __call__(self, x: PreferenceLogps, offset: Tensor | None = None) -> PairLoss:
        h_mine = log_ratio_gap(*x.summed()).detach()  # [b] this process's pairs
        # Statistics and filtering draws over the global micro-batch (every process's gaps, in the order of
        # one process), each process keeping its rows: P processes give the β and the kept pairs of one, and
        # every process keeps the same state and generator (issue 17; margins/global_batch.py).
        h, mine = gather_rows(h_mine)  # [B]
        self._update(h)
        kept_all = self._select(h)  # [B] bool, the same on every process
        kept_mean = (h * kept_all).sum() / kept_all.float().sum()  # []
        beta_batch = beta_dpo_beta(kept_mean, self.reference_margin, self.beta, self.config.alpha, self.config.min_beta)
        out = dpo_sigmoid_loss(*x.summed(), beta=beta_batch)
        kept = kept_all[mine]  # [B] -> [b]
        pair_weight = kept.float() * (kept_all.numel() / kept_all.float().sum())  # [b]; sums to B over the processes
        chosen, rejected = self.rewards(x)
        extras = {"beta": beta_batch.expand(h_mine.shape).clone(), "pair_weight": pair_weight,
                  "selected": kept.float(), "reference_margin": torch.full_like(h_mine, self.reference_margin)}
        return PairLoss(out.losses, chosen, rejected, extras)

    def state_dict(self) -> dict[str, Any]:
        return {"reference_margin": self.reference_margin, "reference_std": self.reference_std,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reference_margin, self.reference_std = state["reference_margin"], state["reference_std"]
        self.generator.set_state(state["generator"])
