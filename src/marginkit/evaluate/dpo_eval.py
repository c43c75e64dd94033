"""`eval-dpo`: score pairs with a DPO policy's implicit reward exactly as training logs it, and report.

A DPO policy is a reward model in disguise: r(x, y) = β (log π_θ(y|x) - log π_ref(y|x)) (SimPO:
β log π_θ(y|x) / |y|). `score_preferences` computes it with the loss object training used
(losses/dpo.py `DPOLoss.rewards`), the same tokenisation (saved in the policy folder) and the same
reference (a model, or the precomputed artefact), so its numbers are the numbers training logs. The
report adds what an RM evaluation has: accuracy with a bootstrap interval, the gap distribution,
accuracy by |gap| bucket, agreement with the true preference on gold-reward data, the worst pairs.
Every accuracy here, `rewards/accuracies` included, counts ties as ½ (evaluate/accuracy.py), as RM
evaluation and training do; TRL counts ties 0, which differs only on exact ties.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from marginkit.data.collate import collate_pairs
from marginkit.data.ledger import Ledger
from marginkit.data.schema import Pair, prompt_text
from marginkit.data.tokenize import EncodedPair, TokenizeConfig, encode_pairs
from marginkit.evaluate import metrics as M
from marginkit.evaluate.accuracy import gold_oriented_gap
from marginkit.evaluate.rm_eval import reward_metrics
from marginkit.losses.dpo import DPOLoss, PreferenceLogps
from marginkit.models.logprobs import forward_logps

__all__ = ["DPOEvalConfig", "PreferenceScores", "score_preferences", "eval_metrics", "DPOEvalReport", "evaluate_policy_pairs",
           "evaluate_dpo_dir", "format_dpo_report", "write_dpo_report"]


@dataclass
class PreferenceScores:
    """Per-pair arrays [B] (float64): implicit rewards, policy and reference summed log-probs, raw gap h."""

    chosen_rewards: np.ndarray
    rejected_rewards: np.ndarray
    policy_chosen: np.ndarray
    policy_rejected: np.ndarray
    reference_chosen: np.ndarray | None
    reference_rejected: np.ndarray | None
    gold_gap: np.ndarray

    @property
    def reward_gap(self) -> np.ndarray:
        return self.chosen_rewards - self.rejected_rewards

    @property
    def raw_gap(self) -> np.ndarray:
        """h = (π_c - ρ_c) - (π_r - ρ_r); without a reference, π_c - π_r."""
        gap = self.policy_chosen - self.policy_rejected
        if self.reference_chosen is not None:
            gap = gap - (self.reference_chosen - self.reference_rejected)
        return gap


@torch.no_grad()
def score_preferences(model: nn.Module, encoded: Sequence[EncodedPair], pad_id: int, padding_side: str,
                      loss_fn: DPOLoss, reference: Callable[[dict], Any] | None, batch_size: int = 16,
                      chunk_size: int | None = None, autocast: Callable[[], AbstractContextManager] = nullcontext,
                      progress: bool = False) -> PreferenceScores:
    """Implicit rewards of every pair under `loss_fn`'s definition, in the order of `encoded` (eval mode)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    cols: dict[str, list[torch.Tensor]] = {k: [] for k in ("c", "r", "pc", "pr", "rc", "rr")}
    for start in tqdm(range(0, len(encoded), batch_size), desc="score", disable=not progress):
        batch = {k: v.to(device) for k, v in collate_pairs(list(encoded[start:start + batch_size]), pad_id,
                                                           padding_side).items()}
        with autocast():
            chosen, rejected = forward_logps(model, batch["input_ids"], batch["attention_mask"],
                                             batch["response_mask"], chunk_size).split()  # [2b] -> [b], [b]
            ref = reference(batch) if reference is not None else None
        x = PreferenceLogps(chosen.sum, rejected.sum, ref[0] if ref else None, ref[1] if ref else None,
                            chosen.n_tokens, rejected.n_tokens)
        c, r = loss_fn.rewards(x)
        for key, value in zip(("c", "r", "pc", "pr"), (c, r, chosen.sum, rejected.sum)):
            cols[key].append(value.double().cpu())
        if ref is not None:
            cols["rc"].append(ref[0].double().cpu())
            cols["rr"].append(ref[1].double().cpu())
    model.train(was_training)
    arr = {k: torch.cat(v).numpy() if v else np.zeros(0) for k, v in cols.items()}
    has_ref = bool(cols["rc"])
    return PreferenceScores(arr["c"], arr["r"], arr["pc"], arr["pr"], arr["rc"] if has_ref else None,
                            arr["rr"] if has_ref else None, np.array([e.gold_gap for e in encoded], dtype=float))


