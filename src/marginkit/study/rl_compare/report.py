"""Tables and plots of `world rl-compare`, from its rows alone (runner.py writes them; study/render.py
rebuilds docs/rl_compare.md from the committed copies).

Every comparison is paired by seed (one world, one SFT model and one prompt set per seed): a 95% Student-t
interval over seeds, and beside it the interval over test prompts (`pooled_se_interval`: the seeds' training
runs held fixed). p-values are one-sample t-tests over seeds, Holm-corrected within each table.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from marginkit.evaluate.stats import holm, min_detectable_effect, pooled_se_interval, t_interval, t_test_p
from marginkit.study.render import read_rows

__all__ = ["ROWS", "CURVES", "RM_ROWS", "ALERT_ROWS", "load_rows", "alerts_table", "predictions", "SEED_001", "ORDER", "format_tables", "write_plots", "render_docs", "DOC", "FRONTIER_PNG", "OVEROPT_PNG"]

DOC = "rl_compare.md"
# the rows files (runner.py)
ROWS, CURVES, RM_ROWS, ALERT_ROWS = "rl_compare.csv.gz", "rl_curves.csv.gz", "rl_rms.csv.gz", "rl_alerts.csv.gz"
FIRST_RUN_ROWS = "rl_compare_first_run.csv.gz"  # docs/study/: the first full run (SFT 3 epochs), its policy rows
FRONTIER_PNG, OVEROPT_PNG = "rl_frontier.png", "rl_over_optimisation.png"

# Seed 001's head-to-head (mean reward on its task, one run each; DPO at beta 0.3 after tuning from 0.1).
SEED_001: dict[str, float] = {"SFT": 4.131, "DPO": 4.148, "PPO": 3.523, "GRPO": 3.312}

# Table order: (policy, rm). BoN appears at its largest N only; the frontier plot shows every N.
ORDER_FIXED = [("base", ""), ("sft", ""), ("dpo-0.1", ""), ("dpo-0.3", ""), ("ipo", ""), ("odpo", "label")]
ORDER_RL = [("grpo", "gold"), ("grpo", "bt"), ("grpo", "label"), ("rloo", "bt"), ("rloo", "label"), ("ppo", "bt"),
            ("ppo", "label")]
ORDER = ORDER_FIXED + ORDER_RL


def load_rows(folder: str | Path) -> dict[str, list[dict[str, Any]]]:
    """The three rows files of a run folder (or docs/study/)."""
    folder = Path(folder)
    return {"rows": read_rows(folder / ROWS), "curves": read_rows(folder / CURVES), "rms": read_rows(folder / RM_ROWS),
            "alerts": read_rows(folder / ALERT_ROWS)}


def _bon_max(rows: list[dict[str, Any]]) -> str | None:
    ns = [int(r["policy"].split("-")[1]) for r in rows if r["family"] == "bon"]
    return f"bon-{max(ns)}" if ns else None


def _order(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    bon = _bon_max(rows)
    extra = [(bon, "bt"), (bon, "label")] if bon else []
    return ORDER_FIXED + extra + ORDER_RL


def _by(rows: list[dict[str, Any]]) -> dict[tuple[int, str, str], dict[str, Any]]:
    return {(int(r["seed"]), r["policy"], r["rm"] or ""): r for r in rows}


def _label(policy: str, rm: str) -> str:
    if not rm:
        return policy
    return f"{policy} (RM {rm})" if rm in ("bt", "label") else f"{policy} ({'true reward' if rm == 'gold' else rm})"


def _ci(t: tuple[float, float, float], fmt: str = "+.3f") -> str:
    m, lo, hi = t
    if not math.isfinite(m):
        return "—"
    return f"{m:{fmt}}" if not math.isfinite(lo) else f"{m:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def _p(p: float) -> str:
    return "—" if not math.isfinite(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


def _paired(by: dict, seeds: list[int], a: tuple[str, str], b: tuple[str, str]) -> dict[str, Any] | None:
    """a − b over seeds: differences, the t-interval, the interval over prompts, p."""
    if not all((s, *a) in by and (s, *b) in by for s in seeds):
        return None
    d = [by[(s, *a)]["gold"] - by[(s, *b)]["gold"] for s in seeds]
    # prompts are shared within a seed, so the difference's se over prompts is at most the sum of the two;
    # the pooled interval uses sqrt(se_a^2 + se_b^2), i.e. it treats the two sample sets as independent.
    se = [math.hypot(by[(s, *a)]["gold_se"], by[(s, *b)]["gold_se"]) for s in seeds]
    return {"d": d, "t": t_interval(d), "prompts": pooled_se_interval(d, se), "p": t_test_p(d)}


def main_table(rows: list[dict[str, Any]]) -> str:
    by, seeds = _by(rows), sorted({int(r["seed"]) for r in rows})
    order = [k for k in _order(rows) if all((s, *k) in by for s in seeds)]
    comps = {k: _paired(by, seeds, k, ("sft", "")) for k in order if k != ("sft", "")}
    adj = dict(zip(comps, holm([c["p"] if c else math.nan for c in comps.values()])))
    lines = [f"| policy | true reward [95% t, {len(seeds)} seeds] | − SFT [95% t over seeds] | − SFT [95% over prompts] "
             "| Holm p | KL to SFT | its RM's reward − SFT | words | train s (median) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for k in order:
        mine = [by[(s, *k)] for s in seeds]
        c = comps.get(k)
        kl = "—" if mine[0]["kl"] is None else _ci(t_interval([r["kl"] for r in mine]), ".2f")
        rm = k[1] if k[1] in ("bt", "label") else ""
        rm_gain = _ci(t_interval([by[(s, *k)][f"rm_{rm}"] - by[(s, "sft", "")][f"rm_{rm}"] for s in seeds])) if rm else "—"
        secs = float(np.median([r["seconds"] for r in mine]))
        lines.append(f"| {_label(*k)} | {_ci(t_interval([r['gold'] for r in mine]))} | "
                     f"{_ci(c['t']) if c else '—'} | {_ci(c['prompts']) if c else '—'} | {_p(adj.get(k, math.nan))} "
                     f"| {kl} | {rm_gain} | {_ci(t_interval([r['words'] for r in mine]), '.1f')} | {secs:.0f} |")
    return "\n".join(lines) + "\n"


def controls(rows: list[dict[str, Any]]) -> str:
    """The two positive controls, each with its verdict: SFT beats the base sampler; RL on the true reward
    beats SFT (the ceiling, stated as a number)."""
    by, seeds = _by(rows), sorted({int(r["seed"]) for r in rows})
    out = []
    for a, b, what in ((("sft", ""), ("base", ""), "SFT beats the base sampler"),
                       (("grpo", "gold"), ("sft", ""), "GRPO on the true reward beats SFT (the ceiling)")):
        c = _paired(by, seeds, a, b)
        if c is None:
            continue
        lo = c["t"][1]
        verdict = "holds" if math.isfinite(lo) and lo > 0 else "FAILS"
        kl = (f", at KL {np.mean([by[(s, *a)]['kl'] for s in seeds]):.2f} to SFT"
              if by[(seeds[0], *a)]["kl"] is not None and a != ("sft", "") else "")
        out.append(f"- {what}: {_ci(c['t'])} true reward (95% t over {len(seeds)} seeds; over prompts "
                   f"{_ci(c['prompts'])}; higher in {sum(d > 0 for d in c['d'])} of {len(seeds)} seeds){kl}: "
                   f"**{verdict}**.")
    return "\n".join(out) + "\n"


def margin_table(rows: list[dict[str, Any]]) -> str:
    """The margin question: label-margin RM minus BT RM, per method that uses an RM, paired by seed, Holm over
    the table, with the smallest effect the design detects (80% power, Bonferroni level)."""
    by, seeds = _by(rows), sorted({int(r["seed"]) for r in rows})
    bon = _bon_max(rows)
    methods = ([bon] if bon else []) + ["grpo", "rloo", "ppo"]
    comps = {m: _paired(by, seeds, (m, "label"), (m, "bt")) for m in methods}
    comps = {m: c for m, c in comps.items() if c}
    adj = dict(zip(comps, holm([c["p"] for c in comps.values()])))
    lines = ["| policy | label RM − BT RM, true reward [95% t over seeds] | [95% over prompts] | Holm p | label higher in "
             "| detectable at 80% power |", "|---|---|---|---|---|---|"]
    for m, c in comps.items():
        sd = float(np.std(c["d"], ddof=1)) if len(c["d"]) > 1 else math.nan
        mde = min_detectable_effect(sd, len(seeds), len(comps))
        lines.append(f"| {m} | {_ci(c['t'])} | {_ci(c['prompts'])} | {_p(adj[m])} | "
                     f"{sum(d > 0 for d in c['d'])} of {len(seeds)} | {mde:.3f} |")
    return "\n".join(lines) + "\n"


def rm_table(rms: list[dict[str, Any]]) -> str:
    seeds = sorted({int(r["seed"]) for r in rms})
    lines = [f"| RM | accuracy vs labels [95% t, {len(seeds)} seeds] | vs true preference | r(Δ, true gap) | "
             "train s (median) |", "|---|---|---|---|---|"]
    for name in dict.fromkeys(r["rm"] for r in rms):
        mine = [r for r in rms if r["rm"] == name]
        lines.append(f"| {name} | {_ci(t_interval([r['acc_labels'] for r in mine]), '.3f')} | "
                     f"{_ci(t_interval([r['acc_true'] for r in mine]), '.3f')} | "
                     f"{_ci(t_interval([r['pearson_true_gap'] for r in mine]), '.3f')} | "
                     f"{float(np.median([r['seconds'] for r in mine])):.0f} |")
    return "\n".join(lines) + "\n"


def over_optimisation_table(curves: list[dict[str, Any]]) -> str:
    """Per RL run, from its validation curve (mean over seeds at each step): the gold reward at the first
    evaluation (step eval_every, not step 0), the step where it peaks, the gold reward there and at the end,
    and the RM reward's rise over the same steps."""
    lines = ["| run | gold at the first evaluation → peak (step) → last | drop after peak [95% t] | its reward: first → last | "
             "KL at last |", "|---|---|---|---|---|"]
    for method, rm in dict.fromkeys((c["method"], c["rm"]) for c in curves):
        mine = [c for c in curves if c["method"] == method and c["rm"] == rm]
        seeds = sorted({int(c["seed"]) for c in mine})
        steps = sorted({int(c["step"]) for c in mine})
        mean = {k: {s: float(np.mean([c[k] for c in mine if int(c["step"]) == s])) for s in steps}
                for k in ("gold", "rm_reward", "kl")}
        peak = max(steps, key=lambda s: mean["gold"][s])
        last = steps[-1]
        # per seed: the gold reward at the mean curve's peak step minus at the last step
        at = {(int(c["seed"]), int(c["step"])): c for c in mine}
        drop = [at[(s, peak)]["gold"] - at[(s, last)]["gold"] for s in seeds if (s, peak) in at and (s, last) in at]
        lines.append(f"| {_label(method, rm)} | {mean['gold'][steps[0]]:+.3f} → {mean['gold'][peak]:+.3f} ({peak}) → "
                     f"{mean['gold'][last]:+.3f} | {_ci(t_interval(drop))} | {mean['rm_reward'][steps[0]]:+.3f} → "
                     f"{mean['rm_reward'][last]:+.3f} | {mean['kl'][last]:.2f} |")
    return "\n".join(lines) + "\n"


