r"""Anthropic HH-RLHF transcripts: {"chosen": dialogue, "rejected": dialogue} (Bai et al. 2022, arXiv 2204.05862).

Each value is a whole dialogue, "\n\nHuman: ...\n\nAssistant: ...\n\nHuman: ...\n\nAssistant: <reply>".
The prompt is the shared text up to and including the last "\n\nAssistant:" that lies inside the
two dialogues' common prefix (TRL's HH script splits at the last "\n\nAssistant:" of each side; the
two agree whenever the row is well formed). Each response is the rest, with its leading whitespace
removed (the prompt ends with the marker, so the chat rendering puts the space back).

A row whose remainder holds another "\n\nHuman:" or "\n\nAssistant:" marker is invalid: the
dialogues diverge before the final assistant turn, so there is no single prompt both responses
answer. HH-RLHF harmless-base test has 5 such rows of 2,312. They are never dropped silently:
`on_invalid="error"` raises naming the row, `on_invalid="skip"` counts each in the ledger under
'chosen: dialogues differ before the final assistant turn' (or 'rejected: ...') with its row.

Worked example (run as a test):

>>> record = {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?",
...           "rejected": "\n\nHuman: Hi there\n\nAssistant: What do you want?"}
>>> pair, = convert(record, HHOptions()).pairs
>>> pair.prompt, pair.chosen, pair.rejected
('\n\nHuman: Hi there\n\nAssistant:', 'Hello! How can I help?', 'What do you want?')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from marginkit.data.formats._base import Converted, leftovers, text_field
from marginkit.data.schema import Pair
from marginkit.data.validate import RowError

__all__ = ["ASSISTANT", "HUMAN", "HHOptions", "convert", "detect", "split_dialogue"]

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"


@dataclass(frozen=True)
class HHOptions:
    """HH-RLHF has fixed field names ("chosen", "rejected") and no options."""


def detect(record: Mapping[str, Any]) -> bool:
    chosen, rejected = record.get("chosen"), record.get("rejected")
    return (
        "prompt" not in record
        and isinstance(chosen, str)
        and isinstance(rejected, str)
        and HUMAN in chosen
        and ASSISTANT in chosen
    )


def split_dialogue(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen reply, rejected reply) of two HH dialogues."""
    shared = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        shared += 1
    last = chosen.rfind(ASSISTANT, 0, shared)  # the last marker lying wholly inside the common prefix
    if last < 0:
        raise RowError("chosen", 'no shared "\\n\\nAssistant:" turn', chosen)
    cut = last + len(ASSISTANT)
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        rest = text[cut:]
        if HUMAN in rest or ASSISTANT in rest:
            raise RowError(
                name, "dialogues differ before the final assistant turn", rest,
                detail=f"{rest.count(HUMAN)} more Human and {rest.count(ASSISTANT)} more Assistant turns after the shared prompt",
            )
    return chosen[:cut], chosen[cut:].lstrip(), rejected[cut:].lstrip()


def convert(record: Mapping[str, Any], options: HHOptions) -> Converted:
    prompt, chosen, rejected = split_dialogue(text_field(record, "chosen"), text_field(record, "rejected"))
    metadata = leftovers(record, ("chosen", "rejected"))
    return Converted(pairs=(Pair(prompt, chosen, rejected, metadata=metadata),))
