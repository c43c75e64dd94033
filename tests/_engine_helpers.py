"""Helpers for the engine tests (test_engine, test_checkpoint_resume, test_ddp and scripts/ddp_train.py).

Small synthetic word pairs, a run config with deterministic, easily compared settings (float32,
constant learning rate, no clipping, no progress bar), and an AdamW that records what it is given.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from marginkit.config import RMRunConfig
from marginkit.data.schema import Pair
from marginkit.margins import MarginSpec
from marginkit.models.reward import ModelConfig
from marginkit.train.engine import TrainConfig
from marginkit.train.rm import RMRunResult, train_reward_model

SPECIAL = {"<pad>", "<unk>", "<bos>", "<eos>"}


def vocab_words(tokenizer: Any) -> list[str]:
    """The tokenizer's ordinary words, in id order (what synthetic pairs are written with)."""
    vocab = tokenizer.get_vocab()
    return [w for w in sorted(vocab, key=vocab.get) if w not in SPECIAL]


def make_pairs(words: list[str], n: int, seed: int = 0) -> list[Pair]:
    """n pairs with ragged lengths (prompt 1-5 words, responses 1-6 words); chosen != rejected."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        prompt = " ".join(rng.choices(words, k=rng.randint(1, 5)))
        chosen = " ".join(rng.choices(words, k=rng.randint(1, 6)))
        rejected = chosen
        while rejected == chosen:
            rejected = " ".join(rng.choices(words, k=rng.randint(1, 6)))
        pairs.append(Pair(prompt, chosen, rejected, id=f"pair-{i}"))
    return pairs


def run_config(model_dir: str | Path, output_dir: str | Path, *, head_init: str = "normal",
               margin: MarginSpec | None = None, padding_side: str = "right", **train: Any) -> RMRunConfig:
    """A run config for tests: AdamW at a constant lr 1e-3, no warm-up, no clipping, float32, log every step."""
    settings: dict[str, Any] = dict(
        output_dir=str(output_dir), seed=0, learning_rate=1e-3, lr_scheduler="constant", warmup_ratio=0.0,
        max_grad_norm=None, mixed_precision="no", log_every=1, progress_bar=False, batch_size=2,
    )
    settings.update(train)
    cfg = RMRunConfig(model=ModelConfig(name_or_path=str(model_dir), head_init=head_init),
                      margin=margin or MarginSpec(), train=TrainConfig(**settings))
    cfg.data.padding_side = padding_side
    return cfg


def train(cfg: RMRunConfig, pairs: list[Pair], eval_pairs: list[Pair] | None = None) -> RMRunResult:
    """train_reward_model without console output."""
    return train_reward_model(cfg, pairs, eval_pairs, console=lambda _: None)


def load_weights(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a saved HF folder (single safetensors file)."""
    (path,) = Path(model_dir).glob("*.safetensors")
    return load_file(str(path))


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch single-threaded, then restore. The tiny models' ops are far too small to gain from
    intra-op threads, and on a busy 2-core machine the threads contend: measured 0.4 s against 10 s
    for the same 6-step run."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class RecordingAdamW(torch.optim.AdamW):
    """AdamW that keeps, for every step, the parameters it was given and their gradients (clones)."""

    def __init__(self, params: Any, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.params_before: list[list[torch.Tensor]] = []
        self.grads: list[list[torch.Tensor]] = []

    def step(self, closure: Any = None) -> Any:
        params = [p for group in self.param_groups for p in group["params"]]
        self.params_before.append([p.detach().clone() for p in params])
        self.grads.append([torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params])
        return super().step(closure)


def record_optimizers(monkeypatch: Any, **overrides: Any) -> list[RecordingAdamW]:
    """Make train_reward_model build RecordingAdamW (it calls torch.optim.AdamW), with `overrides` of its
    keyword arguments (e.g. eps); returns the optimizers in the order they were built."""
    made: list[RecordingAdamW] = []

    class Recorded(RecordingAdamW):
        def __init__(self, params: Any, **kwargs: Any) -> None:
            super().__init__(params, **{**kwargs, **overrides})
            made.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", Recorded)
    return made
