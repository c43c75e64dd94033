"""`marginkit bon`: sample once, score every sample once per RM, and judge each RM's Best-of-N picks.

The pipeline (maths in `evaluate/bon.py`, samplers in `evaluate/sampling.py`):

    prompts (JSONL or world:SPLIT) -> K = max(N) samples per prompt (policy: world or an HF LM)
      -> every RM scores every sample [P, K] -> the judge scores every sample [P, K]
      -> per N: picks of the first N, judge reward of the picks, win rates vs the first RM, KL

Caching, so a rerun with another RM neither regenerates nor rescores: samples live in
`CACHE/samples/<samples key>.json`, scores in `CACHE/scores/<samples key>-<rm key>.npy` [P, K]
float64, where the samples key hashes (policy, settings, prompts, K, seed) and the RM key hashes the
model folder (weights, tokenizer and `marginkit_scorer.json`: see `sampling.fingerprint_dir`).

RMs score exactly as `eval-rm` does: the scorer settings saved with the RM (template, truncation,
padding side), `data.tokenize.encode_pair` and `evaluate.scorer.score_encoded` (one forward per
batch of `batch_size` pairs). Each distinct (prompt, response) is scored once (the world's policy
repeats itself now and then), in order of length so batches carry little padding.
Outputs in OUT: bon_results.json, rows.csv.gz (one row per RM and N, study/bon_world.py), bon_table.md,
bon_curves.png, bon_win_rates.png.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marginkit.configlib import ConfigError
from marginkit.data.ledger import Ledger
from marginkit.data.schema import DataError, Pair
from marginkit.evaluate.bon import BoNResult, best_of_n_sweep
from marginkit.evaluate.sampling import (
    Prompt,
    SampleSet,
    SamplingConfig,
    fingerprint_dir,
    load_policy_lm,
    read_prompts,
    sample_hf,
    sample_world,
    samples_key,
)

__all__ = ["BonConfig", "RMSpec", "parse_rm_spec", "resolve_prompts", "get_samples", "score_samples", "rm_scores",
           "world_scores", "run_bon", "format_tables", "combine_runs", "parse_ns", "SCORER_VERSION"]

SCORER_VERSION = "rm-scorer-v1"  # part of every score key: bump when the scoring path changes


@dataclass
class BonConfig:
    """One `marginkit bon` run."""

    rms: list[str] = field(default_factory=list, metadata={
        "help": "RM folders, NAME=PATH or PATH; repeat the flag for several; the first is the baseline every other "
                "RM is compared with.", "flag": "--rm", "repeat": True, "required": True})
    policy: str = field(default="world", metadata={"help": "`world` (the gold world's base policy) or an HF causal "
                                                   "LM folder or hub name."})
    prompts: str = field(default="world:test", metadata={"help": "JSONL of prompts, or world:SPLIT (train/val/test)."})
    ns: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64], metadata={
        "help": "N values, 1,2,4,8 or the doubling shorthand 1,2,4,...,64; K = max(N) samples are drawn per prompt.",
        "flag": "--n", "parse": lambda text: parse_ns(text)})
    judge: str = field(default="world", metadata={"help": "`world` (true reward) or an RM folder."})
    n_prompts: int = field(default=200, metadata={"help": "Prompts used (world: distinct prompts drawn; "
                                                 "file: the first n; 0: the whole file)."})
    seed: int = field(default=0, metadata={"help": "Sampling seed (world prompts are drawn with it too)."})
    world_seed: int | None = field(default=None, metadata={"help": "The gold world's seed (the same as a "
                                                           "world_overrides seed=S; None: WorldConfig's)."})
    world_overrides: list[str] = field(default_factory=list, metadata={
        "help": "WorldConfig key=value overrides of the gold world, e.g. policy_redraw=1.", "flag": "--world",
        "repeat": True})
    out: str = field(default="runs/bon", metadata={"help": "Output folder."})
    cache_dir: str | None = field(default=None, metadata={"help": "Sample and score cache (default OUT/cache)."})
    batch_size: int = field(default=64, metadata={"help": "Sample pairs per RM forward (2x sequences)."})
    n_boot: int = field(default=1000, metadata={"help": "Bootstrap resamples of prompts for the intervals."})
    level: float = field(default=0.95, metadata={"help": "Interval level."})
    device: str | None = field(default=None, metadata={"help": "torch device (default: CUDA if available)."})
    progress: bool = field(default=True, metadata={"help": "Progress bars."})
    sampling: SamplingConfig = field(default_factory=SamplingConfig, metadata={"help": "HF-LM policy sampling."})

    def __post_init__(self) -> None:
        if not self.rms:
            raise ConfigError("bon: give at least one --rm")
        if not self.ns or min(self.ns) < 1:
            raise ConfigError(f"bon: --n {self.ns}: need N values >= 1")
        if self.n_prompts < 0:
            raise ConfigError(f"bon: --n-prompts {self.n_prompts}: need >= 1 (or 0: the whole prompts file)")
        if self.batch_size < 1:
            raise ConfigError(f"bon: --batch-size {self.batch_size}: need >= 1")

    @property
    def k(self) -> int:
        """Samples drawn per prompt: the largest N."""
        return max(self.ns)

    @property
    def cache(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.out) / "cache"


@dataclass(frozen=True)
class RMSpec:
    name: str
    path: Path


def parse_rm_spec(text: str) -> RMSpec:
    """"NAME=PATH" or "PATH"; a bare PATH ending in /model is named after its parent (runs/demo/bt/model -> bt)."""
    name, sep, path = text.partition("=")
    if not sep:
        name, path = "", text
    p = Path(path)
    if not name:
        name = p.parent.name if p.name == "model" and p.parent.name else p.name
    if not (p / "config.json").exists():
        raise DataError(str(p), None, None, "not a model folder (no config.json)", "give a saved RM folder")
    return RMSpec(name, p)


def _world(cfg: BonConfig) -> Any:
    """The world of the overrides; sizes shrunk, since the policy and the prompts do not depend on them."""
    import dataclasses

    from marginkit.configlib import load_config
    from marginkit.data.world import WorldConfig, make_world

    seed = [f"seed={cfg.world_seed}"] if cfg.world_seed is not None else []
    wc = load_config(WorldConfig, None, seed + cfg.world_overrides)
    return make_world(dataclasses.replace(wc, n_train=1, n_val=0, n_test=0))


def resolve_prompts(spec: str, n_prompts: int | None, seed: int, world: Any | None) -> list[Prompt]:
    """world:SPLIT -> n distinct prompts owned by that split (drawn with `seed`); else a JSONL file."""
    if spec.startswith("world:"):
        split = spec.split(":", 1)[1]
        n = n_prompts or 200
        m = n
        while True:  # sample_prompts(m) extends sample_prompts(n) for m > n: grow until n distinct
            drawn = list(dict.fromkeys(world.sample_prompts(m, seed, split)))
            if len(drawn) >= n:
                return drawn[:n]
            if m > 64 * n:
                raise ConfigError(f"--prompts {spec}: fewer than {n} distinct prompts in the split ({len(drawn)})")
            m *= 2
    prompts = read_prompts(spec)
    return prompts[:n_prompts] if n_prompts else prompts


def get_samples(cfg: BonConfig, prompts: list[Prompt], world: Any | None, say: Callable[[str], None]) -> SampleSet:
    """K samples per prompt, from the cache when this exact set was drawn before."""
    if cfg.policy == "world":
        pol = world.policy
        desc = {"kind": "world", **asdict(pol)}
    else:
        desc = {"kind": "hf", "path": str(cfg.policy), "fingerprint": _maybe_fingerprint(cfg.policy),
                "sampling": asdict(cfg.sampling)}
    path = cfg.cache / "samples" / f"{samples_key(desc, prompts, cfg.k, cfg.seed)}.json"
    if path.exists():
        say(f"samples: reusing {path}")
        return SampleSet.load(path)
    if cfg.policy == "world":
        if not all(isinstance(p, str) for p in prompts):
            raise ConfigError("the world policy reads text prompts; got chat message lists")
        samples = sample_world(world.policy, prompts, cfg.k, cfg.seed, cfg.progress)
    else:
        model, tok = load_policy_lm(cfg.policy, cfg.device)
        samples = sample_hf(model, tok, prompts, cfg.k, cfg.seed, cfg.sampling, cfg.progress)
    sset = SampleSet(prompts, samples, cfg.seed, desc)
    sset.save(path)
    say(f"samples: drew {len(prompts)} x {cfg.k}, saved {path}")
    return sset


def _maybe_fingerprint(path: str) -> str | None:
    return fingerprint_dir(path) if Path(path).is_dir() else None  # a hub name: its revision is the user's


def _unique_items(sset: SampleSet) -> tuple[list[tuple[Prompt, str]], np.ndarray]:
    """Distinct (prompt, response) items and the [P, K] index of each sample's item."""
    index: dict[tuple[str, str], int] = {}
    items: list[tuple[Prompt, str]] = []
    where = np.empty((len(sset.prompts), sset.n), dtype=np.int64)
    for p, (prompt, row) in enumerate(zip(sset.prompts, sset.samples)):
        pkey = prompt if isinstance(prompt, str) else json.dumps(prompt)
        for k, text in enumerate(row):
            key = (pkey, text)
            if key not in index:
                index[key] = len(items)
                items.append((prompt, text))
            where[p, k] = index[key]
    return items, where