def eval_metrics(s: PreferenceScores, prefix: str = "") -> dict[str, float]:
    """The training log's metrics over scored pairs (docs/dpo.md), with `prefix` (eval_ during training)."""
    # loss, rewards/{accuracies,margins,chosen,rejected,gold_accuracies}: the RM evaluation's definitions
    out = reward_metrics(s.chosen_rewards, s.rejected_rewards, s.gold_gap)
    out.update({"logps/chosen": float(s.policy_chosen.mean()), "logps/rejected": float(s.policy_rejected.mean()),
                "logratios/gap_raw": float(s.raw_gap.mean())})
    if s.reference_chosen is not None and s.reference_rejected is not None:
        out["kl/implicit"] = float((0.5 * ((s.reference_chosen - s.policy_chosen)
                                           + (s.reference_rejected - s.policy_rejected))).mean())
    return {prefix + k: v for k, v in out.items()}


@dataclass
class DPOEvalReport:
    n_pairs: int
    loss_name: str
    beta: float
    accuracy: M.Estimate
    gold_accuracy: M.Estimate | None
    gold: M.GoldAgreement | None
    by_abs_gap: M.BucketedAccuracy
    distribution: M.Distribution
    metrics: dict[str, float]
    worst: list[dict[str, Any]]
    ledger: dict[str, Any]
    gaps: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in self.__dict__.items() if k != "gaps"}


def evaluate_policy_pairs(model: nn.Module, tokenizer: Any, pairs: list[Pair], tokenize: TokenizeConfig,
                          padding_side: str, loss_fn: DPOLoss, reference: Callable[[dict], Any] | None,
                          batch_size: int = 16, n_boot: int = 1000, chunk_size: int | None = None,
                          progress: bool = False, encoded: list[EncodedPair] | None = None) -> DPOEvalReport:
    """Score `pairs` with the policy's implicit reward and build the report."""
    ledger = Ledger()
    ledger.read(len(pairs))
    encoded = encoded if encoded is not None else encode_pairs(pairs, tokenizer, tokenize, ledger)
    ledger.keep(len(encoded))
    s = score_preferences(model, encoded, tokenizer.pad_token_id, padding_side, loss_fn, reference, batch_size,
                          chunk_size, progress=progress)
    gap, gold = s.reward_gap, s.gold_gap
    oriented = gold_oriented_gap(gap, gold)  # [#pairs with a known true preference]
    kept = [pairs[e.index] for e in encoded]
    worst = [{"id": kept[i].id, "index": int(encoded[i].index), "reward_gap": float(gap[i]),
              "prompt": prompt_text(kept[i].prompt)[-200:], "chosen": kept[i].chosen[:200],
              "rejected": kept[i].rejected[:200]} for i in M.worst_pairs(gap, min(10, len(gap)))]
    return DPOEvalReport(
        n_pairs=len(encoded), loss_name=loss_fn.name, beta=loss_fn.beta,
        accuracy=M.accuracy_with_ci(gap, n_boot=n_boot),
        gold_accuracy=M.accuracy_with_ci(oriented, n_boot=n_boot) if oriented.size else None,
        gold=M.gold_agreement(gap, gold) if np.isfinite(gold).all() and len(gold) else None,
        by_abs_gap=M.accuracy_by_bucket(gap, np.abs(gap), 4), distribution=M.gap_distribution(gap),
        metrics=eval_metrics(s), worst=worst, ledger=ledger.to_dict(), gaps=gap)


def _reference_for(settings: dict[str, Any], reference: str | None, loss_fn: DPOLoss, encoded: list[EncodedPair],
                   policy_cfg: Any, device: torch.device) -> Callable[[dict], Any] | None:
    """The reference eval-dpo uses: none for reference-free losses; an artefact file (checked against the
    data, and against the model hash training recorded); else a model folder or hub name."""
    from marginkit.models.policy import load_policy
    from marginkit.models.ref_cache import (
        CachedReference,
        ModelReference,
        data_hash,
        load_ref_logps,
        read_ref_logps,
    )

    if not loss_fn.needs_reference:
        return None
    recorded = settings.get("reference", {})
    where = reference or recorded.get("name_or_path")
    if not where:
        raise ValueError("this loss needs a reference: give --reference (a model folder or a precomputed artefact)")
    if str(where).endswith(".safetensors"):
        model_digest = recorded.get("model_hash") or read_ref_logps(where).metadata.get("model_hash", "")
        return CachedReference(load_ref_logps(where, model_digest, data_hash(encoded), "eval pairs"), device)
    ref, _ = load_policy(policy_cfg, str(where))
    return ModelReference(ref.to(device), policy_cfg.chunk_size)


