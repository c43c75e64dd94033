"""`train-sft`: supervised fine-tuning of a causal LM on the chosen responses of preference pairs.

The first stage of base policy -> SFT -> DPO: the loss is the negative log-likelihood of the chosen
response tokens only (the prompt is context, never a target), with the same shift and mask as DPO
(models/logprobs.py) and the same engine (accumulation, clipping, checkpoints, exact resume). The
saved folder is a plain HF causal LM, ready to be DPO's policy and reference.

This module also holds the setup both policy trainers share (run folder, data, optimizer).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from transformers import get_scheduler

from marginkit.configlib import to_dict
from marginkit.data.collate import collate_pairs
from marginkit.data.ledger import Ledger
from marginkit.data.schema import Pair
from marginkit.data.tokenize import EncodedPair, encode_pairs
from marginkit.models.logprobs import forward_logps, sequence_logps
from marginkit.models.packing import compile_blocks, select_attention
from marginkit.models.policy import load_policy, save_policy
from marginkit.train.engine import Engine, TrainConfig
from marginkit.train.rm import make_accelerator
from marginkit.train.rm_step import StepOutput

if TYPE_CHECKING:  # annotations only: config.py imports this module
    from marginkit.config import DataConfig, SFTRunConfig

__all__ = ["SFTLossConfig", "SFTTrainConfig", "SFTRunResult", "ChosenCollator", "sft_step", "train_sft",
           "start_run", "load_encoded", "make_optimizer", "flat_config", "policy_settings", "audit_masks"]


@dataclass
class SFTLossConfig:
    length_normalized: bool = field(default=True, metadata={
        "help": "Per pair, the mean NLL over the chosen response's tokens (True) or their sum (False, as the "
                "reference DPO code's SFT stage)."})


@dataclass
class SFTTrainConfig(TrainConfig):
    """TrainConfig with SFT defaults that differ: output_dir runs/sft; learning rate 2e-5 (TRL SFTConfig)."""

    output_dir: str = field(default="runs/sft", metadata={"help": "Run folder: metrics, checkpoints, final model."})
    learning_rate: float = field(default=2e-5, metadata={"help": "Peak AdamW learning rate (TRL SFTConfig: 2e-5)."})


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


# ---- setup shared with train/dpo.py ----

def start_run(cfg: Any, console: Callable[[str], None]) -> tuple[Accelerator, Path, Callable[[str], None]]:
    """Accelerator, seed, run folder with config.yaml; a fresh (not resumed) run starts a new metrics.jsonl."""
    acc = make_accelerator(cfg.train)
    say = console if acc.is_main_process else (lambda _: None)
    set_seed(cfg.train.seed)
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if acc.is_main_process:
        (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        if cfg.train.resume_from is None and (out / "metrics.jsonl").exists():
            (out / "metrics.jsonl").unlink()
    return acc, out, say


def _read(source: str, data: DataConfig, ledger: Ledger) -> list[Pair]:
    from marginkit.data.load import load_pairs

    pairs, _ = load_pairs(source, format=data.format, on_invalid=data.on_invalid, ledger=ledger)
    return pairs


def load_encoded(data: DataConfig, tokenizer: Any, train_pairs: list[Pair] | None, eval_pairs: list[Pair] | None,
                 ) -> tuple[list[Pair], list[EncodedPair], list[Pair], list[EncodedPair], Ledger]:
    """Pairs (given, or read from data.train / data.eval) tokenised as configured; the train ledger."""
    ledger = Ledger()
    if train_pairs is None:
        train_pairs = _read(data.train, data, ledger)
    else:
        ledger.read(len(train_pairs))
        ledger.keep(len(train_pairs))
    train_set = encode_pairs(train_pairs, tokenizer, data.tokenize, ledger)
    eval_ledger = Ledger()
    if eval_pairs is None and data.eval:
        eval_pairs = _read(data.eval, data, eval_ledger)
    eval_pairs = eval_pairs or []
    eval_set = encode_pairs(eval_pairs, tokenizer, data.tokenize, eval_ledger) if eval_pairs else []
    if not train_set:
        raise ValueError(f"no training pairs left after loading ({ledger.summary()})")
    return train_pairs, train_set, eval_pairs, eval_set, ledger


def make_optimizer(model: nn.Module, train: TrainConfig, n_pairs: int) -> tuple[Any, Any, int]:
    """AdamW over the trainable parameters and the warm-up + decay schedule; returns the step count too."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=train.learning_rate,
                                  weight_decay=train.weight_decay, betas=(train.adam_beta1, train.adam_beta2))
    total = train.total_steps(n_pairs)
    scheduler = get_scheduler(train.lr_scheduler, optimizer, num_warmup_steps=int(train.warmup_ratio * total),
                              num_training_steps=total)
    return optimizer, scheduler, total


