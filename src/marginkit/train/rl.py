"""`train-grpo`, `train-rloo` and `train-ppo`: online RL of a causal LM against a reward (issue 16).

Each step, in order (cleanrl's phases):
1. rollout: P prompts (a pure function of seed and step), K completions each from the policy
   (models/generation.py `HFGenerator`, seeded by seed and step), their rewards (rewards.py: the gold
   world, an RM folder or a callable), and under no_grad the per-token log-probs of the sampling policy
   ("old") and of the frozen reference (and, for PPO, the value model's values);
2. advantages: GRPO's group-relative ones or RLOO's leave-one-out ones (losses/rl.py) of the reward, minus
   beta x the completion's summed KL when loss.kl_in=reward; for PPO, GAE over per-token rewards
   (train/rl_value.py);
3. optimisation: num_iterations epochs over the rollout, each split into num_minibatches optimizer steps
   of `rl_step` (train/rl_step.py: clipped surrogate + beta x per-token KL when loss.kl_in=loss), plus
   vf_coef x the value loss for PPO;
4. metrics (TRL's GRPO names, docs/rl.md) and, every save_every steps, a checkpoint.

A resumed run continues the same run: prompts, sampling seeds and minibatch orders are functions of
(seed, step), and the checkpoint restores the weights, the optimizer, the schedule and the RNG states,
so the rollouts after a resume are those of the uninterrupted run (tests/test_rl_train.py, test_rl_ppo.py).

Several processes (DDP through Accelerate, docs/rl.md "Multi-process"): each process takes a contiguous share of
the step's prompts, whole groups, so GRPO's and RLOO's advantages need nothing from the others; PPO's whitening,
the token aggregation's normalisers and every metric are global (summed or gathered over the processes), so
the update and the logged rows are one process's on the same rollout. The main process alone writes files.

Contract. Policy dropout is off (PolicyConfig's
default), so the policy at step 0 equals its reference and KL starts at 0. After each rollout step the
margin monitor's RL checks (train.monitor, docs/monitor.md) read that step's row; alerts go to the console
and alerts.jsonl, and a check with action=stop ends the run (no checkpoint) with MonitorStopError. SIGINT
or SIGTERM finishes the current rollout step, writes a checkpoint and the model, and raises
TrainingInterrupted (train/interrupt.py); a run killed outright resumes from its last save_every checkpoint.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator, DistributedType
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list, set_seed
from torch import nn
from tqdm.auto import tqdm
from transformers import get_scheduler

from marginkit.atomic import write_dir_atomic, write_text_atomic
from marginkit.configlib import ConfigError, flatten, to_dict
from marginkit.diagnostics.monitor import MarginMonitor, MonitorStopError
from marginkit.losses.rl import KL_ESTIMATORS, grpo_advantages, rloo_advantages
from marginkit.margins.global_batch import gather_rows
from marginkit.models.generation import Completions, HFGenerator, completion_logps, layout_completions
from marginkit.models.policy import PolicyConfig, load_policy, save_policy
from marginkit.rewards import load_reward
from marginkit.train.checkpoint import (
    latest_checkpoint,
    load_trainer_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from marginkit.train.engine import NonFiniteLossError, epoch_order
from marginkit.train.identity import IDENTITY_FILE, check_resume_identity
from marginkit.train.interrupt import StopSignals, TrainingInterrupted
from marginkit.train.launch import check_launch
from marginkit.train.rl_config import GRPORunConfig, PPORunConfig, RLTrainConfig, ValueConfig
from marginkit.train.rl_step import rl_step
from marginkit.train.rl_value import (
    VALUE_DIR,
    SumFn,
    ValueModel,
    load_value_model,
    load_value_weights,
    ppo_advantages,
    save_value_model,
    value_step,
)
from marginkit.train.sharding import fsdp_requested
from marginkit.train.trackers import resolve_trackers

__all__ = ["RLRunResult", "Rollout", "load_prompts", "load_eval_prompts", "evaluate", "EVAL_SEED", "step_prompts", "rl_identity", "collect_rollout", "train_rl",
           "train_grpo", "train_rloo", "train_ppo"]

# Settings that change only where or how often things are written: not part of the run identity.
_BOOKKEEPING = {"train.output_dir", "train.log_every", "train.save_every", "train.save_total_limit",
                "train.resume_from", "train.resume_allow_changes", "train.overwrite", "train.report_to",
                "train.progress_bar"}
_RUN_OUTPUTS = ("checkpoints", "model", "metrics.jsonl", "alerts.jsonl", "marginkit")


@dataclass
class RLRunResult:
    output_dir: Path
    model_dir: Path
    history: list[dict[str, Any]]


@dataclass
class Rollout:
    """One rollout batch of N = P K completions, on the training device.

    rewards, gold [N] float64 numpy (gold: the world's true reward, None off the world); advantages [N] (group
    baselines) or [N, T-1] (PPO); old_logps, ref_logps [N, T-1] (ref None when beta = 0)."""

    completions: Completions
    batch: dict[str, torch.Tensor]  # input_ids, attention_mask, completion_mask [N, T]
    rewards: Any
    gold: Any
    advantages: torch.Tensor
    old_logps: torch.Tensor
    ref_logps: torch.Tensor | None
    returns: torch.Tensor | None = None  # PPO: [N, T-1] the value model's targets
    old_values: torch.Tensor | None = None  # PPO: [N, T-1] the values at rollout time


def load_prompts(cfg: GRPORunConfig) -> tuple[list[Any], bool]:
    """(the prompt pool, whether it comes from the gold world): rollout.prompts is world:SPLIT or a JSONL file."""
    if not cfg.rollout.prompts:
        raise ConfigError("rollout.prompts is not set: give world:train (the gold world's prompts) or a JSONL file")
    return _read_prompts(cfg.rollout.prompts, "rollout.prompts", cfg.rollout.world_seed, cfg.rollout.prompt_pool,
                         cfg.train.seed)


def load_eval_prompts(cfg: GRPORunConfig) -> tuple[list[Any], bool]:
    """The evaluation prompts (eval.prompts, the first eval.n_prompts; world prompts drawn with seed 0, the same for
    every run) and whether they come from the gold world; ([], False) when no evaluation is set."""
    if not cfg.eval.prompts:
        return [], False
    prompts, on_world = _read_prompts(cfg.eval.prompts, "eval.prompts", cfg.rollout.world_seed, cfg.eval.n_prompts, 0)
    return prompts[:cfg.eval.n_prompts], on_world


def _read_prompts(source: str, key: str, world_seed: int, n_world: int, seed: int) -> tuple[list[Any], bool]:
    if source.startswith("world:"):
        from marginkit.data.world import WorldConfig, make_world

        split = source.split(":", 1)[1]
        if split not in ("train", "val", "test"):
            raise ConfigError(f"{key}={source}: the world's splits are train, val, test")
        world = make_world(WorldConfig(seed=world_seed, n_train=1, n_val=0, n_test=0))
        return world.sample_prompts(n_world, seed=seed, split=split), True
    from marginkit.evaluate.sampling import read_prompts

    return [list(p) if isinstance(p, tuple) else p for p in read_prompts(source)], False


def step_prompts(pool: Sequence[Any], per_step: int, seed: int, step: int) -> list[Any]:
    """The P prompts of rollout step `step`: consecutive slices of the pool in a new order each pass (the
    engine's `epoch_order`), a pure function of (seed, step)."""
    out = []
    for k in range(step * per_step, (step + 1) * per_step):
        epoch, pos = divmod(k, len(pool))
        out.append(pool[epoch_order(len(pool), seed, epoch)[pos]])
    return out


def rl_identity(cfg: GRPORunConfig) -> dict[str, Any]:
    """The run identity (train/identity.py's format): every setting but the bookkeeping ones, and their hash."""
    import hashlib

    settings = {k: v for k, v in flatten(to_dict(cfg)).items()
                if k not in _BOOKKEEPING and not k.startswith("train.monitor.")}  # the monitor only watches
    if not settings.get("rollout.seed_per_prompt"):  # added later: at its default, earlier checkpoints still resume
        settings.pop("rollout.seed_per_prompt", None)
    settings = json.loads(json.dumps(settings, sort_keys=True, default=str))
    return {"hash": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest(), "settings": settings}


def _check_folder(train: RLTrainConfig, say: Callable[[str], None], main: bool = True) -> Path | None:
    """The checkpoint to resume from, or None; refuses an output_dir holding another run unless overwrite (whose
    removal only the main process does: `main`)."""
    out, where = Path(train.output_dir), train.resume_from
    if where:
        ckpt = latest_checkpoint(out) if where == "latest" else Path(where)
        if ckpt is None or not (ckpt / "trainer_state.pt").is_file():
            raise ConfigError(f"train.resume_from={where}: no checkpoint there (trainer_state.pt); name a folder like "
                              f"{out / 'checkpoints' / 'step-000010'}, or use latest")
        return ckpt
    found = [name for name in _RUN_OUTPUTS if (out / name).exists()]
    if found and not train.overwrite:
        raise ConfigError(f"train.output_dir={out} already holds a run ({', '.join(found)}): resume it with "
                          "train.resume_from=latest, start afresh with train.overwrite=true, or choose a new output_dir")
    for name in found if main else ():
        shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
    if found:
        say(f"train.overwrite=true: removed the previous run's {', '.join(found)} from {out}")
    return None


def _accelerator(train: RLTrainConfig) -> Accelerator:
    precision = train.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    # split_batches=True: the prepared scheduler steps once per optimizer step; without it Accelerate steps it
    # once per process (it assumes each process's batch adds to the global batch), and the schedule would run
    # num_processes times too fast. The RL loop shares the rollout itself (`_share`), no DataLoader is prepared.
    acc = Accelerator(dataloader_config=DataLoaderConfiguration(split_batches=True), mixed_precision=precision,
                      log_with=resolve_trackers(train.report_to) or None, project_dir=train.output_dir)
    check_launch(acc.num_processes)  # `accelerate launch --cpu --num_processes 2` starts one (train/launch.py)
    if acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM) or (
            acc.num_processes > 1 and fsdp_requested()):
        kind = "FSDP" if fsdp_requested() else acc.distributed_type.value
        raise ConfigError(f"train-grpo, train-rloo and train-ppo run data-parallel (DDP) only; {kind} was asked for. "
                          "Launch without the FSDP/DeepSpeed config: `accelerate launch --multi_gpu --num_processes N "
                          "-m marginkit.cli train-grpo ...` on GPUs, `ACCELERATE_USE_CPU=true torchrun --standalone "
                          "--nproc_per_node N -m marginkit.cli train-grpo ...` on CPU (docs/rl.md, Multi-process)")
    return acc


