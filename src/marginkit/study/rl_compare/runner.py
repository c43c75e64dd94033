"""`marginkit world rl-compare`: one gold world per seed, base -> SFT -> {DPO family, Best-of-N, GRPO/RLOO/PPO}.

Per seed (`run_seed`), in this order:

1. **World and SFT.** A world of `n_sft` training pairs; a tiny causal LM with the world's word tokenizer is
   SFT'd on every chosen response (demonstrations; 40,000 × 6 epochs at full size, which is what lets it beat
   the base sampler). The evaluation prompts are the test split's requests,
   which no training pair asks (the world's splits own disjoint requests).
2. **Preference data.** The first `n_pref` training pairs, the same for every preference method: the
   DPO family trains on them, and so do the two reward models.
3. **Reward models**, both initialised from the SFT model (InstructGPT's recipe): `bt` (no margin) and
   `label` (the margin map's best margin: the pair's independent rating gap × 0.5, docs/study_margins.md).
4. **DPO family** from the SFT model with the SFT model as reference: DPO at β 0.1 and 0.3 (seed 001's two
   settings), IPO, and ODPO whose offset is the label margin.
5. **Best-of-N** over `bon_n` SFT samples of each test prompt, picked by each RM.
6. **Online RL** from the SFT model: GRPO, RLOO and PPO against each RM, and GRPO against the true reward
   (the ceiling each RM-driven run is read against). Every run evaluates on validation prompts every
   `eval_every` steps (RM reward, gold reward, KL to SFT): the over-optimisation curves.
7. **Evaluation**, the same for every policy: `samples` completions of each of `n_prompts` test prompts at
   temperature 1, their true reward, both RMs' rewards, and the Monte Carlo KL to the SFT model
   mean[log π(y|x) − log π_sft(y|x)], y ~ π. Best-of-N's KL is the analytic bound log N − (N−1)/N.

Rows (`study/render.py` `write_rows`): `rl_compare.csv.gz`, one row per (seed, policy); `rl_curves.csv.gz`,
one row per (seed, RL run, evaluation step); `rl_rms.csv.gz`, the RMs' test-pair accuracy per seed; `rl_alerts.csv.gz`, the margin monitor's alerts in
each RL run (its RL checks run live in every run, action warn).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from marginkit.atomic import write_text_atomic
from marginkit.configlib import from_dict, load_config
from marginkit.errors import UserError
from marginkit.study.render import write_rows
from marginkit.study.rl_compare.report import (
    ALERT_ROWS,
    CURVES,
    RM_ROWS,
    ROWS,
    format_tables,
    load_rows,
    write_plots,
)
from marginkit.threads import THREADS_HELP, check_threads, run_units

__all__ = ["CompareSize", "COMPARE_SIZES", "RMS", "DPO_VARIANTS", "RL_RUNS", "RLCompareConfig", "run_seed",
           "run_rl_compare", "alert_rows", "ROWS", "CURVES", "RM_ROWS", "ALERT_ROWS"]



@dataclass(frozen=True)
class CompareSize:
    n_sft: int  # training pairs whose chosen responses the SFT model learns
    n_pref: int  # the first n_pref of them: the preference data of DPO and the RMs
    n_prompts: int  # test prompts of the evaluation
    n_test_pairs: int  # test pairs of the RMs' accuracy
    samples: int  # completions per test prompt
    hidden: int
    layers: int
    sft_epochs: int
    dpo_epochs: int
    rm_epochs: int
    rl_steps: int
    eval_every: int  # RL: validation evaluation every k steps (the curves)
    eval_prompts: int  # RL curves: validation prompts x 2 samples
    bon_n: int


COMPARE_SIZES = {
    # full: 5 seeds took 36 min of wall time with --jobs 3 on the 2-core VM (docs/rl_compare.md). The SFT data
    # size and epochs are what let SFT beat the base sampler (docs/rl_compare.md, "The policy can learn").
    "full": CompareSize(n_sft=40000, n_pref=5000, n_prompts=200, n_test_pairs=1000, samples=4, hidden=64, layers=2,
                        sft_epochs=6, dpo_epochs=2, rm_epochs=2, rl_steps=300, eval_every=25, eval_prompts=64, bon_n=16),
    # tiny: seconds, for tests; nothing it prints means anything.
    "tiny": CompareSize(n_sft=96, n_pref=48, n_prompts=4, n_test_pairs=16, samples=2, hidden=16, layers=1,
                        sft_epochs=1, dpo_epochs=1, rm_epochs=1, rl_steps=2, eval_every=1, eval_prompts=2, bon_n=4),
}

# The RMs: the margin map's control and its best margin (label: the independent rating gap, scale 0.5).
RMS: dict[str, dict[str, Any]] = {
    "bt": {"name": "none"},
    "label": {"name": "label", "label": {"source": "score_gap", "scale": 0.5}},
}

# DPO-family runs: name -> DPORunConfig overrides. ODPO's offset is the label margin (same as the label RM's).
DPO_VARIANTS: dict[str, list[str]] = {
    "dpo-0.1": ["loss.name=sigmoid", "loss.beta=0.1"],
    "dpo-0.3": ["loss.name=sigmoid", "loss.beta=0.3"],
    "ipo": ["loss.name=ipo", "loss.beta=0.1"],
    "odpo": ["loss.name=odpo", "loss.beta=0.1", "margin.name=label", "margin.label.source=score_gap",
             "margin.label.scale=0.5"],
}

# Online RL runs: (method, reward). "gold" is the world's true reward: the ceiling.
RL_RUNS: list[tuple[str, str]] = [("grpo", "gold"), ("grpo", "bt"), ("grpo", "label"), ("rloo", "bt"),
                                  ("rloo", "label"), ("ppo", "bt"), ("ppo", "label")]

# From-scratch tiny LMs learn at rates far above a pretrained model's (world_pipeline.py says the same).
RL_SETTINGS: dict[str, Any] = {"rollout": {"prompts_per_step": 8, "num_generations": 4, "max_new_tokens": 24},
                               "train": {"learning_rate": 3e-4, "mixed_precision": "no", "progress_bar": False,
                                         "log_every": 25, "save_every": 100000, "overwrite": True}}
RM_SETTINGS: dict[str, Any] = {"data": {"tokenize": {"max_length": 64}},
                               "train": {"learning_rate": 1e-3, "batch_size": 32, "warmup_ratio": 0.05,
                                         "weight_decay": 0.01, "log_every": 20, "eval_every": 0,
                                         "progress_bar": False, "overwrite": True}}


@dataclass
class RLCompareConfig:
    """`marginkit world rl-compare`."""

    out: str = field(default="runs/rl_compare", metadata={"help": "Run folder (one sub-folder per seed)."})
    size: Literal["full", "tiny"] = field(default="full", metadata={"help": "Scale (COMPARE_SIZES)."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4], metadata={
        "help": "Seeds: each one its own world, models and samples."})
    jobs: int = field(default=1, metadata={"help": "Seeds run at once in worker processes."})
    threads: int = field(default=1, metadata={"help": THREADS_HELP + " The tiny models run fastest on 1."})
    max_new_tokens: int = field(default=24, metadata={"help": "Completion length cap, every policy."})
    reuse: bool = field(default=True, metadata={
        "help": "Reuse a seed's finished result (out/seed<N>/result.json) made with the same settings, so an "
                "interrupted or extended study runs only the missing seeds; other settings are refused."})

    def __post_init__(self) -> None:
        check_threads(self.threads)
        if not self.seeds:
            raise ValueError("seeds: give at least one")
        if self.jobs < 1:
            raise ValueError(f"jobs={self.jobs}: must be >= 1")


@dataclass
class _Policy:
    """What the evaluation needs of one policy."""

    name: str
    rm: str  # the RM that drove it: bt, label, gold, or "" (none)
    family: str  # base, sft, dpo, bon, rl
    seconds: float  # training (or picking) wall time


def _world_and_sft(size: CompareSize, seed: int, out: Path, say: Callable[[str], None]) -> tuple[Any, Path]:
    from marginkit.data.world import WorldConfig, make_world
    from marginkit.study.world_pipeline import PipelineSize, world_sft

    world = make_world(WorldConfig(seed=seed, n_train=size.n_sft, n_val=200, n_test=size.n_test_pairs))
    pipeline = PipelineSize(n_train=size.n_sft, n_test_pairs=size.n_prompts, n_prompts=size.n_prompts,
                            samples_per_prompt=size.samples, hidden=size.hidden, layers=size.layers,
                            sft_epochs=size.sft_epochs, dpo_epochs=size.dpo_epochs)
    return world, world_sft(world, out, pipeline, seed, say)


def _train_rm(name: str, margin: dict[str, Any], sft_dir: Path, world: Any, size: CompareSize, seed: int,
              out: Path, say: Callable[[str], None]) -> Path:
    from marginkit.config import RMRunConfig
    from marginkit.train.rm import train_reward_model

    settings = copy.deepcopy(RM_SETTINGS)
    settings["model"] = {"name_or_path": str(sft_dir)}
    settings["margin"] = margin
    settings["train"].update(output_dir=str(out / f"rm_{name}"), seed=seed, num_epochs=size.rm_epochs)
    pairs = world.train[:size.n_pref]
    return train_reward_model(from_dict(RMRunConfig, settings), pairs, world.val,
                              console=lambda s: say(f"[rm {name}] {s}")).model_dir


def _train_dpo(name: str, overrides: list[str], sft_dir: Path, world: Any, size: CompareSize, seed: int, out: Path,
               say: Callable[[str], None]) -> Path:
    from marginkit.config import DPORunConfig
    from marginkit.study.world_pipeline import DPO_DEFAULTS, _with
    from marginkit.train.dpo import train_dpo

    settings = _with(DPO_DEFAULTS, str(sft_dir), out / name, seed, size.dpo_epochs)
    cfg = load_config(DPORunConfig, None, overrides, base=settings)
    return train_dpo(cfg, world.train[:size.n_pref], world.val, console=lambda s: say(f"[{name}] {s}")).model_dir


def _train_rl(method: str, reward: str, sft_dir: Path, rm_dirs: dict[str, Path], size: CompareSize, seed: int,
              out: Path, max_new_tokens: int, say: Callable[[str], None]) -> Path:
    from marginkit.train.rl import train_grpo, train_ppo, train_rloo
    from marginkit.train.rl_config import GRPORunConfig, PPORunConfig, RLOORunConfig

    cls, fn = {"grpo": (GRPORunConfig, train_grpo), "rloo": (RLOORunConfig, train_rloo),
               "ppo": (PPORunConfig, train_ppo)}[method]
    settings = copy.deepcopy(RL_SETTINGS)
    settings["model"] = {"name_or_path": str(sft_dir)}
    settings["reward"] = "world" if reward == "gold" else str(rm_dirs[reward])
    settings["rollout"].update(prompts="world:train", world_seed=seed, max_new_tokens=max_new_tokens)
    settings["eval"] = {"prompts": "world:val", "n_prompts": size.eval_prompts, "num_generations": 2,
                        "every": size.eval_every}
    settings["train"].update(output_dir=str(out / f"{method}_{reward}"), max_steps=size.rl_steps, seed=seed)
    return fn(from_dict(cls, settings), console=lambda s: say(f"[{method} {reward}] {s}")).model_dir


def _curves(run_dir: Path, seed: int, method: str, reward: str) -> list[dict[str, Any]]:
    """The run's evaluation rows (metrics.jsonl eval_*): one curve row per evaluation step."""
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "eval_kl" in r:
            rows.append({"seed": seed, "method": method, "rm": reward, "step": r["step"],
                         "rm_reward": r["eval_reward"], "gold": r["eval_gold/reward"], "kl": r["eval_kl"],
                         "words": r.get("eval_completions/mean_length")})
    return rows


