"""Reward models: any Hugging Face backbone with a scalar head, loaded and saved as plain HF checkpoints.

The model *is* an `AutoModelForSequenceClassification` with one label, so the trained folder
loads in TRL, RewardBench or a GRPO trainer with `from_pretrained` and gives the same rewards.
Where the reward is read:
- causal LMs (GPT-NeoX, Llama, ...): at the last non-padding token (the appended EOS). HF finds it
  as the right-most token that is not `pad_token_id`, which works for either padding side as long
  as the pad id never occurs inside real text; `load_reward_model` guarantees a pad token distinct
  from EOS (adding one if needed) and the pre-flight check verifies the position on real batches.
- encoders (BERT, MiniLM): the model's own pooler over [CLS], which attends to the whole input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from marginkit.errors import loading_model

__all__ = ["ModelConfig", "load_reward_model", "reward_head", "score_batch", "is_encoder", "reward_positions", "save_reward_model",
           "load_scorer_settings", "SCORER_FILE"]


@dataclass
class ModelConfig:
    name_or_path: str = field(default="", metadata={"help": "Hub name or local folder of the backbone (or a trained RM)."})
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file inside name_or_path to load (needs `gguf`)."})
    head_init: Literal["zero", "normal", "keep"] = field(
        default="zero",
        metadata={"help": "Scalar head init: zero (loss exactly ln 2 at step 0; TRL uses normal), normal, "
                  "or keep (an existing trained head, e.g. when continuing from an RM)."},
    )
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for activation memory."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Passed to from_pretrained."})


def is_encoder(model: nn.Module) -> bool:
    """True for bidirectional encoders (BERT-like): they pool [CLS] instead of the last token."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    config = model.config
    return config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False)


def reward_head(model: nn.Module) -> nn.Linear:
    """The final Linear producing the scalar reward (`score` in causal LMs, `classifier` in BERT)."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 1]
    if not heads:
        raise ValueError(f"{type(model).__name__} has no Linear layer with one output to use as the reward head")
    return heads[-1]


def load_reward_model(cfg: ModelConfig, dtype: torch.dtype | None = None) -> tuple[nn.Module, Any]:
    """Load (model, tokenizer) from a hub name or folder, ready to train or score.

    Ensures a pad token distinct from EOS (adding `<|pad|>` and growing the embeddings only when the
    tokenizer has none or pads with EOS), sets `config.pad_token_id`, and initialises the head.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not cfg.name_or_path:
        raise ValueError("model.name_or_path is empty: give a hub name or a local folder")
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.gguf_file:
        kwargs["gguf_file"] = cfg.gguf_file
    with loading_model(cfg.name_or_path):  # a missing folder or a corrupt file: one line, not HF's traceback
        tokenizer = AutoTokenizer.from_pretrained(cfg.name_or_path, **kwargs)
        # float32 master weights unless asked otherwise: transformers 5 reads dtype=None as "auto" and would
        # train a bf16 checkpoint in bf16 (mixed precision autocasts the forward instead).
        model = AutoModelForSequenceClassification.from_pretrained(
            cfg.name_or_path, num_labels=1, dtype=dtype or torch.float32, **kwargs
        )
    if tokenizer.pad_token_id is None or (
        tokenizer.pad_token_id == tokenizer.eos_token_id and not is_encoder(model)
    ):
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.head_init != "keep":
        head = reward_head(model)
        with torch.no_grad():
            if cfg.head_init == "zero":
                head.weight.zero_()
            else:
                head.weight.normal_(0.0, 1.0 / (head.in_features + 1) ** 0.5)
            if head.bias is not None:
                head.bias.zero_()
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tokenizer


def reward_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor, encoder: bool) -> torch.Tensor:
    """[N] index of the token each reward is read at: 0 ([CLS]) for encoders, else the last real token."""
    if encoder:
        return torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask).argmax(dim=-1)


def score_batch(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, with_hidden: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rewards [N] (float32) for N sequences, and optionally the last-layer hidden state [N, D] at the
    reward token (detached; used by similarity-based margins)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=with_hidden)
    rewards = out.logits[:, 0].float()
    hidden = None
    if with_hidden:
        pos = reward_positions(input_ids, attention_mask, is_encoder(model))
        hidden = out.hidden_states[-1][torch.arange(len(pos), device=pos.device), pos].detach()
    return rewards, hidden


SCORER_FILE = "marginkit_scorer.json"


def save_reward_model(model: nn.Module, tokenizer: Any, out_dir: str | Path, scorer: dict[str, Any] | None = None,
                      state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Save as a plain HF folder (safetensors + tokenizer), plus the scorer settings (template,
    truncation, padding side) in marginkit_scorer.json so `eval-rm` scores exactly as training did.

    With `scorer` (its "tokenize" settings and "rendering": plain, chat or mixed, see models/rm_folder.py),
    the folder is self-describing: its tokenizer's plain pair call `tok(prompt_text, response_text)`
    adds training's special tokens (checked by reloading it), the chat template is saved with it, and
    README.md plus the scorer file's "scoring" entry give the exact plain-transformers recipe. `state_dict`:
    the weights to write instead of the model's own (the full weights gathered from a sharded model)."""
    from marginkit.models import rm_folder

    model.save_pretrained(out_dir, safe_serialization=True, state_dict=state_dict)
    if scorer is None:
        tokenizer.save_pretrained(out_dir)
        return
    tok_settings = scorer.get("tokenize", {})
    encoder = is_encoder(model)
    rendering = scorer.get("rendering") or ("chat" if tok_settings.get("template") == "chat" else "plain")
    append_eos, max_length = tok_settings.get("append_eos", True), tok_settings.get("max_length", 1024)
    rm_folder.scoring_tokenizer(tokenizer, encoder, append_eos, rendering).save_pretrained(out_dir)
    plain_call = rm_folder.check_saved_tokenizer(out_dir, encoder, append_eos, rendering)
    recipe = rm_folder.scoring_recipe(tokenizer, encoder, append_eos, rendering, max_length, plain_call)
    (Path(out_dir) / SCORER_FILE).write_text(json.dumps({**scorer, "scoring": recipe}, indent=2) + "\n")
    (Path(out_dir) / "README.md").write_text(rm_folder.model_card(recipe))


def load_scorer_settings(model_dir: str | Path) -> dict[str, Any]:
    """The scorer settings saved with a marginkit RM ({} for a folder marginkit did not write)."""
    path = Path(model_dir) / SCORER_FILE
    return json.loads(path.read_text()) if path.exists() else {}
