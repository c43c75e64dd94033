r"""TRL's preference formats: standard or conversational, with an explicit or an implicit prompt.

The four shapes of huggingface/trl `docs/source/dataset_formats.md` (section "Preference"), told
apart by the values' types, not by an option:

- standard explicit:  {"prompt": str, "chosen": str, "rejected": str} (same as the native format).
- standard implicit:  {"chosen": str, "rejected": str}, full texts. The prompt is their longest
  common prefix cut back to the start of its last whitespace run, so it never ends inside a word
  and each response starts with the whitespace that followed the prompt (TRL's `extract_prompt`
  keeps that space with the response too, and BPE tokenisers attach it to the next word). So
  prompt + chosen is exactly the original chosen text. No whitespace in the common prefix means no
  prompt can be found: the row is invalid.
- conversational explicit: {"prompt": [messages], "chosen": [messages], "rejected": [messages]}.
- conversational implicit: {"chosen": [messages], "rejected": [messages]}, full conversations.

For conversations the prompt is the longest run of leading messages the two full conversations
(prompt + chosen, prompt + rejected) share, kept as a tuple of message dicts (the chat template is
applied at tokenisation). What follows must be exactly one assistant message on each side; its
content becomes chosen/rejected. A response of several messages, or of a non-assistant message, is
invalid, not concatenated: joining turns would invent a text nobody rated, and a longer response
usually means the two dialogues diverged earlier (as in the few broken HH-RLHF rows). A string
prompt with message-list responses (HuggingFaceH4/ultrafeedback_binarized) is accepted: when the
responses include the user turn, the string must equal the last shared user message; when they hold
only the assistant message, the string becomes one user message.

Worked example (run as a test):

>>> pair, = convert({"chosen": "Q: Is the sky blue?\nA: Yes.", "rejected": "Q: Is the sky blue?\nA: No."},
...                 TrlOptions()).pairs
>>> pair.prompt, pair.chosen, pair.rejected
('Q: Is the sky blue?\nA:', ' Yes.', ' No.')
>>> user = {"role": "user", "content": "Hi"}
>>> record = {"chosen": [user, {"role": "assistant", "content": "Hello!"}],
...           "rejected": [user, {"role": "assistant", "content": "Go away."}]}
>>> pair, = convert(record, TrlOptions()).pairs
>>> pair.prompt, pair.chosen, pair.rejected
(({'role': 'user', 'content': 'Hi'},), 'Hello!', 'Go away.')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from marginkit.data.formats._base import Converted, as_messages, as_prompt, get_field, has_field, leftovers
from marginkit.data.formats.native import record_id
from marginkit.data.schema import Message, Pair
from marginkit.data.validate import RowError

__all__ = ["TrlOptions", "convert", "detect", "resolve_texts", "split_conversation", "split_implicit"]


@dataclass(frozen=True)
class TrlOptions:
    """Field names; every field not named here is carried into the pair's metadata, except "margin" (TRL's
    RewardTrainer column), which becomes the pair's margin."""

    prompt_field: str = "prompt"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, Mapping) and "role" in m for m in value)


def detect(record: Mapping[str, Any]) -> bool:
    chosen, rejected = record.get("chosen"), record.get("rejected")
    both_text = isinstance(chosen, str) and isinstance(rejected, str)
    return both_text or (_is_messages(chosen) and _is_messages(rejected) and bool(chosen))