class _Judge:
    """Scores samples of any policy the same way: true reward, both RMs, and the KL to the SFT model."""

    def __init__(self, world: Any, sft_dir: Path, rm_dirs: dict[str, Path], size: CompareSize, seed: int,
                 max_new_tokens: int):
        from marginkit.models.policy import PolicyConfig, load_policy
        from marginkit.rewards import RMFolderReward

        self.world, self.size, self.seed, self.max_new_tokens = world, size, seed, max_new_tokens
        self.prompts = world.sample_prompts(size.n_prompts, seed=seed, split="test")
        self.sft, self.tokenizer = load_policy(PolicyConfig(), str(sft_dir))
        self.rms = {name: RMFolderReward(d) for name, d in rm_dirs.items()}

    def sample(self, model: Any, n: int) -> tuple[list[str], list[str], Any]:
        from marginkit.study.world_pipeline import sample_responses

        texts, rows = sample_responses(model, self.tokenizer, self.prompts, n, self.seed, self.max_new_tokens)
        return [p for p in self.prompts for _ in range(n)], texts, rows

    def kl(self, model: Any, rows: Any) -> np.ndarray:
        from marginkit.study.world_pipeline import sequence_logps_of

        pad = self.tokenizer.pad_token_id
        return sequence_logps_of(model, rows, pad) - sequence_logps_of(self.sft, rows, pad)

    def row(self, policy: _Policy, prompts: list[str], texts: list[str], kl: float | None) -> dict[str, Any]:
        gold = self.world.true_rewards(prompts, texts)
        per_prompt = gold.reshape(len(self.prompts), -1).mean(axis=1)  # the test items: prompts
        row = {"seed": self.seed, "policy": policy.name, "family": policy.family, "rm": policy.rm,
               "gold": float(gold.mean()), "gold_se": float(per_prompt.std(ddof=1) / np.sqrt(len(per_prompt))),
               **{f"rm_{name}": float(rm(prompts, texts).mean()) for name, rm in self.rms.items()},
               "kl": kl, "words": float(np.mean([len(t.split()) for t in texts])), "n_samples": len(texts),
               "seconds": round(policy.seconds, 1)}
        return row

    def policy_row(self, policy: _Policy, model_dir: Path) -> dict[str, Any]:
        from marginkit.models.policy import PolicyConfig, load_policy

        model, _ = load_policy(PolicyConfig(), str(model_dir))
        prompts, texts, rows = self.sample(model, self.size.samples)
        return self.row(policy, prompts, texts, float(self.kl(model, rows).mean()))

    def bon_rows(self) -> list[dict[str, Any]]:
        """Best-of-N over SFT samples, per RM and per N = 1, 2, 4, ..., bon_n (the frontier's BoN points).
        `seconds`: sampling bon_n completions per prompt plus the picking RM's scoring of them."""
        from marginkit.evaluate.bon import best_of_n_picks, bon_kl

        n_max = self.size.bon_n
        t0 = time.perf_counter()
        prompts, texts, _ = self.sample(self.sft, n_max)
        seconds = time.perf_counter() - t0
        gold = self.world.true_rewards(prompts, texts).reshape(len(self.prompts), n_max)
        out = []
        scored, score_seconds = {}, {}  # every RM scores the samples once: it picks with them and is read on picks
        for name, rm in self.rms.items():
            t0 = time.perf_counter()
            scored[name] = rm(prompts, texts).reshape(len(self.prompts), n_max)
            score_seconds[name] = time.perf_counter() - t0
        for name in self.rms:
            scores, pick_seconds = scored[name], score_seconds[name]
            n = 1
            while n <= n_max:
                picks = best_of_n_picks(scores, n)  # [P]: the index of the pick among the first n samples
                rows = np.arange(len(self.prompts))
                g = gold[rows, picks]
                out.append({"seed": self.seed, "policy": f"bon-{n}", "family": "bon", "rm": name,
                            "gold": float(g.mean()), "gold_se": float(g.std(ddof=1) / np.sqrt(len(g))),
                            **{f"rm_{o}": float(v[rows, picks].mean()) for o, v in scored.items()},
                            "kl": bon_kl(n), "words": float(np.mean([len(texts[i * n_max + k].split())
                                                                     for i, k in enumerate(picks)])),
                            "n_samples": len(g), "seconds": round(seconds + pick_seconds, 1)})
                n *= 2
        return out


