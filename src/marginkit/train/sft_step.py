"""One SFT step: forward -> chosen-response log-probs -> NLL -> metrics.

The loss is the negative log-likelihood of the chosen response tokens only (the prompt is context,
never a target), with the same shift and mask as DPO (models/logprobs.py). Read top to bottom; the
engine (train/engine.py) does backward, accumulation and logging.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from marginkit.models.logprobs import forward_logps
from marginkit.train.engine import StepOutput

__all__ = ["SFTLossConfig", "sft_step"]


@dataclass
class SFTLossConfig:
    length_normalized: bool = field(default=True, metadata={
        "help": "Per pair, the mean NLL over the chosen response's tokens (True) or their sum (False, as the "
                "reference DPO code's SFT stage)."})


def sft_step(model: nn.Module, batch: dict[str, torch.Tensor], step: int, length_normalized: bool = True,
             chunk_size: int | None = None) -> StepOutput:
    """NLL of the chosen response tokens on one micro-batch of B sequences ([B, T] tokens)."""
    logps = forward_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"], chunk_size)
    nll = -(logps.mean if length_normalized else logps.sum)  # [B]
    with torch.no_grad():
        stats = {"loss": nll.detach().sum(), "logps/chosen": logps.sum.detach().sum(),
                 "nll/token": (-logps.mean).detach().sum(),
                 "count": torch.tensor(float(len(nll)), device=nll.device)}
    return StepOutput(nll.sum(), {"nll": nll.detach()}, stats)
