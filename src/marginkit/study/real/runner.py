"""The whole real study of one task: seeds (optionally in parallel), resume from results.jsonl, summary files."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marginkit.data.schema import Pair
from marginkit.study.margins import STUDY_VARIANTS, _append
from marginkit.study.margins import _read_rows as _read
from marginkit.study.real.bon import bon_rows
from marginkit.study.real.config import TASKS, RealStudyConfig, sized_config
from marginkit.study.real.data import TaskData, load_sections, load_task
from marginkit.study.real.features import FeatureCache
from marginkit.study.real.head import accuracy, tune_head
from marginkit.study.real.report import format_real_markdown, plot_summary
from marginkit.study.real.rows import flat_rows
from marginkit.study.real.runs import UNITS, RunContext
from marginkit.study.real.summary import summarize_real
from marginkit.study.render import write_rows
from marginkit.threads import choose_threads, torch_threads

__all__ = ["run_real_study", "task_configs", "run_tasks"]


def run_real_study(cfg: RealStudyConfig, say: Callable[[str], None] = print, data: TaskData | None = None,
                   sections: list[Any] | None = None) -> dict[str, Any]:
    """Run (or resume) the study of one task; returns the summary (also out/summary.json, out/study.md, plots).
    `data` and `sections` replace the task's files and the built-in sections (tests pass hand-made ones).
    torch's threads are set from `cfg.threads` for the run (marginkit.threads) and restored after."""
    with torch_threads(cfg.threads, say):
        return _run_real_study(cfg, say, data, sections)


def _run_real_study(cfg: RealStudyConfig, say: Callable[[str], None], data: TaskData | None,
                    sections: list[Any] | None) -> dict[str, Any]:
    from marginkit.models.pretrained import minilm_dir

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    variants = cfg.chosen_variants()
    t_start = time.perf_counter()
    data = data if data is not None else load_task(cfg)
    if sections is None:
        sections = load_sections(cfg) if cfg.sections else []
    for note in data.notes:
        say(f"{cfg.task}: {note}")
    say(f"{cfg.task}: {len(data.train)} train / {len(data.val)} validation / {len(data.test)} test pairs; sections "
        + ", ".join(f"{s.name} {len(s.pairs)}" for s in sections))
    encoder = Path(cfg.encoder) if cfg.encoder else minilm_dir()
    cache = FeatureCache(encoder, cfg.max_length, out.parent / "cache" if cfg.backbone == "frozen" else out / "cache",
                         say=say) if cfg.backbone == "frozen" else None
    ctx = RunContext(cfg, data, sections, encoder, cache, say)
    if cache is not None:  # every text of every split, section and pool, encoded once
        from marginkit.evaluate.sections import pair_items

        prompts, responses = [], []
        for pairs in [data.train, data.val, data.test] + [s.pairs for s in sections]:
            p, r = pair_items(pairs)
            prompts += p
            responses += r
        if data.pool is not None:
            prompts += [i for i, row in zip(data.pool.instructions, data.pool.responses) for _ in row]
            responses += [r for row in data.pool.responses for r in row]
        cache.ensure(prompts, responses)
    results, bon_path = out / "results.jsonl", out / "bon.jsonl"
    done = {(r["seed"], r["variant"]) for r in _read(results) if r["backbone"] == cfg.backbone}
    say(f"study {cfg.task} ({cfg.backbone}): {len(variants)} variants x {len(cfg.seeds)} seeds, "
        f"{sum((s, v.name) not in done for s in cfg.seeds for v in variants)} runs to do")
    _check_same_config(out / "study_config.json", cfg)
    (out / "study_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    units = []
    for seed in cfg.seeds:
        todo = [v for v in variants if (seed, v.name) not in done]
        if not todo:
            continue
        if data.pool is not None and len(todo) < len(variants):
            todo = variants  # the Best-of-N compares every variant's picks of one seed: redo the seed whole
            _drop(results, seed, None, cfg.backbone)
        units.append((seed, [v.name for v in todo]))

    def finish(seed: int, rows: list[dict[str, Any]], pools: dict[str, np.ndarray]) -> None:
        _append(results, rows)
        _drop(bon_path, seed, None, cfg.backbone)
        _append(bon_path, bon_rows(ctx, seed, pools))

    if cfg.jobs <= 1 or len(units) <= 1:
        for seed, names in units:
            finish(seed, *UNITS[cfg.backbone](ctx, seed, [STUDY_VARIANTS[n] for n in names]))
    else:  # seeds in parallel processes, each with its share of the cores; features are already on disk
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads, why = choose_threads(cfg.threads, cfg.jobs)
        say(f"{cfg.task}: torch threads in each of {min(cfg.jobs, len(units))} seed processes: {threads} ({why})")
        with ProcessPoolExecutor(min(cfg.jobs, len(units))) as pool:
            futures = [pool.submit(_seed_worker, cfg, data, sections, encoder, seed, names, threads)
                       for seed, names in units]
            for fut in as_completed(futures):
                seed, rows, pools, messages = fut.result()
                for m in messages:
                    say(m)
                finish(seed, rows, pools)
    rows = [r for r in _read(results) if r["backbone"] == cfg.backbone and r["seed"] in set(cfg.seeds)
            and r["variant"] in {v.name for v in variants}]
    bon = [r for r in _read(bon_path) if r["backbone"] == cfg.backbone and r["seed"] in set(cfg.seeds)]
    summary = summarize_real(rows, bon)
    summary.update(wall_seconds=time.perf_counter() - t_start, config=asdict(cfg), notes=data.notes,
                   sizes={"train": len(data.train), "validation": len(data.val), "test": len(data.test),
                          "sections": {s.name: len(s.pairs) for s in sections},
                          "pool": len(data.pool) if data.pool is not None else 0},
                   about=TASKS[cfg.task]["about"],
                   length_baseline={"test": _longer_wins(data.test), **{s.name: _longer_wins(s.pairs) for s in sections}})
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    write_rows(out / "rows.csv.gz", flat_rows(out))  # the flat rows docs/study/real.csv.gz is made of
    plot_summary(out, summary)
    md = format_real_markdown(summary)
    (out / "study.md").write_text(md)
    say("\n" + md)
    return summary


# settings that may change between resumed runs of one study folder (they only add or select rows)
_RESUMABLE = {"seeds", "variants", "out", "data_dir", "n_boot", "jobs"}


def _check_same_config(path: Path, cfg: RealStudyConfig) -> None:
    """Refuse to resume a study folder whose rows were made with other settings (they would be mixed)."""
    if not path.exists() or not (path.parent / "results.jsonl").exists():
        return
    before = json.loads(path.read_text())
    now = asdict(cfg)
    # a key the folder's file lacks is a setting added to marginkit after those rows were made: not compared
    diff = {k: (before[k], now[k]) for k in now if k not in _RESUMABLE and k in before and before[k] != now[k]}
    if diff:
        raise ValueError(f"{path.parent} holds results made with other settings {diff} (before, now); use another "
                         "--out or delete the folder")


def _longer_wins(pairs: Sequence[Pair]) -> float:
    """Accuracy of "the longer response (characters) is preferred", ties 1/2: what length alone gets."""
    return accuracy(np.array([len(p.chosen) - len(p.rejected) for p in pairs], dtype=np.float64))


def _drop(path: Path, seed: int, variant: str | None, backbone: str) -> None:
    """Remove the rows of (seed, variant) (every variant when None) of this backbone, rewriting atomically."""
    rows = _read(path)
    keep = [r for r in rows if not (r["seed"] == seed and r["backbone"] == backbone
                                    and (variant is None or r["variant"] == variant))]
    if len(keep) != len(rows):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, default=float) + "\n" for r in keep))
        os.replace(tmp, path)