def _check_processes(cfg: GRPORunConfig, processes: int) -> None:
    """Refuse a rollout that does not split into equal shares of whole prompts (every process samples the same
    number of prompts, each with all its K completions, so the group baselines stay on one process)."""
    if cfg.rollout.prompts_per_step % processes:
        raise ConfigError(f"rollout.prompts_per_step={cfg.rollout.prompts_per_step} must be divisible by the "
                          f"{processes} processes: each process samples an equal share of whole prompts (all K "
                          f"completions of a prompt on one process); use a multiple of {processes}")


def _share(n: int, rank: int, processes: int) -> tuple[int, int]:
    """[lo, hi): process `rank`'s contiguous share of n items (n divisible by `processes`, `_check_processes`)."""
    return rank * n // processes, (rank + 1) * n // processes


def _global_sum(acc: Accelerator) -> SumFn | None:
    """A tensor summed over every process (an all-reduce), or None with one process (nothing to sum)."""
    if acc.num_processes == 1:
        return None
    return lambda t: acc.reduce(t.contiguous(), reduction="sum")


def _load_reference(cfg: GRPORunConfig, device: torch.device) -> nn.Module | None:
    """The frozen reference (eval mode, no grad), or None when beta = 0 and no evaluation measures KL to it."""
    if cfg.loss.beta == 0 and not cfg.eval.prompts:
        return None
    path = cfg.reference.name_or_path or cfg.model.name_or_path
    ref_cfg = PolicyConfig(name_or_path=path, dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code)
    reference, _ = load_policy(ref_cfg)
    reference.to(device).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    return reference


