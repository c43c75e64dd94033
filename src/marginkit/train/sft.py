"""`train-sft`: supervised fine-tuning of a causal LM on the chosen responses of preference pairs.

The first stage of base policy -> SFT -> DPO: sft_step (train/sft_step.py) is the negative
log-likelihood of the chosen response tokens only, with the same shift and mask as DPO and the same
engine (accumulation, clipping, checkpoints, exact resume) and run setup (train/setup.py). The saved
folder is a plain HF causal LM, ready to be DPO's policy and reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from torch import nn

from marginkit.config import SFTRunConfig
from marginkit.data.collate import collate_pairs
from marginkit.data.ledger import Ledger
from marginkit.data.schema import Pair
from marginkit.data.tokenize import EncodedPair
from marginkit.models.logprobs import forward_logps
from marginkit.models.packing import compile_blocks, select_attention
from marginkit.models.policy import load_policy, save_policy
from marginkit.train.engine import Engine
from marginkit.train.setup import (
    audit_masks,
    finish_run,
    load_data,
    pair_ids,
    policy_settings,
    prepare_optimization,
    start_run,
)
from marginkit.train.sft_step import sft_step

__all__ = ["SFTRunResult", "ChosenCollator", "train_sft"]


@dataclass
class SFTRunResult:
    output_dir: Path
    model_dir: Path
    history: list[dict[str, Any]]
    ledger: Ledger


class ChosenCollator:
    """Collate pairs into their chosen rows only: input_ids, attention_mask, response_mask [B, T] (columns
    that are padding in every chosen row dropped) plus the per-pair fields of `collate_pairs`. The
    engine splits [B, ...] tensors between processes by pair, like the per-pair fields."""

    def __init__(self, pad_id: int, padding_side: Literal["right", "left"] = "right"):
        self.pad_id, self.padding_side = pad_id, padding_side

    def __call__(self, pairs: list[EncodedPair]) -> dict[str, torch.Tensor]:
        batch = collate_pairs(pairs, self.pad_id, self.padding_side)  # [2B, T]
        n = len(pairs)
        keep = batch["attention_mask"][:n].bool().any(0)  # [T]; padding is contiguous on one side
        for key in ("input_ids", "attention_mask", "response_mask"):
            batch[key] = batch[key][:n][:, keep]  # [2B, T] -> [B, T']
        return batch


@torch.no_grad()
def _evaluate(acc: Accelerator, model: nn.Module, eval_set: list[EncodedPair], cfg: SFTRunConfig, pad_id: int,
              step: int) -> dict[str, float]:
    inner = acc.unwrap_model(model)
    inner.eval()
    collate, nll, tokens = ChosenCollator(pad_id, cfg.data.padding_side), [], []
    for start in range(0, len(eval_set), cfg.train.batch_size):
        batch = {k: v.to(acc.device) for k, v in collate(eval_set[start:start + cfg.train.batch_size]).items()}
        with acc.autocast():
            logps = forward_logps(inner, batch["input_ids"], batch["attention_mask"], batch["response_mask"],
                                  cfg.model.chunk_size)
        nll.append((-(logps.mean if cfg.loss.length_normalized else logps.sum)).float().cpu())
        tokens.append((-logps.mean).float().cpu())
    return {"eval_loss": float(torch.cat(nll).mean()), "eval_nll/token": float(torch.cat(tokens).mean())}


def train_sft(cfg: SFTRunConfig, train_pairs: list[Pair] | None = None, eval_pairs: list[Pair] | None = None,
              console: Callable[[str], None] = print) -> SFTRunResult:
    """SFT a causal LM on the chosen responses; pairs may be passed in memory instead of data.train/eval."""
    if cfg.train.forward != "padded":
        raise ValueError(f"train.forward={cfg.train.forward}: train-sft runs padded rows only (packing pairs "
                         "needs both responses); use train.forward=padded")
    acc, out, say, identity = start_run(cfg, console, train_pairs)
    model, tokenizer = load_policy(cfg.model)
    select_attention(model, "padded", cfg.train.attention)
    if cfg.train.torch_compile:
        compile_blocks(model)
    tokenizer.padding_side = cfg.data.padding_side
    train_pairs, train_set, _, eval_set, ledger = load_data(cfg.data, tokenizer, train_pairs, eval_pairs, acc, out,
                                                            say)
    collate = ChosenCollator(tokenizer.pad_token_id, cfg.data.padding_side)
    audit_masks(train_set, collate, tokenizer, cfg.mask_audit, say)
    model, optimizer, scheduler, total = prepare_optimization(acc, cfg, model, len(train_set))
    say(f"SFT on chosen responses: {len(train_set)} pairs, {total} steps of {cfg.train.pairs_per_step}, "
        f"{acc.num_processes} process(es), precision {acc.mixed_precision}")

    def save_model(path: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        save_policy(acc.unwrap_model(model), tokenizer, path, policy_settings("sft", cfg), state_dict)

    engine = Engine(cfg.train, acc, model, optimizer, scheduler, collate, save_model=save_model,
                    ids=pair_ids(train_pairs), identity=identity)
    if cfg.train.resume_from:
        engine.resume(cfg.train.resume_from)
    evaluate = partial(_evaluate, acc, model, eval_set, cfg, tokenizer.pad_token_id) if eval_set else None
    engine.fit(partial(sft_step, length_normalized=cfg.loss.length_normalized, chunk_size=cfg.model.chunk_size),
               train_set, evaluate)
    model_dir = finish_run(acc, out, save_model, engine)  # raises TrainingInterrupted after a signal
    return SFTRunResult(out, model_dir, engine.history, ledger)