def flat_config(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as flat `a.b` keys with scalar values (for trackers)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
    return out


def audit_masks(train_set: list[EncodedPair], collate: Callable, tokenizer: Any, mode: str,
                say: Callable[[str], None], n_pairs: int = 8) -> None:
    """Before training, decode the first pairs' batch and check that the loss mask the log-prob code really
    applies (found by its gradient, diagnostics/mask_audit.py) covers exactly the response tokens, shifted
    by one. mode: error (raise MaskAuditError), warn (print it), off."""
    if mode == "off":
        return
    from marginkit.diagnostics.mask_audit import MaskAuditError, audit_loss_mask, probe_loss_mask

    batch = collate(train_set[:n_pairs])
    # The probe reads positions, not ids: all-zero labels over a 2-token vocabulary find the same mask
    # without a [N, T, V] tensor of the real vocabulary.
    probe_ids = torch.zeros_like(batch["input_ids"])
    read = probe_loss_mask(lambda logits: sequence_logps(logits, probe_ids, batch["response_mask"]).sum, probe_ids, 2)
    try:
        report = audit_loss_mask(batch, tokenizer, n_rows=2, loss_mask=read)
    except MaskAuditError as e:
        if mode == "error":
            raise
        say(f"WARNING {e}")
        return
    say(report.summary())


def policy_settings(stage: str, cfg: Any) -> dict[str, Any]:
    """What a saved policy folder records about how it was trained (models/policy.py POLICY_FILE)."""
    return {"stage": stage, "tokenize": to_dict(cfg.data.tokenize), "padding_side": cfg.data.padding_side,
            "logprob_chunk_size": cfg.model.logprob_chunk_size}


# ---- train-sft ----

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
    acc, out, say = start_run(cfg, console)
    model, tokenizer = load_policy(cfg.model)
    select_attention(model, "padded", cfg.train.attention)
    if cfg.train.torch_compile:
        compile_blocks(model)
    tokenizer.padding_side = cfg.data.padding_side
    train_pairs, train_set, _, eval_set, ledger = load_encoded(cfg.data, tokenizer, train_pairs, eval_pairs)
    if acc.is_main_process:
        ledger.write(out / "ledger.json")
    say(f"data: {ledger.summary()}")
    collate = ChosenCollator(tokenizer.pad_token_id, cfg.data.padding_side)
    audit_masks(train_set, collate, tokenizer, cfg.mask_audit, say)
    optimizer, scheduler, total = make_optimizer(model, cfg.train, len(train_set))
    model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    if cfg.train.report_to:
        acc.init_trackers("marginkit", config=flat_config(to_dict(cfg)))
    say(f"SFT on chosen responses: {len(train_set)} pairs, {total} steps of {cfg.train.pairs_per_step}, "
        f"{acc.num_processes} process(es), precision {acc.mixed_precision}")

    def save_model(path: Path) -> None:
        save_policy(acc.unwrap_model(model), tokenizer, path, policy_settings("sft", cfg))

    engine = Engine(cfg.train, acc, model, optimizer, scheduler, collate, save_model=save_model,
                    ids=[p.id or f"#{i}" for i, p in enumerate(train_pairs)])
    if cfg.train.resume_from:
        engine.resume(cfg.train.resume_from)
    evaluate = partial(_evaluate, acc, model, eval_set, cfg, tokenizer.pad_token_id) if eval_set else None
    engine.fit(partial(sft_step, length_normalized=cfg.loss.length_normalized, chunk_size=cfg.model.chunk_size),
               train_set, evaluate)
    model_dir = out / "model"
    if acc.is_main_process:
        save_model(model_dir)
    acc.wait_for_everyone()
    acc.end_training()
    return SFTRunResult(out, model_dir, engine.history, ledger)
