"""The self-describing reward-model folder: its tokenizer adds training's special tokens, and its card says how to score.

Training tokenises prompt and response separately and adds the special tokens itself (data/tokenize.py):

    causal LM: [bos?] prompt response [eos?]     encoder: [cls] prompt [sep] response [sep]

A tokenizer saved as loaded adds whatever its own post-processor adds (often nothing for a causal LM, and
token_type_ids 1 on the response for BERT), so plain `AutoTokenizer.from_pretrained(folder)` scored other
sequences than training did (issue 14: mean gap 0.205 vs 0.147, max difference 0.88). The saved tokenizer
gets a `tokenizers` TemplateProcessing post-processor with training's layout, so the text-pair call
`tok(prompt_text, response_text)` gives exactly training's ids (each text tokenised on its own, as in
training), and the folder's README.md and marginkit_scorer.json say how the two texts are rendered.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from marginkit.data.schema import Pair
from marginkit.data.tokenize import uses_chat_template

__all__ = ["Rendering", "rendering_of", "special_layout", "scoring_tokenizer", "check_saved_tokenizer", "scoring_recipe",
           "model_card"]

Rendering = Literal["plain", "chat", "mixed"]  # how training rendered prompts (data/tokenize.uses_chat_template)


def rendering_of(pairs: Sequence[Pair], tokenizer: Any, template: str) -> Rendering:
    """How training renders `pairs`: all with the chat template, none, or some ("mixed")."""
    chat = {uses_chat_template(p, tokenizer, template) for p in pairs}
    return "mixed" if len(chat) == 2 else "chat" if chat == {True} else "plain"


def special_layout(tokenizer: Any, encoder: bool, append_eos: bool, rendering: Rendering) -> tuple[list[str], list[str], list[str]]:
    """(lead, middle, tail) special tokens training puts around prompt and response, as token strings.

    The same rule as data/tokenize.py `_special_layout`: chat-rendered prompts get no BOS (the template writes it).
    "mixed" (string and message prompts in one run) follows the plain layout; the card says what differs.
    """
    if encoder:
        return [tokenizer.cls_token], [tokenizer.sep_token], [tokenizer.sep_token]
    lead = [tokenizer.bos_token] if tokenizer.bos_token_id is not None and rendering != "chat" else []
    tail = [tokenizer.eos_token] if append_eos and tokenizer.eos_token_id is not None else []
    return lead, [], tail


def scoring_tokenizer(tokenizer: Any, encoder: bool, append_eos: bool, rendering: Rendering) -> Any:
    """A copy of `tokenizer` whose plain call adds training's special tokens.

    single "lead $A tail" and pair "lead $A middle $B tail", every token type id 0 (training passes no
    token_type_ids, so BERT reads zeros); token_type_ids are left out of the model inputs.
    """
    from tokenizers.processors import TemplateProcessing

    if getattr(tokenizer, "backend_tokenizer", None) is None:  # a slow (sentencepiece) tokenizer: no post-processor
        return tokenizer
    lead, middle, tail = special_layout(tokenizer, encoder, append_eos, rendering)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in lead + middle + tail}
    out = copy.deepcopy(tokenizer)  # the training tokenizer is left as it was
    out.backend_tokenizer.post_processor = TemplateProcessing(
        single=[*lead, "$A:0", *tail],
        pair=[*lead, "$A:0", *[f"{t}:0" for t in middle], "$B:0", *[f"{t}:0" for t in tail]],
        special_tokens=list(ids.items()),
    )
    out.model_input_names = ["input_ids", "attention_mask"]
    return out


def _expected_ids(tok: Any, encoder: bool, append_eos: bool, rendering: Rendering, a: str, b: str) -> list[int]:
    lead, middle, tail = special_layout(tok, encoder, append_eos, rendering)
    ids = tok.convert_tokens_to_ids
    return ([ids(t) for t in lead] + tok(a, add_special_tokens=False)["input_ids"] + [ids(t) for t in middle]
            + tok(b, add_special_tokens=False)["input_ids"] + [ids(t) for t in tail])


def check_saved_tokenizer(folder: str | Path, encoder: bool, append_eos: bool, rendering: Rendering) -> bool:
    """Reload the saved tokenizer with AutoTokenizer; True when its plain pair call gives training's ids.

    Some tokenizer classes rebuild their post-processor on load (BertTokenizer does, from its class
    defaults); then the folder names the generic fast class, which loads tokenizer.json as saved.
    False if even that does not reproduce training's layout: the card then says to add the special
    tokens by hand (a failed check must not lose a finished training run).
    """
    from transformers import AutoTokenizer

    folder = Path(folder)
    probe = ("Hello there", " world, again")
    for attempt in range(2):
        tok = AutoTokenizer.from_pretrained(folder)
        got = tok(*probe)
        if (got["input_ids"] == _expected_ids(tok, encoder, append_eos, rendering, *probe)
                and "token_type_ids" not in got):
            return True
        if attempt == 0 and getattr(tok, "backend_tokenizer", None) is not None:
            cfg_path = folder / "tokenizer_config.json"
            cfg = json.loads(cfg_path.read_text())
            cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
            cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    return False


def scoring_recipe(tokenizer: Any, encoder: bool, append_eos: bool, rendering: Rendering,
                   max_length: int, plain_call: bool = True) -> dict[str, Any]:
    """How to score the folder with plain transformers, as data (stored in marginkit_scorer.json).
    `plain_call`: whether the saved tokenizer adds the special tokens itself (check_saved_tokenizer)."""
    lead, middle, tail = special_layout(tokenizer, encoder, append_eos, rendering)
    # data/tokenize.py `_close_turn`: a chat turn that ends with the EOS text loses the whitespace after it,
    # and the EOS itself when training appends one (one EOS, as in an RL rollout)
    turn_end = None if encoder or tokenizer.eos_token_id is None else "drop" if append_eos else "keep"
    return {
        "call": "tokenizer(prompt_text, response_text)" if plain_call else
                "the ids of `tokens`, each text tokenised with add_special_tokens=False",
        "plain_call": plain_call,
        "tokens": " ".join([*lead, "<prompt_text>", *middle, "<response_text>", *tail]),
        "prompt_text": {"plain": "the prompt string; a message list as one 'role: content\\n' line per message",
                        "chat": "apply_chat_template(messages, tokenize=False, add_generation_prompt=True)",
                        "mixed": "chat rendering for message-list prompts, the string itself otherwise"}[rendering],
        "response_text": {"plain": "the response string",
                          "chat": "apply_chat_template(messages + [assistant message], tokenize=False) "
                                  "minus the prompt_text prefix" + _TURN_END_TEXT[turn_end],
                          "mixed": "as for the prompt"}[rendering],
        "turn_end": turn_end,
        "rendering": rendering,
        "reward_token": "the pooled [CLS] (first token)" if encoder else "the last non-padding token",
        "reward": "model(**inputs).logits[:, 0]",
        "max_length": max_length,
    }


_CODE = {
    "plain": '''prompt_text = prompt if isinstance(prompt, str) else "".join(f"{m['role']}: {m['content']}\\n" for m in prompt)
response_text = response''',
    "chat": '''messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
prompt_text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
full = tok.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
response_text = full[len(prompt_text):]''',
}
_TURN_END_TEXT = {None: "",
                  "drop": "; if that ends with the EOS token (then whitespace), without the whitespace and the EOS "
                          "(the tokenizer appends the EOS)",
                  "keep": "; if that ends with the EOS token (then whitespace), without the whitespace"}
_TURN_END_CODE = {
    None: "",
    "drop": '''
if response_text.rstrip().endswith(tok.eos_token):  # the template's turn-closing EOS: the tokenizer appends it
    response_text = response_text.rstrip()[:-len(tok.eos_token)]''',
    "keep": '''
if response_text.rstrip().endswith(tok.eos_token):  # nothing after the template's turn-closing EOS
    response_text = response_text.rstrip()''',
}


def model_card(recipe: dict[str, Any]) -> str:
    """README.md of a saved RM folder: the exact plain-transformers scoring, from `scoring_recipe`."""
    rendering = recipe["rendering"]
    code = _CODE["plain"] if rendering != "chat" else _CODE["chat"] + _TURN_END_CODE[recipe.get("turn_end")]
    if not recipe["plain_call"]:
        return _manual_card(recipe, code)
    mixed = ("\nThis model was trained on string prompts (rendered as below) and on message-list prompts rendered with "
             "the chat template, which got no BOS: for those, render as in marginkit's chat rendering (a response "
             "that the template closes with the EOS token loses it and any whitespace after it) and call "
             "`tok(prompt_text, response_text, add_special_tokens=False)`, then append the EOS id.\n"
             if rendering == "mixed" else "")
    return f"""---
