"""Sampling completions for online RL behind one small interface, and reading their per-token log-probs with
the shift and mask DPO uses (models/logprobs.py).

`Generator` is a Protocol: `generate(prompts, n, max_new_tokens, temperature, seed) -> Completions`. The
RL loop (train/rl.py) only sees that, so a faster backend (vLLM, SGLang) can be plugged in on a GPU
machine without touching the loop; `HFGenerator` is the implementation that needs nothing more than the
policy itself: Hugging Face `model.generate`, batched, with the KV cache, sampling at the given
temperature with no top-k / top-p (the samples follow the policy's own distribution, so the importance
ratio of the first optimisation epoch is exactly 1).

Layout of a `Completions` batch (N = P n rows, prompt-major: the n completions of prompt i are rows
i n .. i n + n - 1): each row is its prompt, left-padded to the widest prompt, then its completion,
right-padded to the longest completion. A completion ends at (and includes) its first EOS; whatever
`generate` wrote after it is dropped. Masks come from lengths, never from pad ids (pad may equal EOS).
Worked example (`layout_completions`, pad 0, EOS 3; prompts [5, 6] and [7]; generated [8, 3, 9] and
[8, 9, 9], the second never reaching EOS):

    input_ids        [[5, 6, 8, 3, 0],      attention_mask  [[1, 1, 1, 1, 0],
                      [0, 7, 8, 9, 9]]                       [0, 1, 1, 1, 1]]
    completion_mask  [[0, 0, 1, 1, 0],      (the collator's response_mask: the tokens the log-probs
                      [0, 0, 1, 1, 1]]       read, EOS included, padding after it excluded)
    lengths [2, 3], truncated [False, True] (no EOS within max_new_tokens)

`completion_logps` then reads log π(y_t | x, y_<t) of exactly those tokens: `token_logps` of
models/logprobs.py on the labels input_ids[:, 1:], with the mask shifted with them, completion_mask[:, 1:]
(so the sum over a row equals `forward_logps`, the DPO path, on the same rows: tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from transformers import GenerationConfig

from marginkit.data.ledger import Ledger
from marginkit.data.schema import Message, Pair
from marginkit.data.tokenize import TokenizeConfig, encode_pair
from marginkit.models.logprobs import position_ids_from_mask, token_logps

Prompt = str | Sequence[Message]  # a prompt text, or chat messages (rendered with the tokenizer's chat template)

__all__ = ["Completions", "Generator", "HFGenerator", "TokenLogps", "layout_completions", "prompt_token_ids",
           "completion_logps"]


@dataclass(frozen=True)
class Completions:
    """N sampled completions (module docstring for the layout). Tensors on the CPU.

    input_ids, attention_mask, completion_mask: [N, T] (T = prompt width + longest completion);
    lengths [N] completion tokens (EOS included); truncated [N] bool, no EOS within max_new_tokens;
    prompt_index [N] which prompt each row answers; texts: N decoded completions (EOS and special tokens
    dropped, stripped)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    lengths: torch.Tensor
    truncated: torch.Tensor
    prompt_index: torch.Tensor
    texts: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def rows(self, index: torch.Tensor | Sequence[int]) -> Completions:
        """The completions at `index` (a minibatch), with the columns that are padding in all of them dropped."""
        idx = torch.as_tensor(index, dtype=torch.long)
        keep = self.attention_mask[idx].bool().any(0)  # [T]
        ids, attn, comp = (t[idx][:, keep] for t in (self.input_ids, self.attention_mask, self.completion_mask))
        return Completions(ids, attn, comp, self.lengths[idx], self.truncated[idx], self.prompt_index[idx],
                           [self.texts[i] for i in idx.tolist()])


class Generator(Protocol):
    """Samples n completions of each prompt; the same seed and weights give the same completions."""

    def generate(self, prompts: Sequence[Prompt], n: int, max_new_tokens: int, temperature: float,
                 seed: int) -> Completions: ...


