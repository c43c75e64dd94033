"""Offline Best-of-N on a judged response pool: AlpacaEval's 805 instructions x 9 responses, no generation.

AlpacaEval 2.0 (Dubois et al. 2024, arXiv 2404.04475) publishes, for each model, the weighted
GPT-4-turbo judge's probability p that the model's output beats the reference output
(gpt4_1106_preview) on each of 805 instructions. Eight models' files give, per instruction, a pool
of K = 9 responses (the reference + 8 models), each with a gold score against the same reference:
p for a model, 1/2 for the reference itself (the judge's indifference point; it never judged the
reference against itself). Under Bradley-Terry through the common reference, logit(p_A) - logit(p_B)
is the log-odds that A beats B, which gives graded training pairs (`pool_pairs`).

Offline Best-of-N on held-out instructions (`offline_best_of_n`): each instruction's 9 responses
are put in a fixed random order (`candidate_orders`: one permutation per instruction, from the
seed alone), and for N = 1..9 each RM picks its highest-scoring response among the first N in that
order; the judge's p of the pick is its gold score. The maths is `evaluate.bon.best_of_n_sweep`
(mean gold of the picks with bootstrap intervals, win rate of each RM's pick over a baseline RM's
pick with ties split, the judge's own best as the ceiling), applied to the columns in that order.
Two pseudo-RMs come along: "longest" (picks by length alone) and, implicitly, the judge's best.

Length. The judge prefers long answers (PROVENANCE.md: the FuseChat models write ~2k characters
and win; the *_concise ones lose), so an RM can buy gold by picking long responses. We report:
- agree_longest[rm][N]: the fraction of instructions where the RM's pick is also the longest of
  the first N (ties in length: the earlier in the order), i.e. how often length alone would have
  picked the same;
- pick_chars[rm][N]: the mean length (characters) of the picks;
- length-controlled gold (our choice, documented in docs/real_data.md): with x = log(1 + characters),
  fit the judge's length slope *within instructions* by least squares with one intercept per
  instruction (a fixed-effects regression, since Best-of-N only ever compares responses to the same
  instruction):
      b = sum_{i,k} (x_ik - xbar_i)(g_ik - gbar_i) / sum_{i,k} (x_ik - xbar_i)^2
      g_lc_ik = g_ik - b (x_ik - xbar_i)
  g_lc is the gold a response would get at its instruction's mean log-length. The same sweep on
  g_lc gives length-controlled mean gold and win rates ("lc"). Its difference of two picks is
  (g_A - g_B) - b (x_A - x_B): a pick that wins only by being longer by the judge's going rate
  ties. Length is measured in characters, so the correction is the same for every RM's tokenizer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from marginkit.data.formats.alpaca_eval import AlpacaEvalOptions
from marginkit.data.formats.alpaca_eval import convert as alpaca_convert
from marginkit.data.io import read_records
from marginkit.data.ledger import Ledger
from marginkit.data.schema import DataError, Pair
from marginkit.data.splits import SplitConfig, SplitReport, normalise_prompt, split_keys
from marginkit.evaluate.bon import BoNResult, best_of_n_sweep

__all__ = ["JudgedPool", "alpaca_eval_files", "load_alpaca_pool", "split_pool", "pool_pairs", "candidate_orders",
           "in_order", "longest_picks", "length_slope", "length_controlled", "OfflineBoN", "offline_best_of_n",
           "score_pool", "format_offline_bon"]

ALPACA_SUBDIR = Path("alpaca-eval") / "weighted_alpaca_eval_gpt4_turbo"


@dataclass(frozen=True)
class JudgedPool:
    """K judged responses for each of I instructions (K the same for every instruction).

    instructions [I]; responses[i][k] and generators[i][k] [I][K]; gold [I, K] the judge's
    probability of beating the common reference; reference: the column holding that reference in
    every row (its gold is 0.5), or None for a pool without one.
    """

    instructions: list[str]
    responses: list[list[str]]
    generators: list[list[str]]
    gold: np.ndarray
    reference: int | None = 0

    def __post_init__(self) -> None:
        i, k = self.gold.shape if self.gold.ndim == 2 else (-1, -1)
        if i != len(self.instructions) or any(len(r) != k for r in self.responses) or len(self.responses) != i:
            raise ValueError(f"JudgedPool: gold {self.gold.shape} does not match {len(self.instructions)} instructions "
                             f"x {sorted({len(r) for r in self.responses})} responses")

    @property
    def k(self) -> int:
        return int(self.gold.shape[1])

    def __len__(self) -> int:
        return len(self.instructions)

    @property
    def empty_responses(self) -> int:
        """Responses that are empty or whitespace only (kept: an RM must rank them too)."""
        return sum(1 for row in self.responses for r in row if not r.strip())

    def lengths(self) -> np.ndarray:
        """[I, K] response lengths in characters."""
        return np.array([[len(r) for r in row] for row in self.responses], dtype=np.float64)

    def subset(self, rows: Sequence[int]) -> JudgedPool:
        rows = list(rows)
        return JudgedPool([self.instructions[i] for i in rows], [self.responses[i] for i in rows],
                          [self.generators[i] for i in rows], self.gold[rows], self.reference)


def alpaca_eval_files(data_dir: str | Path) -> list[Path]:
    """The annotation files under DATA/alpaca-eval/weighted_alpaca_eval_gpt4_turbo/<model>/, sorted by model."""
    root = Path(data_dir) / ALPACA_SUBDIR
    files = sorted(root.glob("*/annotations.json*"))
    if not files:
        raise DataError(str(root), None, None, "no AlpacaEval annotation files (<model>/annotations.json[.gz])",
                        "point to the shared/data folder")
    return files


def load_alpaca_pool(files: Sequence[str | Path], ledger: Ledger | None = None) -> JudgedPool:
    """One JudgedPool from AlpacaEval annotation files, all judged against the same reference.

    Each row goes through the alpaca_eval converter (score="probability": p, reference 0.5), rows
    are pooled by instruction, responses keyed by generator (the reference, present in every file,
    is kept once; a generator with two different outputs or scores for one instruction is an error).
    Instructions keep the order of the first file; responses: the reference (column 0), then the
    files' models in file order. Empty responses are kept (an RM must rank them too; see
    `JudgedPool.empty_responses`). The ledger counts rows read and rows pooled (merged).
    """
    ledger = ledger if ledger is not None else Ledger()
    options = AlpacaEvalOptions(score="probability")
    pools: dict[str, dict[str, tuple[str, float]]] = {}
    for path in files:
        for row, record in read_records(path):
            ledger.read()
            out = alpaca_convert(record, options)
            by_gen = pools.setdefault(out.group, {})
            for g in out.responses:
                name = str(g.info["generator"])
                seen = by_gen.setdefault(name, (g.text, float(g.score)))
                if seen != (g.text, float(g.score)):
                    raise DataError(str(path), row, "output", f"generator {name!r} has two different outputs or "
                                    "scores for this instruction", "read each model's file once")
    sizes = {len(v) for v in pools.values()}
    if len(sizes) != 1:
        raise DataError(" + ".join(map(str, files)), None, None, f"instructions have different numbers of responses "
                        f"{sorted(sizes)}", "give files that all cover the same instructions")
    instructions = list(pools)
    responses = [[text for text, _ in pools[i].values()] for i in instructions]
    generators = [list(pools[i]) for i in instructions]
    gold = np.array([[p for _, p in pools[i].values()] for i in instructions], dtype=np.float64)
    ledger.keep(len(instructions))
    ledger.merged += ledger.rows_read - len(instructions)
    return JudgedPool(instructions, responses, generators, gold, reference=0)


def split_pool(pool: JudgedPool, cfg: SplitConfig) -> tuple[dict[str, JudgedPool], SplitReport]:
    """Split by instruction (normalised; cfg.unit is forced to "groups": one instruction counts 1)."""
    cfg = SplitConfig(fractions=cfg.fractions, names=cfg.names, seed=cfg.seed, group_by="prompt", unit="groups")
    labels, report = split_keys([normalise_prompt(i) for i in pool.instructions], cfg)
    parts = {name: pool.subset([i for i, lab in enumerate(labels) if lab == name]) for name in cfg.names}
    return parts, report


def pool_pairs(pool: JudgedPool, score: str = "logit", include_reference: bool = True, ties: str = "drop",
               policy: str = "all_pairs", ledger: Ledger | None = None) -> tuple[list[Pair], Ledger]:
    """Graded training pairs among the responses of each instruction of `pool`.

    Built by the alpaca_eval converter from one synthetic annotation row per (instruction, model),
    so pairs, ties and validation (empty or identical responses dropped and counted) are exactly
    those of `load_pairs(files, format="alpaca_eval")`. score="logit": score_chosen - score_rejected
    = logit(p_c) - logit(p_r) (p clipped to [1e-9, 1 - 1e-9]); "probability": p_c - p_r.
    """
    from marginkit.data.load import load_pairs

    ref = pool.reference
    if ref is None:
        raise ValueError("pool_pairs: the pool has no reference column, so the alpaca_eval converter cannot pair it")
    records = []
    for inst, texts, gens, golds in zip(pool.instructions, pool.responses, pool.generators, pool.gold):
        for k, (text, gen, p) in enumerate(zip(texts, gens, golds)):
            if k == ref:
                continue
            records.append({"instruction": inst, "output_1": texts[ref], "generator_1": gens[ref],
                            "output_2": text, "generator_2": gen, "preference": 1.0 + float(p)})
    return load_pairs(records, format="alpaca_eval", on_invalid="skip", ledger=ledger, score=score,
                      include_reference=include_reference, ties=ties, policy=policy)


def candidate_orders(n_instructions: int, k: int, seed: int) -> np.ndarray:
    """[I, K] a fixed random order of the K candidates of each instruction: row i is a permutation of
    0..K-1 drawn from np.random.default_rng(seed), one row after the other."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(k) for _ in range(n_instructions)]) if n_instructions else np.zeros((0, k), int)