def _common_prefix_len(a: Sequence[Any], b: Sequence[Any]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def split_implicit(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen response, rejected response) of two full texts; prompt + response == text.

    The prompt is the longest common prefix cut back to the start of its last whitespace run.
    """
    end = _common_prefix_len(chosen, rejected)
    cut = end - 1
    while cut >= 0 and not chosen[cut].isspace():
        cut -= 1  # back out of the word the texts diverge in
    while cut > 0 and chosen[cut - 1].isspace():
        cut -= 1  # to the start of the whitespace run, which stays with the responses
    if cut <= 0:
        raise RowError(
            "chosen", "no shared prompt ending at a word boundary", chosen,
            hint='give the prompt in its own field, or pick the format explicitly (format="native")',
        )
    return chosen[:cut], chosen[cut:], rejected[cut:]


def split_conversation(
    prompt: tuple[Message, ...], chosen: tuple[Message, ...], rejected: tuple[Message, ...]
) -> tuple[tuple[Message, ...], Any, Any]:
    """(prompt messages, chosen content, rejected content) of two conversations after a shared prompt."""
    full_chosen, full_rejected = prompt + chosen, prompt + rejected
    if not full_chosen or not full_rejected:
        raise RowError("chosen" if not full_chosen else "rejected", "empty conversation", [])
    shared = _common_prefix_len(full_chosen, full_rejected)
    if shared == len(full_chosen) == len(full_rejected):
        shared -= 1  # identical conversations: keep the last turn so validation reports chosen == rejected
    for name, full in (("chosen", full_chosen), ("rejected", full_rejected)):
        rest = full[shared:]
        if len(rest) != 1 or rest[0].get("role") != "assistant":
            raise RowError(
                name, "expected exactly one assistant message after the shared prompt", list(rest),
                detail=f"{len(rest)} message(s) with roles {[m.get('role') for m in rest]}",
            )
    return full_chosen[:shared], full_chosen[shared].get("content"), full_rejected[shared].get("content")


def _text_prompt(prompt: str, chosen: tuple[Message, ...], rejected: tuple[Message, ...]) -> tuple[Any, Any, Any]:
    """A string prompt with message-list responses (the HuggingFaceH4/ultrafeedback_binarized shape)."""
    shared, chosen_text, rejected_text = split_conversation((), chosen, rejected)
    if not shared:
        return ({"role": "user", "content": prompt},), chosen_text, rejected_text
    users = [m.get("content") for m in shared if m.get("role") == "user"]
    if not users or users[-1] != prompt:
        raise RowError("prompt", "differs from the last user message the responses share", prompt)
    return shared, chosen_text, rejected_text


def resolve_texts(record: Mapping[str, Any], prompt_field: str, chosen_field: str, rejected_field: str) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected) of any TRL shape, picked by the value types."""
    chosen, rejected = get_field(record, chosen_field), get_field(record, rejected_field)
    prompt = get_field(record, prompt_field) if has_field(record, prompt_field) else None
    if isinstance(chosen, str) and isinstance(rejected, str):
        return split_implicit(chosen, rejected) if prompt is None else (as_prompt(prompt, prompt_field), chosen, rejected)
    if isinstance(chosen, (list, tuple)) and isinstance(rejected, (list, tuple)):
        chosen_msgs, rejected_msgs = as_messages(chosen, chosen_field), as_messages(rejected, rejected_field)
        if isinstance(prompt, str):
            return _text_prompt(prompt, chosen_msgs, rejected_msgs)
        prompt_msgs = () if prompt is None else as_messages(prompt, prompt_field)
        return split_conversation(prompt_msgs, chosen_msgs, rejected_msgs)
    raise RowError(
        rejected_field, "chosen and rejected must both be strings or both message lists", rejected,
        detail=f"chosen is a {type(chosen).__name__}, rejected is a {type(rejected).__name__}",
    )


def convert(record: Mapping[str, Any], options: TrlOptions) -> Converted:
    fields = (options.prompt_field, options.chosen_field, options.rejected_field)
    prompt, chosen, rejected = resolve_texts(record, *fields)
    # TRL's RewardTrainer reads an optional "margin" column: it becomes the pair's margin (what
    # margin.label.source=margin reads, validated as a number), not metadata (issue 14).
    margin = record.get("margin")
    # An "id" column is the pair's id (an integer as its string, as in the native format): eval-rm's per-pair
    # rewards and every error message name it.
    pair_id = record_id(record.get("id"))
    return Converted(pairs=(Pair(prompt, chosen, rejected, margin=margin, id=pair_id,
                                 metadata=leftovers(record, (*fields, "margin", "id"))),))