@dataclass
class DPOEvalConfig:
    """`marginkit eval-dpo`: the policy, the pairs and the reference it is scored against."""

    model: str = field(default="", metadata={"help": "Folder of a policy trained by train-dpo.", "required": True})
    data: str = field(default="", metadata={"help": "Pairs file (JSONL/JSON/Parquet/HF dataset folder).",
                                            "required": True})
    reference: str | None = field(default=None, metadata={
        "help": "Reference model folder or precomputed artefact (None: the one training used)."})
    format: str = field(default="auto", metadata={"help": "Input format (see docs/data.md); auto detects it."})
    on_invalid: Literal["error", "skip"] = field(default="error", metadata={
        "help": "Unusable pairs: error (strict) or skip (counted in the ledger)."})
    out: str | None = field(default=None, metadata={"help": "Output folder (None: MODEL/eval)."})
    batch_size: int = field(default=16, metadata={"help": "Pairs per forward."})


def evaluate_dpo_dir(model_dir: str | Path, pairs: list[Pair], reference: str | None = None, batch_size: int = 16,
                     n_boot: int = 1000, progress: bool = True) -> DPOEvalReport:
    """Load a saved policy with the settings it was trained with (loss, β, tokenisation, reference) and
    evaluate `pairs`. `reference` overrides the recorded reference (a model or an artefact file)."""
    from marginkit.configlib import from_dict
    from marginkit.losses.registry import DPOLossSpec, build_dpo_loss
    from marginkit.models.policy import PolicyConfig, load_policy, load_policy_settings

    settings = load_policy_settings(model_dir)
    policy_cfg = PolicyConfig(name_or_path=str(model_dir), logprob_chunk_size=settings.get("logprob_chunk_size", 0))
    model, tokenizer = load_policy(policy_cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    loss_fn = build_dpo_loss(from_dict(DPOLossSpec, settings.get("loss", {})))
    tokenize = from_dict(TokenizeConfig, settings.get("tokenize", {}))
    side = settings.get("padding_side", "right")
    tokenizer.padding_side = side
    ledger = Ledger()
    encoded = encode_pairs(pairs, tokenizer, tokenize, ledger)
    ref = _reference_for(settings, reference, loss_fn, encoded, policy_cfg, device)
    return evaluate_policy_pairs(model, tokenizer, pairs, tokenize, side, loss_fn, ref, batch_size, n_boot,
                                 policy_cfg.chunk_size, progress, encoded)


def format_dpo_report(rep: DPOEvalReport) -> str:
    a, m = rep.accuracy, rep.metrics
    lines = [f"pairs scored: {rep.n_pairs}  (implicit reward of loss {rep.loss_name!r}, beta {rep.beta})",
             f"accuracy (labels): {a.value:.4f}  [{a.low:.4f}, {a.high:.4f}] {int(a.level * 100)}% bootstrap"]
    if rep.gold_accuracy is not None:
        g = rep.gold_accuracy
        lines.append(f"accuracy (true preference): {g.value:.4f}  [{g.low:.4f}, {g.high:.4f}]")
    d = rep.distribution
    lines.append(f"reward gap: mean {d.mean:.3f}, std {d.std:.3f}, median {d.p50:.3f}; raw log-ratio gap mean "
                 f"{m['logratios/gap_raw']:.3f}")
    lines.append(f"rewards: chosen {m['rewards/chosen']:.3f}, rejected {m['rewards/rejected']:.3f}; logps: chosen "
                 f"{m['logps/chosen']:.3f}, rejected {m['logps/rejected']:.3f}"
                 + (f"; implicit KL {m['kl/implicit']:.3f}" if "kl/implicit" in m else ""))
    lines += [f"  |gap| [{b.lo:.3g}, {b.hi:.3g}]: acc {b.accuracy:.3f} (n={b.n})" for b in rep.by_abs_gap]
    return "\n".join(lines)


def write_dpo_report(rep: DPOEvalReport, out_dir: str | Path, name: str = "eval") -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(rep.to_dict(), indent=2) + "\n")
    return path
