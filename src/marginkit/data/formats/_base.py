"""Shared pieces of the format converters: what a converter returns, the registry entry, field access.

A converter is a plain function `convert(record, options) -> Converted`. It reads one row (a dict)
and returns the pairs it makes, plus one reason per candidate pair its policy left out (a tie under
`ties="drop"`). When a row cannot become pairs it raises `RowError(field, problem, value)`; the
loader adds the file and row. Grouped formats (one response per row, pooled across rows by a key)
return `Converted(group=key, responses=...)` instead, and their `finish_group` turns each pooled
group into pairs once every row has been read.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from marginkit.data.schema import Message, Pair
from marginkit.data.validate import RowError

__all__ = [
    "Converted",
    "Format",
    "Graded",
    "as_messages",
    "as_prompt",
    "build_options",
    "get_field",
    "has_field",
    "leftovers",
    "text_field",
]


@dataclass(frozen=True)
class Graded:
    """One response of a ranked or graded list.

    order: the sort key, higher is better (a score, or minus a rank).
    score: the grade copied into score_chosen/score_rejected; None when the data has only an order
           (ranks, or one chosen against a list of rejected), so no label margin is invented.
    info:  per-response fields carried into the pair's metadata ("chosen_info"/"rejected_info").
    prompt: grouped formats only: the prompt this response answers (rows of a group may disagree).
    """

    text: Any
    order: float
    score: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    prompt: str | tuple[Message, ...] | None = None


@dataclass(frozen=True)
class Converted:
    """What a converter makes of one row, or of one pooled group."""

    pairs: tuple[Pair, ...] = ()
    dropped: tuple[str, ...] = ()  # one ledger reason per candidate pair left out by policy (ties)
    group: Hashable | None = None  # grouped formats: pool this row's responses under this key
    responses: tuple[Graded, ...] = ()


@dataclass(frozen=True)
class Format:
    """A registry entry: how to recognise, configure and convert one source format."""

    summary: str  # one line for listings and error messages
    options: type  # a dataclass; its fields are the format's keyword options, defaults included
    detect: Callable[[Mapping[str, Any]], bool]  # True when a first record looks like this format
    convert: Callable[[Mapping[str, Any], Any], Converted]
    finish_group: Callable[[Hashable, list[Graded], Any], Converted] | None = None


def _fits(value: Any, hint: Any) -> tuple[bool, Any]:
    """Whether `value` matches the type hint (Literal, str/bool/int/float, unions, tuple[str, ...])."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return value in typing.get_args(hint), value
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(hint):
            ok, converted = _fits(value, arm)
            if ok:
                return True, converted
        return False, value
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if isinstance(value, (list, tuple)) and all(_fits(v, item)[0] for v in value):
            return True, tuple(value)
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    return isinstance(value, hint), value


def build_options(format_name: str, options_type: type, values: Mapping[str, Any]) -> Any:
    """The format's options dataclass filled from keyword options; unknown names and bad values raise."""
    known = {f.name: f for f in fields(options_type)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"format {format_name!r} has no option(s) {unknown}; its options: {sorted(known)}")
    hints = typing.get_type_hints(options_type)
    checked = {}
    for name, value in values.items():
        ok, checked[name] = _fits(value, hints[name])
        if not ok:
            raise ValueError(f"format {format_name!r} option {name}={value!r}: expected {hints[name]}")
    return options_type(**checked)


def has_field(record: Mapping[str, Any], path: str) -> bool:
    """Whether `path` ("score" or dotted "metadata.score") is present."""
    if path in record:
        return True
    head, _, rest = path.partition(".")
    return bool(rest) and isinstance(record.get(head), Mapping) and has_field(record[head], rest)


def get_field(record: Mapping[str, Any], path: str) -> Any:
    """The value at `path`; a literal key "a.b" wins over the nested path a -> b. Missing raises RowError."""
    if path in record:
        return record[path]
    head, _, rest = path.partition(".")
    if rest and isinstance(record.get(head), Mapping) and has_field(record[head], rest):
        return get_field(record[head], rest)
    raise RowError(path, "missing field", detail=f"fields present: {sorted(record)}")


def text_field(record: Mapping[str, Any], path: str) -> str:
    """A field that must be a string for the converter to work on it (other types raise RowError)."""
    value = get_field(record, path)
    if not isinstance(value, str):
        raise RowError(path, "wrong type, expected a string", value, detail=type(value).__name__)
    return value


def leftovers(record: Mapping[str, Any], consumed: tuple[str, ...]) -> dict[str, Any]:
    """The record without the consumed fields (dotted paths remove nested keys; emptied dicts go)."""
    rest = dict(record)
    for path in consumed:
        if path in rest:
            del rest[path]
            continue
        head, _, tail = path.partition(".")
        if tail and isinstance(rest.get(head), Mapping):
            inner = leftovers(rest[head], (tail,))
            if inner:
                rest[head] = inner
            else:
                del rest[head]
    return rest


def as_messages(value: Any, field_name: str) -> tuple[Message, ...]:
    """A list of {"role", "content"} dicts as a tuple of fresh dicts; anything else raises RowError."""
    if not isinstance(value, (list, tuple)):
        raise RowError(field_name, "expected a list of messages", value)
    for k, message in enumerate(value):
        if not (isinstance(message, Mapping) and isinstance(message.get("role"), str)):
            raise RowError(f"{field_name}[{k}]", 'not a message {"role": str, "content": str}', message)
    return tuple(dict(message) for message in value)


def as_prompt(value: Any, field_name: str) -> Any:
    """A prompt as Pair keeps it: a string as is, a message list as a tuple of dicts.

    Other types are passed through unchanged so that validation reports them with the value.
    """
    if isinstance(value, (list, tuple)):
        return as_messages(value, field_name)
    return value
