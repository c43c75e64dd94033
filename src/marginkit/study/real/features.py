"""Frozen-encoder features of (prompt, response) texts ([CLS] and mean-pooled MiniLM states), cached on disk."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marginkit.data.schema import Pair, prompt_text

__all__ = ["FeatureCache"]


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