def run_seed(cfg: RLCompareConfig, seed: int, say: Callable[[str], None] = print) -> dict[str, list[dict[str, Any]]]:
    """Every policy of one seed, evaluated; returns {"rows", "curves", "rms"} (module docstring)."""
    from marginkit.evaluate.rm_eval import EvalConfig, evaluate_rm_dir

    size, out = COMPARE_SIZES[cfg.size], Path(cfg.out) / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)

    def timed(fn: Callable[[], Path]) -> tuple[Path, float]:
        t0 = time.perf_counter()
        return fn(), time.perf_counter() - t0

    say(f"[seed {seed}] world and SFT ({size.n_sft} demonstrations)")
    t0 = time.perf_counter()
    world, sft_dir = _world_and_sft(size, seed, out, say)
    sft_seconds = time.perf_counter() - t0
    rm_dirs, rm_rows = {}, []
    for name, margin in RMS.items():
        say(f"[seed {seed}] RM {name}")
        rm_dirs[name], secs = timed(lambda n=name, m=margin: _train_rm(n, m, sft_dir, world, size, seed, out, say))
        rep = evaluate_rm_dir(rm_dirs[name], world.test, EvalConfig(swap_test=False, n_boot=200), progress=False)
        rm_rows.append({"seed": seed, "rm": name, "acc_labels": rep.accuracy.value, "acc_true": rep.gold_accuracy.value,
                        "pearson_true_gap": rep.gold.pearson, "seconds": round(secs, 1)})
    judge = _Judge(world, sft_dir, rm_dirs, size, seed, cfg.max_new_tokens)

    prompts, base_texts = [p for p in judge.prompts for _ in range(size.samples)], []
    for row in world.policy.sample(judge.prompts, size.samples, seed=seed):
        base_texts += row
    rows = [judge.row(_Policy("base", "", "base", 0.0), prompts, base_texts, None),
            judge.policy_row(_Policy("sft", "", "sft", sft_seconds), sft_dir)]
    for name, overrides in DPO_VARIANTS.items():
        say(f"[seed {seed}] {name}")
        d, secs = timed(lambda n=name, o=overrides: _train_dpo(n, o, sft_dir, world, size, seed, out, say))
        rows.append(judge.policy_row(_Policy(name, "label" if name == "odpo" else "", "dpo", secs), d))
    say(f"[seed {seed}] best-of-{size.bon_n}")
    rows += judge.bon_rows()
    curves = []
    for method, reward in RL_RUNS:
        say(f"[seed {seed}] {method} against {reward}")
        d, secs = timed(lambda m=method, r=reward: _train_rl(m, r, sft_dir, rm_dirs, size, seed, out,
                                                             cfg.max_new_tokens, say))
        rows.append(judge.policy_row(_Policy(method, reward, "rl", secs), d))
        curves += _curves(out / f"{method}_{reward}", seed, method, reward)
    result = {"settings": _settings(cfg), "rows": rows, "curves": curves, "rms": rm_rows}
    write_text_atomic(out / "result.json", json.dumps(result, indent=1) + "\n")
    return result


