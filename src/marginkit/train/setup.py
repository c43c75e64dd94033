"""The run setup every trainer shares: train-rm (rm.py), train-sft (sft.py), train-dpo and precompute-ref (dpo.py).

One copy of each setup step, so the trainers cannot drift apart:
- the accelerator, and the distributed set-ups the engine refuses (`make_accelerator`, `check_parallel`);
- the run folder: refused when it holds another run (unless resumed or overwritten), a resume refused when
  its checkpoint's run identity differs, seed, config.yaml and run_identity.json written once by the main
  process (`check_run_folder`, `start_run`);
- the pairs read, validated and tokenised, with their ledger written by the main process (`load_data`);
- AdamW over the trainable parameters, its warm-up + decay schedule, trackers (`prepare_optimization`);
- the margin strategy built, checked against the data and prepared once (`setup_margin`);
- the loss-mask audit of the policy trainers (`audit_masks`) and the final save (`finish_run`).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedType, set_seed
from torch import nn
from transformers import get_scheduler

from marginkit.atomic import write_dir_atomic, write_text_atomic
from marginkit.config import DataConfig
from marginkit.configlib import ConfigError, flatten, to_dict
from marginkit.data.collate import LayoutPairCollator, PairCollator
from marginkit.data.ledger import Ledger
from marginkit.data.load import load_pairs
from marginkit.data.schema import DataError, Pair
from marginkit.data.tokenize import EncodedPair, encode_pairs
from marginkit.diagnostics.mask_audit import MaskAuditError, audit_loss_mask, probe_loss_mask
from marginkit.evaluate.scorer import score_rm_dir
from marginkit.margins import MarginSetup, MarginStrategy, build_margin
from marginkit.models.logprobs import sequence_logps
from marginkit.train.checkpoint import latest_checkpoint
from marginkit.train.engine import Engine, TrainConfig
from marginkit.train.identity import IDENTITY_FILE, check_resume_identity, run_identity
from marginkit.train.launch import check_launch
from marginkit.train.sharding import check_fsdp, enable_cpu_fsdp, full_state_dict
from marginkit.train.trackers import resolve_trackers

__all__ = ["make_accelerator", "check_parallel", "check_run_folder", "start_run", "load_encoded", "load_data", "make_optimizer",
           "prepare_optimization", "flat_config", "check_margin_inputs", "unused_margin_note", "setup_margin", "pair_collator",
           "audit_masks", "pair_ids", "policy_settings", "finish_run"]

# margin `needs` -> (EncodedPair attribute, the data field to name in the error)
_NEEDS_FIELD = {"score_gap": ("score_gap", "score_chosen/score_rejected"), "label_margin": ("label_margin", "margin"),
                "gold_gap": ("gold_gap", "gold_chosen/gold_rejected")}


def make_accelerator(train_cfg: TrainConfig) -> Accelerator:
    """The Accelerator for `train_cfg`: its precision (auto: bf16 on a GPU that supports it), whole global
    micro-batches split between processes, trackers; refuses what `check_parallel` refuses."""
    precision = train_cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    # split_batches must go through DataLoaderConfiguration: Accelerate 1.x still accepts
    # Accelerator(split_batches=True) but ignores it, giving each process whole batches.
    dl_config = DataLoaderConfiguration(split_batches=True)
    acc = Accelerator(dataloader_config=dl_config, mixed_precision=precision,
                      log_with=resolve_trackers(train_cfg.report_to) or None, project_dir=train_cfg.output_dir)
    enable_cpu_fsdp(acc)  # a gloo run that asked for FSDP gets it, as a GPU run does (train/sharding.py)
    if train_cfg.batch_size % acc.num_processes:
        raise ValueError(f"train.batch_size={train_cfg.batch_size} must be divisible by the {acc.num_processes} "
                         "processes (it is the global micro-batch, split between them)")
    check_parallel(train_cfg, acc)
    return acc


def check_parallel(train_cfg: TrainConfig, acc: Any) -> None:
    """Refuse, before any work, the distributed set-ups the engine cannot run correctly or that were never run
    here (docs/speed.md, feature matrix).

    - FSDP2 runs (train/sharding.py), with the settings `check_fsdp` refuses; its checkpoints hold sharded
      weights and optimizer states, which resume on any number of processes.
    - DeepSpeed (ZeRO-2 and ZeRO-3) is refused: it does not run on the machine the tests run on (docs/speed.md
      says why), and the engine's accumulation (`no_sync`), clipping and rank-0 optimizer checkpoint do not
      match what DeepSpeed does inside `backward`. Use FSDP2 (configs/accelerate/fsdp.yaml) for sharding.
    """
    check_launch(acc.num_processes)  # `accelerate launch --cpu --num_processes 2` starts one (train/launch.py)
    kind = acc.distributed_type
    if kind == DistributedType.DEEPSPEED:
        plugin = getattr(acc.state, "deepspeed_plugin", None)
        stage = getattr(plugin, "zero_stage", None)
        raise ValueError(f"DeepSpeed ZeRO-{stage} is not supported: marginkit's engine accumulates with no_sync, "
                         "clips itself and checkpoints rank 0's optimizer, while DeepSpeed steps and clips inside "
                         "backward and partitions the optimizer states, and DeepSpeed cannot be run on the "
                         "machine that tests marginkit (no GPU, CPU build of torch: docs/speed.md), so this path "
                         "has never run. Shard with FSDP2 instead: accelerate launch --config_file "
                         "configs/accelerate/fsdp.yaml ...")
    if kind != DistributedType.FSDP:
        return
    check_fsdp(train_cfg, acc)


# Written by every start before training begins (a start that failed on its data can be rerun in place);
# anything else in output_dir means a previous run is there.
_SETUP_FILES = frozenset({"config.yaml", "ledger.json", "ledger_eval.json", IDENTITY_FILE})
# What train.overwrite=true removes: everything a run writes that a later run could mistake for its own.
# "marginkit": the TensorBoard tracker's folder (Accelerate logs to project_dir / the project name), which
# would otherwise show the old run's curves beside the new one's.
_RUN_OUTPUTS = ("checkpoints", "model", "model.tmp", "model.old", "metrics.jsonl", "alerts.jsonl", "margins.npz",
                "target_vs_learned.png", "marginkit", IDENTITY_FILE)


def check_run_folder(train_cfg: TrainConfig) -> Path | None:
    """Refuse, before anything is written, a start that would mix two runs: an output_dir that holds a
    previous run, unless train.resume_from or train.overwrite says what to do with it, and a resume_from
    that names no checkpoint. Returns the checkpoint to resume from (None for a fresh run)."""
    out, where = Path(train_cfg.output_dir), train_cfg.resume_from
    if where:
        ckpt = latest_checkpoint(out) if where == "latest" else Path(where)
        if ckpt is None:
            raise ConfigError(f"train.resume_from=latest: {out / 'checkpoints'} holds no checkpoint (one is written "
                              "every train.save_every steps and when training is interrupted); start without "
                              "train.resume_from, or name a checkpoint folder")
        if not (ckpt / "trainer_state.pt").is_file():
            raise ConfigError(f"train.resume_from={where}: {ckpt} is not a checkpoint (no trainer_state.pt); name a "
                              f"folder like {out / 'checkpoints' / 'step-000040'}, or use latest")
        return ckpt
    if out.exists() and not out.is_dir():
        raise ConfigError(f"train.output_dir={out} is a file, not a folder; choose another train.output_dir")
    found = sorted(p.name for p in out.iterdir() if p.name not in _SETUP_FILES) if out.is_dir() else []
    if found and not train_cfg.overwrite:
        shown = ", ".join(found[:4]) + (f", ... ({len(found)} entries)" if len(found) > 4 else "")
        raise ConfigError(f"train.output_dir={out} already holds a run ({shown}): resume it with "
                          "train.resume_from=latest, start afresh with train.overwrite=true (removes its checkpoints, "
                          "model and metrics), or choose a new train.output_dir")
    return None


def _check_inputs(cfg: Any, train_pairs: Sequence[Pair] | None) -> None:
    """The settings without which a run cannot start, checked before anything is written."""
    if train_pairs is None and not cfg.data.train:
        raise ConfigError("data.train is not set: name the training pairs (a JSONL/JSON/Parquet file or a saved "
                          "HF dataset folder), e.g. data.train=pairs.jsonl")
    if not cfg.model.name_or_path:
        raise ConfigError("model.name_or_path is not set: name a hub model or a local model folder, "
                          "e.g. model.name_or_path=HuggingFaceTB/SmolLM2-135M")


def _clear_previous_run(out: Path, say: Callable[[str], None]) -> None:
    removed = [name for name in _RUN_OUTPUTS if (out / name).exists()]
    for name in removed:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if removed:
        say(f"train.overwrite=true: removed the previous run's {', '.join(removed)} from {out}")


def start_run(cfg: Any, console: Callable[[str], None], train_pairs: Sequence[Pair] | None = None,
              ) -> tuple[Accelerator, Path, Callable[[str], None], dict[str, Any]]:
    """Check the run folder and the inputs (`check_run_folder`; nothing is written when they are refused),
    then the accelerator, seed, and the run folder `cfg.train.output_dir`; returns (accelerator, folder, say,
    run identity), where `say` prints on the main process only. A resume is refused when the checkpoint's
    run identity differs from this run's (train/identity.py). The main process alone clears a run being
    overwritten and writes config.yaml and run_identity.json (atomically): every process writing the same
    file races. `train_pairs`: the training pairs when given in memory (hashed into the identity)."""
    _check_inputs(cfg, train_pairs)
    ckpt = check_run_folder(cfg.train)
    identity = run_identity(cfg, train_pairs)
    changes = check_resume_identity(ckpt, identity, cfg.train.resume_allow_changes) if ckpt is not None else []
    acc = make_accelerator(cfg.train)
    say = console if acc.is_main_process else (lambda _: None)
    for line in changes:
        say(line)
    set_seed(cfg.train.seed)
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if acc.is_main_process:
        if ckpt is None:
            _clear_previous_run(out, say)
        write_text_atomic(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        write_text_atomic(out / IDENTITY_FILE, json.dumps(identity, indent=2) + "\n")
    return acc, out, say, identity


def _read(source: str, data: DataConfig, ledger: Ledger, split: str | None) -> list[Pair]:
    pairs, _ = load_pairs(source, format=data.format, on_invalid=data.on_invalid, ledger=ledger, split=split)
    return pairs


def load_encoded(data: DataConfig, tokenizer: Any, train_pairs: list[Pair] | None, eval_pairs: list[Pair] | None,
                 encoder: bool = False, eval_ledger: Ledger | None = None, allow_empty: bool = False,
                 ) -> tuple[list[Pair], list[EncodedPair], list[Pair], list[EncodedPair], Ledger]:
    """(train pairs, their tokens, eval pairs, their tokens, the train ledger): pairs given in memory, or read
    from data.train / data.eval, tokenised as configured (`encoder`: the backbone is an encoder, which reads
    [CLS] rather than the last token). The eval pairs are counted in `eval_ledger` when one is given.
    Raises ValueError, with the ledger's summary, when no training pair is left (unless `allow_empty`)."""
    ledger = Ledger()
    if train_pairs is None:
        train_pairs = _read(data.train, data, ledger, data.split)
    else:
        ledger.read(len(train_pairs))
        ledger.keep(len(train_pairs))
    train_set = encode_pairs(train_pairs, tokenizer, data.tokenize, ledger, encoder)
    eval_ledger = eval_ledger if eval_ledger is not None else Ledger()
    if eval_pairs is None and data.eval:
        eval_pairs = _read(data.eval, data, eval_ledger, data.eval_split)
    eval_pairs = eval_pairs or []
    eval_set = encode_pairs(eval_pairs, tokenizer, data.tokenize, eval_ledger, encoder) if eval_pairs else []
    if not train_set and not allow_empty:
        _no_training_pairs(ledger)
    return train_pairs, train_set, eval_pairs, eval_set, ledger


