"""`marginkit report`: one static HTML page gathering what run folders hold; plots embedded, readable offline.

Walks each run folder (a `train-rm` output, a demo folder with one subfolder per strategy, an
`eval-rm` output, a `bon` output, or any parent of those) and renders what it finds:

    metrics.jsonl       -> training curves (report/plots.py) and a table of final values
    eval report JSON    -> reward-gap histograms, accuracy by margin bucket (|Δ|, |label|, |true gap|)
                           (any *.json with n_pairs, accuracy, by_abs_gap, distribution: `eval-rm`'s report)
    alerts.jsonl        -> the margin monitor's alerts (step, check, severity, message)
    bon_results.json    -> Best-of-N curves, win-rate tables, over-optimisation (evaluate/bon_run.py)
    rl_compare.csv.gz   -> `world rl-compare`: its tables, the gold-reward-vs-KL frontier and the
                           over-optimisation plot (study/rl_compare/report.py), drawn from its rows
    summary.json/.md    -> the demo's and studies' summary tables
    *.png               -> figures the runs saved, placed in the section their name suggests

Every plot is a PNG drawn by report/plots.py into a temporary folder and embedded as base64, and
the page loads nothing from elsewhere, so the one file can be mailed or opened offline. A file
that cannot be read is listed in the page with its error, never skipped silently.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marginkit.errors import UserError

__all__ = ["RunContents", "collect_runs", "render_html", "ReportConfig", "write_report"]

_SKIP_DIRS = {"cache", ".git", "__pycache__", "checkpoints", "wandb", "tensorboard", "runs_tb"}
_MAX_JSON_BYTES = 50 * 2**20
_MAX_PNG_BYTES = 8 * 2**20
_EVAL_KEYS = {"n_pairs", "accuracy", "by_abs_gap", "distribution"}
_BUCKET_KEYS = (("by_abs_gap", "|Δ| (the RM's own gap)"), ("by_label", "|label margin| (data)"),
                ("by_gold", "|true gap| (gold world; accuracy against the true preference)"))
# The columns of the demo's and the world study's summary.json, for the header tooltips and the glossary under
# the table (issue 14: a reader could not tell acc_true_low or pearson_true_gap apart). Unknown keys are shown
# as they are.
_COLUMNS = {
    "strategy": "the margin strategy the reward model was trained with (bt: none, plain Bradley-Terry)",
    "variant": "the study variant (margin strategy and its settings)",
    "acc_labels": "pairwise accuracy on the test split against the data's labels (chosen scored above rejected; "
                  "ties count ½)",
    "acc_true": "pairwise accuracy against the gold world's true preference (the sign of the true reward gap), "
                "which the noisy labels only estimate",
    "acc": "pairwise accuracy on the test split against the true preference",
    "val_acc": "pairwise accuracy on the validation split",
    "acc_true_low": "lower end of acc_true's 95% bootstrap interval over test pairs",
    "acc_true_high": "upper end of acc_true's 95% bootstrap interval over test pairs",
    "acc_near_ties": "acc_true on the quarter of test pairs with the smallest |true gap| (near-ties: hard, "
                     "~0.5 is expected)",
    "acc_clear": "acc_true on the quarter of test pairs with the largest |true gap| (clear preferences)",
    "pearson_true_gap": "Pearson correlation between the model's reward gap Δ and the true reward gap over test "
                        "pairs (1: gaps proportional to the truth)",
    "ece": "expected calibration error of σ(Δ) as P(chosen wins): mean |predicted − observed| over probability "
           "bins, weighted by pairs (0: calibrated)",
    "gap_skewness": "skewness of the test reward gaps Δ (0: symmetric)",
    "train_seconds": "wall-clock seconds to train this reward model (a timing, not a result)",
    "noise": "label noise of the world (the temperature of its Bradley-Terry labels)",
    "seed": "training seed",
}
# Found figures go to the section their file name suggests (first match wins).
_FIGURE_SECTIONS = (("training", ("training_curve", "loss", "curve")), ("bon", ("bon",)),
                    ("histograms", ("hist",)), ("buckets", ("bucket", "accuracy_by")))


@dataclass
class RunContents:
    """What the run folders hold, by display name (the folder path relative to the run folder's parent)."""

    run_dirs: list[Path]
    metrics: dict[str, Path] = field(default_factory=dict)
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    bon: dict[str, dict[str, Any]] = field(default_factory=dict)
    rl_compare: dict[str, Path] = field(default_factory=dict)  # run name -> folder holding rl-compare's rows
    summaries: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    skipped_figures: list[str] = field(default_factory=list)  # saved PNGs the page draws itself from the data


def _walk(root: Path) -> list[Path]:
    out = []
    for path in sorted(root.iterdir()):
        if path.is_dir():
            if path.name not in _SKIP_DIRS and not path.name.startswith("checkpoint"):
                out += _walk(path)
        elif path.is_file():
            out.append(path)
    return out


def _display(path: Path, root: Path) -> str:
    """'demo/bt' for runs/demo/bt/metrics.jsonl given root runs/demo."""
    rel = path.parent.relative_to(root)
    return root.name if str(rel) == "." else f"{root.name}/{rel.as_posix()}"


def _read_json(path: Path, c: RunContents) -> Any:
    if path.stat().st_size > _MAX_JSON_BYTES:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        if path.name in ("bon_results.json", "summary.json"):
            c.problems.append(f"{path}: unreadable JSON ({e})")
        return None


def _read_alerts(path: Path, run: str, c: RunContents) -> None:
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            c.problems.append(f"{path} line {i + 1}: invalid JSON ({e.msg})")
            continue
        if not isinstance(row, dict) or not {"step", "check", "severity", "message"} <= set(row):
            c.problems.append(f"{path} line {i + 1}: an alert needs step, check, severity and message")
            continue
        c.alerts.append({"run": run, **row})


def _collect_file(path: Path, root: Path, c: RunContents) -> None:
    run = _display(path, root)
    stem = path.relative_to(root).with_suffix("").as_posix()
    name = path.name
    if name == "metrics.jsonl":
        c.metrics[run] = path
    elif name == "alerts.jsonl":
        _read_alerts(path, run, c)
    elif name == "rl_compare.csv.gz":
        c.rl_compare[run] = path.parent
    elif name.endswith(".md") and name in ("summary.md", "study.md"):
        c.texts[f"{run}/{name}"] = path.read_text(encoding="utf-8")
    elif name.endswith(".png"):
        c.figures[f"{root.name}/{stem}"] = path
    elif name.endswith(".json"):
        data = _read_json(path, c)
        if name == "bon_results.json" and isinstance(data, dict) and "per_rm" in data:
            c.bon[run] = data
        elif name == "summary.json" and isinstance(data, list) and all(isinstance(r, dict) for r in data):
            c.summaries[run] = data
        elif isinstance(data, dict) and _EVAL_KEYS <= set(data):
            c.evals[f"{root.name}/{stem}"] = data


def collect_runs(run_dirs: Sequence[str | Path]) -> RunContents:
    """Find everything the report can show under each run folder (module docstring)."""
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise ValueError("report: give at least one run folder")
    c = RunContents(run_dirs=dirs)
    for root in dirs:
        if not root.is_dir():
            what = "is a file, not a folder" if root.exists() else "does not exist"
            raise UserError(f"report: {root} {what}; give run folders (a train-rm train.output_dir, or a demo or "
                            "eval-rm --out folder)")
        for path in _walk(root):
            _collect_file(path, root, c)
    return c


# ---- HTML pieces ----

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
header{background:#1f3a5f;color:#fff;padding:18px 32px}header h1{margin:0 0 4px;font-size:24px}
header p{margin:2px 0;font-size:13px;opacity:.85}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid #d8dde3;padding:8px 32px;z-index:2}
nav a{margin-right:18px;color:#1f3a5f;text-decoration:none;font-size:14px}nav a:hover{text-decoration:underline}
main{max-width:1240px;margin:0 auto;padding:8px 32px 48px}
section{background:#fff;border:1px solid #d8dde3;border-radius:8px;margin:18px 0;padding:14px 22px}
h2{margin:4px 0 10px;font-size:20px;color:#1f3a5f}h3{font-size:15px;margin:16px 0 6px}
.tw{overflow-x:auto}table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #d8dde3;padding:4px 8px;white-space:nowrap}td.msg{white-space:normal;min-width:320px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:4px 16px}
th{background:#eef1f5;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:10px 0}figure img{max-width:100%;border:1px solid #e3e6ea}figcaption{font-size:12px;color:#57606a}
pre{background:#f3f4f6;padding:10px;overflow-x:auto;font-size:12px}
.note{color:#57606a;font-size:13px}.empty{color:#8a939d;font-style:italic}
.sev-stop{background:#fde2e1}.sev-warn{background:#fff4d6}.problem{color:#a40e26}
th{white-space:normal;max-width:12em;vertical-align:bottom}
th[title]{cursor:help;text-decoration:underline dotted}summary{cursor:pointer;margin:6px 0}
dl.gloss{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;font-size:13px;margin:4px 0 8px}
dl.gloss dt{font-family:ui-monospace,monospace;font-size:12px}dl.gloss dd{margin:0;color:#3d444d}
"""

_SECTIONS = (("summary", "Summary"), ("training", "Training curves"), ("histograms", "Reward-gap histograms"),
             ("buckets", "Accuracy and calibration"), ("alerts", "Margin monitor alerts"),
             ("bon", "Best-of-N"), ("rl", "Online RL vs DPO"), ("figures", "Other figures"))


def _e(x: Any) -> str:
    return html.escape(str(x))


def _fmt(x: Any) -> str:
    if isinstance(x, bool) or x is None:
        return _e(x)
    if isinstance(x, float):
        return f"{x:.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"
    return _e(x)


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], tips: dict[str, str] | None = None) -> str:
    """A table; `tips` gives a header's tooltip (title) by its name."""
    tips = tips or {}
    # Long metric names may wrap after "/" or "_" (<wbr>), so wide tables fit a laptop screen.
    names = {h: _e(h).replace("/", "/<wbr>").replace("_", "_<wbr>") for h in head}
    th = "".join(f"<th title=\"{_e(tips[h])}\">{names[h]}</th>" if h in tips else f"<th>{names[h]}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td class=\"num\">{_fmt(v)}</td>" if isinstance(v, (int, float))
                                    and not isinstance(v, bool) else f"<td>{_fmt(v)}</td>" for v in r) + "</tr>"
                   for r in rows)
    return f"<div class=\"tw\"><table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>"


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f"<figure><img alt=\"{_e(caption)}\" src=\"data:image/png;base64,{data}\">"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


class _Plotter:
    """Draws with a report/plots.py function into a temporary folder; returns the <figure> or an error line."""

    def __init__(self, tmp: Path, problems: list[str]):
        self.tmp, self.problems, self.count = tmp, problems, 0

    def __call__(self, fn: Callable[..., Path], caption: str, *args: Any, **kwargs: Any) -> str:
        self.count += 1
        try:
            path = fn(*args, self.tmp / f"plot_{self.count}.png", **kwargs)
        except (ValueError, KeyError, TypeError, OSError) as e:
            self.problems.append(f"{caption}: could not plot ({type(e).__name__}: {e})")
            return f"<p class=\"problem\">{_e(caption)}: could not plot ({_e(e)})</p>"
        return _img(path, caption)


def _last(path: Path, keys: Sequence[str]) -> dict[str, Any]:
    last: dict[str, Any] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            last.update({k: row[k] for k in keys if row.get(k) is not None})
    return last


def _short(names: Sequence[str]) -> dict[str, str]:
    """Legend names: the leading folders every name shares dropped ("demo/bt", "demo/fixed" -> "bt", "fixed"),
    so the legends stay narrow; names unchanged when there is one, or when dropping would merge two."""
    parts = [n.split("/") for n in names]
    k = 0
    while len(parts) > 1 and all(len(p) > k + 1 and p[k] == parts[0][k] for p in parts):
        k += 1
    short = {n: "/".join(p[k:]) for n, p in zip(names, parts)}
    return short if len(set(short.values())) == len(short) else {n: n for n in names}


_LOSS_NOTE = ("The loss of a margin strategy includes its margin term: with target margins m, a pair's loss is "
              "softplus(m − Δ), so at Δ = 0 it starts from mean softplus(m) (dotted, "
              "diagnostics/loss_at_zero_gap; softplus(1) = 1.31 for a fixed margin of 1) instead of BT's ln 2 = "
              "0.69. Compare each run's training loss with its own dotted line. The eval loss (markers) of a train-rm "
              "run is plain BT, −log σ(Δ) without the margin (evaluate/rm_eval.py reward_metrics), so it does "
              "compare across strategies.")


def _section_training(c: RunContents, plot: _Plotter) -> str:
    from marginkit.report.plots import plot_training_curves

    if not c.metrics:
        return "<p class=\"empty\">No metrics.jsonl in these runs.</p>"
    keys = ["loss", "rewards/accuracies", "rewards/margins"]
    cols = ["step", "epoch", "loss", "diagnostics/loss_at_zero_gap", "rewards/accuracies", "rewards/margins",
            "target_margins/mean", "eval_loss", "eval_rewards/accuracies"]
    finals = {name: _last(p, cols) for name, p in c.metrics.items()}
    margins = any(f.get("target_margins/mean") for f in finals.values())
    if any("target_margins/mean" in f for f in finals.values()):
        keys.append("target_margins/mean")
    short = _short(list(c.metrics))
    runs = {short[n]: p for n, p in c.metrics.items()}
    # One image per metric, in a grid: legible at page width, where one wide figure would shrink.
    parts = [f"<p class=\"note\">{_e(_LOSS_NOTE)}</p>"] if margins else []
    parts.append("<div class=\"grid\">" + "".join(plot(plot_training_curves, f"{k} (train: line, eval: markers)",
                                                       runs, keys=[k]) for k in keys) + "</div>")
    shown = [k for k in cols if any(k in f for f in finals.values())]
    rows = [[name] + [f.get(k, "") for k in shown] for name, f in finals.items()]
    parts.append("<h3>Last logged values</h3>" + _table(["run"] + shown, rows))
    return "".join(parts)


def _section_histograms(c: RunContents, plot: _Plotter) -> str:
    from marginkit.report.plots import plot_gap_histogram_counts

    hists = {n: (e["distribution"]["hist_counts"], e["distribution"]["hist_edges"]) for n, e in c.evals.items()
             if e.get("distribution", {}).get("hist_counts")}
    if not hists:
        return ("<p class=\"empty\">No eval reports (eval-rm JSON) in these runs; figures the runs saved are "
                "shown below when there are any.</p>")
    rows = [[n, d["n"], d["mean"], d["std"], d["skewness"], d["p05"], d["p50"], d["p95"]]
            for n, d in ((n, c.evals[n]["distribution"]) for n in hists)]
    short = _short(list(hists))
    return (plot(plot_gap_histogram_counts, "Held-out reward gap Δ = r_chosen − r_rejected per eval report",
                 {short[n]: h for n, h in hists.items()}, title="Reward gap Δ per eval report")
            + _table(["eval report", "pairs", "mean", "std", "skewness", "5%", "median", "95%"], rows))


def _section_buckets(c: RunContents, plot: _Plotter) -> str:
    from marginkit.evaluate.metrics import Bucket
    from marginkit.report.plots import plot_accuracy_by_bucket, plot_reliability

    if not c.evals:
        return "<p class=\"empty\">No eval reports in these runs.</p>"
    parts = []
    rows = []
    for n, e in c.evals.items():
        a, g = e["accuracy"], e.get("gold_accuracy")
        rows.append([n, e["n_pairs"], a["value"], f"[{a['low']:.3f}, {a['high']:.3f}]",
                     g["value"] if g else "", f"[{g['low']:.3f}, {g['high']:.3f}]" if g else "",
                     e.get("calibration", {}).get("ece", "")])
    parts.append(_table(["eval report", "pairs", "accuracy (labels)", "95% CI", "accuracy (true pref.)", "95% CI",
                         "ECE"], rows))
    short = _short(list(c.evals))
    figures = []
    for key, label in _BUCKET_KEYS:
        runs = {short[n]: [Bucket(**b) for b in e[key]["buckets"]] for n, e in c.evals.items()
                if isinstance(e.get(key), dict) and e[key].get("buckets")}
        if runs:
            figures.append(plot(plot_accuracy_by_bucket, f"Accuracy by bucket of {label}", runs,
                                title=f"Pairwise accuracy by {label.split(' (')[0]} quantile", xlabel=label))
    calibrations = _calibrations(c)
    if calibrations:
        figures.append(plot(plot_reliability, "Reliability of σ(Δ) per eval report (marker area: the bin's share "
                            "of pairs)", {short[n]: cal for n, cal in calibrations.items()}))
    parts.append("<div class=\"grid\">" + "".join(figures) + "</div>")
    return "".join(parts)


def _calibrations(c: RunContents) -> dict[str, Any]:
    """The eval reports' calibration (bins and all) as Calibration objects, by report name."""
    from marginkit.evaluate.calibration import Calibration, CalibrationBin

    out = {}
    for n, e in c.evals.items():
        cal = e.get("calibration")
        if isinstance(cal, dict) and cal.get("bins"):
            try:
                out[n] = Calibration(**{**cal, "bins": tuple(CalibrationBin(**b) for b in cal["bins"])})
            except TypeError as err:
                c.problems.append(f"{n}: calibration not readable ({err})")
    return out


def _section_alerts(c: RunContents) -> str:
    if not c.alerts:
        runs = ", ".join(sorted(c.metrics)) or "these runs"
        return f"<p class=\"empty\">No alerts.jsonl (the margin monitor raised nothing, or was off) in {_e(runs)}.</p>"
    by = {s: sum(a["severity"] == s for a in c.alerts) for s in sorted({a["severity"] for a in c.alerts})}
    head = "<p>" + ", ".join(f"{v} × {_e(k)}" for k, v in by.items()) + "</p>"
    rows = "".join(f"<tr class=\"sev-{_e(a['severity'])}\"><td>{_e(a['run'])}</td><td class=\"num\">{_e(a['step'])}"
                   f"</td><td>{_e(a['check'])}</td><td>{_e(a['severity'])}</td><td class=\"msg\">{_e(a['message'])}</td></tr>"
                   for a in sorted(c.alerts, key=lambda a: (a["run"], a["step"])))
    return (head + "<div class=\"tw\"><table><thead><tr><th>run</th><th>step</th><th>check</th><th>severity</th>"
            f"<th>message</th></tr></thead><tbody>{rows}</tbody></table></div>")


def _bon_tables(d: dict[str, Any]) -> str:
    rms, pct = list(d["per_rm"]), int(round(100 * d.get("level", 0.95)))
    interval = f"{pct}% t-interval over {d['runs']} runs" if d.get("runs") else f"{pct}% bootstrap interval over prompts"
    rows = []
    for i, n in enumerate(d["ns"]):
        row: list[Any] = [n, round(d["kl"][i], 4)]
        row += [f"{m['mean']:.3f} [{m['low']:.3f}, {m['high']:.3f}]" for m in (d["per_rm"][r]["judge"][i] for r in rms)]
        row += [d["reference"]["judge_best"][i], d["reference"]["unguided"][i]]
        rows.append(row)
    parts = [f"<h3>Mean judge reward of each RM's pick ({interval})</h3>",
             _table(["N", "KL"] + rms + ["judge's own best", "unguided"], rows)]
    if d["win_rates"]:
        others = list(d["win_rates"])
        above = d.get("runs_above_half")
        rows = [[n] + [f"{w['value']:.3f} [{w['low']:.3f}, {w['high']:.3f}] ({w['wins']}/{w['ties']}/{w['losses']})"
                       + (f" {above[r][i]}/{d['runs']}" if above else "")
                       for r, w in ((r, d["win_rates"][r][i]) for r in others)] for i, n in enumerate(d["ns"])]
        counts = "wins/ties/losses summed; runs with a win rate above ½" if above else "wins/ties/losses"
        parts += [f"<h3>Win rate over {_e(d['baseline'])} (ties ½; {counts})</h3>",
                  _table(["N"] + [f"{r} vs {d['baseline']}" for r in others], rows)]
        rows = [[n] + [f"{m['mean']:+.3f} [{m['low']:+.3f}, {m['high']:+.3f}]"
                       for m in (d["judge_diff"][r][i] for r in others)] for i, n in enumerate(d["ns"])]
        parts += [f"<h3>Paired difference of judge rewards, RM's pick − {_e(d['baseline'])}'s pick</h3>",
                  _table(["N"] + [f"{r} − {d['baseline']}" for r in others], rows)]
    rows = [[r, o["peak_n"], o["peak_judge"], "yes" if o["rising_at_end"] else "no", o["drop"], o["proxy_gain"]]
            for r, o in d["over_optimisation"].items()]
    parts += ["<h3>Over-optimisation: where the judge's reward stops rising</h3>",
              _table(["RM", "peak N", "judge at peak", "still rising at max N", "drop after peak",
                      "proxy gain (N=1 → max)"], rows)]
    return "".join(parts)


def _section_bon_combined(c: RunContents, plot: _Plotter) -> str:
    """Runs with the same baseline, RMs and N (e.g. one per training seed) summarised together first."""
    from marginkit.evaluate.bon_run import combine_runs
    from marginkit.report.plots import plot_bon_curves, plot_bon_win_rates

    groups: dict[tuple, list[str]] = {}
    for name, d in c.bon.items():
        groups.setdefault((d["baseline"], tuple(d["per_rm"]), tuple(d["ns"])), []).append(name)
    parts = []
    for names in (g for g in groups.values() if len(g) > 1):
        d = combine_runs([c.bon[n] for n in names])
        title = f"Across {len(names)} runs"
        parts.append(f"<h3>{title}: {_e(', '.join(names))}</h3><p class=\"note\">Means over runs; bands and "
                     "intervals are Student-t intervals over runs (how much the result moves between RM trainings "
                     "and prompt sets), not over prompts.</p>")
        parts.append(plot(plot_bon_curves, f"{title}: judge reward of the pick and proxy gain vs N", d,
                          title=f"Best-of-N, mean of {len(names)} runs"))
        if d["win_rates"]:
            parts.append(plot(plot_bon_win_rates, f"{title}: win rate over {d['baseline']} vs N", d,
                              title=f"Best-of-N win rate, mean of {len(names)} runs"))
        parts.append(_bon_tables(d))
    return "".join(parts)


def _section_bon(c: RunContents, plot: _Plotter) -> str:
    from marginkit.report.plots import plot_bon_curves, plot_bon_win_rates

    if not c.bon:
        return "<p class=\"empty\">No bon_results.json in these runs (run `marginkit bon`).</p>"
    parts = [_section_bon_combined(c, plot)]
    for name, d in c.bon.items():
        judge = d.get("judge", {})
        judge_text = "the gold world's true reward" if judge.get("kind") == "world" else f"RM {judge.get('name', '?')}"
        parts.append(f"<h3>{_e(name)}</h3><p class=\"note\">{d['n_prompts']} prompts × {d['n_samples']} samples, "
                     f"judge: {_e(judge_text)}, prompts: {_e(d.get('prompts', '?'))}, seed {d.get('seed', '?')}</p>")
        parts.append(plot(plot_bon_curves, f"{name}: judge reward of the pick and proxy gain vs N", d))
        if d["win_rates"]:
            parts.append(plot(plot_bon_win_rates, f"{name}: win rate over {d['baseline']} vs N", d))
        parts.append(_bon_tables(d))
    return "".join(parts)


def _markdown_to_html(text: str) -> str:
    """The rl-compare tables (markdown: '## ' headings, pipe tables, '- ' items, paragraphs) as HTML."""
    parts: list[str] = []
    table: list[list[str]] = []

    def flush() -> None:
        if table:
            rows = [r for r in table[1:] if not all(set(cell) <= set("-: ") for cell in r)]
            parts.append(_table(table[0], rows))
            table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
            continue
        flush()
        if line.startswith("## "):
            parts.append(f"<h3>{_e(line[3:])}</h3>")
        elif line.strip():
            parts.append(f"<p>{_e(line.replace('**', ''))}</p>")
    flush()
    return "".join(parts)


def _section_rl(c: RunContents, plot: _Plotter) -> str:
    from marginkit.study.rl_compare.report import (
        format_tables,
        load_rows,
        plot_frontier,
        plot_over_optimisation,
    )

    if not c.rl_compare:
        return "<p class=\"empty\">No rl_compare.csv.gz in these runs (run `marginkit world rl-compare`).</p>"
    parts = []
    for name, folder in c.rl_compare.items():
        try:
            d = load_rows(folder)
        except (OSError, ValueError, KeyError) as e:
            c.problems.append(f"{folder}: rl-compare rows could not be read ({e})")
            continue
        seeds = sorted({r["seed"] for r in d["rows"]})
        parts.append(f"<h3>{_e(name)}</h3><p class=\"note\">{len(seeds)} seeds; true reward of test-prompt samples; "
                     "intervals are 95% Student-t over seeds unless marked as over prompts.</p><div class=\"grid\">")
        parts.append(plot(plot_frontier, f"{name}: gold reward vs KL to SFT", d["rows"], d["curves"]))
        parts.append(plot(plot_over_optimisation, f"{name}: RM reward vs gold reward over training", d["curves"]))
        parts.append("</div>" + _markdown_to_html(format_tables(d["rows"], d["curves"], d["rms"], d["alerts"])))
    return "".join(parts)


def _section_summary(c: RunContents) -> str:
    parts = []
    for name, rows in c.summaries.items():
        keys = list(dict.fromkeys(k for r in rows for k in r))
        parts.append(f"<h3>{_e(name)}/summary.json</h3>" + _table(keys, [[r.get(k, "") for k in keys] for r in rows],
                                                                   tips=_COLUMNS))
        known = [k for k in keys if k in _COLUMNS]
        if known:
            parts.append("<details open><summary class=\"note\">What the columns mean</summary><dl class=\"gloss\">"
                         + "".join(f"<dt>{_e(k)}</dt><dd>{_e(_COLUMNS[k])}</dd>" for k in known) + "</dl></details>")
    for name, text in c.texts.items():
        if name.endswith("summary.md") and name.rsplit("/", 1)[0] in c.summaries:
            continue  # the demo's summary.md is its summary.json as text
        parts.append(f"<h3>{_e(name)}</h3><pre>{_e(text)}</pre>")
    if c.problems:
        parts.append("<h3>Files that could not be read</h3><ul>" +
                     "".join(f"<li class=\"problem\">{_e(p)}</li>" for p in c.problems) + "</ul>")
    return "".join(parts) or "<p class=\"empty\">No summary.json or summary.md in these runs.</p>"


def _redrawn(c: RunContents) -> tuple[str, ...]:
    """File-name prefixes/parts of saved figures the page draws itself from the runs' own data, which would
    only repeat it (issue 14: the demo's page showed each gap histogram and reliability diagram twice)."""
    drawn = []
    if c.metrics:
        drawn.append("training_curves")
    if c.bon:
        drawn.append("bon_")
    if c.rl_compare:
        drawn.append("rl_")
    if any(e.get("distribution", {}).get("hist_counts") for e in c.evals.values()):
        drawn += ["gap_hist"]  # eval-rm's <name>_gap_hist.png, the demo's gap_histograms.png
    if any(isinstance(e.get(k), dict) and e[k].get("buckets") for e in c.evals.values() for k, _ in _BUCKET_KEYS):
        drawn += ["accuracy_by"]
    if any(isinstance(e.get("calibration"), dict) and e["calibration"].get("bins") for e in c.evals.values()):
        drawn.append("reliability")
    return tuple(drawn)


def _place_figures(c: RunContents) -> dict[str, list[tuple[str, Path]]]:
    placed: dict[str, list[tuple[str, Path]]] = {}
    drawn = _redrawn(c)
    skipped = []
    for name, path in c.figures.items():
        low = path.name.lower()
        if path.stat().st_size > _MAX_PNG_BYTES:
            c.problems.append(f"{path}: PNG over {_MAX_PNG_BYTES // 2**20} MiB, not embedded")
            continue
        if any(low.startswith(d) if d.endswith("_") or d == "training_curves" else d in low for d in drawn):
            skipped.append(name)  # drawn on this page from the same files
            continue
        section = next((s for s, keys in _FIGURE_SECTIONS if any(k in low for k in keys)), "figures")
        placed.setdefault(section, []).append((name, path))
    c.skipped_figures = skipped
    return placed


def render_html(c: RunContents, title: str = "marginkit report") -> str:
    """The whole page as one string (plots drawn into a temporary folder and embedded)."""
    from marginkit import __version__

    placed = _place_figures(c)
    with tempfile.TemporaryDirectory(prefix="marginkit_report_") as tmp:
        plot = _Plotter(Path(tmp), c.problems)
        bodies = {"training": _section_training(c, plot), "histograms": _section_histograms(c, plot),
                  "buckets": _section_buckets(c, plot), "alerts": _section_alerts(c), "bon": _section_bon(c, plot),
                  "rl": _section_rl(c, plot)}
    bodies["summary"] = _section_summary(c)  # last: lists the problems met while plotting
    for section, figs in placed.items():
        extra = "<div class=\"grid\">" + "".join(_img(p, f"{n}.png (saved by the run)") for n, p in figs) + "</div>"
        head = "" if section == "figures" else "<h3>Figures saved by the runs</h3>"
        bodies[section] = bodies.get(section, "") + head + extra
    bodies.setdefault("figures", "<p class=\"empty\">No other figures.</p>")
    if c.skipped_figures:
        bodies["figures"] += ("<p class=\"note\">Not repeated here (drawn above from the same data): "
                              + _e(", ".join(f"{n}.png" for n in c.skipped_figures)) + ".</p>")
    nav = "".join(f"<a href=\"#{sid}\">{_e(label)}</a>" for sid, label in _SECTIONS)
    sections = "".join(f"<section id=\"{sid}\"><h2>{_e(label)}</h2>{bodies[sid]}</section>" for sid, label in _SECTIONS)
    runs = ", ".join(_e(d.resolve()) for d in c.run_dirs)
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{_CSS}</style></head>"
            f"<body><header><h1>{_e(title)}</h1><p>runs: {runs}</p><p>generated {time.strftime('%Y-%m-%d %H:%M')} "
            f"by marginkit {_e(__version__)}</p></header><nav>{nav}</nav><main>{sections}</main></body></html>\n")


@dataclass
class ReportConfig:
    """`marginkit report`: which run folders go on the page, and where it is written."""

    run_dirs: list[str] = field(default_factory=list, metadata={
        "help": "Run folders (train-rm, demo, eval-rm, bon, study outputs).", "positional": True,
        "required": True})
    out: str | None = field(default=None, metadata={"help": "HTML file (None: report.html in the first folder)."})
    title: str = field(default="marginkit report", metadata={"help": "Page title."})


def write_report(run_dirs: Sequence[str | Path], out_html: str | Path, title: str = "marginkit report") -> Path:
    """Gather the run folders into one static HTML file at `out_html` (written atomically); returns its path."""
    page = render_html(collect_runs(run_dirs), title)
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
