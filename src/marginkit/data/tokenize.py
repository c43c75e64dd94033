"""Pair tokenisation for reward models: template, special tokens, and truncation that keeps responses.

Prompt and response are tokenised separately and concatenated, so the boundary between them is
known exactly (the response mask and the pre-flight check use it):

    causal LM: [bos?] prompt  response  eos        (reward read at the eos)
    encoder:   [cls]  prompt  [sep] response [sep] (reward read by the model's own pooler)

With a chat template that closes the assistant turn with the tokenizer's EOS (ChatML's `<|im_end|>\n`),
that EOS is the response's one EOS, and the whitespace the template writes after it is dropped, so a
response ends exactly as an RL rollout does (at its first EOS; models/generation.py); see `encode_pair`.

Truncation keeps the responses: the prompt (shared by chosen and rejected, cut identically) loses
tokens from the left first; only when that is not enough are the responses cut from the right.
Every cut is recorded in the data ledger; nothing is dropped unless `on_too_long="drop"`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from tqdm.auto import tqdm

from marginkit.data.ledger import Ledger
from marginkit.data.schema import DataError, Pair, prompt_text

__all__ = ["TokenizeConfig", "EncodedPair", "encode_pair", "encode_pairs", "uses_chat_template"]


@dataclass
class TokenizeConfig:
    max_length: int = field(default=1024, metadata={"help": "Max tokens of prompt + response (+ special tokens)."})
    template: Literal["auto", "plain", "chat"] = field(
        default="auto",
        metadata={"help": "chat: the tokenizer's chat template; plain: prompt text then response text; "
                  "auto: chat when the tokenizer has a template and the prompt is a message list."},
    )
    append_eos: bool = field(default=True, metadata={"help": "Causal LMs: end each response with EOS (the reward token)."})
    on_too_long: Literal["truncate", "drop", "error"] = field(
        default="truncate", metadata={"help": "Over-long pairs: truncate (prompt left first), drop (counted), or error."}
    )
    min_prompt_tokens: int = field(
        default=8, metadata={"help": "Prompt tokens kept before responses start being cut."}
    )

    def __post_init__(self) -> None:
        if self.max_length < 8:
            raise ValueError(f"tokenize.max_length={self.max_length}: must be >= 8")
        if self.min_prompt_tokens < 0:
            raise ValueError(f"tokenize.min_prompt_tokens={self.min_prompt_tokens}: must be >= 0")


@dataclass(frozen=True)
class EncodedPair:
    """Token ids of one pair. prompt_len counts the leading tokens that belong to the prompt."""

    chosen_ids: list[int]
    rejected_ids: list[int]
    prompt_len: int
    label_margin: float
    score_gap: float
    gold_gap: float
    index: int  # position of the pair in its dataset (for error messages and the ledger)


def uses_chat_template(pair: Pair, tokenizer: Any, template: str) -> bool:
    """Whether `pair` is rendered with the tokenizer's chat template (else: prompt text, then response text)."""
    return template == "chat" or bool(
        template == "auto" and not isinstance(pair.prompt, str) and getattr(tokenizer, "chat_template", None)
    )


def _split_template(pair: Pair, tokenizer: Any, template: str) -> tuple[str, str, str, bool]:
    """Return (prompt_text, chosen_text, rejected_text, used_chat_template)."""
    if not uses_chat_template(pair, tokenizer, template):
        return prompt_text(pair.prompt), pair.chosen, pair.rejected, False
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("tokenize.template='chat' but the tokenizer has no chat template; use 'plain'")
    messages = [{"role": "user", "content": pair.prompt}] if isinstance(pair.prompt, str) else list(pair.prompt)
    head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    texts = []
    for response in (pair.chosen, pair.rejected):
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
        if not full.startswith(head):
            raise ValueError("chat template output does not start with the generation prompt; use template='plain'")
        texts.append(full[len(head):])
    return head, texts[0], texts[1], True


def _close_turn(text: str, tokenizer: Any, append_eos: bool) -> str:
    """A chat-rendered response that ends with the EOS token text (then optional whitespace): without the
    whitespace, and without the EOS itself when `append_eos` (the appended EOS takes its place). Else as is."""
    eos = getattr(tokenizer, "eos_token", None)
    body = text.rstrip()
    if not eos or getattr(tokenizer, "eos_token_id", None) is None or not body.endswith(eos):
        return text
    return body[: -len(eos)] if append_eos else body


def _special_layout(tokenizer: Any, is_encoder: bool, append_eos: bool, chat: bool) -> tuple[list[int], list[int], list[int]]:
    """(lead, middle, tail) special ids around prompt and response."""
    if is_encoder:
        return [tokenizer.cls_token_id], [tokenizer.sep_token_id], [tokenizer.sep_token_id]
    lead = [tokenizer.bos_token_id] if (tokenizer.bos_token_id is not None and not chat) else []
    tail = [tokenizer.eos_token_id] if (append_eos and tokenizer.eos_token_id is not None) else []
    return lead, [], tail