def prompt_token_ids(prompt: Prompt, tokenizer: Any, template: str = "auto",
                     max_prompt_length: int | None = None) -> list[int]:
    """The prompt's tokens exactly as training encodes a pair's prompt (data/tokenize.py: chat template or
    BOS + text); over `max_prompt_length`, the leftmost tokens are cut (as TRL's GRPOTrainer does)."""
    enc = encode_pair(Pair(prompt, "a", "a"), 0, tokenizer,
                      TokenizeConfig(max_length=1 << 30, template=template, append_eos=False), Ledger())
    assert enc is not None  # on_too_long=truncate never drops
    ids = enc.chosen_ids[:enc.prompt_len]
    return ids[-max_prompt_length:] if max_prompt_length else ids


def layout_completions(prompt_rows: Sequence[Sequence[int]], generated: Sequence[Sequence[int]], eos_id: int,
                       pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask, completion_mask [N, T], lengths [N], truncated [N] from each row's prompt
    tokens and generated tokens (cut after the first EOS): the worked example of the module docstring."""
    if len(prompt_rows) != len(generated):
        raise ValueError(f"layout_completions: {len(prompt_rows)} prompts but {len(generated)} completions")
    completions, truncated = [], []
    for new in generated:
        new = list(new)
        ended = eos_id in new
        completions.append(new[:new.index(eos_id) + 1] if ended else new)
        truncated.append(not ended)
    width = max(len(p) for p in prompt_rows)
    longest = max(1, max(len(c) for c in completions))
    n = len(prompt_rows)
    ids = torch.full((n, width + longest), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    comp = torch.zeros_like(ids)
    for i, (p, c) in enumerate(zip(prompt_rows, completions)):
        ids[i, width - len(p):width] = torch.tensor(list(p), dtype=torch.long)
        ids[i, width:width + len(c)] = torch.tensor(c, dtype=torch.long)
        attn[i, width - len(p):width + len(c)] = 1
        comp[i, width:width + len(c)] = 1
    return {"input_ids": ids, "attention_mask": attn, "completion_mask": comp,
            "lengths": torch.tensor([len(c) for c in completions]), "truncated": torch.tensor(truncated)}


class HFGenerator:
    """`Generator` on a Hugging Face causal LM: `model.generate` (KV cache) over chunks of `batch_size` rows.

    The model is put in eval mode for sampling and its mode restored after. use_cache=False recomputes every
    position at each new token, the slow reference the KV cache must equal (tested). The seed is applied under
    `torch.random.fork_rng`, so sampling leaves the caller's RNG streams (dropout, data order) untouched.
    Pass the unwrapped model (not a DDP wrapper: `generate` is a method of the HF model)."""

    def __init__(self, model: nn.Module, tokenizer: Any, template: str = "auto", max_prompt_length: int | None = None,
                 batch_size: int = 64, use_cache: bool = True):
        if tokenizer.eos_token_id is None:
            raise ValueError("HFGenerator: the tokenizer has no EOS token, so no completion could ever end; give it one")
        self.model, self.tokenizer = model, tokenizer
        self.template, self.max_prompt_length, self.batch_size = template, max_prompt_length, batch_size
        self.use_cache = use_cache  # False: every new token reruns the whole sequence (the reference for the cache)

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], n: int, max_new_tokens: int, temperature: float,
                 seed: int) -> Completions:
        if n < 1 or max_new_tokens < 1 or temperature <= 0:
            raise ValueError(f"HFGenerator.generate: n={n}, max_new_tokens={max_new_tokens} must be >= 1 and "
                             f"temperature={temperature} > 0")
        tok, model = self.tokenizer, self.model
        eos = tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        encoded = [prompt_token_ids(p, tok, self.template, self.max_prompt_length) for p in prompts]
        rows = [encoded[i] for i in range(len(prompts)) for _ in range(n)]  # prompt-major, [P n]
        device = next(model.parameters()).device
        # Our settings over the library's defaults, never the checkpoint's generation_config: its top_k, top_p,
        # repetition_penalty, ... would change the distribution sampled from (the first-pass ratio pi / pi_old
        # would not be 1). `generate` fills every unset value from model.generation_config, so that is swapped
        # for a blank one during the call.
        settings = GenerationConfig(do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                                    max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad,
                                    use_cache=self.use_cache)
        was_training, saved_config = model.training, model.generation_config
        model.eval()
        model.generation_config = GenerationConfig()
        try:
            generated = self._sample(rows, settings, seed, device, pad, eos)
        finally:
            model.train(was_training)
            model.generation_config = saved_config
        out = layout_completions(rows, generated, eos, pad)
        texts = [self._decode(g, eos) for g in generated]
        return Completions(out["input_ids"], out["attention_mask"], out["completion_mask"], out["lengths"],
                           out["truncated"], torch.arange(len(prompts)).repeat_interleave(n), texts)

    def _sample(self, rows: list[list[int]], settings: GenerationConfig, seed: int, device: torch.device, pad: int,
                eos: int) -> list[list[int]]:
        """The generated tokens of every row (prompt tokens), `batch_size` rows per `generate` call."""
        generated: list[list[int]] = []
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start:start + self.batch_size]
                batch = layout_completions(chunk, [[] for _ in chunk], eos, pad)  # prompts only, left-padded
                width = max(len(r) for r in chunk)
                ids, mask = batch["input_ids"][:, :width].to(device), batch["attention_mask"][:, :width].to(device)
                seqs = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=settings)
                generated += seqs[:, width:].cpu().tolist()  # [b, width + new] -> the new tokens
        return generated

    def _decode(self, new: list[int], eos: int) -> str:
        completion = new[:new.index(eos)] if eos in new else new  # EOS itself is not text
        return self.tokenizer.decode(completion, skip_special_tokens=True).strip()


@dataclass(frozen=True)
class TokenLogps:
    """Per-token log-probs of completion tokens, aligned with the labels input_ids[:, 1:].

    logps [N, T-1] float32 (0 off the mask; with grad when the forward had it); mask [N, T-1] bool,
    completion_mask[:, 1:]; entropy [N, T-1] detached (0 off the mask) or None."""

    logps: torch.Tensor
    mask: torch.Tensor
    entropy: torch.Tensor | None = None


def completion_logps(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     completion_mask: torch.Tensor, temperature: float = 1.0, chunk_size: int | None = None,
                     with_entropy: bool = False) -> TokenLogps:
    """One forward, then log π(y_t | ...) of every completion token (module docstring: the shift and mask).

    The logits are divided by `temperature` first, so the log-probs are those of the distribution the
    completions were sampled from (TRL's GRPOTrainer does the same). Positions follow the attention mask
    (`position_ids_from_mask`), as `generate` numbers them under left padding. with_entropy: also the
    entropy of each next-token distribution, H_t = logsumexp(z) - Σ softmax(z) z, in float32, no grad.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask),
                   use_cache=False).logits  # [N, T, V]
    if temperature != 1.0:
        logits = logits / temperature
    per_token = token_logps(logits, input_ids, chunk_size)  # [N, T-1]
    mask = completion_mask[:, 1:].bool()  # [N, T-1], aligned with the labels input_ids[:, 1:]
    per_token = torch.where(mask, per_token, torch.zeros_like(per_token))
    entropy = None
    if with_entropy:
        with torch.no_grad():  # one row at a time: a float32 [T-1, V] at most, never [N, T-1, V]
            h = torch.stack([_entropy(row[:-1].float()) for row in logits])  # [N, T-1]
            entropy = torch.where(mask, h, torch.zeros_like(h))
    return TokenLogps(per_token, mask, entropy)


def _entropy(z: torch.Tensor) -> torch.Tensor:
    """[t] entropy of each row of logits [t, V]: logsumexp(z) - Σ softmax(z) z."""
    return torch.logsumexp(z, -1) - (torch.softmax(z, -1) * z).sum(-1)