def alerts_table(alerts: list[dict[str, Any]], curves: list[dict[str, Any]]) -> str:
    """Per RL run: in how many seeds each monitor check fired (and its median first step), beside in how many
    seeds the gold reward fell after its peak, the thing `reward_hacking` is meant to catch (a drop of more
    than 0.1 from the seed's best validation step to its last)."""
    checks = sorted({a["check"] for a in alerts if a["check"]})
    lines = ["| run | seeds | gold fell > 0.1 after its peak | " + " | ".join(f"`{c}` fired (median first step)"
                                                                           for c in checks) + " |",
             "|---|---|---|" + "---|" * len(checks)]
    for method, rm in dict.fromkeys((a["method"], a["rm"]) for a in alerts):
        mine = [a for a in alerts if a["method"] == method and a["rm"] == rm]
        seeds = sorted({int(a["seed"]) for a in mine})
        fell = 0
        for s in seeds:
            gold = [c["gold"] for c in sorted((c for c in curves if c["method"] == method and c["rm"] == rm
                                               and int(c["seed"]) == s), key=lambda c: int(c["step"]))]
            fell += bool(gold) and max(gold) - gold[-1] > 0.1
        cells = []
        for c in checks:
            steps = [int(a["first_step"]) for a in mine if a["check"] == c]
            cells.append(f"{len(steps)} of {len(seeds)}" + (f" ({int(np.median(steps))})" if steps else ""))
        lines.append(f"| {_label(method, rm)} | {len(seeds)} | {fell} of {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def seed_001_table(rows: list[dict[str, Any]]) -> str:
    """Seed 001's ranking beside ours (SFT, DPO at β 0.1 and 0.3, PPO and GRPO with each RM)."""
    by, seeds = _by(rows), sorted({int(r["seed"]) for r in rows})

    def mean(k: tuple[str, str]) -> float:
        return float(np.mean([by[(s, *k)]["gold"] for s in seeds])) if all((s, *k) in by for s in seeds) else math.nan

    ours = {"SFT": mean(("sft", "")), "DPO": max(mean(("dpo-0.1", "")), mean(("dpo-0.3", ""))),
            "PPO": mean(("ppo", "bt")), "GRPO": mean(("grpo", "bt"))}
    ours_label = {"SFT": ours["SFT"], "DPO": ours["DPO"], "PPO": mean(("ppo", "label")), "GRPO": mean(("grpo", "label"))}

    def rank(d: dict[str, float]) -> str:
        return " > ".join(k for k, _ in sorted(d.items(), key=lambda kv: -kv[1]))

    lines = ["| | SFT | DPO | PPO | GRPO | ranking |", "|---|---|---|---|---|---|",
             "| seed 001 (its task's reward, one run each, DPO β 0.3) | " + " | ".join(f"{SEED_001[k]:.3f}" for k in SEED_001)
             + f" | {rank(SEED_001)} |",
             f"| ours, RMs trained with BT (true reward, mean of {len(seeds)} seeds; DPO: the better β) | "
             + " | ".join(f"{ours[k]:+.3f}" for k in SEED_001) + f" | {rank(ours)} |",
             "| ours, label-margin RM | " + " | ".join(f"{ours_label[k]:+.3f}" for k in SEED_001)
             + f" | {rank(ours_label)} |"]
    d01, d03 = mean(("dpo-0.1", "")), mean(("dpo-0.3", ""))
    lines.append("")
    sft = ours["SFT"]
    same = (d01 > sft) == (d03 > sft)
    lines.append(f"DPO at β 0.1: {d01:+.3f}; at β 0.3: {d03:+.3f}; SFT {sft:+.3f}. Seed 001's order of SFT and DPO "
                 f"reversed between the two β; ours {'does not' if same else 'does'} (DPO "
                 f"{'above' if d01 > sft else 'not above'} SFT at β 0.1, {'above' if d03 > sft else 'not above'} at β 0.3).")
    return "\n".join(lines) + "\n"


def _gold(by: dict, seeds: list[int], k: tuple[str, str], key: str = "gold") -> float:
    return float(np.mean([by[(s, *k)][key] for s in seeds]))


def predictions(rows: list[dict[str, Any]], curves: list[dict[str, Any]]) -> str:
    """docs/rl_compare.md's predictions (written before the runs) checked against the rows, each with the numbers
    it rests on and a verdict by the rule stated in its line. Means over seeds; intervals from the tables."""
    by, seeds = _by(rows), sorted({int(r["seed"]) for r in rows})
    sft = _gold(by, seeds, ("sft", ""))
    bon = _bon_max(rows)
    rm_runs = [(m, rm) for m, rm in ORDER_RL if rm in ("bt", "label")]
    out = []

    def verdict(ok: bool | None) -> str:
        return "**held**" if ok else ("**failed**" if ok is not None else "**held in part**")

    c = _paired(by, seeds, ("sft", ""), ("base", ""))
    if c:
        out.append(f"1. SFT − base sampler {_ci(c['t'])} (95% t), SFT higher in {sum(d > 0 for d in c['d'])} of "
                   f"{len(seeds)} seeds (rule: higher in every seed): {verdict(all(d > 0 for d in c['d']))}.")
    c = _paired(by, seeds, ("grpo", "gold"), ("sft", ""))
    if c:
        kl = _gold(by, seeds, ("grpo", "gold"), "kl")
        out.append(f"2. GRPO on the true reward − SFT {_ci(c['t'])} at KL {kl:.2f} (rule: the interval above +0.5, KL "
                   f"under 10): {verdict(c['t'][1] > 0.5 and kl < 10)}.")
    ceiling = _gold(by, seeds, ("grpo", "gold"))
    parts, falls = [], []
    for m, rm in rm_runs:
        xs, golds = _mean_curve(curves, m, rm, "rm_reward", "gold")
        if not xs:
            continue
        fell = max(golds) - golds[-1]
        falls.append(xs[-1] > xs[0] and fell > 0.1)
        parts.append(f"{m}/{rm} RM {xs[0]:+.2f} → {xs[-1]:+.2f}, gold peak − last {fell:+.2f}")
    below = all(_gold(by, seeds, k) < ceiling - 0.3 for k in rm_runs if all((s, *k) in by for s in seeds))
    if parts:
        ok = None if 0 < sum(falls) < len(falls) else all(falls)
        out.append(f"3. Over-optimisation (validation curves, mean over seeds): {'; '.join(parts)}. The RM reward "
                   f"rose and the gold reward fell by more than 0.1 after its peak in {sum(falls)} of {len(falls)} "
                   f"RM-driven runs; every RM-driven run ends more than 0.3 below the ceiling ({ceiling:+.3f}): "
                   f"{'yes' if below else 'no'} (rule: both in every run): {verdict(None if ok is None else ok and below)}.")
    if bon:
        rates = {f"{bon}/{rm}": (_gold(by, seeds, (bon, rm)) - sft) / _gold(by, seeds, (bon, rm), "kl")
                 for rm in ("bt", "label") if all((s, bon, rm) in by for s in seeds)}
        rl_rates = {f"{m}/{rm}": (_gold(by, seeds, (m, rm)) - sft) / _gold(by, seeds, (m, rm), "kl") for m, rm in rm_runs
                    if all((s, m, rm) in by for s in seeds) and _gold(by, seeds, (m, rm), "kl") > 0}
        ns = sorted({int(r["policy"].split("-")[1]) for r in rows if r["family"] == "bon"})
        rising = all(all(_gold(by, seeds, (f"bon-{a}", rm)) < _gold(by, seeds, (f"bon-{b}", rm)) for a, b in
                         zip(ns, ns[1:])) for rm in ("bt", "label"))
        best_rl = max(rl_rates.items(), key=lambda kv: kv[1]) if rl_rates else ("—", math.nan)
        ok = bool(rates) and min(rates.values()) > best_rl[1] and rising
        out.append("4. Gold gain over SFT per nat of KL: " + ", ".join(f"{k} {v:+.3f}" for k, v in rates.items())
                   + f"; the best RM-driven RL run {best_rl[0]} {best_rl[1]:+.3f}. Gold rises with every doubling of "
                   f"N for both RMs: {'yes' if rising else 'no'} (rule: BoN above every RL run, and rising): "
                   f"{verdict(ok)}.")
    diffs = []
    for m in ([bon] if bon else []) + ["grpo", "rloo", "ppo"]:
        c = _paired(by, seeds, (m, "label"), (m, "bt"))
        if c:
            diffs.append((m, c["t"][0], c["t"][2]))
    if diffs:
        ge = sum(d >= 0 for _, d, _ in diffs)
        out.append("5. Label-margin RM − BT RM: " + ", ".join(f"{m} {d:+.3f}" for m, d, _ in diffs)
                   + f"; label at least as good on average in {ge} of {len(diffs)} (rule: all): "
                   + verdict(True if ge == len(diffs) else (None if ge else False)) + ".")
    if all((s, k, "") in by for s in seeds for k in ("dpo-0.1", "dpo-0.3")):
        gains = {k: _gold(by, seeds, (k, "")) - sft for k in ("dpo-0.1", "dpo-0.3")}
        kls = {k: _gold(by, seeds, (k, ""), "kl") for k in ("dpo-0.1", "dpo-0.3")}
        modest = all(0 < g < (ceiling - sft) / 2 for g in gains.values())
        out.append(f"6. DPO − SFT: β 0.1 {gains['dpo-0.1']:+.3f} at KL {kls['dpo-0.1']:.2f}, β 0.3 "
                   f"{gains['dpo-0.3']:+.3f} at KL {kls['dpo-0.3']:.2f}; the ceiling's gain {ceiling - sft:+.3f} "
                   f"(rule: a gain, under half the ceiling's, and β 0.1 further from SFT): "
                   f"{verdict(modest and kls['dpo-0.1'] > kls['dpo-0.3'])}.")
    ranked = sorted(((m, rm) for m, rm in rm_runs if all((s, m, rm) in by for s in seeds)),
                    key=lambda k: -_gold(by, seeds, k))
    out.append("7. (No prediction.) RM-driven RL runs by true reward: "
               + " > ".join(f"{m}/{rm} {_gold(by, seeds, (m, rm)):+.3f}" for m, rm in ranked) + ".")
    return "\n".join(out) + "\n"


def format_tables(rows: list[dict[str, Any]], curves: list[dict[str, Any]], rms: list[dict[str, Any]],
                  alerts: list[dict[str, Any]]) -> str:
    """Every table as one markdown text (the run folder's summary.md)."""
    return "\n".join(["## Positive controls\n", controls(rows), "## Predictions, checked\n",
                      predictions(rows, curves), "## Every policy\n", main_table(rows),
                      "## The margin question: label-margin RM vs BT RM\n", margin_table(rows),
                      "## Over-optimisation (validation curves)\n", over_optimisation_table(curves),
                      "## The margin monitor during the RL runs\n", alerts_table(alerts, curves),
                      "## Reward models\n", rm_table(rms), "## Seed 001's ranking beside ours\n", seed_001_table(rows)])


# ----------------------------------------------------------------------------- plots


def _mean_curve(curves: list[dict[str, Any]], method: str, rm: str, x: str, y: str) -> tuple[list[float], list[float]]:
    mine = [c for c in curves if c["method"] == method and c["rm"] == rm]
    steps = sorted({int(c["step"]) for c in mine})
    xs = [float(np.mean([c[x] for c in mine if int(c["step"]) == s])) for s in steps]
    ys = [float(np.mean([c[y] for c in mine if int(c["step"]) == s])) for s in steps]
    return xs, ys


_STYLE = {"grpo": "o", "rloo": "s", "ppo": "^"}
_COLOR = {"gold": "black", "bt": "tab:blue", "label": "tab:orange"}


def plot_frontier(rows: list[dict[str, Any]], curves: list[dict[str, Any]], path: Path) -> Path:
    """Gold reward against KL to SFT: each RL run's validation curve (mean over seeds at each step), the DPO
    family's final policies and Best-of-N at every N (test prompts), SFT at KL 0 and the base sampler's level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted({int(r["seed"]) for r in rows})
    by = _by(rows)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for method, rm in dict.fromkeys((c["method"], c["rm"]) for c in curves):
        xs, ys = _mean_curve(curves, method, rm, "kl", "gold")
        ax.plot(xs, ys, marker=_STYLE.get(method, "."), ms=3, lw=1.2, color=_COLOR.get(rm, "grey"),
                ls="-" if method == "grpo" else ("--" if method == "rloo" else ":"), label=_label(method, rm))
    for rm in ("bt", "label"):
        bon = [(int(r["policy"].split("-")[1]), r) for r in rows if r["family"] == "bon" and r["rm"] == rm]
        ns = sorted({n for n, _ in bon})
        if ns:
            xs = [float(np.mean([r["kl"] for n2, r in bon if n2 == n])) for n in ns]
            ys = [float(np.mean([r["gold"] for n2, r in bon if n2 == n])) for n in ns]
            ax.plot(xs, ys, color=_COLOR[rm], marker="D", ms=4, lw=0.8, ls="-.", label=f"best-of-N (RM {rm})")
    for name in ("dpo-0.1", "dpo-0.3", "ipo", "odpo"):
        mine = [r for r in rows if r["policy"] == name]
        if mine:
            x, y = float(np.mean([r["kl"] for r in mine])), float(np.mean([r["gold"] for r in mine]))
            ax.scatter([x], [y], marker="*", s=90, color="tab:green", zorder=3)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    sft = [by[(s, "sft", "")]["gold"] for s in seeds if (s, "sft", "") in by]
    base = [by[(s, "base", "")]["gold"] for s in seeds if (s, "base", "") in by]
    if sft:
        ax.scatter([0.0], [np.mean(sft)], marker="P", s=80, color="tab:purple", zorder=3, label="SFT")
    if base:
        ax.axhline(float(np.mean(base)), color="grey", ls="--", lw=1, label="base sampler")
    ax.set_xlabel("KL to SFT (nats per completion; BoN: log N − (N−1)/N)")
    ax.set_ylabel("true (gold) reward")
    ax.set_title(f"Gold reward vs KL on the gold world (mean of {len(seeds)} seeds)\n"
                 "RL curves: validation prompts during training; points: test prompts", fontsize=10)
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_over_optimisation(curves: list[dict[str, Any]], path: Path) -> Path:
    """RM reward (what the run optimises) against the gold reward over training, one panel per RM: a curve
    that turns down while moving right is over-optimisation. Each point is a validation step, mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rms = [rm for rm in ("bt", "label") if any(c["rm"] == rm for c in curves)]
    fig, axes = plt.subplots(1, max(len(rms), 1), figsize=(5.2 * max(len(rms), 1), 4.2), squeeze=False)
    for ax, rm in zip(axes[0], rms):
        for method in dict.fromkeys(c["method"] for c in curves if c["rm"] == rm):
            xs, ys = _mean_curve(curves, method, rm, "rm_reward", "gold")
            ax.plot(xs, ys, marker=_STYLE.get(method, "."), ms=3, label=method)
            first = min(int(c["step"]) for c in curves if c["rm"] == rm and c["method"] == method)
            ax.annotate(f"step {first}", (xs[0], ys[0]), fontsize=7, textcoords="offset points", xytext=(3, -9))
        ax.set_xlabel(f"RM {rm} reward (the optimised proxy)")
        ax.set_ylabel("true (gold) reward")
        ax.set_title(f"Over-optimisation, RM {rm}", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(rows: list[dict[str, Any]], curves: list[dict[str, Any]], folder: Path) -> list[Path]:
    return [plot_frontier(rows, curves, Path(folder) / FRONTIER_PNG),
            plot_over_optimisation(curves, Path(folder) / OVEROPT_PNG)]


def render_docs(docs_dir: Path, plots: bool = True) -> dict[str, dict[str, str]]:
    """study.render's renderer: docs/rl_compare.md's blocks (and, with `plots`, its two PNGs under docs/study/)
    from docs/study/rl_compare.csv.gz, rl_curves.csv.gz, rl_rms.csv.gz and rl_alerts.csv.gz, and the first full
    run's controls from rl_compare_first_run.csv.gz."""
    d = load_rows(Path(docs_dir) / "study")
    if plots:
        write_plots(d["rows"], d["curves"], Path(docs_dir) / "study")
    first = read_rows(Path(docs_dir) / "study" / FIRST_RUN_ROWS)  # the run whose SFT failed the first control
    return {DOC: {"rl-first-run": controls(first), "rl-controls": controls(d["rows"]), "rl-predictions": predictions(d["rows"], d["curves"]), "rl-main": main_table(d["rows"]),
                  "rl-margin": margin_table(d["rows"]), "rl-overopt": over_optimisation_table(d["curves"]),
                  "rl-rms": rm_table(d["rms"]), "rl-alerts": alerts_table(d["alerts"], d["curves"]), "rl-seed001": seed_001_table(d["rows"])}}