def _no_training_pairs(ledger: Ledger) -> None:
    raise ValueError(f"no training pairs left after loading ({ledger.summary()})")


def load_data(data: DataConfig, tokenizer: Any, train_pairs: list[Pair] | None, eval_pairs: list[Pair] | None,
              acc: Accelerator, out: Path, say: Callable[[str], None], encoder: bool = False,
              ) -> tuple[list[Pair], list[EncodedPair], list[Pair], list[EncodedPair], Ledger]:
    """`load_encoded`, then the ledgers written to the run folder by the main process and summarised: the
    training pairs' in ledger.json, the eval pairs' (when read from data.eval) in ledger_eval.json."""
    eval_ledger = Ledger()
    train_pairs, train_set, eval_pairs, eval_set, ledger = load_encoded(data, tokenizer, train_pairs, eval_pairs,
                                                                        encoder, eval_ledger, allow_empty=True)
    if acc.is_main_process:  # written before any refusal, so a run that lost every pair still says why
        ledger.write(out / "ledger.json")
        if eval_ledger.rows_read:
            eval_ledger.write(out / "ledger_eval.json")
    say(f"data: {ledger.summary()}")
    if eval_ledger.rows_read:
        say(f"eval data: {eval_ledger.summary()}")
    if not train_set:
        _no_training_pairs(ledger)
    return train_pairs, train_set, eval_pairs, eval_set, ledger