def in_order(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    """[I, K] values with each row's columns put in that row's order: out[i, j] = values[i, order[i, j]]."""
    return np.take_along_axis(np.asarray(values), np.asarray(order), axis=1)


def longest_picks(lengths: np.ndarray, n: int) -> np.ndarray:
    """[I] index of the longest of the first n columns (ties: the earliest), lengths [I, K] in order."""
    return np.argmax(np.asarray(lengths)[:, :n], axis=1)


def length_slope(gold: np.ndarray, lengths: np.ndarray) -> float:
    """Within-instruction least-squares slope b of gold on x = log(1 + length) (module docstring).
    0.0 when no instruction has responses of different lengths."""
    x = np.log1p(np.asarray(lengths, dtype=np.float64))
    g = np.asarray(gold, dtype=np.float64)
    dx = x - x.mean(axis=1, keepdims=True)  # [I, K]
    dg = g - g.mean(axis=1, keepdims=True)
    den = float((dx * dx).sum())
    return float((dx * dg).sum() / den) if den > 0 else 0.0


def length_controlled(gold: np.ndarray, lengths: np.ndarray, slope: float) -> np.ndarray:
    """[I, K] g_lc = g - b (x - xbar_i): gold moved to the instruction's mean log-length."""
    x = np.log1p(np.asarray(lengths, dtype=np.float64))
    return np.asarray(gold, dtype=np.float64) - slope * (x - x.mean(axis=1, keepdims=True))


@dataclass
class OfflineBoN:
    """Offline Best-of-N results: the raw sweep, the length-controlled sweep, and length agreement.

    raw, lc: `evaluate.bon.BoNResult` on gold and on length-controlled gold (one entry per N);
    agree_longest[rm][j] and pick_chars[rm][j]: per N = ns[j] (module docstring); slope: b.
    """

    ns: list[int]
    baseline: str
    slope: float
    raw: BoNResult
    lc: BoNResult
    agree_longest: dict[str, list[float]]
    pick_chars: dict[str, list[float]]
    seed: int
    n_instructions: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"ns": self.ns, "baseline": self.baseline, "slope": self.slope, "seed": self.seed,
                "n_instructions": self.n_instructions, "raw": self.raw.to_dict(), "lc": self.lc.to_dict(),
                "agree_longest": self.agree_longest, "pick_chars": self.pick_chars, **self.extra}


