"""`train-dpo` and `precompute-ref`: DPO-family training of any HF causal LM, on the same engine as the RM.

The pipeline: pairs (ledger) -> token pairs -> reference (a frozen copy in memory, a precomputed
artefact read from disk, or none for SimPO) -> Engine.fit(dpo_step) -> final policy (plain HF folder,
`AutoModelForCausalLM.from_pretrained` opens it) + metrics.jsonl + ledger.json + config.yaml.

Contract:
- any causal LM that `AutoModelForCausalLM` loads (hub name or local folder); the reference defaults
  to the policy's starting weights; dropout is off by default so the first sigmoid-DPO loss is ln 2;
- losses by name from losses/dpo.py's registry; ODPO's offsets from any margin strategy (margins/);
- reference.source=precomputed reads the artefact of `precompute_reference` and refuses one whose
  model or data hash differs (RefCacheError, naming both hashes and the fix);
- resume is exact: weights, optimizer, scheduler, RNG, data position, β-DPO's running state and
  the margin strategy's state come back from the checkpoint;
- errors: ConfigError for contradicting options (config.py), RefCacheError, DataError for bad data,
  NonFiniteLossError for a NaN loss.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from marginkit.config import DPORunConfig
from marginkit.configlib import to_dict
from marginkit.data.collate import PairCollator
from marginkit.data.ledger import Ledger
from marginkit.data.schema import Pair
from marginkit.data.tokenize import EncodedPair
from marginkit.evaluate.dpo_eval import eval_metrics, score_preferences
from marginkit.losses.dpo import DPOLoss
from marginkit.losses.registry import build_dpo_loss
from marginkit.models.packing import compile_blocks, select_attention
from marginkit.models.policy import load_policy, save_policy
from marginkit.models.ref_cache import (
    CachedReference,
    ModelReference,
    ReferenceSource,
    cache_path,
    compute_ref_logps,
    data_hash,
    load_ref_logps,
    model_hash,
    write_ref_logps,
)
from marginkit.train.dpo_step import dpo_step
from marginkit.train.engine import Engine
from marginkit.train.setup import (
    audit_masks,
    finish_run,
    load_data,
    load_encoded,
    make_accelerator,
    pair_collator,
    pair_ids,
    policy_settings,
    prepare_optimization,
    setup_margin,
    start_run,
)
from marginkit.train.sharding import is_sharded, shard_frozen

__all__ = ["DPORunResult", "train_dpo", "precompute_reference", "reference_digest"]


@dataclass
class DPORunResult:
    output_dir: Path
    model_dir: Path
    history: list[dict[str, Any]]
    ledger: Ledger
    eval: dict[str, float] | None  # the final eval metrics, when there are eval pairs


def reference_digest(cfg: DPORunConfig, policy: nn.Module) -> tuple[str, str]:
    """(model hash, name) of the reference: the policy's starting weights unless reference.name_or_path
    names another model, which is then loaded on the CPU only to be hashed."""
    name = cfg.reference.name_or_path or cfg.model.name_or_path
    if name == cfg.model.name_or_path:
        return model_hash(policy), name
    ref, _ = load_policy(cfg.model, name)
    return model_hash(ref), name


def _artefact(cfg: DPORunConfig, given: str | None, digest: str, encoded: list[EncodedPair], what: str):
    path = Path(given) if given else cache_path(cfg.data.resolved_cache_dir(), digest, data_hash(encoded))
    return load_ref_logps(path, digest, data_hash(encoded), what)


def _references(cfg: DPORunConfig, policy: nn.Module, train_set: list[EncodedPair], eval_set: list[EncodedPair],
                acc: Accelerator, say: Callable[[str], None]
                ) -> tuple[ReferenceSource, ReferenceSource | None, dict[str, Any]]:
    """The reference sources for the training and the eval pairs, and what the saved policy records."""
    source = cfg.reference_source
    none: Callable[[dict], None] = lambda batch: None  # noqa: E731  (reference-free)
    if source == "none":
        return none, none, {"source": "none"}
    if source == "model":
        name = cfg.reference.name_or_path or cfg.model.name_or_path
        ref = copy.deepcopy(policy) if name == cfg.model.name_or_path else load_policy(cfg.model, name)[0]
        select_attention(ref, cfg.train.forward, cfg.train.attention)  # runs the same forward layout as the policy
        ref = ModelReference(shard_frozen(acc, ref.to(acc.device)), cfg.model.chunk_size)  # sharded under FSDP
        say(f"reference: frozen {name} in memory" + (", sharded (FSDP)" if is_sharded(acc) else ""))
        return ref, ref, {"source": "model", "name_or_path": name}
    digest, name = reference_digest(cfg, policy)
    train_ref = CachedReference(_artefact(cfg, cfg.reference.cache, digest, train_set, "training pairs"), acc.device)
    eval_ref = (CachedReference(_artefact(cfg, cfg.reference.eval_cache, digest, eval_set, "eval pairs"), acc.device)
                if eval_set else None)
    say(f"reference: precomputed log-probs of {name} (model hash {digest[:16]}); no reference model in memory")
    return train_ref, eval_ref, {"source": "precomputed", "name_or_path": name, "model_hash": digest}


def _evaluate(acc: Accelerator, model: nn.Module, eval_set: list[EncodedPair], reference: ReferenceSource | None,
              loss_fn: DPOLoss, cfg: DPORunConfig, pad_id: int, step: int) -> dict[str, float]:
    scores = score_preferences(acc.unwrap_model(model), eval_set, pad_id, cfg.data.padding_side, loss_fn, reference,
                               cfg.train.batch_size, cfg.model.chunk_size, acc.autocast)
    return eval_metrics(scores, prefix="eval_")


def train_dpo(cfg: DPORunConfig, train_pairs: list[Pair] | None = None, eval_pairs: list[Pair] | None = None,
              console: Callable[[str], None] = print) -> DPORunResult:
    """Train a policy as configured; pairs may be passed in memory instead of `cfg.data.train`/`eval`."""
    cfg.check()
    acc, out, say, identity = start_run(cfg, console, train_pairs)
    policy, tokenizer = load_policy(cfg.model)
    attention = select_attention(policy, cfg.train.forward, cfg.train.attention)  # refuses unsupported layouts
    tokenizer.padding_side = cfg.data.padding_side
    pad = tokenizer.pad_token_id
    train_pairs, train_set, _, eval_set, ledger = load_data(cfg.data, tokenizer, train_pairs, eval_pairs, acc, out,
                                                            say)
    loss_fn = build_dpo_loss(cfg.loss, seed=cfg.train.seed)
    reference, eval_reference, ref_record = _references(cfg, policy, train_set, eval_set, acc, say)
    # ODPO's per-pair offsets come from a margin strategy (built, checked against the data, prepared)
    strategy = setup_margin(cfg, train_set, train_pairs, pad, acc.device, say) if loss_fn.uses_offset else None
    if cfg.train.torch_compile:  # after the reference copy: the frozen reference runs uncompiled
        compile_blocks(policy)
    collate = pair_collator(pad, cfg.train.forward, cfg.data.padding_side)
    audit_masks(train_set, PairCollator(pad, cfg.data.padding_side), tokenizer, cfg.mask_audit, say)
    policy, optimizer, scheduler, total = prepare_optimization(acc, cfg, policy, len(train_set))
    say(f"training {loss_fn.name!r} (beta {loss_fn.beta}): {len(train_set)} pairs, {total} steps of "
        f"{cfg.train.pairs_per_step} pairs, {acc.num_processes} process(es), precision {acc.mixed_precision}, "
        f"forward {cfg.train.forward} (attention {attention}{', compiled blocks' if cfg.train.torch_compile else ''})")
    settings = {**policy_settings("dpo", cfg), "loss": to_dict(cfg.loss), "reference": ref_record}

    def save_model(path: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        save_policy(acc.unwrap_model(policy), tokenizer, path, settings, state_dict)

    stateful = {"loss": loss_fn, **({"margin": strategy} if strategy is not None else {})}
    # The monitor's first-step check reads the loss at h = 0 the step logs (none for reference-free SimPO).
    probe = loss_fn.loss_at_zero_gap(torch.zeros(1), torch.zeros(1) if loss_fn.uses_offset else None)
    expected = "diagnostics/loss_at_zero_gap" if probe is not None else None
    engine = Engine(cfg.train, acc, policy, optimizer, scheduler, collate, stateful=stateful, save_model=save_model,
                    ids=pair_ids(train_pairs), expected_initial_loss=expected, identity=identity)
    if cfg.train.resume_from:
        engine.resume(cfg.train.resume_from)
    evaluate = partial(_evaluate, acc, policy, eval_set, eval_reference, loss_fn, cfg, pad) if eval_set else None
    step_fn = partial(dpo_step, loss_fn=loss_fn, reference=reference, margin_fn=strategy,
                      nll_weight=cfg.loss.nll_weight, chunk_size=cfg.model.chunk_size)
    engine.fit(step_fn, train_set, evaluate)

    model_dir = finish_run(acc, out, save_model, engine)  # raises TrainingInterrupted after a signal
    final = next((row for row in reversed(engine.history) if "eval_loss" in row), None)
    return DPORunResult(out, model_dir, engine.history, ledger, final)


def precompute_reference(cfg: DPORunConfig, train_pairs: list[Pair] | None = None,
                         eval_pairs: list[Pair] | None = None, console: Callable[[str], None] = print
                         ) -> dict[str, Path]:
    """Compute the reference log-probs of the training (and eval) pairs once and write the hashed
    artefacts (models/ref_cache.py) where `train_dpo` with reference.source=precomputed finds them.
    Uses this run's tokenisation, so the data hashes match; runs on the accelerator's device with the
    run's mixed precision. Returns {"train": path, "eval": path}."""
    cfg.check()
    acc = make_accelerator(cfg.train)
    say = console if acc.is_main_process else (lambda _: None)
    ref_cfg = copy.copy(cfg.model)
    ref, tokenizer = load_policy(ref_cfg, cfg.reference.name_or_path or cfg.model.name_or_path)
    tokenizer.padding_side = cfg.data.padding_side
    digest, name = model_hash(ref), cfg.reference.name_or_path or cfg.model.name_or_path
    _, train_set, _, eval_set, _ = load_encoded(cfg.data, tokenizer, train_pairs, eval_pairs)
    # Under FSDP the reference is sharded and its forward is a collective: every process runs every batch (and
    # gathers each layer's weights), the main process writes. Otherwise the main process alone computes.
    ref = shard_frozen(acc, ref.to(acc.device))
    written: dict[str, Path] = {}
    for split, encoded, given in (("train", train_set, cfg.reference.cache), ("eval", eval_set, cfg.reference.eval_cache)):
        if not encoded or not (acc.is_main_process or is_sharded(acc)):
            continue
        table = compute_ref_logps(ref, encoded, tokenizer.pad_token_id, cfg.data.padding_side,
                                  cfg.reference.batch_size, acc.device, cfg.model.chunk_size, acc.autocast,
                                  progress=cfg.train.progress_bar and acc.is_main_process)
        if not acc.is_main_process:
            continue
        path = Path(given) if given else cache_path(cfg.data.resolved_cache_dir(), digest, data_hash(encoded))
        meta = {"model_hash": digest, "data_hash": data_hash(encoded), "model": name,
                "precision": acc.mixed_precision, "dtype": cfg.model.dtype}
        written[split] = write_ref_logps(path, table, meta)
        say(f"reference log-probs of {len(encoded)} {split} pairs -> {written[split]}")
    acc.wait_for_everyone()
    return written