def make_optimizer(model: nn.Module, train: TrainConfig, n_pairs: int) -> tuple[Any, Any, int]:
    """AdamW over the trainable parameters only (frozen ones never reach it) and the warm-up + decay
    schedule; returns (optimizer, scheduler, optimizer steps)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=train.learning_rate,
                                  weight_decay=train.weight_decay, betas=(train.adam_beta1, train.adam_beta2))
    total = train.total_steps(n_pairs)
    scheduler = get_scheduler(train.lr_scheduler, optimizer, num_warmup_steps=int(train.warmup_ratio * total),
                              num_training_steps=total)
    return optimizer, scheduler, total


def prepare_optimization(acc: Accelerator, cfg: Any, model: nn.Module, n_pairs: int) -> tuple[Any, Any, Any, int]:
    """`make_optimizer`, everything handed to the accelerator, and the trackers started with the flat config;
    returns (model, optimizer, scheduler, optimizer steps)."""
    optimizer, scheduler, total = make_optimizer(model, cfg.train, n_pairs)
    model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    if cfg.train.report_to:
        acc.init_trackers("marginkit", config=flat_config(to_dict(cfg)))
    return model, optimizer, scheduler, total


def flat_config(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as flat `a.b` keys with scalar values (for trackers); lists and None as JSON."""
    return {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in flatten(d, prefix).items()}


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


