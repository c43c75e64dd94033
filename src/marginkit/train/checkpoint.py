"""Atomic checkpoints: written under a temporary name, then renamed, so a crash never leaves half a checkpoint.

Layout of `<output_dir>/checkpoints/step-000040/`:
    model/               plain Hugging Face folder (from_pretrained works)
    trainer_state.pt     optimizer, scheduler, RNG states, position in the data, strategy states, run identity
    sharded/             FSDP runs only: weights and optimizer states as torch.distributed.checkpoint shards
                         (train/sharding.py), which trainer_state.pt then does not hold
    run_identity.json    the settings that change the result (train/identity.py), read before a resume
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["save_checkpoint", "load_trainer_state", "latest_checkpoint", "rng_state", "set_rng_state"]


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: Path, save_model: Any, trainer_state: dict[str, Any], keep: int = 2,
                    files: dict[str, str] | None = None, folders: dict[str, Path] | None = None) -> Path:
    """Write `directory` atomically. `save_model(path)` writes the HF model folder; `files` maps a file name
    to its text (the run identity, train/identity.py); `folders` maps a name to a folder already written
    (the shards every process wrote), moved in. Keeps the newest `keep`."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_model(tmp / "model")
    torch.save(trainer_state, tmp / "trainer_state.pt")
    for name, text in (files or {}).items():
        (tmp / name).write_text(text)
    for name, folder in (folders or {}).items():
        os.replace(folder, tmp / name)
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    if keep > 0:
        older = sorted(p for p in directory.parent.glob("step-*") if not p.name.endswith(".tmp"))[:-keep]
        for old in older:
            shutil.rmtree(old)
    return directory


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    ckpts = sorted(p for p in (Path(output_dir) / "checkpoints").glob("step-*") if not p.name.endswith(".tmp"))
    return ckpts[-1] if ckpts else None


def load_trainer_state(directory: str | Path) -> dict[str, Any]:
    return torch.load(Path(directory) / "trainer_state.pt", weights_only=False)