_PROMPT_SEED_STRIDE = 2**32 + 15  # seeds of different prompt places: apart by more than any step count


def prompt_seed(seed: int, index: int) -> int:
    """The sampling seed of the prompt at place `index` of a step whose seed is `seed` (index 0: `seed` itself)."""
    return seed + index * _PROMPT_SEED_STRIDE


def _sample(run: _Run, prompts: Sequence[Any], seed: int, first: int) -> Completions:
    """K completions of each prompt. The prompts are places first, first + 1, ... of the step. By default one
    batched `generate` call seeded by `prompt_seed(seed, first)`: the samples depend on the whole share, so on
    the number of processes. rollout.seed_per_prompt: one call per prompt, seeded by its own place, so each
    prompt's completions are a pure function of (seed, step, place, weights) and any number of processes samples
    the one-process rollout (tested, tests/test_rl_ddp.py)."""
    ro, gen = run.cfg.rollout, run.generator
    if not ro.seed_per_prompt:
        return gen.generate(prompts, ro.num_generations, ro.max_new_tokens, ro.temperature, prompt_seed(seed, first))
    parts = [gen.generate([p], ro.num_generations, ro.max_new_tokens, ro.temperature, prompt_seed(seed, first + j))
             for j, p in enumerate(prompts)]
    eos = gen.tokenizer.eos_token_id
    pad = gen.tokenizer.pad_token_id if gen.tokenizer.pad_token_id is not None else eos
    prompt_rows, generated = [], []
    for part in parts:  # each part has its own widths: take the tokens out and lay them out again together
        for ids, attn, comp in zip(part.input_ids, part.attention_mask.bool(), part.completion_mask.bool()):
            prompt_rows.append(ids[attn & ~comp].tolist())
            generated.append(ids[comp].tolist())
    out = layout_completions(prompt_rows, generated, eos, pad)
    return Completions(out["input_ids"], out["attention_mask"], out["completion_mask"], out["lengths"],
                       out["truncated"], torch.arange(len(prompts)).repeat_interleave(ro.num_generations),
                       [text for part in parts for text in part.texts])