def _settings(cfg: RLCompareConfig) -> dict[str, Any]:
    """What a seed's result depends on besides the seed: a finished seed is reused only under the same."""
    return {"size": cfg.size, **asdict(COMPARE_SIZES[cfg.size]), "max_new_tokens": cfg.max_new_tokens,
            "rms": RMS, "dpo": DPO_VARIANTS, "rl": [list(r) for r in RL_RUNS], "rl_settings": RL_SETTINGS,
            "rm_settings": RM_SETTINGS}


def finished_seed(cfg: RLCompareConfig, seed: int) -> dict[str, Any] | None:
    """A finished seed's result (seed<N>/result.json) when cfg.reuse and it was made with these settings;
    a result made with other settings is refused rather than mixed in."""
    path = Path(cfg.out) / f"seed{seed}" / "result.json"
    if not cfg.reuse or not path.exists():
        return None
    result = json.loads(path.read_text())
    if result.get("settings") != json.loads(json.dumps(_settings(cfg))):
        raise UserError(f"{path}: made with other settings than this run's; use another --out, or --no-reuse to "
                        "run the seed again")
    return result


def _seed_unit(cfg: RLCompareConfig, seed: int) -> dict[str, Any]:
    return finished_seed(cfg, seed) or run_seed(cfg, seed, say=lambda s: print(s, flush=True))


