"""Offline model folders for tests and demos: a word-level tokenizer and tiny randomly initialised LMs.

No hub is needed: the tokenizer is built from a word list with the `tokenizers` library and the
model from a GPT-NeoX (Pythia's architecture) or Llama config, then both are saved as a normal
Hugging Face folder that every loader in marginkit (and transformers) opens with from_pretrained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GPTNeoXConfig, LlamaConfig, PreTrainedTokenizerFast

__all__ = ["build_word_tokenizer", "make_tiny_model_dir", "SPECIAL_TOKENS"]

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")


def build_word_tokenizer(words: list[str], padding_side: Literal["right", "left"] = "right") -> PreTrainedTokenizerFast:
    """A word-level tokenizer: split on whitespace and punctuation, one id per known word.

    Ids 0-3 are <pad>, <unk>, <bos>, <eos>; unknown words map to <unk>. The pad token differs from
    EOS on purpose (pad = EOS is the trap that makes rewards read at the wrong token).
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies punctuation
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>",
        padding_side=padding_side,
    )


def make_tiny_model_dir(
    out_dir: str | Path,
    tokenizer: PreTrainedTokenizerFast,
    arch: Literal["gpt_neox", "llama"] = "gpt_neox",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_positions: int = 256,
    seed: int = 0,
    dropout: float = 0.0,
) -> Path:
    """Save a randomly initialised causal LM plus tokenizer to `out_dir` and return the path.

    `dropout` sets GPT-NeoX's attention and hidden dropout (Llama has attention dropout only); a value
    above 0 makes training consume the RNG, which resume tests need to prove the RNG state is restored.
    """
    from transformers import AutoModelForCausalLM

    common = dict(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, intermediate_size=4 * hidden_size, max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    if arch == "gpt_neox":
        config = GPTNeoXConfig(rotary_pct=0.25, use_parallel_residual=True, attention_dropout=dropout,
                               hidden_dropout=dropout, **common)
    elif arch == "llama":
        config = LlamaConfig(num_key_value_heads=num_heads, attention_dropout=dropout, **common)
    else:
        raise ValueError(f"make_tiny_model_dir: arch={arch!r}; known: gpt_neox, llama")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
