"""The DPO-family loss registry and the `loss:` section of a DPO run config.

`DPO_LOSSES` maps each name to a builder that binds the loss's options from `DPOLossSpec` once, at
setup; it is the one list of names: `LossName` (the Literal `loss.name` is checked against) and the
help text (each builder's docstring) are built from it. The loss functions themselves are in dpo.py.
Adding a loss: its function in dpo.py, a builder and one line in DPO_LOSSES here, its options'
section in DPOLossSpec, and its tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from marginkit.losses.dpo import (
    BetaDPO,
    BetaDPOConfig,
    DPOLoss,
    PreferenceLogps,
    cdpo_loss,
    dpo_sigmoid_loss,
    hinge_loss,
    ipo_loss,
    odpo_loss,
    robust_dpo_loss,
    simpo_loss,
)
from marginkit.losses.types import PairLoss

__all__ = ["IPOConfig", "LabelSmoothingConfig", "SimPOConfig", "ODPOConfig", "DPOLossSpec", "BoundLoss",
           "DPO_LOSSES", "LossName", "build_dpo_loss"]

Tensor = torch.Tensor


@dataclass
class IPOConfig:
    length_normalized: bool = field(default=True, metadata={
        "help": "IPO on length-averaged log-probs (TRL's choice) instead of sums; rewards then use averages too."})


@dataclass
class LabelSmoothingConfig:
    label_smoothing: float = field(default=0.1, metadata={
        "help": "Assumed label-flip rate ε: [0, 0.5] for cdpo, [0, 0.5) for robust; 0 gives plain DPO."})

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing <= 0.5:
            raise ValueError(f"label_smoothing={self.label_smoothing}: must be in [0, 0.5]")


@dataclass
class SimPOConfig:
    gamma: float = field(default=1.0, metadata={
        "help": "Target reward margin γ (paper: γ/β in 0.3-0.8 with β = 2-2.5). TRL's CPO default is 0.5."})


@dataclass
class ODPOConfig:
    alpha: float = field(default=1.0, metadata={"help": "Offset scale α: Δ = α f(m) (paper default 1)."})
    transform: Literal["identity", "log"] = field(default="identity", metadata={
        "help": "f applied to the margin strategy's m: identity, or log (the paper's f; needs every m > 0)."})


@dataclass
class BoundLoss:
    """A stateless loss with its options bound: `fn(x, offset) -> PairLoss`."""

    name: str
    beta: float
    fn: Callable[[PreferenceLogps, Tensor | None], PairLoss]
    needs_reference: bool = True
    uses_offset: bool = False

    def __call__(self, x: PreferenceLogps, offset: Tensor | None = None) -> PairLoss:
        return self.fn(x, offset)

    def loss_at_zero_gap(self, like: Tensor, offset: Tensor | None = None) -> Tensor | None:
        if not self.needs_reference:
            return None
        zero, one = torch.zeros_like(like, dtype=torch.float32), torch.ones_like(like, dtype=torch.float32)
        return self.fn(PreferenceLogps(zero, zero, zero, zero, one, one), offset).losses.detach()

    def rewards(self, x: PreferenceLogps) -> tuple[Tensor, Tensor]:
        zero = torch.zeros_like(x.policy_chosen, dtype=torch.float32).detach() if self.uses_offset else None
        out = self.fn(x, zero)
        return out.chosen_rewards, out.rejected_rewards

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _odpo_offset(margin: Tensor | None, cfg: ODPOConfig) -> Tensor:
    if margin is None:
        raise ValueError("loss.name=odpo needs a per-pair offset from the margin strategy (set margin.name)")
    if cfg.transform == "log":
        bad = ~(margin > 0)
        if bad.any():
            raise ValueError(f"loss.odpo.transform=log needs every margin > 0; {int(bad.sum())} of {margin.numel()} "
                             f"pairs have m <= 0 (e.g. {margin[bad][0].item()}). Use transform=identity, or a margin "
                             "strategy with min_margin > 0")
        return cfg.alpha * torch.log(margin.float())
    return cfg.alpha * margin.float()


def _build_sigmoid(spec: DPOLossSpec, seed: int) -> DPOLoss:
    """DPO"""
    b = spec.resolved_beta
    return BoundLoss("sigmoid", b, lambda x, _: dpo_sigmoid_loss(*x.summed(), beta=b))


def _build_ipo(spec: DPOLossSpec, seed: int) -> DPOLoss:
    """squared loss, its β is τ"""
    b, avg = spec.resolved_beta, spec.ipo.length_normalized
    return BoundLoss("ipo", b, lambda x, _: ipo_loss(*(x.averaged() if avg else x.summed()), beta=b))


def _build_hinge(spec: DPOLossSpec, seed: int) -> DPOLoss:
    """SLiC"""
    b = spec.resolved_beta
    return BoundLoss("hinge", b, lambda x, _: hinge_loss(*x.summed(), beta=b))


def _build_cdpo(spec: DPOLossSpec, seed: int) -> DPOLoss:
    """conservative, label smoothing"""
    b, eps = spec.resolved_beta, spec.cdpo.label_smoothing
    return BoundLoss("cdpo", b, lambda x, _: cdpo_loss(*x.summed(), beta=b, label_smoothing=eps))


def _build_robust(spec: DPOLossSpec, seed: int) -> DPOLoss:
    """unbiased under label noise"""
    b, eps = spec.resolved_beta, spec.robust.label_smoothing
    return BoundLoss("robust", b, lambda x, _: robust_dpo_loss(*x.summed(), beta=b, label_smoothing=eps))


def _build_simpo(spec: DPOLossSpec, seed: int) -> DPOLoss:
    """reference-free"""
    b, gamma = spec.resolved_beta, spec.simpo.gamma
    return BoundLoss("simpo", b, lambda x, _: simpo_loss(x.policy_chosen, x.policy_rejected, x.chosen_lengths,
                                                         x.rejected_lengths, beta=b, gamma=gamma),
                     needs_reference=False)


def _build_odpo(spec: DPOLossSpec, seed: int) -> DPOLoss:
    """offset from the margin strategy"""
    b, cfg = spec.resolved_beta, spec.odpo
    return BoundLoss("odpo", b, lambda x, m: odpo_loss(*x.summed(), beta=b, offset=_odpo_offset(m, cfg)),
                     uses_offset=True)


def _build_beta_dpo(spec: DPOLossSpec, seed: int) -> DPOLoss:
    """β adapted per batch"""
    return BetaDPO(spec.beta_dpo, spec.resolved_beta, seed)


# name -> builder(spec, seed); `build_dpo_loss` is the only reader. A builder's docstring is its help text.
DPO_LOSSES: dict[str, Callable[[DPOLossSpec, int], DPOLoss]] = {
    "sigmoid": _build_sigmoid,
    "ipo": _build_ipo,
    "hinge": _build_hinge,
    "cdpo": _build_cdpo,
    "robust": _build_robust,
    "simpo": _build_simpo,
    "odpo": _build_odpo,
    "beta_dpo": _build_beta_dpo,
}

LossName = Literal[tuple(DPO_LOSSES)]  # type: ignore[valid-type]  # the registry's names, in its order
_DEFAULT_BETA = {"simpo": 2.0}  # every other loss: 0.1 (DPO paper, TRL)


@dataclass
class DPOLossSpec:
    """Which DPO-family loss to train with, β, the NLL term, and each loss's own options."""

    name: LossName = field(default="sigmoid", metadata={
        "help": "DPO-family loss (formulas: docs/dpo.md), one of "
                + ", ".join(f"{n} ({b.__doc__})" for n, b in DPO_LOSSES.items()) + "."})
    beta: float | None = field(default=None, metadata={
        "help": "Reward scale β (None: the loss's usual value, 0.1; 2.0 for simpo). For IPO it is τ."})
    nll_weight: float = field(default=0.0, metadata={
        "help": "Weight α of the length-averaged NLL of the chosen response added to the loss (RPO; 0: off)."})
    ipo: IPOConfig = field(default_factory=IPOConfig)
    cdpo: LabelSmoothingConfig = field(default_factory=LabelSmoothingConfig)
    robust: LabelSmoothingConfig = field(default_factory=LabelSmoothingConfig)
    simpo: SimPOConfig = field(default_factory=SimPOConfig)
    odpo: ODPOConfig = field(default_factory=ODPOConfig)
    beta_dpo: BetaDPOConfig = field(default_factory=BetaDPOConfig)

    def __post_init__(self) -> None:
        if self.beta is not None and not (self.beta > 0 and math.isfinite(self.beta)):
            raise ValueError(f"loss.beta={self.beta}: must be a finite number > 0")
        if self.nll_weight < 0:
            raise ValueError(f"loss.nll_weight={self.nll_weight}: must be >= 0")
        if self.name == "robust" and self.robust.label_smoothing >= 0.5:
            raise ValueError(f"loss.robust.label_smoothing={self.robust.label_smoothing}: must be < 0.5")

    @property
    def resolved_beta(self) -> float:
        """β in use: the configured value, or the loss's usual one."""
        return self.beta if self.beta is not None else _DEFAULT_BETA.get(self.name, 0.1)


def build_dpo_loss(spec: DPOLossSpec, seed: int = 0) -> DPOLoss:
    """The loss named in `spec`, with its options bound. `seed` drives β-DPO's filtering draws."""
    if spec.name not in DPO_LOSSES:
        raise ValueError(f"unknown DPO loss {spec.name!r}; known: {sorted(DPO_LOSSES)}")
    return DPO_LOSSES[spec.name](spec, seed)