@torch.no_grad()
def collect_rollout(run: _Run, prompts: Sequence[Any], seed: int, first: int = 0) -> Rollout:
    """Phases 1 and 2 of the module docstring: sample, reward, old and reference log-probs, advantages.

    `prompts` are this process's share of the step, starting at place `first` of the step's prompts (`_sample`).
    The forwards use the unwrapped models (no DDP hooks under no_grad)."""
    cfg, acc, ro = run.cfg, run.acc, run.cfg.rollout
    completions = _sample(run, prompts, seed, first)
    prompt_of = [prompts[i] for i in completions.prompt_index.tolist()]
    rewards = run.reward_fn(prompt_of, completions.texts)  # [N] float64
    gold = None
    if run.on_world:
        from marginkit.data.world import true_rewards

        gold = true_rewards(prompt_of, completions.texts)
    batch = {k: getattr(completions, k).to(acc.device) for k in ("input_ids", "attention_mask", "completion_mask")}
    policy = acc.unwrap_model(run.model)
    policy.eval()
    old_logps = _logps_in_chunks(policy, batch, cfg, acc)  # [N, T-1]
    ref_logps = None if run.reference is None else _logps_in_chunks(run.reference, batch, cfg, acc)
    mask = batch["completion_mask"][:, 1:].bool()  # [N, T-1], the labels' mask
    kl = torch.zeros_like(old_logps) if ref_logps is None else run.kl_fn(old_logps, ref_logps) * mask  # [N, T-1]
    score = torch.as_tensor(rewards, dtype=torch.float32, device=acc.device)  # [N]
    if run.value_model is not None:  # PPO: per-token rewards, GAE over the value model's values (train/rl_value.py)
        values = _values_in_chunks(acc.unwrap_model(run.value_model), batch, cfg, acc)  # [N, T-1]
        v = run.value_cfg
        advantages, returns = ppo_advantages(score, kl, values, mask, cfg.loss.beta, v.gamma, v.lam,
                                             v.whiten_advantages, total=_global_sum(acc))  # whitened globally
        return Rollout(completions, batch, rewards, gold, advantages, old_logps, ref_logps, returns, values * mask)
    if cfg.loss.kl_in == "reward":
        score = score - cfg.loss.beta * kl.sum(-1)  # RLOO's penalised reward
    advantages = run.advantage_fn(score.view(len(prompts), ro.num_generations)).reshape(-1)  # [P, K] -> [N]
    return Rollout(completions, batch, rewards, gold, advantages, old_logps, ref_logps)


def _values_in_chunks(value_model: nn.Module, batch: dict[str, torch.Tensor], cfg: GRPORunConfig,
                      acc: Accelerator) -> torch.Tensor:
    """[N, T-1] values V_t aligned with the labels (position t chooses token t + 1), no grad, in row chunks."""
    value_model.eval()
    size, parts = cfg.rollout.generation_batch_size, []
    for start in range(0, batch["input_ids"].shape[0], size):
        with acc.autocast():
            parts.append(value_model(batch["input_ids"][start:start + size],
                                     batch["attention_mask"][start:start + size])[:, :-1].float())
    return torch.cat(parts)


def _logps_in_chunks(model: nn.Module, batch: dict[str, torch.Tensor], cfg: GRPORunConfig,
                     acc: Accelerator) -> torch.Tensor:
    """[N, T-1] float32 completion log-probs under `model` (no grad), rollout.generation_batch_size rows per forward."""
    size = cfg.rollout.generation_batch_size
    parts = []
    for start in range(0, batch["input_ids"].shape[0], size):
        rows = {k: v[start:start + size] for k, v in batch.items()}
        with acc.autocast():
            parts.append(completion_logps(model, **rows, temperature=cfg.rollout.temperature,
                                          chunk_size=cfg.model.chunk_size).logps.float())
    return torch.cat(parts)


EVAL_SEED = 20_161_203  # one sampling seed for every evaluation of every run: the same draws for the same policy


@torch.no_grad()
def evaluate(run: _Run) -> dict[str, float]:
    """The held-out evaluation: eval.num_generations completions of each evaluation prompt at the rollout's
    temperature, seeded by EVAL_SEED (so two runs' policies are compared on the same draws, and training's RNG
    is untouched). eval_kl is the mean over completions of Σ_t (log π - log π_ref), the Monte Carlo estimate of
    the sequence-level KL(π ‖ π_ref) for y ~ π (the world pipeline's KL to SFT)."""
    cfg, acc = run.cfg, run.acc
    completions = run.generator.generate(run.eval_prompts, cfg.eval.num_generations, cfg.rollout.max_new_tokens,
                                         cfg.rollout.temperature, EVAL_SEED)
    prompt_of = [run.eval_prompts[i] for i in completions.prompt_index.tolist()]
    row = {"eval_reward": float(run.reward_fn(prompt_of, completions.texts).mean()),
           "eval_completions/mean_length": float(completions.lengths.float().mean())}
    if run.eval_on_world:
        from marginkit.data.world import true_rewards

        row["eval_gold/reward"] = float(true_rewards(prompt_of, completions.texts).mean())
    if run.reference is not None:
        batch = {k: getattr(completions, k).to(acc.device) for k in ("input_ids", "attention_mask", "completion_mask")}
        policy = acc.unwrap_model(run.model)
        policy.eval()
        log_ratio = _logps_in_chunks(policy, batch, cfg, acc) - _logps_in_chunks(run.reference, batch, cfg, acc)
        row["eval_kl"] = float(log_ratio.sum(-1).mean())  # [N, T-1] -> [N] -> mean
    return row


def _global_completions(r: Rollout, acc: Accelerator | None) -> tuple[Any, Any, torch.Tensor, torch.Tensor]:
    """(rewards [N], gold [N] or None, lengths [N] float, truncated [N] bool) of every process's completions in
    step order (the shares are contiguous: `gather_rows` concatenates them in process order). One process: its own."""
    import numpy as np

    cols = [torch.as_tensor(np.asarray(r.rewards, dtype=np.float64)), r.completions.lengths.double(),
            r.completions.truncated.double()]
    if r.gold is not None:
        cols.append(torch.as_tensor(np.asarray(r.gold, dtype=np.float64)))
    table = torch.stack(cols, 1)  # [n, 3 or 4] float64: exact for rewards, lengths and flags
    if acc is not None and acc.num_processes > 1:
        table = gather_rows(table.to(acc.device))[0].cpu()  # [N, ...]
    gold = table[:, 3].numpy() if r.gold is not None else None
    return table[:, 0].numpy(), gold, table[:, 1].float(), table[:, 2].bool()