def score_samples(model: Any, tokenizer: Any, sset: SampleSet, tokenize: Any, padding_side: str, encoder: bool,
                  batch_size: int = 64, progress: bool = False, ledger: Ledger | None = None) -> np.ndarray:
    """[P, K] reward of every sample, scored as `eval-rm` scores a pair's chosen response.

    Each distinct (prompt, response) is encoded as the pair (response, response) with the RM's own
    settings, so its tokens (template, special tokens, truncation) are exactly those of eval-rm; two
    such rows then share one EncodedPair slot (chosen row, rejected row) for `score_encoded`.
    """
    from marginkit.data.tokenize import EncodedPair, encode_pair
    from marginkit.evaluate.scorer import score_encoded

    ledger = ledger if ledger is not None else Ledger()
    items, where = _unique_items(sset)
    rows: list[tuple[list[int], int]] = []  # (token ids, prompt length) per item
    for i, (prompt, text) in enumerate(items):
        enc = encode_pair(Pair(prompt, text, text), i, tokenizer, tokenize, ledger, encoder)
        if enc is None:
            raise DataError("Best-of-N samples", i, "response", f"dropped by the RM's tokenize.on_too_long=drop "
                            f"(max_length={tokenize.max_length}); every sample needs a score",
                            "lower the policy's max_new_tokens or save the RM with on_too_long=truncate")
        rows.append((enc.chosen_ids, enc.prompt_len))
    ledger.read(len(items))
    ledger.keep(len(items))
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))  # length-sorted: little padding
    order += order[-1:] * (len(order) % 2)  # an odd count: score the last item twice
    half = [order[j:j + 2] for j in range(0, len(order), 2)]
    # The prompt length only sets the response mask, which scoring does not read.
    slots = [EncodedPair(rows[a][0], rows[b][0], min(rows[a][1], rows[b][1]), np.nan, np.nan, np.nan, a)
             for a, b in half]
    pad = tokenizer.pad_token_id
    first, second = score_encoded(model, slots, pad, padding_side, batch_size, progress=progress)
    rewards = np.empty(len(items), dtype=np.float64)
    rewards[[a for a, _ in half]] = first
    rewards[[b for _, b in half]] = second
    return rewards[where]  # [n_items] -> [P, K]


