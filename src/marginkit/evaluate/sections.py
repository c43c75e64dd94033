"""Out-of-distribution sections, RewardBench style: named sets of pairs, one accuracy each, and their mean.

RewardBench (Lambert et al. 2024, arXiv 2403.13787) reports a reward model as one accuracy per
section (chat, chat-hard, safety, reasoning) plus their unweighted mean, so a large section cannot
hide a weak one. A section here is any named list of `Pair`s; builders read files through the
format converters of `data.formats`, so a user adds a section with a name, a file and a format:

    marginkit eval-sections --model RM_DIR --builtin all --section mine=my_pairs.jsonl

Built-in sections (files under shared/data; DATA below), all with ties dropped and counted:
- finegrained-qa: FineGrainedRLHF qa-feedback dev, 500 questions x 6 human comparisons of 4
  answers -> 2,616 strict pairs (format "finegrained"; the prompt is the question alone).
- mt-bench-gpt4: Prometheus' MT-Bench set, 80 second-turn questions x 4 models, GPT-4 1-5 scores
  (mean of 3) -> 371 graded pairs (format "prometheus"). Each model's second turn follows its own
  first answer, so the two sides of a pair have different prompts: the converter keeps them in
  metadata["chosen_prompt"] / ["rejected_prompt"], and the evaluator scores each response under
  its own prompt.
- vicuna-gpt4: Prometheus' Vicuna-Bench set, 80 questions x 4 models -> 322 graded pairs.

Scoring: every (prompt, response) is scored once by itself, with the RM's saved tokenize
settings (`evaluate.bon_run.score_samples`), and Δ = r(x_c, y_c) - r(x_r, y_r). With one prompt
per pair and no truncation this is exactly eval-rm's Δ; when a pair must be truncated, eval-rm
cuts both sides to the longer one's budget while here each response is cut on its own.

Per section: pairwise accuracy (ties 1/2) with a percentile-bootstrap interval over its pairs,
and accuracy by |label| bucket where the section is graded. The mean over S sections is
unweighted, mean_s acc_s, with a stratified bootstrap interval (each replicate resamples every
section's pairs within that section, then averages the S accuracies).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from marginkit.data.ledger import Ledger
from marginkit.data.schema import Pair
from marginkit.evaluate import metrics as M
from marginkit.evaluate.accuracy import pair_outcomes

__all__ = ["Section", "SectionSpec", "BUILTIN_SECTIONS", "build_section", "builtin_sections", "parse_section_spec",
           "load_section_specs", "pair_items", "section_gaps", "SectionResult", "SectionsReport", "sections_report",
           "evaluate_sections", "format_sections", "write_sections", "SectionsConfig", "config_sections", "rm_scorer"]


@dataclass
class SectionsConfig:
    """One `marginkit eval-sections` run: which RM, which sections, and the scoring settings."""

    model: str = field(default="", metadata={"help": "Trained RM folder.", "required": True})
    builtin: list[str] = field(default_factory=list, metadata={
        "help": "Built-in sections (finegrained-qa, mt-bench-gpt4, vicuna-gpt4) or 'all'; read from data_dir.",
        "repeat": True})
    section: list[str] = field(default_factory=list, metadata={
        "help": "A user section NAME=PATH or NAME=PATH@FORMAT; repeat the flag for several.", "repeat": True})
    sections_file: str | None = field(default=None, metadata={"help": "YAML list of {name, path, format, options}."})
    data_dir: str = field(default="../shared/data", metadata={
        "help": "Folder the built-in sections and relative section paths are read from."})
    batch_size: int = field(default=32, metadata={"help": "Sequence pairs per forward."})
    n_boot: int = field(default=1000, metadata={"help": "Bootstrap resamples for the intervals."})
    out: str | None = field(default=None, metadata={"help": "Output folder (None: MODEL/eval)."})

    def __post_init__(self) -> None:
        if not (self.builtin or self.section or self.sections_file):
            raise ValueError("no sections: give --builtin, --section or --sections-file")


def config_sections(cfg: SectionsConfig) -> list[Section]:
    """The sections a SectionsConfig names: built-in ones, then --section specs, then the sections file's."""
    sections = builtin_sections(cfg.data_dir, None if cfg.builtin == ["all"] else cfg.builtin) if cfg.builtin else []
    specs = [parse_section_spec(s) for s in cfg.section]
    specs += load_section_specs(cfg.sections_file) if cfg.sections_file else []
    return sections + [build_section(spec, cfg.data_dir) for spec in specs]


@dataclass(frozen=True)
class SectionSpec:
    """How to build one section: a file read with `load_pairs(path, format, **options)`.

    A relative path is taken relative to the data folder given to `build_section`.
    """

    name: str
    path: str
    format: str = "auto"
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class Section:
    name: str
    pairs: list[Pair]
    source: str
    ledger: Ledger
    description: str = ""