def encode_pair(
    pair: Pair, index: int, tokenizer: Any, cfg: TokenizeConfig, ledger: Ledger, is_encoder: bool = False
) -> EncodedPair | None:
    """Tokenise one pair, truncating as configured. Returns None only for a pair dropped by policy.

    The response tokens (everything after `prompt_len`) are what SFT and DPO train on and where a causal
    RM reads its reward (the last one). Causal LM: the response text's tokens, then one EOS when
    `cfg.append_eos`. With a chat template, the response text is the template's assistant turn after the
    generation prompt; when that turn ends with the EOS token text, possibly followed by whitespace
    (SmolLM2's ChatML: `Hi<|im_end|>\n`, ids [..., 2, 198]), the whitespace after the EOS is dropped and
    the template's EOS is the response's EOS, not followed by another one:

        append_eos=True:  [..., Hi, <|im_end|>]  (the template's EOS is the one appended, so it also
                          survives truncation of the response from the right)
        append_eos=False: [..., Hi, <|im_end|>]  (the template's own EOS, cut with the text if truncated)

    which is how an RL rollout ends: generation stops at the first EOS and keeps it, with nothing after it
    (models/generation.py `layout_completions`). Templates that close the turn with another token (or with
    none) are kept as rendered, and the EOS is appended after them when `cfg.append_eos`. The rule works on
    the text (`_close_turn`), as the RM folder's card tells plain-transformers users to (models/rm_folder.py).
    Without this
    rule (before the CHANGELOG entry) ChatML responses ended [..., 2, 198, 2]: two extra trained tokens,
    and the reward read at the second EOS.
    """
    p_text, c_text, r_text, chat = _split_template(pair, tokenizer, cfg.template)
    if chat and not is_encoder:
        c_text, r_text = (_close_turn(t, tokenizer, cfg.append_eos) for t in (c_text, r_text))
    if not chat and not isinstance(pair.prompt, str):
        _note_plain_conversation(ledger, cfg.template)
    lead, middle, tail = _special_layout(tokenizer, is_encoder, cfg.append_eos, chat)
    p_ids = tokenizer(p_text, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(c_text, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(r_text, add_special_tokens=False)["input_ids"]
    n_special = len(lead) + len(middle) + len(tail)
    excess = n_special + len(p_ids) + max(len(c_ids), len(r_ids)) - cfg.max_length
    where = f"pair {index}" + (f" (id {pair.id})" if pair.id else "")
    if excess > 0:
        if cfg.on_too_long == "error":
            raise DataError(where, None, "prompt/chosen/rejected", f"{excess} tokens over max_length={cfg.max_length}",
                            "raise tokenize.max_length or use tokenize.on_too_long=truncate")
        if cfg.on_too_long == "drop":
            ledger.drop("too_long", where)
            return None
        cut_prompt = min(excess, max(len(p_ids) - cfg.min_prompt_tokens, 0))
        if cut_prompt:
            p_ids = p_ids[cut_prompt:]
            ledger.truncate("prompt_left", cut_prompt, where)
        room = cfg.max_length - n_special - len(p_ids)
        if room < 1:
            raise DataError(where, None, "prompt", f"no room for a response within max_length={cfg.max_length}",
                            "lower tokenize.min_prompt_tokens or raise max_length")
        for side, ids in (("chosen_right", c_ids), ("rejected_right", r_ids)):
            if len(ids) > room:
                ledger.truncate(side, len(ids) - room, where)
        c_ids, r_ids = c_ids[:room], r_ids[:room]
    prompt = lead + p_ids + middle
    return EncodedPair(
        chosen_ids=prompt + c_ids + tail,
        rejected_ids=prompt + r_ids + tail,
        prompt_len=len(prompt),
        label_margin=math.nan if pair.margin is None else float(pair.margin),
        score_gap=pair.score_gap,
        gold_gap=pair.gold_gap,
        index=index,
    )


def _note_plain_conversation(ledger: Ledger, template: str) -> None:
    """Count a conversational prompt rendered without a chat template, and say once how it was rendered."""
    ledger.count("conversations_rendered_plain")
    why = ("the tokenizer has no chat template, so tokenize.template=auto fell back to plain" if template == "auto"
           else "tokenize.template=plain")
    ledger.note("template", f"conversational prompts rendered with the plain template ({why}): one "
                            "'role: content' line per message, e.g. 'user: Hi\\n', then the response text; use a "
                            "tokenizer with a chat template (or set tokenize.template=plain to choose this)")


def encode_pairs(
    pairs: list[Pair], tokenizer: Any, cfg: TokenizeConfig, ledger: Ledger, is_encoder: bool = False
) -> list[EncodedPair]:
    """Tokenise every pair; dropped pairs (policy `drop`) are counted in `ledger`."""
    out = []
    # A bar only when tokenising takes over 5 s (100k pairs: tens of seconds, silent before; issue 14).
    for i, pair in enumerate(tqdm(pairs, desc="tokenizing", unit=" pairs", delay=5, mininterval=2, leave=False)):
        enc = encode_pair(pair, i, tokenizer, cfg, ledger, is_encoder)
        if enc is not None:
            out.append(enc)
            if math.isfinite(enc.label_margin):
                ledger.count("with_margin")  # setup says when no margin strategy reads them (train/setup.py)
    return out