def offline_best_of_n(rewards: Mapping[str, np.ndarray], gold: np.ndarray, lengths: np.ndarray, seed: int = 0,
                      ns: Sequence[int] | None = None, baseline: str | None = None, order: np.ndarray | None = None,
                      n_boot: int = 1000, level: float = 0.95, with_longest: bool = True) -> OfflineBoN:
    """Best-of-N for N in `ns` (default 1..K) on a judged pool, no generation.

    rewards: {rm name: [I, K]} each RM's score of every response (the baseline first unless named);
    gold, lengths: [I, K] the judge's score and the length of every response; order: [I, K] the
    candidate order (default `candidate_orders(I, K, seed)`), so "the first N" = order[:, :N].
    with_longest adds the pseudo-RM "longest" (score = length) to the sweep.
    """
    gold = np.asarray(gold, dtype=np.float64)
    lengths = np.asarray(lengths, dtype=np.float64)
    if gold.shape != lengths.shape or gold.ndim != 2:
        raise ValueError(f"gold {gold.shape} and lengths {lengths.shape}: need the same [I, K] shape")
    i, k = gold.shape
    order = candidate_orders(i, k, seed) if order is None else np.asarray(order)
    if order.shape != (i, k) or not (np.sort(order, axis=1) == np.arange(k)).all():
        raise ValueError(f"order: need [{i}, {k}] with a permutation of 0..{k - 1} in every row, got {order.shape}")
    ns = list(range(1, k + 1)) if ns is None else sorted(set(ns))
    scores = {name: in_order(np.asarray(r, dtype=np.float64), order) for name, r in rewards.items()}
    if "longest" in scores and with_longest:
        raise ValueError('an RM is named "longest", which is the length pseudo-RM; rename it or with_longest=False')
    baseline = baseline if baseline is not None else next(iter(scores))
    len_o, gold_o = in_order(lengths, order), in_order(gold, order)
    if with_longest:
        scores["longest"] = len_o
    slope = length_slope(gold, lengths)
    gold_lc = in_order(length_controlled(gold, lengths, slope), order)
    raw = best_of_n_sweep(scores, gold_o, ns, baseline, n_boot, level, seed)
    lc = best_of_n_sweep(scores, gold_lc, ns, baseline, n_boot, level, seed)
    agree: dict[str, list[float]] = {name: [] for name in scores}
    chars: dict[str, list[float]] = {name: [] for name in scores}
    rows = np.arange(i)
    for n in ns:
        longest = longest_picks(len_o, n)
        for name, s in scores.items():
            picks = np.argmax(s[:, :n], axis=1)  # ties: the earliest, as best_of_n_picks
            agree[name].append(float((picks == longest).mean()))
            chars[name].append(float(len_o[rows, picks].mean()))
    return OfflineBoN(ns=ns, baseline=baseline, slope=slope, raw=raw, lc=lc, agree_longest=agree, pick_chars=chars,
                      seed=seed, n_instructions=i)