# name -> spec, paths relative to shared/data; read-only
BUILTIN_SECTIONS: Mapping[str, SectionSpec] = MappingProxyType({
    "finegrained-qa": SectionSpec(
        "finegrained-qa", "finegrained-rlhf-qa/dev_feedback.json.gz", "finegrained", {},
        "FineGrainedRLHF qa-feedback dev: human comparisons of 4 long-form QA answers (ties dropped)"),
    "mt-bench-gpt4": SectionSpec(
        "mt-bench-gpt4", "prometheus-eval/mt_bench_eval.json.gz", "prometheus", {"prompt_mismatch": "use_first"},
        "MT-Bench second turns of 4 models, GPT-4 1-5 scores (each side under its own dialogue)"),
    "vicuna-gpt4": SectionSpec(
        "vicuna-gpt4", "prometheus-eval/vicuna_eval.json.gz", "prometheus", {},
        "Vicuna-Bench answers of 4 models, GPT-4 1-5 scores"),
})


def build_section(spec: SectionSpec, data_dir: str | Path | None = None, on_invalid: str = "skip") -> Section:
    """Load a section's pairs through its format converter; skipped rows and ties are in the ledger."""
    from marginkit.data.load import load_pairs

    path = Path(spec.path)
    if not path.is_absolute() and data_dir is not None:
        path = Path(data_dir) / path
    pairs, ledger = load_pairs(path, format=spec.format, on_invalid=on_invalid, **dict(spec.options))  # type: ignore[arg-type]
    if not pairs:
        raise ValueError(f"section {spec.name!r}: no pairs in {path} ({ledger.summary()})")
    return Section(spec.name, pairs, str(path), ledger, spec.description)


def builtin_sections(data_dir: str | Path, names: Sequence[str] | None = None) -> list[Section]:
    """The built-in sections (all, or `names`) read from the shared data folder."""
    names = list(BUILTIN_SECTIONS) if names is None else list(names)
    unknown = sorted(set(names) - set(BUILTIN_SECTIONS))
    if unknown:
        raise ValueError(f"unknown built-in section(s) {unknown}; known: {sorted(BUILTIN_SECTIONS)}")
    return [build_section(BUILTIN_SECTIONS[n], data_dir) for n in names]


