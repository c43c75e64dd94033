"""`train-rm`: load pairs and a backbone, check them, train with a margin strategy, save an HF reward model.

The pipeline: records -> validated pairs (ledger) -> token pairs -> pre-flight check ->
Engine.fit(rm_step) -> final model (plain HF folder) + metrics.jsonl + ledger.json + config.yaml.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from marginkit.atomic import write_file_atomic
from marginkit.config import RMRunConfig
from marginkit.configlib import to_dict
from marginkit.data.collate import PairCollator, collate_pairs
from marginkit.data.ledger import Ledger
from marginkit.data.schema import Pair
from marginkit.data.tokenize import EncodedPair
from marginkit.diagnostics.preflight import PreflightError, check_reward_tokens
from marginkit.evaluate.rm_eval import reward_metrics
from marginkit.evaluate.scorer import score_encoded
from marginkit.margins import MarginInputs, MarginStrategy, target_margins
from marginkit.margins.global_batch import gather_rows, world_size
from marginkit.models.packing import compile_blocks, select_attention
from marginkit.models.reward import is_encoder, load_reward_model, save_reward_model, score_batch
from marginkit.models.rm_folder import rendering_of
from marginkit.train.engine import Engine
from marginkit.train.rm_step import rm_step
from marginkit.train.setup import (
    finish_run,
    load_data,
    pair_collator,
    pair_ids,
    prepare_optimization,
    setup_margin,
    start_run,
)

__all__ = ["RMRunResult", "train_reward_model", "margin_snapshot"]


@dataclass
class RMRunResult:
    output_dir: Path
    model_dir: Path
    history: list[dict[str, Any]]
    ledger: Ledger
    eval_gaps: np.ndarray | None  # [B] Δ on the eval pairs after training


def train_reward_model(cfg: RMRunConfig, train_pairs: list[Pair] | None = None, eval_pairs: list[Pair] | None = None,
                       console: Callable[[str], None] = print) -> RMRunResult:
    """Train an RM as configured; pairs may be passed in memory instead of `cfg.data.train`/`eval`."""
    acc, out, say, identity = start_run(cfg, console, train_pairs)
    model, tokenizer = load_reward_model(cfg.model)
    attention = select_attention(model, cfg.train.forward, cfg.train.attention)  # refuses unsupported layouts
    if cfg.train.torch_compile:
        compile_blocks(model)
    tokenizer.padding_side = cfg.data.padding_side
    encoder, pad = is_encoder(model), tokenizer.pad_token_id
    train_pairs, train_set, _, eval_set, ledger = load_data(cfg.data, tokenizer, train_pairs, eval_pairs, acc, out,
                                                            say, encoder)
    strategy = setup_margin(cfg, train_set, train_pairs, pad, acc.device, say)
    collate = pair_collator(pad, cfg.train.forward, cfg.data.padding_side)
    if cfg.preflight != "off":
        _preflight(train_set, collate, tokenizer, encoder, cfg, say)
    model, optimizer, scheduler, total = prepare_optimization(acc, cfg, model, len(train_set))
    say(f"training {cfg.margin.name!r} RM: {len(train_set)} pairs, {total} steps of {cfg.train.pairs_per_step} pairs, "
        f"{acc.num_processes} process(es), precision {acc.mixed_precision}, forward {cfg.train.forward} "
        f"(attention {attention}{', compiled blocks' if cfg.train.torch_compile else ''})")

    rendering = rendering_of(train_pairs, tokenizer, cfg.data.tokenize.template)  # the saved tokenizer's layout

    def save_model(path: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        scorer = {"tokenize": to_dict(cfg.data.tokenize), "padding_side": cfg.data.padding_side, "rendering": rendering}
        save_reward_model(acc.unwrap_model(model), tokenizer, path, scorer, state_dict)

    # With a zero head every Δ is 0 at step 1, so the first loss must be mean softplus(m) (ln 2 for BT).
    expected_loss = "diagnostics/loss_at_zero_gap" if cfg.model.head_init == "zero" else None
    engine = Engine(cfg.train, acc, model, optimizer, scheduler, collate, stateful={"margin": strategy},
                    save_model=save_model, ids=pair_ids(train_pairs), expected_initial_loss=expected_loss,
                    identity=identity)
    if cfg.train.resume_from:
        engine.resume(cfg.train.resume_from)
    evaluate = partial(_evaluate, acc, model, eval_set, pad, cfg) if eval_set else None
    engine.fit(partial(_step, strategy=strategy, center=cfg.loss.center_rewards_coefficient), train_set, evaluate)

    model_dir = finish_run(acc, out, save_model, engine)  # raises TrainingInterrupted after a signal
    margin_snapshot(acc.unwrap_model(model), train_set, strategy, PairCollator(pad, cfg.data.padding_side),
                    cfg.train.batch_size, engine.step, out, write=acc.is_main_process, progress=cfg.train.progress_bar)
    gaps = None
    if eval_set:
        c, r = score_encoded(acc.unwrap_model(model), eval_set, pad, cfg.data.padding_side)
        gaps = c - r
    return RMRunResult(out, model_dir, engine.history, ledger, gaps)


@torch.no_grad()
def margin_snapshot(model: Any, train_set: Sequence[EncodedPair], strategy: MarginStrategy, collate: PairCollator,
                    batch_size: int, step: int, out: Path, max_pairs: int = 2048, write: bool = True,
                    progress: bool = False) -> Path | None:
    """Target margins vs learned gaps on (up to `max_pairs`) training pairs with the final model:
    the strategy is run on batches of the training batch size, as in training, and margins.npz
    (target, gap, active [B]) and target_vs_learned.png are written to the run folder. Every process
    runs it (strategies may all-reduce); only `write` writes."""
    from marginkit.report.plots import plot_target_vs_learned  # matplotlib: loaded only when a run ends

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    targets, gaps, actives = [], [], []
    subset = list(train_set[:max_pairs])
    # A progress bar: on a large training set this pass takes minutes after the last step (issue 14).
    for i in tqdm(range(0, len(subset), batch_size), desc="margin snapshot (final model on training pairs)",
                  disable=not (progress and write), leave=False):
        batch = {k: v.to(device) for k, v in collate(subset[i:i + batch_size]).items()}
        rewards, hidden = score_batch(model, batch["input_ids"], batch["attention_mask"], "embeddings" in strategy.needs)
        chosen, rejected = rewards.chunk(2)  # [2B] -> [B], [B]
        gap = chosen - rejected  # [B]
        emb_c, emb_r = hidden.chunk(2) if hidden is not None else (None, None)  # [2B, D] -> [B, D] x 2
        # Every process scored the whole batch; each hands the strategy its own rows, as in training, so
        # strategies that gather the global batch (OT, β-DPO) or all-reduce it (confidence) see it once.
        mine = _process_rows(len(gap))
        rows = {k: batch[k][mine] for k in _PAIR_FIELDS if k in batch}
        embeddings = (e[mine] if e is not None else None for e in (emb_c, emb_r))  # [b, D] x 2, or None
        inputs = MarginInputs.from_batch(gap[mine], rows, step, *embeddings)
        m = target_margins(strategy, inputs)  # [b], 0 if inactive
        both, _ = gather_rows(torch.stack([m.target_margin.float(), m.active.float()], dim=1))  # [b, 2] -> [B, 2]
        targets.append(both[:, 0].cpu())
        gaps.append(gap.float().cpu())
        actives.append(both[:, 1].bool().cpu())
    model.train(was_training)
    if not write or not targets:
        return None
    target, gap_all, active = (torch.cat(x).numpy() for x in (targets, gaps, actives))
    write_file_atomic(out / "margins.npz", lambda tmp: _savez(tmp, target=target, gap=gap_all, active=active))
    return plot_target_vs_learned(target, gap_all, active, out / "target_vs_learned.png",
                                  title=f"Target margin m vs learned gap Δ ({len(target)} training pairs, final model)")


_PAIR_FIELDS = ("label_margin", "score_gap", "gold_gap", "index")  # the [B] fields MarginInputs.from_batch reads


def _process_rows(n: int) -> slice:
    """This process's contiguous rows of a batch of n pairs, as the engine splits them (train/engine.py _shard)."""
    procs = world_size()
    rank = torch.distributed.get_rank() if procs > 1 else 0
    return slice(rank * n // procs, (rank + 1) * n // procs)


def _savez(path: Path, **arrays: np.ndarray) -> None:
    with path.open("wb") as f:  # a file object: np.savez would add ".npz" to the temporary name
        np.savez(f, **arrays)


def _step(model: Any, batch: dict[str, torch.Tensor], step: int, strategy: MarginStrategy, center: float):
    return rm_step(model, batch, strategy, step, center)


def _evaluate(acc: Accelerator, model: Any, eval_set: list[EncodedPair], pad_id: int, cfg: RMRunConfig,
              step: int) -> dict[str, float]:
    """eval_ metrics of the RM on the eval pairs: the ones eval-rm and eval-dpo log (evaluate/rm_eval.py)."""
    c, r = score_encoded(acc.unwrap_model(model), eval_set, pad_id, cfg.data.padding_side)
    return reward_metrics(c, r, np.array([e.gold_gap for e in eval_set]), prefix="eval_")


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

