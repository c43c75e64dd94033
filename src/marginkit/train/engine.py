"""The training engine, on Accelerate: data order, accumulation, clipping, logging, checkpoints, resume.

One engine serves every step function (reward models now, DPO later). The step computes a loss
*sum* over its micro-batch's pairs; the engine divides by the number of pairs in the optimizer
step, so 4 micro-batches of 2 give exactly the gradient of one batch of 8, whatever the last
batch's size. Metrics are summed over every micro-batch of a logging window, reduced across
processes, and turned into numbers only when logged.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from marginkit.atomic import write_text_atomic
from marginkit.diagnostics.monitor import Alert, MarginMonitor, MonitorConfig, MonitorStopError
from marginkit.models.packing import Attention, ForwardLayout
from marginkit.train.checkpoint import (
    latest_checkpoint,
    load_trainer_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from marginkit.train.identity import IDENTITY_FILE
from marginkit.train.interrupt import StopSignals, TrainingInterrupted
from marginkit.train.sharding import (
    SHARDED_DIR,
    as_number,
    full_state_dict,
    is_sharded,
    load_full_into_sharded,
    load_sharded,
    save_sharded,
    unsharded_class,
)

__all__ = ["TrainConfig", "SFTTrainConfig", "DPOTrainConfig", "StepOutput", "NonFiniteLossError", "TrainingInterrupted",
           "Engine", "epoch_order"]


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping. Defaults follow the reward-margin paper (seed 000): AdamW,
    lr 9e-6, one epoch. Differences from TRL, whose RewardConfig inherits transformers'
    TrainingArguments: 3% linear warm-up then cosine decay (TrainingArguments: linear decay, no
    warm-up), gradient clipping at 1.0 (the same), a zero-initialised reward head (see ModelConfig)."""

    output_dir: str = field(default="runs/rm", metadata={"help": "Run folder: metrics, checkpoints, plots."})
    seed: int = field(default=42, metadata={"help": "Seed for data order, dropout and init."})
    learning_rate: float = field(default=9e-6, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2."})
    num_epochs: int = field(default=1, metadata={"help": "Passes over the training pairs."})
    max_steps: int = field(default=-1, metadata={
        "help": "Optimizer steps to train (-1: num_epochs decide). As in TRL, a positive value overrides num_epochs: "
                "the data is passed over again (a new order each epoch) until this many steps are done."})
    batch_size: int = field(default=8, metadata={"help": "Pairs per micro-batch, all processes together."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    lr_scheduler: Literal["cosine", "linear", "constant"] = field(default="cosine", metadata={"help": "Decay after warm-up."})
    warmup_ratio: float = field(default=0.03, metadata={"help": "Fraction of steps with linear warm-up."})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "Clip the global grad norm (None: no clipping)."})
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = field(
        default="auto", metadata={"help": "auto: bf16 on a GPU that supports it, else no."})
    log_every: int = field(default=10, metadata={"help": "Optimizer steps per logged line."})
    eval_every: int = field(default=0, metadata={"help": "Evaluate every k optimizer steps (0: only at the end)."})
    save_every: int = field(default=0, metadata={"help": "Checkpoint every k optimizer steps (0: only the final model)."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept (oldest removed)."})
    resume_from: str | None = field(default=None, metadata={
        "help": "Checkpoint folder, or 'latest' in output_dir. The checkpoint's run identity (the settings that "
                "change the result, run_identity.json) must match this run's; see resume_allow_changes."})
    resume_allow_changes: list[str] = field(default_factory=list, metadata={
        "help": "Run-identity keys a resume may change on purpose (e.g. [train.max_steps, data.train]); each "
                "change is printed. Any other difference refuses the resume."})
    overwrite: bool = field(default=False, metadata={
        "help": "Start afresh in an output_dir that holds a previous run: its checkpoints, model, metrics and "
                "alerts are removed first. Without it (or resume_from), such a folder is refused."})
    report_to: list[str] = field(default_factory=list, metadata={
        "help": "Extra trackers via Accelerate (tensorboard, wandb, trackio); JSONL is always written."})
    progress_bar: bool = field(default=True, metadata={"help": "Show a progress bar on the main process."})
    forward: ForwardLayout = field(default="padded", metadata={
        "help": "How a batch of pairs is run (docs/speed.md): padded rows; packed (padding-free: sequences end to "
                "end, attention kept within each); prefix_shared (each prompt once, both responses attend to it). "
                "All three give the same rewards and log-probs. Causal LMs only."})
    attention: Attention = field(default="auto", metadata={
        "help": "Attention kernel. auto: the model's own for padded; for packed, flash_attention_2 (varlen) when "
                "flash-attn is installed, else flex_attention on CUDA; for prefix_shared, flex_attention on CUDA; "
                "sdpa with an explicit mask on CPU."})
    torch_compile: bool = field(default=False, metadata={
        "help": "torch.compile each transformer block in place (regional; checkpoints unchanged)."})
    monitor: MonitorConfig = field(default_factory=MonitorConfig)

    def __post_init__(self) -> None:
        for name in ("batch_size", "gradient_accumulation_steps", "num_epochs", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name}={getattr(self, name)}: must be >= 1")
        if self.learning_rate <= 0:
            raise ValueError(f"train.learning_rate={self.learning_rate}: must be > 0")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"train.warmup_ratio={self.warmup_ratio}: must be in [0, 1)")
        if self.forward == "prefix_shared" and self.attention == "flash_attention_2":
            raise ValueError("train.forward=prefix_shared with train.attention=flash_attention_2: varlen kernels only "
                             "express block-diagonal masks, not a prompt shared by two responses; use "
                             "attention=flex_attention or sdpa (or auto), or forward=packed")

    @property
    def pairs_per_step(self) -> int:
        """Effective batch: pairs per optimizer step."""
        return self.batch_size * self.gradient_accumulation_steps

    def steps_per_epoch(self, n_pairs: int) -> int:
        return math.ceil(math.ceil(n_pairs / self.batch_size) / self.gradient_accumulation_steps)

    def total_steps(self, n_pairs: int) -> int:
        # max_steps > 0 overrides num_epochs, as transformers' TrainingArguments (TRL) does (issue 14).
        return self.max_steps if self.max_steps > 0 else self.steps_per_epoch(n_pairs) * self.num_epochs

    def max_steps_note(self, n_pairs: int) -> str | None:
        """A console line when max_steps runs past num_epochs (it overrides them, as in TRL), else None."""
        per_epoch = self.steps_per_epoch(n_pairs)
        if self.max_steps <= per_epoch * self.num_epochs:
            return None
        return (f"train.max_steps={self.max_steps} overrides train.num_epochs={self.num_epochs} (as in TRL): "
                f"{per_epoch} steps per epoch, so the {n_pairs} pairs are passed over {self.max_steps / per_epoch:.3g} "
                "times")


@dataclass
class SFTTrainConfig(TrainConfig):
    """TrainConfig with SFT defaults that differ: output_dir runs/sft; learning rate 2e-5 (TRL SFTConfig)."""

    output_dir: str = field(default="runs/sft", metadata={"help": "Run folder: metrics, checkpoints, final model."})
    learning_rate: float = field(default=2e-5, metadata={"help": "Peak AdamW learning rate (TRL SFTConfig: 2e-5)."})


@dataclass
class DPOTrainConfig(TrainConfig):
    """TrainConfig with DPO defaults that differ: output_dir runs/dpo; learning rate 1e-6 (the DPO paper
    and TRL's DPOConfig; the RM default 9e-6 is too high for a pretrained policy)."""

    output_dir: str = field(default="runs/dpo", metadata={"help": "Run folder: metrics, checkpoints, final policy."})
    learning_rate: float = field(default=1e-6, metadata={"help": "Peak AdamW learning rate (DPO paper, TRL: 1e-6)."})


@dataclass
class StepOutput:
    """What every step function returns to the engine (rm_step, dpo_step, sft_step).

    loss_sum: sum over the micro-batch's pairs (with grad; the engine normalises).
    terms: per-pair detached loss terms [B] (to name the culprit of a NaN).
    stats: metric sums over pairs (detached), keyed by metric name, plus "count"."""

    loss_sum: torch.Tensor
    terms: dict[str, torch.Tensor]
    stats: dict[str, torch.Tensor]


class NonFiniteLossError(RuntimeError):
    """Raised when a loss or gradient is NaN/inf; names the step, the pairs and the term."""


def _shard(batch: dict[str, torch.Tensor], rank: int, procs: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Rank `rank`'s contiguous slice of a collated batch ([2B, ...] pair rows and [B] per-pair fields)."""
    n = len(batch["index"])
    lo, hi = rank * n // procs, (rank + 1) * n // procs
    rows = torch.cat([torch.arange(lo, hi), torch.arange(n + lo, n + hi)])  # chosen rows, then rejected rows
    out = {k: (v[rows] if v.shape[0] == 2 * n else v[lo:hi]).to(device) for k, v in batch.items()}
    out["n_global"] = torch.tensor(n)
    return out


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The permutation of pair indices for one epoch: a pure function of (seed, epoch), so resume is exact."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=gen).tolist()


StepFn = Callable[[Any, dict[str, torch.Tensor], int], StepOutput]


def _checkpoint_weights(model: Any, folder: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors under the model's own parameter names. An HF model reloads its folder with
    from_pretrained, which applies the architecture's key conversions (transformers 5 keeps GPT-NeoX's
    output layer as `lm_head` in memory but writes `embed_out` to disk); other models read every
    safetensors shard as is."""
    from safetensors.torch import load_file

    cls = unsharded_class(model)
    if hasattr(cls, "from_pretrained") and (folder / "config.json").exists():
        return cls.from_pretrained(folder, dtype=next(model.parameters()).dtype).state_dict()
    weights: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):  # every shard of a sharded save
        weights.update(load_file(str(shard)))
    return weights


class Engine:
    """Runs a step function over data with an Accelerate-prepared model and optimizer."""

    def __init__(self, cfg: TrainConfig, accelerator: Accelerator, model: Any, optimizer: Any, scheduler: Any,
                 collate: Callable, stateful: dict[str, Any] | None = None,
                 save_model: Callable[[Path], None] | None = None, ids: Sequence[str] | None = None,
                 log_fn: Callable[[dict[str, Any]], None] | None = None,
                 expected_initial_loss: float | str | None = None, identity: dict[str, Any] | None = None):
        """`expected_initial_loss`: the step-1 loss the margin monitor checks (a number, or the name of a
        metric the step logs that holds it, e.g. "diagnostics/loss_at_zero_gap"; None skips that check).
        `identity`: the run identity (train/identity.py) stored with every checkpoint."""
        self.cfg, self.acc = cfg, accelerator
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.collate, self.stateful = collate, stateful or {}
        self.save_model, self.ids, self.log_fn = save_model, ids, log_fn
        self.step, self.epoch, self.batches_done = 0, 0, 0
        self.out = Path(cfg.output_dir)
        self.metrics_path = self.out / "metrics.jsonl"
        self.history: list[dict[str, Any]] = []
        self.monitor = MarginMonitor(cfg.monitor, expected_initial_loss)
        self.stateful = {**self.stateful, "monitor": self.monitor}
        self.alerts_path = self.out / "alerts.jsonl"
        self.window_alerts = 0  # alerts since the last logged row
        self.identity = identity
        self.signals = StopSignals(announce=accelerator.is_main_process)  # seen during fit, acted on after a step
        self.interrupted: TrainingInterrupted | None = None  # set when fit stopped on a signal
        self.last_checkpoint: Path | None = None

    # ---- data ----
    def _loader(self, data: Sequence[Any], epoch: int, skip: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """This process's share of each global micro-batch of the epoch, on its device.

        Every process builds the same global batch (same order, a pure function of seed and epoch) and
        keeps its own slice of the pairs, so uneven shards are exact: the step's normaliser counts the
        global pairs (`n_global`). Accelerate's own sharding either pads a short last batch with repeated
        pairs (even_batches) or gives it all to rank 0; neither is exact. Only a last batch with fewer
        pairs than processes cannot be shared: those < P pairs sit out this epoch, counted and reported.
        """
        ordered = [data[i] for i in epoch_order(len(data), self.cfg.seed, epoch)]
        procs, rank = self.acc.num_processes, self.acc.process_index
        spare = len(ordered) % self.cfg.batch_size
        if 0 < spare < procs:
            ordered = ordered[: len(ordered) - spare]
            self.acc.print(f"epoch {epoch}: the last {spare} pair(s) sit out this epoch: a batch smaller than "
                           f"the {procs} processes cannot be shared (a different few each epoch)")
        # A private generator: iterating a DataLoader draws a base seed from it, and without one it takes
        # that draw from the global RNG that dropout uses, so a resumed run (which starts a fresh
        # loader mid-epoch) would get different dropout masks from the uninterrupted run.
        gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        loader = DataLoader(ordered, batch_size=self.cfg.batch_size, shuffle=False, collate_fn=self.collate,
                            generator=gen)
        for batch in itertools.islice(loader, skip, None):
            yield _shard(batch, rank, procs, self.acc.device)

    def _windows(self, loader: Iterator[dict[str, torch.Tensor]]):
        window: list[dict[str, torch.Tensor]] = []
        for batch in loader:
            window.append(batch)
            if len(window) == self.cfg.gradient_accumulation_steps:
                yield window
                window = []
        if window:
            yield window

    # ---- one optimizer step ----
    def _optimizer_step(self, step_fn: StepFn, window: list[dict[str, torch.Tensor]], sums: dict[str, torch.Tensor]):
        n_pairs = sum(int(b["n_global"]) for b in window)  # global pairs in this optimizer step
        bad = torch.zeros((), dtype=torch.bool, device=self.acc.device)
        outputs: list[StepOutput] = []
        for j, batch in enumerate(window):
            last = j == len(window) - 1
            sync = contextlib.nullcontext() if last else self.acc.no_sync(self.model)
            with sync, self.acc.autocast():
                out = step_fn(self.model, batch, self.step)
                loss = out.loss_sum * (self.acc.num_processes / n_pairs)
            bad |= ~torch.isfinite(out.loss_sum)
            self.acc.backward(loss)
            outputs.append(out)
            for k, v in out.stats.items():
                sums[k] = sums.get(k, 0.0) + v
            sums["tokens"] = sums.get("tokens", 0.0) + batch["attention_mask"].sum()
        grad_norm = as_number(self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm or float("inf")))
        if bad.item() or not torch.isfinite(torch.as_tensor(grad_norm)).item():
            self._raise_nonfinite(window, outputs, float(grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        sums["grad_norm"] = sums.get("grad_norm", 0.0) + torch.as_tensor(grad_norm, device=self.acc.device).float()
        sums["steps"] = sums.get("steps", 0.0) + 1.0

    def _raise_nonfinite(self, window: list[dict], outputs: list[StepOutput], grad_norm: float) -> None:
        for j, (batch, out) in enumerate(zip(window, outputs)):
            for term, values in out.terms.items():
                bad = ~torch.isfinite(values)
                if bad.any():
                    idx = batch["index"][bad.cpu() if bad.device != batch["index"].device else bad].tolist()
                    names = [self.ids[i] if self.ids else str(i) for i in idx][:8]
                    raise NonFiniteLossError(
                        f"non-finite loss at optimizer step {self.step + 1} (epoch {self.epoch}, micro-batch {j + 1} "
                        f"of {len(window)}): term {term!r} is {values[bad][0].item()} for pairs {names}. Training "
                        "stopped. Check the learning rate, the inputs of these pairs, and margins/labels for inf.")
        raise NonFiniteLossError(
            f"non-finite gradient norm ({grad_norm}) at optimizer step {self.step + 1} (epoch {self.epoch}) with "
            "finite losses: an overflow in backward. Lower the learning rate or use bf16 instead of fp16.")

    # ---- logging ----
    def _reduce(self, sums: dict[str, torch.Tensor]) -> tuple[dict[str, float], dict[str, float]]:
        """Sum `sums` over processes (one all-reduce) -> (per-pair means and grad_norm, raw totals)."""
        keys = sorted(sums)
        values = torch.stack([torch.as_tensor(sums[k], device=self.acc.device).float() for k in keys])
        values = self.acc.reduce(values, reduction="sum").tolist()
        total = dict(zip(keys, values))
        count, steps = total.pop("count"), total.pop("steps") / self.acc.num_processes
        means: dict[str, float] = {}
        sq = total.pop("target_margins/sq", None)
        for k, v in total.items():
            if k not in ("tokens", "grad_norm"):
                means[k] = v / count
        if sq is not None:
            means["target_margins/std"] = math.sqrt(max(sq / count - means["target_margins/mean"] ** 2, 0.0))
        means["grad_norm"] = total["grad_norm"] / self.acc.num_processes / steps
        return means, {"count": count, "tokens": total["tokens"]}

    def _log(self, sums: dict[str, torch.Tensor], started: float, extra: dict[str, float]) -> dict[str, Any]:
        means, total = self._reduce(sums)
        elapsed = max(time.perf_counter() - started, 1e-9)
        row: dict[str, Any] = {"step": self.step, "epoch": self.epoch, **means}
        row["learning_rate"] = self.scheduler.get_last_lr()[0]
        row["tokens_per_second"] = total["tokens"] / elapsed
        row["pairs_per_second"] = total["count"] / elapsed
        row["monitor/alerts"] = self.window_alerts
        self.window_alerts = 0
        row.update(extra)
        self.write_row(row)
        return row

    def write_row(self, row: dict[str, Any]) -> None:
        """Append one metrics line (main process) and forward it to the trackers."""
        self.history.append(row)
        if self.acc.is_main_process:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        self.acc.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])
        if self.log_fn is not None:
            self.log_fn(row)

    # ---- checkpoints ----
    def save(self) -> Path | None:
        """Write a resumable checkpoint (train/checkpoint.py). Every process calls it: under FSDP each writes
        its weight and optimizer shards (train/sharding.py) and takes part in gathering the model folder's
        full weights; the main process writes the rest and renames the folder into place."""
        if self.save_model is None:
            return None
        self.acc.wait_for_everyone()
        directory = self.out / "checkpoints" / f"step-{self.step:06d}"
        weights = full_state_dict(self.acc, self.model)  # None unless sharded; a collective under FSDP
        write_model = self.save_model if weights is None else partial(self.save_model, state_dict=weights)
        folders = {}
        if is_sharded(self.acc):
            shards = directory.with_name(directory.name + ".shards.tmp")  # ".tmp": never read as a checkpoint
            if self.acc.is_main_process and shards.exists():
                shutil.rmtree(shards)  # left by a save that crashed
            self.acc.wait_for_everyone()
            save_sharded(self.model, self.optimizer, shards)
            self.acc.wait_for_everyone()
            folders[SHARDED_DIR] = shards
        path = None
        if self.acc.is_main_process:
            state = {
                "step": self.step, "epoch": self.epoch, "batches_done": self.batches_done,
                "optimizer": None if folders else self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": rng_state(), "stateful": {k: v.state_dict() for k, v in self.stateful.items()},
                "run_identity": self.identity,
            }
            extra = {IDENTITY_FILE: json.dumps(self.identity, indent=2) + "\n"} if self.identity else {}
            path = save_checkpoint(directory, write_model, state, keep=self.cfg.save_total_limit, files=extra,
                                   folders=folders)
        self.acc.wait_for_everyone()
        self.last_checkpoint = path if path is not None else directory
        return self.last_checkpoint

    def resume(self, where: str) -> None:
        path = latest_checkpoint(self.out) if where == "latest" else Path(where)
        if path is None:
            raise FileNotFoundError(f"train.resume_from=latest but {self.out}/checkpoints has no checkpoint")
        state = load_trainer_state(path)
        if (path / SHARDED_DIR).is_dir():  # written by an FSDP run: resharded onto this run's processes
            load_sharded(self.model, self.optimizer, path / SHARDED_DIR)
        elif is_sharded(self.acc):  # written without FSDP: full weights and optimizer state, sharded on loading
            load_full_into_sharded(self.model, self.optimizer, _checkpoint_weights(self.model, path / "model"),
                                   state["optimizer"])
        else:
            self._load_full(path, state)
        self.scheduler.load_state_dict(state["scheduler"])
        for k, obj in self.stateful.items():
            if k == "monitor" and k not in state["stateful"]:  # a checkpoint from before the monitor existed
                self.acc.print(f"{path} holds no margin-monitor state: the monitor starts afresh")
                continue
            obj.load_state_dict(state["stateful"][k])
        set_rng_state(state["rng"])
        self.step, self.epoch, self.batches_done = state["step"], state["epoch"], state["batches_done"]
        self._truncate_metrics()
        if self.step == 0 and self.batches_done == 0:
            return
        self.acc.print(f"resumed from {path} at step {self.step} (epoch {self.epoch}, batch {self.batches_done})")

    def _load_full(self, path: Path, state: dict[str, Any]) -> None:
        """Weights from the checkpoint's model folder, optimizer state from trainer_state.pt (DDP, 1 process)."""
        inner = self.acc.unwrap_model(self.model)
        weights = _checkpoint_weights(inner, path / "model")
        # strict=False only because tied weights are saved once; anything unexpected is an error.
        result = inner.load_state_dict(weights, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"checkpoint {path} does not match the model: unexpected {result.unexpected_keys[:5]}")
        self.optimizer.load_state_dict(state["optimizer"])

    def _truncate_metrics(self) -> None:
        """Drop the metrics rows written after the checkpoint's step (the steps the resumed run trains again),
        so metrics.jsonl holds each step once. Main process only; written atomically."""
        if not self.acc.is_main_process or not self.metrics_path.exists():
            return
        lines = [line for line in self.metrics_path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line)["step"] <= self.step]
        if len(kept) < len(lines):
            write_text_atomic(self.metrics_path, "".join(line + "\n" for line in kept))
            self.acc.print(f"metrics.jsonl: {len(lines) - len(kept)} row(s) after step {self.step} removed "
                           "(those steps are trained again)")

    # ---- interruption (SIGINT, SIGTERM; train/interrupt.py) ----
    def _stop_requested(self) -> bool:
        """Whether any process received a signal: every process takes the same decision (a scheduler may
        signal one process first), and those that saw none adopt the signal another one saw."""
        signum = self.signals.received or 0
        if self.acc.num_processes > 1:
            seen = torch.tensor([float(signum)], device=self.acc.device)
            signum = int(self.acc.gather(seen).max().item())  # [P] -> the highest signal number seen
            if signum and self.signals.received is None:
                self.signals.received = signum
        return signum > 0

    def _interrupt(self, sums: dict[str, torch.Tensor], started: float, total: int) -> None:
        """Log the steps of the open window, write a resumable checkpoint, and record why fit stopped (the
        trainer saves the model folder, then raises `self.interrupted`)."""
        if sums:
            self._log(sums, started, {})
        path = self.save() if self.save_model is not None else None
        self.interrupted = TrainingInterrupted(self.signals.received or signal.SIGINT, self.step, total, path,
                                               self.out / "model")

    # ---- the margin monitor ----
    def _start_monitor(self) -> None:
        """A fresh run starts an empty alerts.jsonl; a resumed one keeps the alerts up to its checkpoint."""
        if self.cfg.monitor.enabled and self.step == 0 and not self.monitor.checks_first_step:
            self.acc.print("monitor: first-step loss check skipped: the trainer gave no expected initial loss "
                           "(set train.monitor.first_step.expected to check it)")
        if not self.acc.is_main_process or not self.alerts_path.exists():
            return
        lines = self.alerts_path.read_text().splitlines() if self.step else []
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= self.step]
        self.alerts_path.write_text("".join(line + "\n" for line in kept))

    def _monitor(self, step_sums: dict[str, torch.Tensor]) -> list[Alert]:
        """Reduce this optimizer step's own sums over processes (one small all-reduce; the non-finite check
        already syncs every step) and let the monitor check them. Every process gets the same numbers, so
        every process takes the same decision, and a stop ends them all."""
        if not self.cfg.monitor.enabled:
            return []
        metrics, _ = self._reduce(step_sums)
        metrics["learning_rate"] = self.scheduler.get_last_lr()[0]
        alerts = self.monitor.observe(self.step, metrics)
        if alerts and self.acc.is_main_process:
            with self.alerts_path.open("a") as f:
                for alert in alerts:
                    f.write(json.dumps(alert.to_dict()) + "\n")
                    tqdm.write(str(alert))
        self.window_alerts += len(alerts)
        return alerts

    def _stop(self, alert: Alert, sums: dict[str, torch.Tensor], started: float, bar: Any) -> None:
        """End the run for a "stop" alert: log the window so far, close the bar and trackers, raise. No
        checkpoint is written: the weights after this step are the ones the monitor objected to."""
        self._log(sums, started, {})
        bar.close()
        self.acc.end_training()
        raise MonitorStopError(alert, str(self.alerts_path))

    # ---- the loop ----
    def fit(self, step_fn: StepFn, data: Sequence[Any], evaluate: Callable[[int], dict[str, float]] | None = None) -> None:
        """Train until the configured steps or epochs are done. On SIGINT or SIGTERM the current optimizer step
        is finished, a checkpoint written and `self.interrupted` set (no final evaluation); the caller saves
        the model and raises it (train/setup.py finish_run)."""
        with self.signals:
            self._fit(step_fn, data, evaluate)

    def _fit(self, step_fn: StepFn, data: Sequence[Any], evaluate: Callable[[int], dict[str, float]] | None) -> None:
        cfg = self.cfg
        total = cfg.total_steps(len(data))
        if self.step == 0 and (note := cfg.max_steps_note(len(data))):
            self.acc.print(note)
        self.monitor.total_steps = total  # margin_gap scales its wait to the run (issue 14)
        self.out.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=total, initial=self.step, desc="train", disable=not (cfg.progress_bar and self.acc.is_main_process),
                   dynamic_ncols=True)
        sums: dict[str, torch.Tensor] = {}
        self._start_monitor()
        if self.step >= total:  # resumed past the planned steps (train.max_steps lowered on purpose)
            self.acc.print(f"step {self.step} reaches the {total} planned optimizer steps: nothing left to train")
        started = time.perf_counter()
        self.model.train()
        while self.step < total and self.interrupted is None and (cfg.max_steps > 0 or self.epoch < cfg.num_epochs):
            step_before = self.step
            for window in self._windows(self._loader(data, self.epoch, skip=self.batches_done)):
                step_sums: dict[str, torch.Tensor] = {}
                self._optimizer_step(step_fn, window, step_sums)
                for k, v in step_sums.items():
                    sums[k] = sums.get(k, 0.0) + v
                self.step += 1
                self.batches_done += len(window)
                bar.update(1)
                stops = [alert for alert in self._monitor(step_sums) if alert.severity == "stop"]
                if stops:
                    self._stop(stops[0], sums, started, bar)
                if self.step % cfg.log_every == 0 or self.step == total:
                    row = self._log(sums, started, {})
                    shown = {"acc": f"{row['rewards/accuracies']:.3f}"} if "rewards/accuracies" in row else {}
                    bar.set_postfix(loss=f"{row['loss']:.4f}", **shown)  # SFT steps log no accuracy
                    sums, started = {}, time.perf_counter()
                if evaluate is not None and cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < total:
                    self.write_row({"step": self.step, "epoch": self.epoch, **evaluate(self.step)})
                    self.model.train()
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.save()
                if self.step < total and self._stop_requested():  # at the last step, the run just ends
                    self._interrupt(sums, started, total)
                    break
                if self.step >= total:
                    break
            else:
                if self.step == step_before and self.batches_done == 0:
                    raise ValueError(f"epoch {self.epoch} has no batch to train on ({len(data)} pairs, "
                                     f"{self.acc.num_processes} processes): use fewer processes or more pairs")
                self.epoch += 1
                self.batches_done = 0
        bar.close()
        if evaluate is not None and self.interrupted is None:
            self.write_row({"step": self.step, "epoch": self.epoch, **evaluate(self.step)})