def alert_rows(out: Path, seeds: list[int]) -> list[dict[str, Any]]:
    """The margin monitor's alerts in every RL run (seed<N>/<method>_<reward>/alerts.jsonl; the monitor runs
    with its defaults, action warn): one row per (seed, run, check) with the first step it fired and how
    many times. A run with no alert gets one row with check "" so the table can count the quiet runs."""
    rows = []
    for seed in seeds:
        for method, reward in RL_RUNS:
            run = out / f"seed{seed}" / f"{method}_{reward}"
            if not (run / "metrics.jsonl").exists():
                raise UserError(f"{run}: the RL run's folder is missing; the alerts table needs every run "
                                "(run the seed again with --no-reuse)")
            path = run / "alerts.jsonl"
            alerts = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
            by: dict[str, list[int]] = {}
            for a in alerts:
                by.setdefault(a["check"], []).append(int(a["step"]))
            rows += [{"seed": seed, "method": method, "rm": reward, "check": check, "first_step": min(steps),
                      "count": len(steps)} for check, steps in sorted(by.items())]
            if not by:
                rows.append({"seed": seed, "method": method, "rm": reward, "check": "", "first_step": None,
                             "count": 0})
    return rows


def run_rl_compare(cfg: RLCompareConfig, say: Callable[[str], None] = print) -> dict[str, Path]:
    """Every seed (in `jobs` worker processes), then the rows files and the tables under cfg.out."""
    from functools import partial

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for (seed,), result in run_units(partial(_seed_unit, cfg), [(s,) for s in cfg.seeds], cfg.jobs, cfg.threads, say):
        results[seed] = result
        say(f"seed {seed} done ({time.perf_counter() - started:.0f} s since the start)")
    merged = {k: [r for s in sorted(results) for r in results[s][k]] for k in ("rows", "curves", "rms")}
    merged["alerts"] = alert_rows(out, sorted(results))
    paths = {"rows": write_rows(out / ROWS, merged["rows"]), "curves": write_rows(out / CURVES, merged["curves"]),
             "rms": write_rows(out / RM_ROWS, merged["rms"]), "alerts": write_rows(out / ALERT_ROWS, merged["alerts"])}
    tables = format_tables(merged["rows"], merged["curves"], merged["rms"], merged["alerts"])
    (out / "summary.md").write_text(tables)
    write_plots(merged["rows"], merged["curves"], out)
    say(tables)
    say(f"wrote {out}/ ({ROWS}, {CURVES}, {RM_ROWS}, {ALERT_ROWS}, summary.md, plots) in {time.perf_counter() - started:.0f} s")
    return paths


__all__ += ["load_rows", "RL_SETTINGS", "RM_SETTINGS"]
