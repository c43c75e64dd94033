"""PPO's value side for `train-ppo` (train/rl.py): a value model (a causal LM's backbone plus a scalar head), the
per-token rewards PPO for language models uses, and the GAE advantages computed from them.

Per-token reward (Ziegler et al. 2019, arXiv:1909.08593; Stiennon et al. 2020; TRL's PPOTrainer): every
completion token t pays the KL penalty, and the last one also receives the scalar reward R of the completion,

    r_t = -β k(log π_old(y_t), log π_ref(y_t))   for every completion token t
    r_T += R                                       at the completion's last token (EOS, or the cut)

then δ_t, A_t and the returns come from `losses.rl.gae` with the value model's V_t (γ, λ), and the advantages
are whitened over the rollout's completion tokens (TRL's default, `whiten_rewards` aside). Values and log-probs
are aligned with the labels input_ids[:, 1:]: V_t is read from the hidden state at position t, the state
in which token t + 1 is chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from marginkit.losses.rl import LossAggregation, aggregate_tokens, gae, value_loss
from marginkit.models.logprobs import position_ids_from_mask

__all__ = ["ValueModel", "load_value_model", "save_value_model", "load_value_weights", "token_rewards",
           "whiten", "ppo_advantages", "value_step", "VALUE_DIR", "VALUE_FILE"]

VALUE_DIR = "value"  # inside a saved policy folder (final model and every checkpoint's model/)
VALUE_FILE = "value.safetensors"


class ValueModel(nn.Module):
    """V(x, y_<=t) for every position: a transformer backbone (AutoModel) and a zero-initialised linear head, so
    every value starts at 0."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[N, T] values, float32 (positions as `generate` numbers them under left padding)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                               position_ids=position_ids_from_mask(attention_mask)).last_hidden_state  # [N, T, D]
        return self.head(hidden).squeeze(-1).float()  # [N, T]


def load_value_model(name_or_path: str, trust_remote_code: bool = False) -> ValueModel:
    """A value model on the backbone of the causal LM (or RM) at `name_or_path`; dropout zeroed as the policy's."""
    from transformers import AutoModel

    from marginkit.errors import loading_model
    from marginkit.models.policy import disable_dropout

    with loading_model(name_or_path):
        backbone = AutoModel.from_pretrained(name_or_path, dtype=torch.float32, trust_remote_code=trust_remote_code)
    disable_dropout(backbone)
    return ValueModel(backbone)


def save_value_model(model: ValueModel, folder: Path) -> None:
    """Write the value model's weights (backbone and head) as one safetensors file in `folder`."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(folder / VALUE_FILE))


def load_value_weights(model: ValueModel, folder: Path) -> None:
    """Load weights written by `save_value_model` (every key must match)."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(folder / VALUE_FILE)))


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """[N, T-1] per-token rewards: -β kl_t on completion tokens, plus scores [N] at each row's last completion
    token (module docstring). kl, mask: [N, T-1] (labels' alignment)."""
    if scores.dim() != 1 or kl.shape != mask.shape or kl.shape[0] != scores.shape[0]:
        raise ValueError(f"token_rewards: scores [N] and kl, mask [N, T-1]; got {tuple(scores.shape)}, "
                         f"{tuple(kl.shape)}, {tuple(mask.shape)}")
    m = mask.float()
    positions = torch.arange(m.shape[1], device=m.device)
    last = (m * positions).argmax(-1)  # [N] index of the last completion token (the mask is contiguous)
    rewards = -beta * kl.float() * m
    rewards[torch.arange(m.shape[0], device=m.device), last] += scores.float()
    return rewards


SumFn = Callable[[torch.Tensor], torch.Tensor]  # a tensor summed over every process (an all-reduce)


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8, total: SumFn | None = None) -> torch.Tensor:
    """(values - mean) / std over the masked entries (population std), 0 elsewhere (TRL's `masked_whiten`).

    total: under data parallelism each process holds some rows of the rollout, and the mean and std must be
    those of every process's entries (else each process whitens with its own and the update differs from one
    process's); `total` sums a tensor over the processes, so the count, Σ v and Σ (v - mean)² are global (two
    all-reduces, the same two passes as one process). None: this tensor is the whole rollout."""
    m = mask.float()
    total = total or (lambda t: t)
    count_sum = total(torch.stack([m.sum(), (values * m).sum()]))  # [2]: entries, Σ v
    count = count_sum[0].clamp(min=1.0)
    mean = count_sum[1] / count
    var = total((((values - mean) * m) ** 2).sum()) / count
    return (values - mean) * torch.rsqrt(var + eps) * m


def ppo_advantages(scores: torch.Tensor, kl: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, beta: float,
                   gamma: float, lam: float, whiten_advantages: bool = True, total: SumFn | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) [N, T-1] for PPO: `token_rewards`, then `gae`, then optional whitening (the returns
    stay unwhitened: they are the value model's targets). GAE runs within each completion, so a process's rows
    need nothing from the others; the whitening does (`total`, see `whiten`)."""
    rewards = token_rewards(scores, kl, mask, beta)
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    return (whiten(advantages, mask, total=total) if whiten_advantages else advantages), returns


def value_step(value_model: nn.Module, batch: dict[str, torch.Tensor], returns: torch.Tensor, old_values: torch.Tensor,
               clip_range: float | None, aggregation: LossAggregation, max_new_tokens: int, *,
               n_rows: int | None = None, n_tokens: torch.Tensor | float | None = None,
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The value loss of a minibatch (with grad; the caller weights it by vf_coef) and its metric sums.

    batch: input_ids, attention_mask, completion_mask [n, T]; returns, old_values [n, T-1] from the rollout.
    n_rows, n_tokens: the global minibatch's, when `batch` is one process's share (as `rl_step`)."""
    values = value_model(batch["input_ids"], batch["attention_mask"])[:, :-1]  # [n, T-1], aligned with the labels
    mask = batch["completion_mask"][:, 1:].bool()
    per_token = value_loss(values, old_values, returns, mask, clip_range)  # [n, T-1]
    loss = aggregate_tokens(per_token.losses, mask, aggregation, max_new_tokens, n_rows=n_rows, n_tokens=n_tokens)
    with torch.no_grad():
        m = mask.float()
        stats = {"value/loss": (per_token.losses * m).sum(), "value/clip_ratio": (per_token.extras["clipped"] * m).sum()}
    return loss, stats
