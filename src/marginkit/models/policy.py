"""Policies: any Hugging Face causal LM (hub name or local folder) and its tokenizer, loaded for DPO/SFT and
saved as plain HF folders that `AutoModelForCausalLM.from_pretrained` opens.

Pad token: unlike a reward model (models/reward.py, which reads the reward at the last non-pad token
and so needs pad != EOS), a policy never reads anything at a pad position: every mask comes from the
collator's lengths and generation stops on EOS ids. So a tokenizer without a pad token pads with EOS,
as TRL does, and no token is ever added: a new token would add a row to the output layer, enter
every softmax and change the policy's distribution (and a randomly initialised row would make a
reference loaded separately differ from the policy, so the first DPO loss would not be ln 2).

Dropout is disabled by default (TRL's `disable_dropout=True`): with dropout on, the policy differs
from its frozen reference at step 0 and the DPO loss does not start at ln 2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from marginkit.errors import loading_model

__all__ = ["PolicyConfig", "load_policy", "disable_dropout", "save_policy", "load_policy_settings", "POLICY_FILE"]

POLICY_FILE = "marginkit_policy.json"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


@dataclass
class PolicyConfig:
    name_or_path: str = field(default="", metadata={"help": "Hub name or local folder of the causal LM to train."})
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = field(default="float32", metadata={
        "help": "Weight dtype when loading: float32 master weights for training (bf16 autocast still runs the "
                "matmuls in bf16 on GPU); auto keeps the checkpoint's dtype."})
    disable_dropout: bool = field(default=True, metadata={
        "help": "Set every dropout to 0 (TRL's default): the policy then equals its reference at step 0."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for activation memory."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Passed to from_pretrained."})
    logprob_chunk_size: int = field(default=0, metadata={
        "help": "Sequence positions per chunk of the float32 log-softmax (0: one chunk); smaller saves memory "
                "with large vocabularies (models/logprobs.py)."})

    def __post_init__(self) -> None:
        if self.logprob_chunk_size < 0:
            raise ValueError(f"model.logprob_chunk_size={self.logprob_chunk_size}: must be >= 0 (0: no chunking)")

    @property
    def chunk_size(self) -> int | None:
        return self.logprob_chunk_size or None


def disable_dropout(model: nn.Module) -> int:
    """Zero every dropout probability: nn.Dropout modules, and float `*dropout` attributes that HF
    attention modules pass to their kernels (e.g. Llama's `attention_dropout`). Returns the count."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout) and module.p:
            module.p = 0.0
            count += 1
        for name, value in vars(module).items():
            if name.endswith("dropout") and isinstance(value, float) and value:
                setattr(module, name, 0.0)
                count += 1
    return count


def load_policy(cfg: PolicyConfig, name_or_path: str | None = None) -> tuple[nn.Module, Any]:
    """Load (model, tokenizer) of a causal LM from `name_or_path` (default cfg.name_or_path).

    A tokenizer without a pad token pads with EOS (module docstring); `config.pad_token_id` and the
    generation config follow the tokenizer. Dropout is zeroed when cfg.disable_dropout.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = name_or_path or cfg.name_or_path
    if not path:
        raise ValueError("model.name_or_path is empty: give a hub name or a local folder of a causal LM")
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    with loading_model(path):  # a missing folder or a corrupt file: one line, not HF's traceback
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_DTYPES[cfg.dtype], **kwargs)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(f"{path}: the tokenizer has neither a pad nor an EOS token; give it one of them")
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if cfg.disable_dropout:
        disable_dropout(model)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tokenizer


def save_policy(model: nn.Module, tokenizer: Any, out_dir: str | Path, settings: dict[str, Any] | None = None,
                state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Save a plain HF folder (safetensors + tokenizer) and, when given, the settings training used
    (tokenisation, padding side, loss, β, reference) in marginkit_policy.json, so `eval-dpo` scores
    pairs exactly as training did. `state_dict`: the weights to write instead of the model's own (the full
    weights gathered from a sharded model)."""
    model.save_pretrained(out_dir, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(out_dir)
    if settings is not None:
        (Path(out_dir) / POLICY_FILE).write_text(json.dumps(settings, indent=2) + "\n")


def load_policy_settings(model_dir: str | Path) -> dict[str, Any]:
    """The settings saved with a marginkit policy ({} for a folder marginkit did not write)."""
    path = Path(model_dir) / POLICY_FILE
    return json.loads(path.read_text()) if path.exists() else {}