def unused_margin_note(margin_name: str, train_set: Sequence[EncodedPair]) -> str | None:
    """One line when the data carries margin values (TRL's `margin` column) that no strategy reads, else None:
    TRL's RewardTrainer uses that column whenever it is there; here it takes margin.name=label (issue 14)."""
    n = sum(math.isfinite(e.label_margin) for e in train_set)
    if margin_name != "none" or not n:
        return None
    return (f"WARNING {n} of {len(train_set)} training pairs carry a margin value (TRL's `margin` column), which "
            "margin.name=none ignores: to train with it as TRL does, set margin.name=label margin.label.source=margin "
            "(ledger.json counts them under counts.with_margin)")


def setup_margin(cfg: Any, train_set: list[EncodedPair], train_pairs: list[Pair], pad_id: int,
                 device: torch.device, say: Callable[[str], None]) -> MarginStrategy:
    """The strategy `cfg.margin` names, checked against the training data, then prepared once (reference gaps
    scored with `score_rm_dir`, the scorer eval-rm uses, or embeddings encoded, or nothing)."""
    strategy = build_margin(cfg.margin)
    check_margin_inputs(strategy, cfg.margin.name, train_set, train_pairs, cfg.data.train or "train pairs")
    note = unused_margin_note(cfg.margin.name, train_set)
    if note:
        say(note)
    strategy.prepare(MarginSetup(train_set, train_pairs, pad_id, cfg.data.padding_side, device,
                                 cfg.data.resolved_cache_dir(), say, score_rm_dir))
    return strategy


def pair_collator(pad_id: int, forward: str, padding_side: str) -> PairCollator | LayoutPairCollator:
    """The training collator for `train.forward`: padded rows, or the packed / prefix-shared layout."""
    if forward == "padded":
        return PairCollator(pad_id, padding_side)
    return LayoutPairCollator(pad_id, forward, padding_side)


def audit_masks(train_set: list[EncodedPair], collate: Callable, tokenizer: Any, mode: str,
                say: Callable[[str], None], n_pairs: int = 8) -> None:
    """Before training, decode the first pairs' batch and check that the loss mask the log-prob code really
    applies (found by its gradient, diagnostics/mask_audit.py) covers exactly the response tokens, shifted
    by one. mode: error (raise MaskAuditError), warn (print it), off."""
    if mode == "off":
        return
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


def pair_ids(pairs: Sequence[Pair]) -> list[str]:
    """Each pair's id, or `#<position>` when it has none (the engine names NaN culprits with these)."""
    return [p.id or f"#{i}" for i, p in enumerate(pairs)]


def policy_settings(stage: str, cfg: Any) -> dict[str, Any]:
    """What a saved policy folder records about how it was trained (models/policy.py POLICY_FILE)."""
    return {"stage": stage, "tokenize": to_dict(cfg.data.tokenize), "padding_side": cfg.data.padding_side,
            "logprob_chunk_size": cfg.model.logprob_chunk_size}


def finish_run(acc: Accelerator, out: Path, save_model: Callable[..., None], engine: Engine | None = None,
               model: Any = None) -> Path:
    """Save the final model to `out/model` from the main process, wait for every process, end the trackers.
    The folder is written beside its final name and renamed into place (`write_dir_atomic`): a failed save
    (a full disk) leaves the previous model folder, or none, never half of one. When `engine` stopped on a
    signal, raise its TrainingInterrupted once the model is saved. Under FSDP every process first gathers the
    full weights of `model` (default: the engine's) and `save_model(path, state_dict=...)` writes them."""
    model_dir = out / "model"
    model = model if model is not None else (engine.model if engine is not None else None)
    state = full_state_dict(acc, model) if model is not None else None  # a collective under FSDP
    write = save_model if state is None else partial(save_model, state_dict=state)
    if acc.is_main_process:
        write_dir_atomic(model_dir, write)
    acc.wait_for_everyone()
    acc.end_training()
    if engine is not None and engine.interrupted is not None:
        raise engine.interrupted
    return model_dir