library_name: transformers
tags: [reward-model, marginkit]
---
# Reward model (trained with marginkit)

An `AutoModelForSequenceClassification` with one label: the reward of a response is `logits[:, 0]`, read at
{recipe["reward_token"]}. The tokenizer adds the special tokens training used when called on the
(prompt_text, response_text) pair, each text tokenised on its own as in training:

    {recipe["tokens"]}

Score a pair exactly as `marginkit eval-rm` does (max difference below 1e-5 in marginkit's tests):

```python
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

FOLDER = "path/to/this/folder"
prompt, response = "What is 2+2?", " 4."  # or prompt as a list of {{"role", "content"}} messages
tok = AutoTokenizer.from_pretrained(FOLDER)
model = AutoModelForSequenceClassification.from_pretrained(FOLDER, dtype=torch.float32).eval()
{code}
with torch.no_grad():
    reward = model(**tok(prompt_text, response_text, return_tensors="pt")).logits[0, 0].item()
```
{mixed}
TRL's `RewardTrainer`: give it pre-tokenised `chosen_ids` / `rejected_ids` made with
`tok(prompt_text, response_text)["input_ids"]` (used as they are). From text columns it appends the EOS
text and, for conversations, renders without the EOS training appended, so it would score other sequences.

Batches may be padded on either side (the pad token differs from EOS). Training cut pairs longer than
{recipe["max_length"]} tokens (the prompt from the left first, then the responses from the right); the plain
call above does not, so over-long pairs score differently. `marginkit_scorer.json` holds the same recipe
and the training tokenisation settings that `marginkit eval-rm` reads.
"""


def _manual_card(recipe: dict[str, Any], code: str) -> str:
    """README.md when the saved tokenizer could not be made to add training's special tokens itself."""
    return f"""# Reward model (trained with marginkit)

An `AutoModelForSequenceClassification` with one label: the reward is `logits[:, 0]`, read at
{recipe["reward_token"]}. This tokenizer does not add training's special tokens when called: build the ids
as training did, each text tokenised on its own with `add_special_tokens=False`:

    {recipe["tokens"]}

```python
{code}
```

Training cut pairs longer than {recipe["max_length"]} tokens. `marginkit eval-rm` scores this folder as
training did (`marginkit_scorer.json` holds its settings).
"""
