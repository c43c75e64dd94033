"""`train-rm`: load pairs and a backbone, check them, train with a margin strategy, save an HF reward model.

The pipeline: records -> validated pairs (ledger) -> token pairs -> pre-flight check ->
Engine.fit(rm_step) -> final model (plain HF folder) + metrics.jsonl + ledger.json + config.yaml.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from transformers import get_scheduler

from marginkit.configlib import to_dict
from marginkit.data.collate import LayoutPairCollator, PairCollator, collate_pairs
from marginkit.data.ledger import Ledger
from marginkit.data.schema import DataError, Pair
from marginkit.data.tokenize import EncodedPair, encode_pairs
from marginkit.diagnostics.preflight import PreflightError, check_reward_tokens
from marginkit.evaluate.scorer import score_encoded
from marginkit.margins import MarginSetup, MarginStrategy, build_margin
from marginkit.models.packing import compile_blocks, select_attention
from marginkit.models.reward import is_encoder, load_reward_model, save_reward_model
from marginkit.train.engine import Engine
from marginkit.train.rm_step import rm_step

if TYPE_CHECKING:  # annotations only: config.py imports train.engine, whose package imports this module
    from marginkit.config import RMRunConfig

__all__ = ["RMRunResult", "train_reward_model", "make_accelerator", "check_parallel", "check_margin_inputs", "margin_snapshot"]

_NEEDS_FIELD = {"score_gap": ("score_gap", "score_chosen/score_rejected"), "label_margin": ("label_margin", "margin"),
                "gold_gap": ("gold_gap", "gold_chosen/gold_rejected")}


@dataclass
class RMRunResult:
    output_dir: Path
    model_dir: Path
    history: list[dict[str, Any]]
    ledger: Ledger
    eval_gaps: np.ndarray | None  # [B] Δ on the eval pairs after training


def make_accelerator(train_cfg: Any) -> Accelerator:
    precision = train_cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    # split_batches must go through DataLoaderConfiguration: Accelerate 1.x still accepts
    # Accelerator(split_batches=True) but ignores it, giving each process whole batches.
    dl_config = DataLoaderConfiguration(split_batches=True)
    acc = Accelerator(dataloader_config=dl_config, mixed_precision=precision,
                      log_with=train_cfg.report_to or None, project_dir=train_cfg.output_dir)
    if train_cfg.batch_size % acc.num_processes:
        raise ValueError(f"train.batch_size={train_cfg.batch_size} must be divisible by the {acc.num_processes} "
                         "processes (it is the global micro-batch, split between them)")
    check_parallel(train_cfg, acc)
    return acc


def check_parallel(train_cfg: Any, acc: Any) -> None:
    """Refuse, before any work, the distributed set-ups the engine cannot run correctly (docs/speed.md, feature
    matrix), and give DeepSpeed the per-process micro-batch (the engine builds its own data loader).

    - FSDP and DeepSpeed ZeRO-3 shard the parameters, but the final model, checkpoints, resume and evaluation
      read `accelerator.unwrap_model(model)`, which then holds one process's shard.
    - DeepSpeed steps the optimizer inside every `backward` (the engine accumulates with `no_sync`), clips
      with its own config, and keeps optimizer states partitioned per process (the engine saves rank 0's).
    """
    from accelerate.utils import DistributedType

    kind = acc.distributed_type
    plugin = getattr(acc.state, "deepspeed_plugin", None)
    stage = getattr(plugin, "zero_stage", None) if kind == DistributedType.DEEPSPEED else None
    if kind == DistributedType.FSDP or stage == 3:
        what = "FSDP" if kind == DistributedType.FSDP else "DeepSpeed ZeRO-3"
        raise ValueError(f"{what} is not supported yet: it shards the parameters, and the final model, checkpoints, "
                         "resume and evaluation read the unwrapped model, which would hold one shard. Use DDP "
                         "(configs/accelerate/ddp.yaml) or DeepSpeed ZeRO-2 (configs/accelerate/zero2.yaml)")
    if kind != DistributedType.DEEPSPEED:
        return
    if train_cfg.gradient_accumulation_steps != 1:
        raise ValueError(f"train.gradient_accumulation_steps={train_cfg.gradient_accumulation_steps} under DeepSpeed: "
                         "DeepSpeed steps the optimizer at every backward, so the engine cannot accumulate. Use 1 and "
                         "raise train.batch_size, or use DDP")
    clip = plugin.deepspeed_config.get("gradient_clipping")
    clip = None if clip in (None, "auto", 0, 0.0) else float(clip)
    if clip != train_cfg.max_grad_norm:
        raise ValueError(f"train.max_grad_norm={train_cfg.max_grad_norm} but the DeepSpeed config clips at {clip}: "
                         "DeepSpeed does the clipping. Set gradient_clipping in the DeepSpeed config to the same value "
                         "(configs/accelerate/zero2.yaml has 1.0) or train.max_grad_norm=null")
    if train_cfg.save_every or train_cfg.resume_from:
        raise ValueError("train.save_every / train.resume_from under DeepSpeed: the optimizer states are partitioned "
                         "per process and the engine's checkpoint holds rank 0's only, so resume would be wrong. "
                         "Train without intermediate checkpoints (the final model is saved), or use DDP")
    plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = train_cfg.batch_size // acc.num_processes


def check_margin_inputs(strategy: MarginStrategy, name: str, encoded: Sequence[EncodedPair], pairs: Sequence[Pair],
                        source: str) -> None:
    """Fail at setup, naming the first pair, when the data lacks what the margin strategy reads."""
    for need in sorted(strategy.needs - {"embeddings"}):
        attr, field_name = _NEEDS_FIELD[need]
        for enc in encoded:
            if not math.isfinite(getattr(enc, attr)):
                pair = pairs[enc.index]
                raise DataError(source, enc.index, field_name,
                                f"missing or not finite, but margin strategy {name!r} needs it for every pair"
                                + (f" (pair id {pair.id})" if pair.id else ""),
                                "use a strategy that does not need it, or data that has it")


def _load(source: str, cfg: RMRunConfig, ledger: Ledger) -> list[Pair]:
    from marginkit.data.load import load_pairs

    pairs, _ = load_pairs(source, format=cfg.data.format, on_invalid=cfg.data.on_invalid, ledger=ledger)
    return pairs


def train_reward_model(cfg: RMRunConfig, train_pairs: list[Pair] | None = None, eval_pairs: list[Pair] | None = None,
                       console: Callable[[str], None] = print) -> RMRunResult:
    """Train an RM as configured; pairs may be passed in memory instead of `cfg.data.train`/`eval`."""
    acc = make_accelerator(cfg.train)
    say = console if acc.is_main_process else (lambda _: None)
    set_seed(cfg.train.seed)
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    if cfg.train.resume_from is None and (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()

    model, tokenizer = load_reward_model(cfg.model)
    attention = select_attention(model, cfg.train.forward, cfg.train.attention)  # refuses unsupported layouts
    if cfg.train.torch_compile:
        compile_blocks(model)
    tokenizer.padding_side = cfg.data.padding_side
    encoder = is_encoder(model)
    ledger = Ledger()
    train_pairs = train_pairs if train_pairs is not None else _load(cfg.data.train, cfg, ledger)
    if train_pairs and not ledger.rows_read:
        ledger.read(len(train_pairs))
        ledger.keep(len(train_pairs))
    train_set = encode_pairs(train_pairs, tokenizer, cfg.data.tokenize, ledger, encoder)
    eval_ledger = Ledger()
    if eval_pairs is None and cfg.data.eval:
        eval_pairs = _load(cfg.data.eval, cfg, eval_ledger)
    eval_set = encode_pairs(eval_pairs, tokenizer, cfg.data.tokenize, eval_ledger, encoder) if eval_pairs else []
    ledger.write(out / "ledger.json")
    say(f"data: {ledger.summary()}")
    if not train_set:
        raise ValueError("no training pairs left after loading; see the ledger above")

    strategy = build_margin(cfg.margin)
    check_margin_inputs(strategy, cfg.margin.name, train_set, train_pairs, cfg.data.train or "train pairs")
    if hasattr(strategy, "prepare"):  # precompute per-pair values (reference gaps, embeddings) once
        strategy.prepare(MarginSetup(train_set, train_pairs, tokenizer.pad_token_id, cfg.data.padding_side,
                                     acc.device, cfg.data.resolved_cache_dir(), say))
    collate = (PairCollator(tokenizer.pad_token_id, cfg.data.padding_side) if cfg.train.forward == "padded" else
               LayoutPairCollator(tokenizer.pad_token_id, cfg.train.forward, cfg.data.padding_side))
    if cfg.preflight != "off":
        _preflight(train_set, collate, tokenizer, encoder, cfg, say)

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay,
                                  betas=(cfg.train.adam_beta1, cfg.train.adam_beta2))
    total = cfg.train.total_steps(len(train_set))
    scheduler = get_scheduler(cfg.train.lr_scheduler, optimizer, num_warmup_steps=int(cfg.train.warmup_ratio * total),
                              num_training_steps=total)
    model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    if cfg.train.report_to:
        acc.init_trackers("marginkit", config=_flat(to_dict(cfg)))
    say(f"training {cfg.margin.name!r} RM: {len(train_set)} pairs, {total} steps of {cfg.train.pairs_per_step} pairs, "
        f"{acc.num_processes} process(es), precision {acc.mixed_precision}, forward {cfg.train.forward} "
        f"(attention {attention}{', compiled blocks' if cfg.train.torch_compile else ''})")

    def save_model(path: Path) -> None:
        scorer = {"tokenize": to_dict(cfg.data.tokenize), "padding_side": cfg.data.padding_side}
        save_reward_model(acc.unwrap_model(model), tokenizer, path, scorer)

    # With a zero head every Δ is 0 at step 1, so the first loss must be mean softplus(m) (ln 2 for BT).
    expected_loss = "diagnostics/loss_at_zero_gap" if cfg.model.head_init == "zero" else None
    engine = Engine(cfg.train, acc, model, optimizer, scheduler, collate, stateful={"margin": strategy},
                    save_model=save_model, ids=[p.id or f"#{i}" for i, p in enumerate(train_pairs)],
                    expected_initial_loss=expected_loss)
    if cfg.train.resume_from:
        engine.resume(cfg.train.resume_from)
    evaluate = partial(_evaluate, acc, model, eval_set, tokenizer.pad_token_id, cfg) if eval_set else None
    step_fn = partial(_step, strategy=strategy, center=cfg.loss.center_rewards_coefficient)
    engine.fit(step_fn, train_set, evaluate)

    model_dir = out / "model"
    if acc.is_main_process:
        save_model(model_dir)
    acc.wait_for_everyone()
    acc.end_training()
    margin_snapshot(acc.unwrap_model(model), train_set, strategy, PairCollator(tokenizer.pad_token_id,
                    cfg.data.padding_side), cfg.train.batch_size, engine.step, out, write=acc.is_main_process)
    gaps = None
    if eval_set:
        c, r = score_encoded(acc.unwrap_model(model), eval_set, tokenizer.pad_token_id, cfg.data.padding_side)
        gaps = c - r
    return RMRunResult(out, model_dir, engine.history, ledger, gaps)


@torch.no_grad()
def margin_snapshot(model: Any, train_set: Sequence[EncodedPair], strategy: MarginStrategy, collate: PairCollator,
                    batch_size: int, step: int, out: Path, max_pairs: int = 2048, write: bool = True) -> Path | None:
    """Target margins vs learned gaps on (up to `max_pairs`) training pairs with the final model:
    the strategy is run on batches of the training batch size, as in training, and margins.npz
    (target, gap, active [B]) and target_vs_learned.png are written to the run folder. Every process
    runs it (strategies may all-reduce); only `write` writes."""
    from marginkit.margins import MarginInputs
    from marginkit.models.reward import score_batch
    from marginkit.report.plots import plot_target_vs_learned

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    targets, gaps, actives = [], [], []
    subset = list(train_set[:max_pairs])
    for i in range(0, len(subset), batch_size):
        batch = {k: v.to(device) for k, v in collate(subset[i:i + batch_size]).items()}
        rewards, hidden = score_batch(model, batch["input_ids"], batch["attention_mask"], "embeddings" in strategy.needs)
        chosen, rejected = rewards.chunk(2)  # [2B] -> [B], [B]
        gap = chosen - rejected
        emb_c, emb_r = hidden.chunk(2) if hidden is not None else (None, None)
        m = strategy(MarginInputs(gap, batch["label_margin"], batch["score_gap"], batch["gold_gap"], step, emb_c, emb_r,
                                  batch["index"]))
        targets.append(torch.where(m.active, m.target_margin, 0.0).float().cpu())
        gaps.append(gap.float().cpu())
        actives.append(m.active.cpu())
    model.train(was_training)
    if not write or not targets:
        return None
    target, gap_all, active = (torch.cat(x).numpy() for x in (targets, gaps, actives))
    np.savez(out / "margins.npz", target=target, gap=gap_all, active=active)
    return plot_target_vs_learned(target, gap_all, active, out / "target_vs_learned.png",
                                  title=f"Target margin m vs learned gap Δ ({len(target)} training pairs, final model)")


def _step(model: Any, batch: dict[str, torch.Tensor], step: int, strategy: MarginStrategy, center: float):
    return rm_step(model, batch, strategy, step, center)


def _evaluate(acc: Accelerator, model: Any, eval_set: list[EncodedPair], pad_id: int, cfg: RMRunConfig,
              step: int) -> dict[str, float]:
    c, r = score_encoded(acc.unwrap_model(model), eval_set, pad_id, cfg.data.padding_side)
    gap = c - r
    loss = np.logaddexp(0.0, -gap)  # BT loss without margin: comparable across strategies
    out = {"eval_loss": float(loss.mean()), "eval_rewards/accuracies": float(((gap > 0) + 0.5 * (gap == 0)).mean()),
           "eval_rewards/margins": float(gap.mean()), "eval_rewards/chosen": float(c.mean()),
           "eval_rewards/rejected": float(r.mean())}
    gold = np.array([e.gold_gap for e in eval_set])
    known = np.isfinite(gold) & (gold != 0)  # gold-reward worlds: agreement with the true preference, true ties left out
    if known.any():
        agree = np.sign(gap[known]) == np.sign(gold[known])
        out["eval_rewards/gold_accuracies"] = float((agree + 0.5 * (gap[known] == 0)).mean())
    return out


def _preflight(train_set: list[EncodedPair], collate: PairCollator, tokenizer: Any, encoder: bool,
               cfg: RMRunConfig, say: Callable[[str], None]) -> None:
    n = min(len(train_set), 4 * cfg.train.batch_size)
    batch = collate_pairs(train_set[:n], collate.pad_id, collate.padding_side)
    try:
        report = check_reward_tokens(batch, tokenizer, encoder)
    except PreflightError as e:
        if cfg.preflight == "error":
            raise
        say(f"WARNING pre-flight: {e}")
        return
    top = ", ".join(f"{t!r} x{c}" for t, c in sorted(report.tokens_seen.items(), key=lambda x: -x[1])[:3])
    say(f"pre-flight: rewards read at {'the pooled [CLS]' if encoder else 'the last real token'} of "
        f"{report.n_rows} rows ({top})")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
    return out
