"""The one scorer: tokenise, collate and score pairs exactly as training does (same template,
truncation, pooling), so an RM's evaluation numbers are the numbers training would see.

`score_rm_dir` scores a saved RM folder with its own tokenizer and saved settings; train-rm hands it to
the margin strategies (margins.base.MarginSetup.score_rm) that read a reference RM's gaps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from marginkit.configlib import from_dict
from marginkit.data.collate import collate_pairs
from marginkit.data.ledger import Ledger
from marginkit.data.tokenize import EncodedPair, TokenizeConfig, encode_pairs
from marginkit.models import reward as reward_models  # module, so a test may count load_reward_model calls
from marginkit.models.reward import score_batch

__all__ = ["score_encoded", "score_rm_dir", "swap_encoded"]


@torch.no_grad()
def score_encoded(
    model: Any, encoded: Sequence[EncodedPair], pad_id: int, padding_side: str = "right", batch_size: int = 32,
    device: torch.device | str | None = None, progress: bool = False, desc: str = "score",
) -> tuple[np.ndarray, np.ndarray]:
    """Rewards of chosen and rejected, each [B] float64, in the order of `encoded`. Eval mode, no grad."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    chosen, rejected = [], []
    for start in tqdm(range(0, len(encoded), batch_size), desc=desc, disable=not progress):
        batch = collate_pairs(list(encoded[start:start + batch_size]), pad_id, padding_side)  # [2b, T]
        rewards, _ = score_batch(model, batch["input_ids"].to(device), batch["attention_mask"].to(device))
        c, r = rewards.double().cpu().chunk(2)  # [2b] -> [b], [b]
        chosen.append(c)
        rejected.append(r)
    model.train(was_training)
    if not chosen:
        return np.zeros(0), np.zeros(0)
    return torch.cat(chosen).numpy(), torch.cat(rejected).numpy()


def swap_encoded(encoded: Sequence[EncodedPair]) -> list[EncodedPair]:
    """The same pairs with chosen and rejected exchanged (for the swap test)."""
    return [EncodedPair(p.rejected_ids, p.chosen_ids, p.prompt_len, -p.label_margin, -p.score_gap, -p.gold_gap, p.index)
            for p in encoded]


def score_rm_dir(model_dir: str | Path, pairs: Sequence[Any], device: torch.device | str, batch_size: int = 32,
                 progress: bool = False) -> np.ndarray:
    """Gaps [N] float64 of a saved RM folder on `pairs`, scored as `eval-rm` scores (its own tokenizer
    and saved scorer settings). NaN where those settings drop a pair (tokenize.on_too_long=drop).
    A `margins.base.ScoreRM`: the confidence margin's reference and ensemble gaps come from here."""
    settings = reward_models.load_scorer_settings(model_dir)
    model, tokenizer = reward_models.load_reward_model(
        reward_models.ModelConfig(name_or_path=str(model_dir), head_init="keep"))
    tok_cfg = from_dict(TokenizeConfig, settings.get("tokenize", {}))
    side = settings.get("padding_side", "right")
    encoded = encode_pairs(list(pairs), tokenizer, tok_cfg, Ledger(), reward_models.is_encoder(model))
    model.to(device)
    chosen, rejected = score_encoded(model, encoded, tokenizer.pad_token_id, side, batch_size, device=device,
                                     progress=progress)
    gaps = np.full(len(pairs), np.nan)
    gaps[[e.index for e in encoded]] = chosen - rejected  # [N]; dropped pairs stay NaN
    del model
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return gaps
