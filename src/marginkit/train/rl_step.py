"""One optimisation step of GRPO / RLOO on a minibatch of a rollout: forward -> per-token log-probs -> clipped
surrogate + KL -> token aggregation -> metrics.

Read top to bottom (cleanrl's `ppo.py` habit: every term a named intermediate, combined on one line). The
loop (train/rl.py) does backward, clipping and the optimizer; the rollout (old and reference log-probs,
advantages) was computed before, under no_grad, and arrives in `batch`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from marginkit.losses.rl import aggregate_tokens, clipped_surrogate, kl_k3
from marginkit.models.generation import completion_logps
from marginkit.train.rl_config import RLLossConfig

__all__ = ["rl_step"]


def rl_step(model: nn.Module, batch: dict[str, torch.Tensor], loss_cfg: RLLossConfig,
            kl_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], temperature: float, max_new_tokens: int,
            chunk_size: int | None = None, *, n_rows: int | None = None, n_tokens: torch.Tensor | float | None = None,
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The minibatch's scalar loss (with grad) and metric sums over its completion tokens (detached).

    batch: input_ids, attention_mask, completion_mask [n, T]; old_logps [n, T-1] (the sampling policy's,
    detached); ref_logps [n, T-1] or absent (beta = 0); advantages [n] (one per completion, every token).
    n_rows, n_tokens: the global minibatch's completions and completion tokens when `batch` is one process's
    share of it (the token aggregation's normalisers, losses/rl.py `token_weights`); None: one process.
    """
    new = completion_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                           temperature, chunk_size, with_entropy=True)
    mask = new.mask  # [n, T-1]: completion tokens, EOS included
    surrogate = clipped_surrogate(new.logps, batch["old_logps"], batch["advantages"], mask, loss_cfg.epsilon,
                                  loss_cfg.epsilon_high)  # per-token [n, T-1]
    ref_logps = batch.get("ref_logps")
    kl_in_loss = ref_logps is not None and loss_cfg.kl_in == "loss" and loss_cfg.beta > 0
    kl_term = kl_fn(new.logps, ref_logps) * mask if kl_in_loss else torch.zeros_like(surrogate.losses)  # [n, T-1]
    per_token = surrogate.losses + loss_cfg.beta * kl_term
    loss = aggregate_tokens(per_token, mask, loss_cfg.loss_type, max_new_tokens, n_rows=n_rows, n_tokens=n_tokens)
    with torch.no_grad():
        m = mask.float()
        stats = {"tokens": m.sum(), "entropy": (new.entropy * m).sum(), "clip_ratio": (surrogate.extras["clipped"] * m).sum(),
                 "ratio": (surrogate.extras["ratio"] * m).sum()}
        if ref_logps is not None:  # the logged KL is always k3 (>= 0, unbiased), whatever the loss's estimator
            stats["kl"] = (kl_k3(new.logps.detach(), ref_logps) * m).sum()
    return loss, stats