def parse_section_spec(text: str) -> SectionSpec:
    """"NAME=PATH" or "NAME=PATH@FORMAT" (format auto-detected when left out)."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise ValueError(f"section {text!r}: expected NAME=PATH or NAME=PATH@FORMAT")
    path, at, fmt = rest.rpartition("@") if "@" in rest else (rest, "", "auto")
    return SectionSpec(name, path, fmt if at else "auto")


def load_section_specs(path: str | Path) -> list[SectionSpec]:
    """Section specs from a YAML or JSON list: [{name, path, format?, options?, description?}, ...]."""
    import yaml

    items = yaml.safe_load(Path(path).read_text())
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a list of sections, each {{name, path, format, options}}")
    specs = []
    for k, item in enumerate(items):
        if not isinstance(item, dict) or not {"name", "path"} <= set(item) or set(item) - {
                "name", "path", "format", "options", "description"}:
            raise ValueError(f"{path} item {k}: need name and path, and only format, options, description besides: "
                             f"{item!r}")
        specs.append(SectionSpec(item["name"], str(item["path"]), item.get("format", "auto"),
                                 dict(item.get("options") or {}), item.get("description", "")))
    return specs


def pair_items(pairs: Sequence[Pair]) -> tuple[list[Any], list[str]]:
    """(prompts, responses) [2B]: the B chosen responses, then the B rejected, each under its own prompt
    (metadata["chosen_prompt"] / ["rejected_prompt"] when a grouped format recorded one)."""
    prompts = [p.metadata.get("chosen_prompt", p.prompt) for p in pairs]
    prompts += [p.metadata.get("rejected_prompt", p.prompt) for p in pairs]
    return prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs]


def section_gaps(score: Callable[[list[Any], list[str]], np.ndarray], pairs: Sequence[Pair]) -> np.ndarray:
    """Δ [B] = r(chosen) - r(rejected), with `score(prompts, responses) -> [2B]` rewards."""
    prompts, responses = pair_items(pairs)
    rewards = np.asarray(score(prompts, responses), dtype=np.float64)
    b = len(pairs)
    return rewards[:b] - rewards[b:]


@dataclass(frozen=True)
class SectionResult:
    name: str
    accuracy: M.Estimate
    by_label: M.BucketedAccuracy | None  # graded sections: accuracy by |label| (score gap or margin)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "accuracy": self.accuracy.to_dict(),
                "by_label": self.by_label.to_dict() if self.by_label is not None else None}


@dataclass(frozen=True)
class SectionsReport:
    """One accuracy per section and the unweighted mean with a stratified bootstrap interval."""

    sections: list[SectionResult]
    mean: float
    mean_low: float
    mean_high: float
    level: float
    model: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "mean": self.mean, "mean_low": self.mean_low, "mean_high": self.mean_high,
                "level": self.level, "sections": [s.to_dict() for s in self.sections]}


def _labels(pairs: Sequence[Pair]) -> np.ndarray:
    return np.array([p.score_gap if np.isfinite(p.score_gap) else (p.margin if p.margin is not None else np.nan)
                     for p in pairs], dtype=np.float64)


def sections_report(gaps: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray] | None = None,
                    n_boot: int = 1000, level: float = 0.95, seed: int = 0, n_buckets: int = 4,
                    model: str = "") -> SectionsReport:
    """Accuracy per section (ties 1/2, bootstrap interval) and the unweighted mean over sections.

    gaps: {section: Δ [B_s]}; labels: {section: |label| key [B_s] (NaN where none)} for the buckets.
    The mean's interval: n_boot replicates, each the mean over sections of the accuracy of a
    resample (with replacement) of that section's pairs; replicate b draws section s's indices from
    np.random.default_rng(seed) in section order.
    """
    if not gaps:
        raise ValueError("sections_report: no sections")
    results, scores = [], []
    for name, gap in gaps.items():
        g = np.asarray(gap, dtype=np.float64)
        acc = M.accuracy_with_ci(g, n_boot=n_boot, level=level, seed=seed)
        key = None if labels is None else labels.get(name)
        by_label = None
        if key is not None and np.isfinite(key).any():
            by_label = M.accuracy_by_bucket(g, np.abs(key), n_buckets)
        results.append(SectionResult(name, acc, by_label))
        scores.append(pair_outcomes(g))  # [B_s]: 1, 1/2, 0
    mean = float(np.mean([s.mean() for s in scores]))
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    for b in range(n_boot):
        reps[b] = np.mean([s[rng.integers(0, s.size, size=s.size)].mean() for s in scores])
    alpha = 1.0 - level
    low, high = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return SectionsReport(results, mean, float(low), float(high), level, model)


def rm_scorer(model_dir: str | Path, batch_size: int, device: str | None) -> Callable[[list[Any], list[str]], np.ndarray]:
    """score(prompts, responses) -> rewards [M] with the RM in model_dir, as eval-rm scores."""
    import torch

    from marginkit.configlib import from_dict
    from marginkit.data.tokenize import TokenizeConfig
    from marginkit.evaluate.bon_run import score_samples
    from marginkit.evaluate.sampling import SampleSet
    from marginkit.models.reward import ModelConfig, is_encoder, load_reward_model, load_scorer_settings

    settings = load_scorer_settings(model_dir)
    model, tokenizer = load_reward_model(ModelConfig(name_or_path=str(model_dir), head_init="keep"))
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tok_cfg = from_dict(TokenizeConfig, settings.get("tokenize", {}))
    side, encoder = settings.get("padding_side", "right"), is_encoder(model)

    def score(prompts: list[Any], responses: list[str]) -> np.ndarray:
        sset = SampleSet(prompts=list(prompts), samples=[[r] for r in responses], seed=0, policy={"sections": True})
        return score_samples(model, tokenizer, sset, tok_cfg, side, encoder, batch_size)[:, 0]

    return score


def evaluate_sections(model_dir: str | Path, sections: Sequence[Section], batch_size: int = 32,
                      device: str | None = None, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                      say: Callable[[str], None] = lambda _: None) -> SectionsReport:
    """Score every section's pairs with the RM in `model_dir` and report accuracy per section and the mean."""
    names = [s.name for s in sections]
    if len(set(names)) != len(names):
        raise ValueError(f"section names repeat: {names}")
    score = rm_scorer(model_dir, batch_size, device)
    gaps, labels = {}, {}
    for section in sections:
        say(f"section {section.name}: scoring {len(section.pairs)} pairs")
        gaps[section.name] = section_gaps(score, section.pairs)
        labels[section.name] = _labels(section.pairs)
    return sections_report(gaps, labels, n_boot, level, seed, model=str(model_dir))


def format_sections(report: SectionsReport, sections: Sequence[Section] | None = None) -> str:
    """Markdown table: one row per section (pairs, accuracy [interval]), then the mean."""
    lvl = int(round(report.level * 100))
    lines = [f"| section | pairs | accuracy [{lvl}% CI] |", "|---|---|---|"]
    for r in report.sections:
        a = r.accuracy
        lines.append(f"| {r.name} | {a.n} | {a.value:.3f} [{a.low:.3f}, {a.high:.3f}] |")
    lines.append(f"| **mean** | | {report.mean:.3f} [{report.mean_low:.3f}, {report.mean_high:.3f}] |")
    if sections:
        lines += [""] + [f"- {s.name}: {s.description or s.source} ({s.ledger.summary()})" for s in sections]
    return "\n".join(lines) + "\n"


def write_sections(report: SectionsReport, out_dir: str | Path, sections: Sequence[Section] | None = None) -> Path:
    """Write sections.json and sections.md to out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    d = report.to_dict()
    if sections:
        d["ledgers"] = {s.name: s.ledger.to_dict() for s in sections}
    (out / "sections.json").write_text(json.dumps(d, indent=2) + "\n")
    (out / "sections.md").write_text(format_sections(report, sections))
    return out / "sections.json"