def _ledger_note(ledger: Ledger) -> dict[str, Any]:
    """Truncations per sample (encode_pair counts each response twice: chosen and rejected)."""
    d = ledger.to_dict()
    trunc = {("response_right" if k == "chosen_right" else k): v for k, v in d["truncated"].items()
             if k != "rejected_right"}
    return {"distinct_samples": d["kept"], "truncated": trunc}


def rm_scores(spec: RMSpec, sset: SampleSet, cfg: BonConfig, say: Callable[[str], None]) -> tuple[np.ndarray, dict]:
    """[P, K] scores of one RM, from the cache or scored now and cached."""
    from marginkit.configlib import from_dict
    from marginkit.data.tokenize import TokenizeConfig
    from marginkit.models.reward import ModelConfig, is_encoder, load_reward_model, load_scorer_settings

    fp = fingerprint_dir(spec.path)
    info: dict[str, Any] = {"name": spec.name, "path": str(spec.path), "fingerprint": fp}
    path = cfg.cache / "scores" / f"{sset.key}-{fp}-{SCORER_VERSION}.npy"
    meta_path = path.with_suffix(".json")
    if path.exists():
        say(f"scores [{spec.name}]: reusing {path}")
        if meta_path.exists():
            info.update(json.loads(meta_path.read_text()))
        return np.load(path), info
    settings = load_scorer_settings(spec.path)
    model, tokenizer = load_reward_model(ModelConfig(name_or_path=str(spec.path), head_init="keep"))
    model.to(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tok_cfg = from_dict(TokenizeConfig, settings.get("tokenize", {}))
    ledger = Ledger()
    say(f"scores [{spec.name}]: scoring {len(sset.prompts)} x {sset.n} samples")
    scores = score_samples(model, tokenizer, sset, tok_cfg, settings.get("padding_side", "right"), is_encoder(model),
                           cfg.batch_size, cfg.progress, ledger)
    note = _ledger_note(ledger)
    if note["truncated"]:
        say(f"scores [{spec.name}]: truncated {note['truncated']} (see the RM's tokenize.max_length)")
    info.update(note)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path.with_name(path.stem + ".tmp.npy"), scores)
    path.with_name(path.stem + ".tmp.npy").replace(path)
    meta_path.write_text(json.dumps(note) + "\n")
    return scores, info


