"""Reference log-probs, computed once and cached on disk under model and data hashes, and the reference
sources a DPO step reads from (a frozen model, the cache, or none).

With the cache, DPO holds no reference model in memory and skips its forward (a quarter of DPO's
compute). `marginkit precompute-ref` writes one artefact per data split; training recomputes both
hashes and refuses an artefact whose hashes differ. The artefact is one safetensors file:

    index            [N] int64    EncodedPair.index of each pair (its position in the loaded data)
    chosen_logps     [N] float32  Σ log π_ref(y_c | x) over response tokens (models/logprobs.py)
    rejected_logps   [N] float32
    chosen_tokens    [N] int64    response token counts (for length-averaged losses)
    rejected_tokens  [N] int64
    metadata: format, model_hash, data_hash, model, precision, n_pairs, created

named `ref-logps-<model_hash[:16]>-<data_hash[:16]>.safetensors`, written to a temporary name then
renamed. model_hash: SHA-256 over the reference's state dict as loaded (names, dtypes, shapes, bytes),
so it identifies the weights that produced the numbers whatever the folder looks like. data_hash:
SHA-256 over every pair's index, prompt length and token ids, so any change of data, tokenizer,
template or truncation changes it. Numbers computed in bf16 and in float32 differ slightly; the
precision is recorded, not part of the key.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from marginkit.data.collate import collate_pairs
from marginkit.data.tokenize import EncodedPair
from marginkit.models.logprobs import forward_logps
from marginkit.models.pair_forward import batch_logps

__all__ = ["ReferenceConfig", "RefLogps", "RefCacheError", "model_hash", "data_hash", "cache_path",
           "compute_ref_logps", "write_ref_logps", "read_ref_logps", "load_ref_logps", "ReferenceSource",
           "ModelReference", "CachedReference", "FORMAT"]

FORMAT = "marginkit-ref-logps-v1"


@dataclass
class ReferenceConfig:
    source: Literal["auto", "model", "precomputed", "none"] = field(default="auto", metadata={
        "help": "Reference log-probs: model (a frozen copy run in the loop), precomputed (read from the artefact "
                "`marginkit precompute-ref` writes; no reference in memory), none (reference-free losses: simpo). "
                "auto: model, or none for simpo."})
    name_or_path: str | None = field(default=None, metadata={
        "help": "The reference model (None: the policy's starting weights, model.name_or_path)."})
    cache: str | None = field(default=None, metadata={
        "help": "Artefact of the training pairs for source=precomputed (None: found by its hashes under "
                "data.cache_dir/ref_logps)."})
    eval_cache: str | None = field(default=None, metadata={
        "help": "Artefact of the eval pairs for source=precomputed (None: found by its hashes)."})
    batch_size: int = field(default=16, metadata={"help": "Pairs per forward when precomputing."})

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"reference.batch_size={self.batch_size}: must be >= 1")


class RefCacheError(ValueError):
    """A missing or mismatched reference artefact; the message names the hashes and the fix."""


@dataclass
class RefLogps:
    """Cached reference log-probs of N pairs (module docstring), CPU tensors."""

    index: torch.Tensor
    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor
    metadata: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.index.numel())


def model_hash(model: nn.Module) -> str:
    """SHA-256 hex of a model's state dict: parameter names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def data_hash(encoded: Sequence[EncodedPair]) -> str:
    """SHA-256 hex of the tokenised pairs: each pair's index, prompt length, chosen and rejected ids."""
    h = hashlib.sha256()
    for p in encoded:
        h.update(f"{p.index}|{p.prompt_len}|{','.join(map(str, p.chosen_ids))}|"
                 f"{','.join(map(str, p.rejected_ids))}\n".encode())
    return h.hexdigest()


def cache_path(cache_dir: str | Path, model_digest: str, data_digest: str) -> Path:
    return Path(cache_dir) / "ref_logps" / f"ref-logps-{model_digest[:16]}-{data_digest[:16]}.safetensors"


