"""Reference-RM gaps for the confidence margin: score the training pairs once with frozen reward
models, exactly as `eval-rm` scores them, and keep the result in an on-disk cache.

The reward confidence of a frozen reference RM on pair i is its own gap
Δ^ref_i = r_ref(x_i, y_c,i) - r_ref(x_i, y_r,i) (Qin, Feng & Yang 2024, arXiv:2404.04932). An
ensemble of K RMs that differ only by seed gives K gaps per pair; `ensemble_gaps` reduces them to
their mean and (sample) standard deviation, the preference strength and its uncertainty of
"Secrets of RLHF II" (Wang et al. 2024, arXiv:2401.06080, sec. 2.1).

Scoring is injected (`MarginSetup.score_rm`, a `ScoreRM`): train-rm passes
`marginkit.evaluate.scorer.score_rm_dir`, which scores each RM folder as `eval-rm` does, with its own
tokenizer and its own saved scorer settings (marginkit_scorer.json: template, truncation, padding
side), never with the training run's tokenizer, so the gaps here are the gaps `eval-rm` reports.

Cache: `<cache_dir>/reference_gaps/<key>.npz`, one file per (data, model) with
key = sha256(format version, data fingerprint, model fingerprint), where the data fingerprint hashes
every pair's prompt, chosen and rejected text in order, and the model fingerprint hashes every file
of the folder (weights, config, tokenizer, scorer settings). A second run on the same data (another
seed, another margin scale) loads the gaps instead of scoring, so it costs what BT costs; a model
shared by a reference run and an ensemble run is scored once. Files are written to a temporary name
and renamed, so concurrent processes (every rank of a multi-GPU run scores on its own device when
the cache is cold) never see a half-written file.

This module imports numpy, torch and the standard library only: the heavy scorer (transformers via
models/) lives in evaluate/ and is passed in.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marginkit.margins.base import ScoreRM

__all__ = ["CACHE_VERSION", "ReferenceGaps", "pairs_fingerprint", "model_fingerprint", "cache_path",
           "reference_gaps", "ensemble_gaps"]

CACHE_VERSION = "marginkit-reference-gaps-v1"  # bump when scoring changes, to invalidate old caches


@dataclass(frozen=True)
class ReferenceGaps:
    """One RM's gaps on a dataset: gaps [N] float64 (NaN where the RM's own settings drop the pair),
    the cache file, and whether it was read from the cache."""

    gaps: np.ndarray
    path: Path
    hit: bool


def pairs_fingerprint(pairs: Sequence[Any]) -> str:
    """sha256 over every pair's (prompt, chosen, rejected), in order (values are looked up by index)."""
    h = hashlib.sha256()
    for pair in pairs:
        prompt = list(pair.prompt) if isinstance(pair.prompt, tuple) else pair.prompt
        h.update(json.dumps([prompt, pair.chosen, pair.rejected], ensure_ascii=False, sort_keys=True).encode())
        h.update(b"\n")
    return h.hexdigest()


def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 over every file of an RM folder: relative name, size and bytes, in sorted order.

    Weights, config, tokenizer and scorer settings all change the scores, so all of them count.
    """
    root = Path(model_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"confidence margin: reference RM folder {str(root)!r} does not exist; give the "
                                "folder of a trained reward model (e.g. runs/bt-seed0/model)")
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"confidence margin: reference RM folder {str(root)!r} is empty")
    for path in files:
        h.update(f"{path.relative_to(root).as_posix()}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def cache_path(cache_dir: str | Path, data_key: str, model_key: str) -> Path:
    """Where the gaps of one (data, model) live."""
    key = hashlib.sha256(f"{CACHE_VERSION}\0{data_key}\0{model_key}".encode()).hexdigest()[:32]
    return Path(cache_dir) / "reference_gaps" / f"{key}.npz"


def _write_atomic(path: Path, gaps: np.ndarray, meta: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, gaps=gaps, meta=np.array(json.dumps(meta)))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path, n: int, model_key: str) -> np.ndarray | None:
    """The cached gaps, or None when the file is missing, unreadable or for other data."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            gaps, meta = f["gaps"], json.loads(str(f["meta"]))
    except (OSError, ValueError, KeyError):
        return None
    if gaps.shape != (n,) or meta.get("model_key") != model_key:
        return None
    return gaps.astype(np.float64)


def reference_gaps(model_dir: str | Path, pairs: Sequence[Any], cache_dir: str | Path, device: torch.device | str,
                   score: ScoreRM, batch_size: int = 32, say: Callable[[str], None] = print,
                   data_key: str | None = None) -> ReferenceGaps:
    """One RM's gaps on `pairs`, from the cache when it holds them, else scored with `score` and cached.

    `data_key` (pairs_fingerprint) may be passed in to hash the data once for several models.
    """
    data_key = data_key or pairs_fingerprint(pairs)
    model_key = model_fingerprint(model_dir)
    path = cache_path(cache_dir, data_key, model_key)
    cached = _read(path, len(pairs), model_key)
    if cached is not None:
        say(f"confidence margin: reference {model_dir}: cache hit, {len(pairs)} gaps from {path}")
        return ReferenceGaps(cached, path, True)
    say(f"confidence margin: reference {model_dir}: cache miss, scoring {len(pairs)} pairs once")
    started = time.perf_counter()
    gaps = score(model_dir, pairs, device, batch_size)
    _write_atomic(path, gaps, {"version": CACHE_VERSION, "data_key": data_key, "model_key": model_key,
                               "model_dir": str(model_dir)})
    say(f"confidence margin: scored {len(pairs)} pairs in {time.perf_counter() - started:.1f} s; cached in {path}")
    return ReferenceGaps(gaps, path, False)


def ensemble_gaps(gaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and sample standard deviation over K ≥ 2 models: [K, N] -> [N], [N].

    mean_i = (1/K) Σ_k Δ^k_i,   std_i = sqrt( Σ_k (Δ^k_i - mean_i)^2 / (K - 1) ).
    """
    if gaps.dim() != 2 or gaps.shape[0] < 2:
        raise ValueError(f"ensemble_gaps: expected [K >= 2, N] gaps, got shape {tuple(gaps.shape)}")
    return gaps.mean(dim=0), gaps.std(dim=0, correction=1)