def _rollout_metrics(r: Rollout, cfg: GRPORunConfig, acc: Accelerator | None = None) -> dict[str, float]:
    """Reward and completion metrics of one rollout (TRL's GRPO names), over every process's completions."""
    import numpy as np

    k = cfg.rollout.num_generations
    rewards, gold_rewards, lengths, truncated = _global_completions(r, acc)
    groups = np.asarray(rewards).reshape(-1, k)  # [P, K]
    terminated = lengths[~truncated]
    row = {"reward": float(groups.mean())}
    if k >= 2:  # group statistics (a PPO rollout may sample one completion per prompt)
        row.update(reward_std=float(groups.std(axis=1, ddof=1).mean()),
                   frac_reward_zero_std=float((groups.std(axis=1) == 0).mean()))
    row |= {"completions/mean_length": float(lengths.mean()), "completions/min_length": float(lengths.min()),
           "completions/max_length": float(lengths.max()), "completions/clipped_ratio": float(truncated.float().mean()),
           "completions/mean_terminated_length": float(terminated.mean()) if len(terminated) else 0.0}
    if gold_rewards is not None:
        gold = np.asarray(gold_rewards).reshape(-1, k)
        row["gold/reward"] = float(gold.mean())
        if k >= 2:
            row["gold/reward_std"] = float(gold.std(axis=1, ddof=1).mean())
    return row


