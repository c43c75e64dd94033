"""Pairwise preference losses: pure functions returning per-pair losses (no reduction inside).

bt.py: Bradley-Terry reward-model losses with margins; dpo.py: the DPO family; registry.py: the DPO
losses by name, their options (`DPOLossSpec`) and `build_dpo_loss`; rl.py: online RL (GRPO and RLOO
advantages, GAE, the clipped surrogate, value loss, KL estimators, token aggregation).
"""

from marginkit.losses.bt import bt_loss, centering_penalty, soft_bt_loss
from marginkit.losses.dpo import (
    BetaDPO,
    BetaDPOConfig,
    DPOLoss,
    PreferenceLogps,
    beta_dpo_beta,
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
from marginkit.losses.registry import (
    DPO_LOSSES,
    DPOLossSpec,
    IPOConfig,
    LabelSmoothingConfig,
    LossName,
    ODPOConfig,
    SimPOConfig,
    build_dpo_loss,
)
from marginkit.losses.rl import (
    KL_ESTIMATORS,
    TokenLoss,
    aggregate_tokens,
    clipped_surrogate,
    gae,
    grpo_advantages,
    rloo_advantages,
    token_weights,
    value_loss,
)
from marginkit.losses.types import PairLoss, check_pair_shapes

__all__ = ["DPO_LOSSES", "BetaDPO", "BetaDPOConfig", "DPOLoss", "DPOLossSpec", "IPOConfig", "LabelSmoothingConfig",
           "LossName", "ODPOConfig", "PairLoss", "PreferenceLogps", "SimPOConfig", "beta_dpo_beta", "bt_loss",
           "build_dpo_loss", "cdpo_loss", "centering_penalty", "check_pair_shapes", "chosen_nll", "dpo_sigmoid_loss",
           "hinge_loss", "ipo_loss", "log_ratio_gap", "odpo_loss", "robust_dpo_loss", "simpo_loss", "soft_bt_loss",
           "KL_ESTIMATORS", "TokenLoss", "aggregate_tokens", "clipped_surrogate", "gae", "grpo_advantages",
           "rloo_advantages", "token_weights", "value_loss"]
