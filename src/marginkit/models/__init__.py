"""Models: reward models on any HF backbone (reward.py) and offline tiny models/tokenizers (tiny.py)."""

from marginkit.models.reward import (
    ModelConfig,
    is_encoder,
    load_reward_model,
    load_scorer_settings,
    reward_head,
    reward_positions,
    save_reward_model,
    score_batch,
)
from marginkit.models.tiny import build_word_tokenizer, make_tiny_model_dir

__all__ = ["ModelConfig", "build_word_tokenizer", "is_encoder", "load_reward_model", "load_scorer_settings",
           "make_tiny_model_dir", "reward_head", "reward_positions", "save_reward_model", "score_batch"]
