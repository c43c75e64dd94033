"""A run's identity: the settings that change its result, and their hash, so a resume cannot mix two runs (issue 14).

Stored in every checkpoint (trainer_state.pt and its run_identity.json) and in the run folder. A resume
compares the checkpoint's settings with the new run's, key by key, and refuses any difference the user has
not allowed in `train.resume_allow_changes`. In the identity: the training data (the file name and a
SHA-256 of its bytes, or a hash of the pairs given in memory), how it is read and tokenised, the model,
margin, loss and reference settings, and the optimisation (seed, batch sizes, learning rate and schedule,
steps or epochs, precision). Not in it: what only changes where or how often things are written
(output_dir, log_every, save_every, report_to, progress_bar), the eval data, the forward layout and the
attention kernel (the same rewards by construction, tests/test_packing.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from marginkit.configlib import ConfigError, flatten, to_dict
from marginkit.data.schema import Pair

__all__ = ["IDENTITY_FILE", "run_identity", "identity_changes", "check_resume_identity", "read_identity"]

IDENTITY_FILE = "run_identity.json"

_TRAIN_KEYS = ("seed", "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "num_epochs", "max_steps",
               "batch_size", "gradient_accumulation_steps", "lr_scheduler", "warmup_ratio", "max_grad_norm",
               "mixed_precision")
_DATA_KEYS = ("train", "split", "format", "on_invalid", "tokenize")
_SECTIONS = ("model", "margin", "loss", "reference", "preflight", "mask_audit")


def _file_digest(source: str) -> str | None:
    """SHA-256 of a local data file's bytes (of every file, by relative path, in a dataset folder); None for
    a name that is not a local path (a hub dataset: its name is the identity)."""
    path = Path(source)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _pairs_digest(pairs: Sequence[Pair]) -> str:
    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps(dataclasses.asdict(p), sort_keys=True, default=str).encode())
    return h.hexdigest()


def run_identity(cfg: Any, train_pairs: Sequence[Pair] | None = None) -> dict[str, Any]:
    """{"hash": sha256 of the settings, "settings": {dotted key: value}} for the run config `cfg` (any of
    RMRunConfig, SFTRunConfig, DPORunConfig); `train_pairs`: the pairs given in memory, if any."""
    full = to_dict(cfg)
    settings: dict[str, Any] = {}
    for section in _SECTIONS:
        if section in full:
            value = full[section]
            settings.update(flatten(value, f"{section}.") if isinstance(value, dict) else {section: value})
    data = {k: full["data"][k] for k in _DATA_KEYS if k in full["data"]}
    if train_pairs is not None:
        data["train"] = f"<{len(train_pairs)} pairs in memory>"
        data["train_sha256"] = _pairs_digest(train_pairs)
    else:
        data["train_sha256"] = _file_digest(cfg.data.train)
    settings.update(flatten(data, "data."))
    settings.update({f"train.{k}": full["train"][k] for k in _TRAIN_KEYS})
    # JSON round trip: the settings compare equal to the ones read back from a checkpoint (tuples -> lists)
    settings = json.loads(json.dumps(settings, sort_keys=True, default=str))
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return {"hash": digest, "settings": settings}


def identity_changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for every setting that differs, sorted by key (a missing key reads None)."""
    a, b = old["settings"], new["settings"]
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _covers(allowed: str, key: str) -> bool:
    """`allowed` names `key`, a section above it (margin -> margin.name) or the file it hashes (data.train ->
    data.train_sha256)."""
    return key == allowed or key.startswith(allowed + ".") or key == allowed + "_sha256"


def read_identity(checkpoint: Path) -> dict[str, Any] | None:
    """The identity stored with a checkpoint, or None for a checkpoint written before identities existed."""
    path = Path(checkpoint) / IDENTITY_FILE
    return json.loads(path.read_text()) if path.exists() else None


def check_resume_identity(checkpoint: Path, new: dict[str, Any], allowed: Sequence[str]) -> list[str]:
    """Refuse (ConfigError, one line naming each differing key with its old and new value) to resume from
    `checkpoint` with settings that differ from its own, except the keys in `allowed`; returns the lines
    that describe the allowed changes (to print), or a note that an old checkpoint could not be checked."""
    old = read_identity(checkpoint)
    if old is None:
        return [f"WARNING {checkpoint} holds no run identity (written by an older marginkit): the settings of "
                "the run it came from cannot be checked against this one"]
    changes = identity_changes(old, new)
    refused = [c for c in changes if not any(_covers(a, c[0]) for a in allowed)]
    if refused:
        listed = "; ".join(f"{k}: {o!r} -> {n!r}" for k, o, n in refused)
        keys = ",".join(k for k, _, _ in refused)
        raise ConfigError(f"train.resume_from: checkpoint {checkpoint} was trained with other settings ({listed}). "
                          "Resume with the checkpoint's settings, start afresh in a new train.output_dir (or with "
                          f"train.overwrite=true), or allow the change with train.resume_allow_changes=[{keys}]")
    return [f"resume: {k} changed on purpose (train.resume_allow_changes): {o!r} -> {n!r}" for k, o, n in changes]