def _minibatches(n: int, parts: int, seed: int, step: int, iteration: int) -> list[torch.Tensor]:
    """The row indices of each minibatch of one epoch over a rollout: a permutation fixed by (seed, step, iteration)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step * 101 + iteration)
    return list(torch.randperm(n, generator=gen).chunk(parts))


def _optimise(run: _Run, rollout: Rollout, step: int, first_row: int = 0) -> dict[str, float]:
    """Phase 3: num_iterations x num_minibatches optimizer steps on the rollout; token-weighted metric means over
    every pass, loss and grad_norm averaged over the optimizer steps. PPO adds vf_coef x the value loss.

    With P processes this process holds rows [first_row, first_row + n) of the step's P n completions. The
    minibatches are those of one process (a permutation of all P n rows); each process forwards the rows of a
    minibatch it holds, weighted by the global minibatch's normalisers (its completions and completion tokens:
    `token_weights`), so the processes' losses sum to the one-process loss; the loss is multiplied by P before
    backward because DDP averages the gradients. A process holding none of a minibatch's rows forwards one of
    its rows with weight 0 (DDP needs every process in every backward). Metric sums and losses are summed over
    the processes at the end (one all-reduce)."""
    cfg, acc, model, optimizer, scheduler = run.cfg, run.acc, run.model, run.optimizer, run.scheduler
    loss_cfg, n, procs = cfg.loss, len(rollout.completions), acc.num_processes
    total = _global_sum(acc)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if run.value_model is not None:
        run.value_model.train()
        params += [p for p in run.value_model.parameters() if p.requires_grad]
    sums: dict[str, torch.Tensor] = {}
    losses: list[torch.Tensor] = []
    norms: list[float] = []
    for iteration in range(loss_cfg.num_iterations):
        for chunk in _minibatches(n * procs, loss_cfg.num_minibatches, cfg.train.seed, step, iteration):
            mine = chunk[(chunk >= first_row) & (chunk < first_row + n)] - first_row  # this process's rows of it
            empty = mine.numel() == 0
            idx = (torch.zeros(1, dtype=torch.long) if empty else mine).to(acc.device)
            mb = {k: v[idx] for k, v in rollout.batch.items()}
            mb.update(old_logps=rollout.old_logps[idx], advantages=rollout.advantages[idx])
            if rollout.ref_logps is not None:
                mb["ref_logps"] = rollout.ref_logps[idx]
            normalisers: dict[str, Any] = {}
            if total is not None:  # the global minibatch's completions and completion tokens
                own_tokens = mb["completion_mask"][:, 1:].sum().float() * (0.0 if empty else 1.0)
                normalisers = {"n_rows": len(chunk), "n_tokens": total(own_tokens)}
            with acc.autocast():
                loss, stats = rl_step(model, mb, loss_cfg, run.kl_fn, cfg.rollout.temperature,
                                      cfg.rollout.max_new_tokens, cfg.model.chunk_size, **normalisers)
                if run.value_model is not None:
                    v_loss, v_stats = value_step(run.value_model, mb, rollout.returns[idx], rollout.old_values[idx],
                                                 run.value_cfg.cliprange_value, loss_cfg.loss_type,
                                                 cfg.rollout.max_new_tokens, **normalisers)
                    loss = loss + run.value_cfg.vf_coef * v_loss  # PPO's policy + value objective
                    stats.update(v_stats)
            if empty:
                loss = loss * 0.0  # the stand-in row: in DDP's all-reduce, adding nothing
            bad = (~torch.isfinite(loss)).float()
            if total is not None:
                bad = total(bad)  # every process stops together
            if bad.item():
                raise NonFiniteLossError(f"non-finite RL loss ({loss.item()}) at rollout step {step + 1}, iteration "
                                         f"{iteration}: check the rewards and the learning rate")
            acc.backward(loss * procs)  # DDP divides the summed gradients by procs: the global loss's gradient
            norm = acc.clip_grad_norm_(params, cfg.train.max_grad_norm or math.inf)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach().double())
            norms.append(float(norm))  # of the all-reduced gradients: the same on every process
            for key, value in stats.items() if not empty else ():
                sums[key] = sums.get(key, 0.0) + value.detach().double()
    keys = sorted(sums)  # the same keys on every process: each holds rows of some minibatch of every epoch
    totals = torch.stack([*(sums[k] for k in keys), *losses])
    if total is not None:
        totals = total(totals)
    values = totals.tolist()
    found, step_losses = dict(zip(keys, values[:len(keys)])), values[len(keys):]
    tokens = max(found.pop("tokens"), 1.0)
    row = {key: value / tokens for key, value in found.items()}
    row.update(loss=sum(step_losses) / len(step_losses), grad_norm=sum(norms) / len(norms),
               learning_rate=scheduler.get_last_lr()[0])
    return row


def _window(rows: list[dict[str, float]]) -> dict[str, float]:
    """One logged row from the rows of a logging window: means, except min and max lengths."""
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        out[key] = min(values) if key.endswith("min_length") else max(values) if key.endswith("max_length") else (
            sum(values) / len(values))
    return out


def _save(cfg: GRPORunConfig, step: int, *, save_model: Callable, optimizer: Any, scheduler: Any,
          identity: dict[str, Any], out: Path, monitor: MarginMonitor) -> Path:
    state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
             "run_identity": identity, "monitor": monitor.state_dict()}
    return save_checkpoint(out / "checkpoints" / f"step-{step:06d}", save_model, state, keep=cfg.train.save_total_limit,
                           files={IDENTITY_FILE: json.dumps(identity, indent=2) + "\n"})


def _resume(path: Path, model: nn.Module, optimizer: Any, scheduler: Any, metrics: Path, monitor: MarginMonitor,
            main: bool = True) -> int:
    """Weights, optimizer, schedule, RNG and the monitor's state from a checkpoint (every process loads them);
    metrics rows and alerts after its step dropped (the main process: `main`). Returns its step. The RNG state
    is the main process's, as train/engine.py saves it: the RL loop draws nothing from the global RNG streams
    (sampling, prompt and minibatch orders have their own seeds, dropout is off), so every process may take it."""
    state = load_trainer_state(path)
    weights = type(model).from_pretrained(path / "model", dtype=next(model.parameters()).dtype).state_dict()
    result = model.load_state_dict(weights, strict=False)  # tied weights are saved once
    if result.unexpected_keys:
        raise ValueError(f"checkpoint {path} does not match the model: unexpected {result.unexpected_keys[:5]}")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    if "monitor" in state:  # absent in checkpoints written before the RL checks: the monitor starts afresh
        monitor.load_state_dict(state["monitor"])
    for log in (metrics, metrics.with_name("alerts.jsonl")) if main else ():
        if log.exists():
            kept = [line for line in log.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= state["step"]]
            write_text_atomic(log, "".join(line + "\n" for line in kept))
    return state["step"]


@dataclass
class _Run:
    """What every rollout step uses, built once by `train_rl` (functions chosen at setup, never in the loop)."""

    cfg: GRPORunConfig
    acc: Accelerator
    model: nn.Module
    reference: nn.Module | None
    optimizer: Any
    scheduler: Any
    generator: HFGenerator
    reward_fn: Callable
    advantage_fn: Callable
    kl_fn: Callable
    pool: list[Any]
    on_world: bool
    metrics_path: Path
    save: Callable[[int], Path]
    monitor: MarginMonitor  # the RL checks: MarginMonitor(cfg.train.monitor)
    value_model: ValueModel | None = None  # train-ppo only
    value_cfg: ValueConfig | None = None
    eval_prompts: list[Any] = field(default_factory=list)  # empty: no evaluation
    eval_on_world: bool = False


def train_rl(cfg: GRPORunConfig, console: Callable[[str], None] = print, stage: str = "grpo") -> RLRunResult:
    """Run online RL as `cfg` says (module docstring); returns the run folder, the final policy and the rows."""
    if not cfg.model.name_or_path:
        raise ConfigError("model.name_or_path is not set: name the policy to train (a hub model or a folder)")
    if not cfg.reward:
        raise ConfigError("reward is not set: give world, a reward-model folder or module:function")
    acc = _accelerator(cfg.train)
    _check_processes(cfg, acc.num_processes)
    say = console if acc.is_main_process else (lambda _: None)
    ckpt = _check_folder(cfg.train, say, main=acc.is_main_process)
    identity = rl_identity(cfg)
    for line in check_resume_identity(ckpt, identity, cfg.train.resume_allow_changes) if ckpt else []:
        say(line)
    set_seed(cfg.train.seed)
    out = Path(cfg.train.output_dir)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        write_text_atomic(out / IDENTITY_FILE, json.dumps(identity, indent=2) + "\n")
    acc.wait_for_everyone()

    pool, on_world = load_prompts(cfg)
    reward_fn = load_reward(cfg.reward, acc.device)
    model, tokenizer = load_policy(cfg.model)
    model.to(acc.device)
    reference = _load_reference(cfg, acc.device)
    value_model = None
    if isinstance(cfg, PPORunConfig):  # PPO's value model, on the policy's backbone unless value.name_or_path
        value_model = load_value_model(cfg.value.name_or_path or cfg.model.name_or_path, cfg.model.trust_remote_code)
        value_model.to(acc.device)
    steps_per_rollout = cfg.loss.num_iterations * cfg.loss.num_minibatches
    total = cfg.train.max_steps * steps_per_rollout
    trained = [*model.parameters(), *(value_model.parameters() if value_model is not None else [])]
    optimizer = torch.optim.AdamW([p for p in trained if p.requires_grad], lr=cfg.train.learning_rate,
                                  weight_decay=cfg.train.weight_decay, betas=(cfg.train.adam_beta1, cfg.train.adam_beta2))
    scheduler = get_scheduler(cfg.train.lr_scheduler, optimizer, num_warmup_steps=int(cfg.train.warmup_ratio * total),
                              num_training_steps=total)
    if value_model is None:
        model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    else:  # both trained models DDP-wrapped: their gradients are averaged over the processes
        model, value_model, optimizer, scheduler = acc.prepare(model, value_model, optimizer, scheduler)
    inner = acc.unwrap_model(model)
    value_inner = None if value_model is None else acc.unwrap_model(value_model)
    settings = {"stage": stage, "template": cfg.rollout.template, "reward": cfg.reward}

    def save_model(path: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        save_policy(inner, tokenizer, path, settings, state_dict)
        if value_inner is not None:  # PPO: the value model inside the policy folder (from_pretrained ignores it)
            save_value_model(value_inner, path / VALUE_DIR)

    metrics_path = out / "metrics.jsonl"
    monitor = MarginMonitor(cfg.train.monitor, total_steps=cfg.train.max_steps)
    start = _resume(ckpt, inner, optimizer, scheduler, metrics_path, monitor, acc.is_main_process) if ckpt else 0
    if ckpt and value_inner is not None:
        load_value_weights(value_inner, ckpt / "model" / VALUE_DIR)
    acc.wait_for_everyone()  # the logs are truncated before any process appends
    if cfg.train.report_to:
        acc.init_trackers("marginkit", config={k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
                                               for k, v in flatten(to_dict(cfg)).items()})
    run = _Run(cfg, acc, model, reference, optimizer, scheduler,
               HFGenerator(inner, tokenizer, cfg.rollout.template, cfg.rollout.max_prompt_length,
                           cfg.rollout.generation_batch_size),
               reward_fn, {"grpo": partial(grpo_advantages, scale_rewards=cfg.loss.scale_rewards),
                           "rloo": rloo_advantages}.get(cfg.loss.advantage),  # None for PPO's gae
               KL_ESTIMATORS[cfg.loss.kl_estimator], pool, on_world, metrics_path,
               partial(_save, cfg, save_model=save_model, optimizer=optimizer, scheduler=scheduler, identity=identity,
                       out=out, monitor=monitor), monitor, value_model, getattr(cfg, "value", None), *load_eval_prompts(cfg))
    say(f"{stage}: {len(pool)} prompts ({cfg.rollout.prompts}), reward {cfg.reward}; each step {cfg.rollout.prompts_per_step} "
        f"prompts x {cfg.rollout.num_generations} completions"
        f"{f' ({cfg.rollout.prompts_per_step // acc.num_processes} per process)' if acc.num_processes > 1 else ''}, "
        f"{steps_per_rollout} optimizer step(s); {total} optimizer "
        f"steps in {cfg.train.max_steps} rollout steps; reference {'none (beta=0)' if reference is None else 'frozen'}")
    with StopSignals(announce=acc.is_main_process) as signals:
        history = _loop(run, start, signals)
    model_dir = out / "model"
    if acc.is_main_process:
        write_dir_atomic(model_dir, save_model)
    acc.wait_for_everyone()  # every process returns once the model folder is written
    # Free the DDP wrappers while the process group lives: end_training destroys it, and a Reducer freed after
    # that (at interpreter exit) can block a gloo process for good (train/launch.py `end_processes`).
    del run, model, value_model, optimizer, scheduler
    acc.free_memory()  # Accelerate's own references to them, then gc.collect
    acc.end_training()
    if signals.received is not None and history and history[-1]["step"] < cfg.train.max_steps:
        step = history[-1]["step"]
        raise TrainingInterrupted(signals.received, step, cfg.train.max_steps, out / "checkpoints" / f"step-{step:06d}",
                                  model_dir)
    return RLRunResult(out, model_dir, history)


def _loop(run: _Run, start: int, signals: StopSignals) -> list[dict[str, Any]]:
    """The rollout steps from `start`: rollout, optimisation, a logged row every log_every steps and at every
    checkpoint, a checkpoint every save_every steps and, after a SIGINT/SIGTERM, one at the step where it
    arrived (then the loop ends)."""
    cfg, acc = run.cfg, run.acc
    history: list[dict[str, Any]] = []
    window: list[dict[str, float]] = []
    bar = tqdm(total=cfg.train.max_steps, initial=start, desc="rl", dynamic_ncols=True,
               disable=not (cfg.train.progress_bar and acc.is_main_process))
    lo, hi = _share(cfg.rollout.prompts_per_step, acc.process_index, acc.num_processes)  # this process's prompts
    for step in range(start, cfg.train.max_steps):
        started = time.perf_counter()
        prompts = step_prompts(run.pool, cfg.rollout.prompts_per_step, cfg.train.seed, step)[lo:hi]
        rollout = collect_rollout(run, prompts, seed=cfg.train.seed * 1_000_003 + step, first=lo)
        rolled = time.perf_counter()
        row = {**_rollout_metrics(rollout, cfg, acc),
               **_optimise(run, rollout, step, first_row=lo * cfg.rollout.num_generations)}
        row.update({"time/rollout_seconds": rolled - started, "time/update_seconds": time.perf_counter() - rolled})
        window.append(row)
        bar.update(1)
        try:
            _watch(run, step + 1, row, bar)
        except MonitorStopError:  # the metrics of the window so far are written, as train-dpo does
            history.append({"step": step + 1, **_window(window)})
            _write_row(history[-1], run.metrics_path, acc)
            raise
        stopping = _signalled(signals, acc) and step + 1 < cfg.train.max_steps
        saving = stopping or bool(cfg.train.save_every and (step + 1) % cfg.train.save_every == 0)
        # A checkpoint closes the logging window, so a resumed run logs the rows the uninterrupted one logs.
        if saving or (step + 1) % cfg.train.log_every == 0 or step + 1 == cfg.train.max_steps:
            history.append({"step": step + 1, **_window(window)})
            window = []
            _write_row(history[-1], run.metrics_path, acc)
            bar.set_postfix(reward=f"{history[-1]['reward']:.3f}")
        if run.eval_prompts and ((cfg.eval.every and (step + 1) % cfg.eval.every == 0)
                                 or step + 1 == cfg.train.max_steps):  # before a checkpoint: a resume skips it
            history.append({"step": step + 1, **_evaluate_on_main(run)})
            _write_row(history[-1], run.metrics_path, acc)
        if acc.is_main_process and saving:
            run.save(step + 1)
        if stopping:
            break
    bar.close()
    return history


def _signalled(signals: StopSignals, acc: Accelerator) -> bool:
    """Whether any process received SIGINT/SIGTERM: every process decides the same (a scheduler may signal one
    process first; as train/engine.py, those that saw none adopt the signal another one saw)."""
    signum = signals.received or 0
    if acc.num_processes > 1:
        signum = int(acc.gather(torch.tensor([float(signum)], device=acc.device)).max().item())  # [P] -> the highest
        if signum and signals.received is None:
            signals.received = signum
    return signum > 0


def _evaluate_on_main(run: _Run) -> dict[str, float]:
    """`evaluate` on the main process alone (the unwrapped models, no collective), its row sent to the others: the
    numbers of one process, and the same history everywhere."""
    found = [evaluate(run) if run.acc.is_main_process else None]
    if run.acc.num_processes > 1:
        broadcast_object_list(found)
    return found[0]


def _watch(run: _Run, step: int, row: dict[str, float], bar: Any) -> None:
    """The monitor's RL checks on this rollout step's row: alerts to the console and alerts.jsonl; an alert of
    a check with action=stop closes the bar and raises MonitorStopError (no checkpoint for this step)."""
    alerts = run.monitor.observe(step, {k: v for k, v in row.items() if not k.startswith("time/")})
    path = run.metrics_path.with_name("alerts.jsonl")
    for alert in alerts:
        if run.acc.is_main_process:
            run.acc.print(str(alert))
            with path.open("a") as f:
                f.write(json.dumps(alert.to_dict()) + "\n")
    stop = next((a for a in alerts if a.severity == "stop"), None)
    if stop is not None:
        bar.close()
        raise MonitorStopError(stop, str(path))


def _write_row(row: dict[str, Any], metrics_path: Path, acc: Accelerator) -> None:
    if acc.is_main_process:
        with metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
    acc.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])


def train_grpo(cfg: GRPORunConfig, console: Callable[[str], None] = print) -> RLRunResult:
    """`marginkit train-grpo`: `train_rl` with GRPO's defaults (GRPORunConfig)."""
    return train_rl(cfg, console, "grpo")


def train_rloo(cfg: GRPORunConfig, console: Callable[[str], None] = print) -> RLRunResult:
    """`marginkit train-rloo`: `train_rl` with RLOO's defaults (RLOORunConfig)."""
    return train_rl(cfg, console, "rloo")


def train_ppo(cfg: PPORunConfig, console: Callable[[str], None] = print) -> RLRunResult:
    """`marginkit train-ppo`: `train_rl` with a value model and GAE (PPORunConfig, train/rl_value.py)."""
    return train_rl(cfg, console, "ppo")