def score_pool(model_dir: str | Path, pool: JudgedPool, batch_size: int = 32, device: str | None = None,
               cache_dir: str | Path | None = None, progress: bool = False,
               say: Callable[[str], None] = lambda _: None) -> np.ndarray:
    """[I, K] rewards of every response in the pool from the RM in `model_dir`, scored as eval-rm scores
    (its saved tokenize settings; `evaluate.bon_run.rm_scores`, cached by RM fingerprint and pool)."""
    from marginkit.evaluate.bon_run import BonConfig, parse_rm_spec, rm_scores
    from marginkit.evaluate.sampling import SampleSet

    sset = SampleSet(prompts=list(pool.instructions), samples=[list(r) for r in pool.responses], seed=0,
                     policy={"offline_pool": "judged", "n_instructions": len(pool)})
    cache = Path(cache_dir or os.environ.get("MARGINKIT_CACHE") or Path.home() / ".cache" / "marginkit") / "offline_bon"
    if cache_dir is not None:
        cache = Path(cache_dir)
    cfg = BonConfig(rms=[str(model_dir)], cache_dir=str(cache), batch_size=batch_size, device=device,
                    progress=progress)
    scores, _ = rm_scores(parse_rm_spec(str(model_dir)), sset, cfg, say)
    return scores


def _cell(m: Any, digits: int = 3) -> str:
    return f"{m.mean:.{digits}f} [{m.low:.{digits}f}, {m.high:.{digits}f}]"


def format_offline_bon(res: OfflineBoN, ns: Sequence[int] | None = None) -> str:
    """Markdown: mean gold of the picks, win rate over the baseline (raw and length-controlled),
    agreement with the longest response and mean pick length, per RM and N."""
    ns = list(ns) if ns is not None else res.ns
    cols = [res.ns.index(n) for n in ns]
    head = ["RM", "N", "gold of pick", f"win vs {res.baseline}", "LC gold", f"LC win vs {res.baseline}",
            "= longest", "pick chars"]
    lines = [f"Offline Best-of-N on {res.n_instructions} held-out instructions (order seed {res.seed}; "
             f"length slope b = {res.slope:.4f} gold per unit log(1 + chars))", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in res.raw.per_rm:
        for j in cols:
            n = res.ns[j]
            win = res.raw.win_rates.get(name)
            win_lc = res.lc.win_rates.get(name)
            w = f"{win[j].value:.3f} [{win[j].low:.3f}, {win[j].high:.3f}]" if win else "-"
            w_lc = f"{win_lc[j].value:.3f} [{win_lc[j].low:.3f}, {win_lc[j].high:.3f}]" if win_lc else "-"
            lines.append(f"| {name} | {n} | {_cell(res.raw.per_rm[name]['judge'][j])} | {w} | "
                         f"{_cell(res.lc.per_rm[name]['judge'][j])} | {w_lc} | {res.agree_longest[name][j]:.3f} | "
                         f"{res.pick_chars[name][j]:.0f} |")
    best = ", ".join(f"N={res.ns[j]}: {res.raw.reference['judge_best'][j]:.3f}" for j in cols)
    lines += ["", f"Judge's own best of the first N (ceiling): {best}."]
    return "\n".join(lines) + "\n"


def write_offline_bon(res: OfflineBoN, out_dir: str | Path, name: str = "offline_bon") -> Path:
    """Write <name>.json and <name>.md to out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(res.to_dict(), indent=2, default=float) + "\n")
    (out / f"{name}.md").write_text(format_offline_bon(res))
    return out / f"{name}.json"