def world_scores(sset: SampleSet, world: Any) -> np.ndarray:
    """[P, K] true rewards of the samples (the gold world's judge). Fast: not cached."""
    flat_p = [p for p, row in zip(sset.prompts, sset.samples) for _ in row]
    flat_r = [r for row in sset.samples for r in row]
    return world.true_rewards(flat_p, flat_r).reshape(len(sset.prompts), sset.n)


def run_bon(cfg: BonConfig, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the pipeline (module docstring); returns the bon_results.json dict."""
    from marginkit.report.plots import plot_bon_curves, plot_bon_win_rates

    specs = [parse_rm_spec(s) for s in cfg.rms]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"bon: RM names {names} repeat; name them with --rm NAME=PATH")
    needs_world = "world" in (cfg.policy, cfg.judge) or cfg.prompts.startswith("world:")
    world = _world(cfg) if needs_world else None
    prompts = resolve_prompts(cfg.prompts, cfg.n_prompts, cfg.seed, world)
    sset = get_samples(cfg, prompts, world, say)
    scores, rm_info = {}, []
    for spec in specs:
        scores[spec.name], info = rm_scores(spec, sset, cfg, say)
        rm_info.append(info)
    if cfg.judge == "world":
        judge, judge_desc = world_scores(sset, world), {"kind": "world", "world": asdict(world.config)}
    else:
        jspec = parse_rm_spec(cfg.judge)
        judge, jinfo = rm_scores(jspec, sset, cfg, say)
        judge_desc = {"kind": "rm", **jinfo}
    result: BoNResult = best_of_n_sweep(scores, judge, cfg.ns, names[0], cfg.n_boot, cfg.level, cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    d = result.to_dict()
    d.update({"policy": sset.policy, "judge": judge_desc, "prompts": cfg.prompts, "samples_key": sset.key,
              "rms": rm_info, "world": asdict(world.config) if world is not None else None})
    (out / "bon_results.json").write_text(json.dumps(d, indent=2) + "\n")
    from marginkit.study.bon_world import bon_rows
    from marginkit.study.render import write_rows

    write_rows(out / "rows.csv.gz", bon_rows(d))  # one row per (RM, N): what a study over seeds commits
    table = format_tables(d)
    (out / "bon_table.md").write_text(table + "\n")
    plot_bon_curves(d, out / "bon_curves.png")
    if d["win_rates"]:
        plot_bon_win_rates(d, out / "bon_win_rates.png")
    say(table)
    say(f"wrote {out}/bon_results.json, bon_table.md and plots")
    return d


def _ci(m: dict[str, float], fmt: str = ".3f") -> str:
    return f"{m['mean']:{fmt}} [{m['low']:{fmt}}, {m['high']:{fmt}}]"


def combine_runs(results: list[dict[str, Any]], level: float = 0.95) -> dict[str, Any]:
    """Several bon_results dicts of the same RM names, baseline and N (e.g. one per training seed) as one
    dict of the same shape: every mean is the mean over runs, every interval a Student-t interval over
    runs (`evaluate.stats.t_interval`), so it measures how much the result moves between RM trainings,
    not only between prompts; wins/ties/losses are summed. `runs_above_half[rm][i]` counts the runs
    whose win rate at ns[i] is above 1/2."""
    from marginkit.evaluate.bon import over_optimisation
    from marginkit.evaluate.stats import t_interval

    if len(results) < 2:
        raise ValueError(f"combine_runs: need at least 2 runs, got {len(results)}")
    first = results[0]
    key = (first["baseline"], list(first["per_rm"]), first["ns"])
    for d in results[1:]:
        if (d["baseline"], list(d["per_rm"]), d["ns"]) != key:
            raise ValueError(f"combine_runs: runs differ in baseline, RMs or N: {key} vs "
                             f"{(d['baseline'], list(d['per_rm']), d['ns'])}")
    ns = first["ns"]

    def tci(values: list[float]) -> dict[str, float]:
        mean, low, high = t_interval(values, level)
        return {"mean": mean, "low": low, "high": high}

    def over(get: Callable[[dict[str, Any], int], float]) -> list[dict[str, float]]:
        return [tci([get(d, i) for d in results]) for i in range(len(ns))]

    per_rm = {r: {"judge": over(lambda d, i, r=r: d["per_rm"][r]["judge"][i]["mean"]),
                  "proxy": [float(np.mean([d["per_rm"][r]["proxy"][i] for d in results])) for i in range(len(ns))]}
              for r in first["per_rm"]}
    win_rates: dict[str, list[dict[str, Any]]] = {}
    for r in first["win_rates"]:
        rows = []
        for i, n in enumerate(ns):
            ws = [d["win_rates"][r][i] for d in results]
            m = tci([w["value"] for w in ws])
            rows.append({"rm": r, "baseline": first["baseline"], "n": n, "value": m["mean"], "low": m["low"],
                         "high": m["high"], "level": level, **{k: sum(w[k] for w in ws) for k in
                                                                 ("wins", "ties", "losses")}})
        win_rates[r] = rows
    judge_diff = {r: over(lambda d, i, r=r: d["judge_diff"][r][i]["mean"]) for r in first["win_rates"]}
    reference = {k: [float(np.mean([d["reference"][k][i] for d in results])) for i in range(len(ns))]
                 for k in first["reference"]}
    over_opt = {r: over_optimisation(r, ns, [m["mean"] for m in v["judge"]], v["proxy"]).to_dict()
                for r, v in per_rm.items()}
    return {"ns": ns, "kl": first["kl"], "baseline": first["baseline"], "n_prompts": sum(d["n_prompts"] for d in results),
            "n_samples": first["n_samples"], "level": level, "runs": len(results), "per_rm": per_rm,
            "win_rates": win_rates, "judge_diff": judge_diff, "reference": reference, "over_optimisation": over_opt,
            "runs_above_half": {r: [sum(d["win_rates"][r][i]["value"] > 0.5 for d in results) for i in range(len(ns))]
                                for r in first["win_rates"]},
            "judge": first.get("judge"), "prompts": first.get("prompts"), "interval": "t over runs"}


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def format_tables(d: dict[str, Any]) -> str:
    """Markdown tables of a bon_results dict: judge reward of the picks, win rates, over-optimisation."""
    rms = list(d["per_rm"])
    pct = int(round(d["level"] * 100))
    head = ["N", "KL"] + rms + ["judge's own best", "unguided"]
    over = (f"mean over {d['runs']} runs, {pct}% t-interval over runs" if d.get("runs")
            else f"{d['n_prompts']} prompts, {pct}% bootstrap interval")
    lines = [f"Mean judge reward of each RM's Best-of-N pick ({over}):", ""]
    lines += _md_table(head, [[str(n), f"{d['kl'][i]:.3f}"] + [_ci(d["per_rm"][r]["judge"][i]) for r in rms]
                              + [f"{d['reference']['judge_best'][i]:.3f}", f"{d['reference']['unguided'][i]:.3f}"]
                              for i, n in enumerate(d["ns"])])
    others = list(d["win_rates"])
    if others:
        base = d["baseline"]
        above = d.get("runs_above_half")
        lines += ["", f"Win rate of each RM's pick over {base}'s pick (ties 1/2; wins/ties/losses"
                  + (", summed; runs with a win rate above 1/2):" if above else "):"), ""]
        lines += _md_table(["N"] + [f"{r} vs {base}" for r in others], [
            [str(n)] + [f"{w['value']:.3f} [{w['low']:.3f}, {w['high']:.3f}] ({w['wins']}/{w['ties']}/{w['losses']})"
                        + (f" {above[r][i]}/{d['runs']}" if above else "")
                        for r, w in ((r, d["win_rates"][r][i]) for r in others)] for i, n in enumerate(d["ns"])])
        lines += ["", f"Paired difference of judge rewards, each RM's pick minus {base}'s pick:", ""]
        lines += _md_table(["N"] + [f"{r} − {base}" for r in others], [
            [str(n)] + [_ci(d["judge_diff"][r][i], "+.3f") for r in others] for i, n in enumerate(d["ns"])])
    lines += ["", "Over-optimisation (judge reward of the pick as N grows):", ""]
    for r, o in d["over_optimisation"].items():
        state = ("still rising at the largest N" if o["rising_at_end"]
                 else f"peaks at N={o['peak_n']}, then falls by {o['drop']:.3f}")
        lines.append(f"- {r}: {state} (peak {o['peak_judge']:.3f}); proxy gain N=1 -> max {o['proxy_gain']:.3f}")
    return "\n".join(lines)


def parse_ns(text: str) -> list[int]:
    """Parse "1,2,4,8" or the doubling shorthand "1,2,4,...,64" (a geometric run with integer ratio,
    read from the last two numbers before "...") into a sorted list of distinct N."""
    parts = [t.strip() for t in text.split(",") if t.strip()]
    try:
        if "..." not in parts:
            values = [int(t) for t in parts]
        else:
            i = parts.index("...")
            head, tail = [int(t) for t in parts[:i]], [int(t) for t in parts[i + 1:]]
            if len(head) < 2 or len(tail) != 1 or head[-2] <= 0 or head[-1] % head[-2] or head[-1] <= head[-2]:
                raise ValueError
            ratio, values = head[-1] // head[-2], list(head)
            while values[-1] < tail[0]:
                values.append(values[-1] * ratio)
            if values[-1] != tail[0]:  # "1,2,4,...,50": 50 is not on the run
                raise ValueError
    except ValueError:
        raise ConfigError(f"--n {text!r}: give N values like 1,2,4,8 or 1,2,4,...,64 (integers >= 1)") from None
    if not values or min(values) < 1:
        raise ConfigError(f"--n {text!r}: every N must be an integer >= 1")
    return sorted(set(values))