def _seed_worker(cfg: RealStudyConfig, data: TaskData, sections: list[Any], encoder: Path, seed: int,
                 names: list[str], threads: int) -> tuple[int, list[dict[str, Any]], dict[str, np.ndarray], list[str]]:
    """One seed's runs in a worker process (`jobs` > 1); its messages come back to be printed in order."""
    torch.set_num_threads(threads)
    messages: list[str] = []
    cache = FeatureCache(encoder, cfg.max_length, Path(cfg.out).parent / "cache", say=messages.append) \
        if cfg.backbone == "frozen" else None
    ctx = RunContext(cfg, data, sections, encoder, cache, messages.append)
    rows, pools = UNITS[cfg.backbone](ctx, seed, [STUDY_VARIANTS[n] for n in names])
    return seed, rows, pools, messages


def task_configs(task: str, size: str = "quick", config_file: str | None = None, overrides: Sequence[str] = (),
                 values: dict[str, Any] | None = None) -> list[RealStudyConfig]:
    """The configs of `--task T` (a task or "all"): each task's `sized_config` with `values` (the flags) on
    top and out = OUT/<task>, OUT being values["out"] (default runs/study_real)."""
    from marginkit.configlib import ConfigError

    tasks = list(TASKS) if task == "all" else [task]
    if config_file and len(tasks) > 1:
        raise ConfigError("--config names one task's file; use it with one --task")
    values = dict(values or {})
    parent = Path(values.pop("out", None) or RealStudyConfig.out)
    return [sized_config(name, size, config_file, overrides, values={**values, "out": str(parent / name)})
            for name in tasks]


def run_tasks(configs: Sequence[RealStudyConfig], tune: bool = False, say: Callable[[str], None] = print) -> None:
    """`marginkit study margins --task T`: run the study of each config (`task_configs`), or with `tune` only
    grid the frozen head for BT on validation (writes tune_head.json)."""
    for cfg in configs:
        if tune:
            rows = tune_head(cfg, say=say)
            Path(cfg.out).mkdir(parents=True, exist_ok=True)
            (Path(cfg.out) / "tune_head.json").write_text(json.dumps(rows, indent=2) + "\n")
            say(f"{cfg.task}: best on validation: head_lr={rows[0]['head_lr']:g} head_epochs={rows[0]['head_epochs']}")
            continue
        run_real_study(cfg, say=say)
        say(f"wrote {cfg.out}/study.md, summary.json, results.jsonl and plots")