@torch.no_grad()
def compute_ref_logps(model: nn.Module, encoded: Sequence[EncodedPair], pad_id: int, padding_side: str = "right",
                      batch_size: int = 16, device: torch.device | str | None = None, chunk_size: int | None = None,
                      autocast: Callable[[], AbstractContextManager] = nullcontext, progress: bool = False) -> RefLogps:
    """Reference log-probs of every pair, in the order of `encoded` (eval mode, no grad)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts: list[tuple[torch.Tensor, ...]] = []
    for start in tqdm(range(0, len(encoded), batch_size), desc="reference log-probs", disable=not progress):
        batch = collate_pairs(list(encoded[start:start + batch_size]), pad_id, padding_side)  # [2b, T]
        with autocast():
            logps = forward_logps(model, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                  batch["response_mask"].to(device), chunk_size)
        chosen, rejected = logps.split()  # [2b] -> [b], [b]
        parts.append((chosen.sum.float().cpu(), rejected.sum.float().cpu(), chosen.n_tokens.long().cpu(),
                      rejected.n_tokens.long().cpu()))
    model.train(was_training)
    cols = [torch.cat(c) if c else torch.zeros(0) for c in zip(*parts)] if parts else [torch.zeros(0)] * 4
    index = torch.tensor([p.index for p in encoded], dtype=torch.long)
    return RefLogps(index, cols[0].float(), cols[1].float(), cols[2].long(), cols[3].long())


def write_ref_logps(path: str | Path, ref: RefLogps, metadata: dict[str, str]) -> Path:
    """Write the artefact atomically (temporary name in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"index": ref.index, "chosen_logps": ref.chosen_logps, "rejected_logps": ref.rejected_logps,
               "chosen_tokens": ref.chosen_tokens, "rejected_tokens": ref.rejected_tokens}
    meta = {"format": FORMAT, "n_pairs": str(len(ref)), "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **metadata}
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def read_ref_logps(path: str | Path) -> RefLogps:
    path = Path(path)
    if not path.exists():
        raise RefCacheError(f"reference log-probs {path}: no such file (run `marginkit precompute-ref` first)")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise RefCacheError(f"{path}: not a marginkit reference artefact (format {meta.get('format')!r})")
        t = {k: f.get_tensor(k) for k in f.keys()}
    return RefLogps(t["index"], t["chosen_logps"], t["rejected_logps"], t["chosen_tokens"], t["rejected_tokens"], meta)


def load_ref_logps(path: str | Path, model_digest: str, data_digest: str, what: str = "training pairs") -> RefLogps:
    """Read an artefact and refuse it unless it was made from this reference model and these pairs."""
    ref = read_ref_logps(path)
    problems = []
    if ref.metadata.get("model_hash") != model_digest:
        problems.append(f"model hash {ref.metadata.get('model_hash', '?')[:16]} != {model_digest[:16]} "
                        f"(this run's reference, {ref.metadata.get('model', '?')} in the file)")
    if ref.metadata.get("data_hash") != data_digest:
        problems.append(f"data hash {ref.metadata.get('data_hash', '?')[:16]} != {data_digest[:16]} (this run's "
                        "tokenised pairs: the data, tokenizer, template or truncation changed)")
    if problems:
        raise RefCacheError(f"reference log-probs {path} were not made for these {what}: " + "; ".join(problems)
                            + ". Rerun `marginkit precompute-ref` with this run's config, or point reference.cache "
                            "at the right artefact")
    return ref


class ReferenceSource(Protocol):
    """Reference log-probs of a collated batch: (chosen [B], rejected [B]) summed, or None (reference-free)."""

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None: ...


class ModelReference:
    """A frozen reference model run in the loop, under no_grad, in eval mode (no dropout)."""

    def __init__(self, model: nn.Module, chunk_size: int | None = None) -> None:
        self.model, self.chunk_size = model.eval(), chunk_size
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        chosen, rejected = batch_logps(self.model, batch, self.chunk_size).split()  # [2B] -> [B], [B]
        return chosen.sum.detach(), rejected.sum.detach()


class CachedReference:
    """Reference log-probs looked up in a precomputed artefact by each pair's `index`."""

    def __init__(self, ref: RefLogps, device: torch.device | str = "cpu") -> None:
        size = int(ref.index.max()) + 1 if len(ref) else 0
        self.row = torch.full((size,), -1, dtype=torch.long)
        self.row[ref.index] = torch.arange(len(ref))
        self.chosen, self.rejected = ref.chosen_logps.to(device), ref.rejected_logps.to(device)
        self.row = self.row.to(device)

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        index = batch["index"].to(self.row.device)
        if int(index.max()) >= self.row.numel() or bool((self.row[index] < 0).any()):
            raise RefCacheError(f"pairs {index.tolist()[:8]} are missing from the reference artefact")
        rows = self.row[index]  # [B]
        return self.chosen[rows], self.rejected[rows]
