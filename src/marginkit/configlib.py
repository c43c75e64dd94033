"""Config plumbing: dataclass trees from YAML plus dotted `key=value` overrides, strictly typed.

Why not a library: HfArgumentParser does not nest dataclasses, OmegaConf does not check `Literal`
choices, and tyro uses `--a.b value` flags instead of the `a.b=value` overrides our users know
from Hydra/TRL scripts. This module is the small part of those we need: unknown keys raise with
the allowed list, every value is type-checked against its field, and help text comes from each
field's `metadata["help"]` so `--help` and docs/config.md share one source.

Commands that take flags (`marginkit bon --rm A --n 1,2,4`) get them from the same fields:
`add_config_flags` makes one flag per leaf field (`--field-name`, or `metadata["flag"]`), and
`flag_values` turns the flags given into the nested dict `from_dict` checks. A list field takes
comma-separated values (`--seeds 0,1,2`), or, with `metadata["repeat"]`, one or more values per
flag and repeats (`--rm A --rm B`); a bool field is a switch (`--name`, or `--no-name` when it
defaults to true); `metadata["parse"]` reads a value that has its own syntax (`--n 1,2,4,...,64`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

__all__ = ["ConfigError", "from_dict", "apply_overrides", "load_config", "to_dict", "flatten", "describe",
           "describe_markdown",
           "leaf_fields", "Flag", "config_flags", "add_config_flags", "flag_values", "reference_markdown"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value that cannot be accepted; names the dotted key, the value and what is allowed."""


def _check(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        real = [o for o in options if o is not type(None)]
        if len(real) == 1:  # X | None: report X's own, more precise, error
            return _check(value, real[0], key)
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check(value, option, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}={value!r}: expected {_name(tp)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}={value!r}: must be one of {list(get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} options, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r}: expected a list")
        (inner, *_) = get_args(tp) or (Any,)
        items = [_check(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r}: expected a mapping")
        kt, vt = get_args(tp) or (Any, Any)
        return {_check(k, kt, f"{key} key"): _check(v, vt, f"{key}[{k}]") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r}: expected a number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected true or false")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return str(value)
    return value


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a nested dict; unknown keys and ill-typed values raise ConfigError."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f" in {prefix}" if prefix else ""
        raise ConfigError(f"unknown config key(s) {unknown}{where}; allowed: {sorted(fields)}")
    kwargs = {name: _check(v, hints[name], f"{prefix}.{name}" if prefix else name) for name, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from e


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. train.learning_rate=1e-5")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    if isinstance(value, str) and _looks_numeric(raw):
        value = float(raw)  # YAML 1.1 reads "1e-5" as a string
    return key.strip().split("."), value


def _looks_numeric(raw: str) -> bool:
    try:
        float(raw)
    except ValueError:
        return False
    return True


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys (`margin.fixed.value=2`) in a nested dict; values parsed as YAML scalars."""
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[path[-1]] = value
    return data


def _fix_yaml_floats(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _fix_yaml_floats(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_fix_yaml_floats(v) for v in data]
    if isinstance(data, str) and _looks_numeric(data) and any(c in data.lower() for c in "e."):
        return float(data)
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None, values: dict[str, Any] | None = None) -> T:
    """`base` (a dict of defaults) < YAML file (optional) < `key=value` overrides < `values` (a nested
    dict, e.g. from `flag_values`), into dataclass `cls`."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = _deep_merge(data, _fix_yaml_floats(loaded))
    data = _deep_merge(apply_overrides(data, overrides or []), values or {})
    return from_dict(cls, data)


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (for YAML/JSON dumps)."""
    return dataclasses.asdict(cfg)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as flat dotted keys, values untouched: {"a": {"b": 1}} -> {"a.b": 1} (with `prefix`
    before every key)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def leaf_fields(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field, Any]]:
    """(dotted key, field, type) of every non-dataclass field, depth first."""
    rows = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(leaf_fields(tp, f"{prefix}{f.name}."))
        else:
            rows.append((f"{prefix}{f.name}", f, tp))
    return rows


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, help) for every leaf field, depth first."""
    return [(key, _type_name(tp), _default(f), f.metadata.get("help", "")) for key, f, tp in leaf_fields(cls, prefix)]


def describe_markdown(cls: type, title: str, flags: dict[str, str] | None = None) -> str:
    """One command's options as a markdown section: a table of key (and flag), type, default and help.
    docs/config.md is `reference_markdown` of every command's section."""
    head = "| key | flag | type | default | meaning |\n|---|---|---|---|---|" if flags else \
        "| key | type | default | meaning |\n|---|---|---|---|"
    lines = [f"## {title}", "", head]
    for key, tp, default, text in describe(cls):
        tp = tp.replace("|", "\\|")
        flag = f" `{flags[key]}` |" if flags else ""
        lines.append(f"| `{key}` |{flag} {tp} | `{json.dumps(default)}` | {text} |")
    return "\n".join(lines) + "\n"


def reference_markdown(sections: Sequence[str]) -> str:
    """docs/config.md: the sections of `describe_markdown`, one per command, under one header."""
    intro = ["# Options of every `marginkit` command", "",
             "Generated by `marginkit config --markdown > docs/config.md` from the config dataclasses' help text; "
             "a test checks it is current. Commands with a `--config` option read a YAML file plus dotted "
             "`key=value` overrides; the others take the flags in the flag column (`marginkit CMD --help` "
             "prints the same text)."]
    return "\n".join(intro) + "\n\n" + "\n".join(sections)


# ----------------------------------------------------------------------------- flags from fields


@dataclasses.dataclass(frozen=True)
class Flag:
    """The command-line flag of one leaf field: `option` is "--name" or, for a positional, the bare name."""

    key: str
    option: str
    field: dataclasses.Field
    tp: Any

    @property
    def positional(self) -> bool:
        return not self.option.startswith("-")

    @property
    def is_list(self) -> bool:
        return get_origin(_strip_none(self.tp)) in (list, tuple)


def _strip_none(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        real = [o for o in get_args(tp) if o is not type(None)]
        if len(real) == 1:
            return real[0]
    return tp


def config_flags(cls: type) -> list[Flag]:
    """One Flag per leaf field of `cls`; two fields wanting one flag raise (give one `metadata["flag"]`)."""
    flags, seen = [], {}
    for key, f, tp in leaf_fields(cls):
        if f.metadata.get("positional"):
            option = f.name
        elif "flag" in f.metadata:
            option = f.metadata["flag"]
        elif tp is bool and _default(f) is True:
            option = "--no-" + f.name.replace("_", "-")
        else:
            option = "--" + f.name.replace("_", "-")
        if option in seen:
            raise ValueError(f"{cls.__name__}: fields {seen[option]} and {key} both want {option}; "
                             "give one a metadata['flag']")
        seen[option] = key
        flags.append(Flag(key, option, f, tp))
    return flags


def _metavar(flag: Flag) -> str | None:
    if "metavar" in flag.field.metadata:
        return flag.field.metadata["metavar"]
    tp = _strip_none(flag.tp)
    if get_origin(tp) is Literal:
        return None  # argparse shows the choices
    if flag.is_list:
        if flag.field.metadata.get("repeat") or "parse" in flag.field.metadata:
            return "VALUE"
        (inner, *_) = get_args(tp) or (str,)
        one = {int: "N", float: "X"}.get(inner, "A")
        return f"{one},{one},..."
    return {int: "N", float: "X"}.get(tp, "VALUE")


def add_config_flags(parser: argparse.ArgumentParser, *classes: type, skip: Sequence[str] = ()) -> None:
    """Add one flag per leaf field of `classes` to `parser` (a field that two classes share gets one flag;
    its help names each class's default when they differ). Values stay text until `flag_values`."""
    merged: dict[str, list[tuple[type, Flag]]] = {}
    for cls in classes:
        for flag in config_flags(cls):
            if flag.key not in skip:
                merged.setdefault(flag.key, []).append((cls, flag))
    for key, owners in merged.items():
        flag = owners[0][1]
        defaults = [(cls.__name__, _default(fl.field)) for cls, fl in owners]
        shown = json.dumps(defaults[0][1])
        if any(d != defaults[0][1] for _, d in defaults[1:]):
            shown += " (" + ", ".join(f"{name}: {json.dumps(d)}" for name, d in defaults[1:]) + ")"
        text = " | ".join(dict.fromkeys(  # each class's help, once
            (f"{cls.__name__}: " if i else "") + fl.field.metadata.get("help", "") for i, (cls, fl) in enumerate(owners)
            if not i or fl.field.metadata.get("help") != flag.field.metadata.get("help"))).replace("%", "%%")
        if flag.option.startswith("--no-") and _strip_none(flag.tp) is bool:
            text = f"Turn off: {text}"
        kwargs: dict[str, Any] = {"help": f"{text} [{key}; default {shown.replace('%', '%%')}]"}
        tp = _strip_none(flag.tp)
        if flag.positional:
            required = flag.field.metadata.get("required", False)
            nargs = ("+" if required else "*") if flag.is_list else (None if required else "?")
            parser.add_argument(key, nargs=nargs, metavar=key.upper(), **kwargs)
            continue
        kwargs.update(dest=key, default=None)
        if tp is bool:
            kwargs.update(action="store_const", const=not _default(flag.field))
        elif flag.is_list and flag.field.metadata.get("repeat"):
            kwargs.update(action="extend", nargs="+", metavar=_metavar(flag))
        else:
            kwargs["metavar"] = _metavar(flag)
            if get_origin(tp) is Literal:
                kwargs.update(choices=[str(c) for c in get_args(tp)], metavar=None)
        if flag.field.metadata.get("required"):
            kwargs["required"] = True
        parser.add_argument(flag.option, **kwargs)


def _from_text(text: str, tp: Any, where: str) -> Any:
    """A flag's text as a value of type `tp` (checked again, with the field's own rules, by from_dict)."""
    if get_origin(tp) in (Union, types.UnionType):
        if text.strip().lower() in ("none", "null") and type(None) in get_args(tp):
            return None
        tp = _strip_none(tp)
    origin = get_origin(tp)
    if origin in (list, tuple):
        (inner, *_) = get_args(tp) or (str,)
        return [_from_text(t.strip(), inner, where) for t in text.split(",") if t.strip()]
    if origin is Literal:
        for choice in get_args(tp):
            if str(choice) == text:
                return choice
        return text
    try:
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
    except ValueError:
        raise ConfigError(f"{where} {text!r}: expected {'an integer' if tp is int else 'a number'}") from None
    if tp is str or tp is Any:
        return text
    return yaml.safe_load(text)


def flag_values(cls: type, args: argparse.Namespace, others: Sequence[type] = (),
                handled: Sequence[str] = ()) -> dict[str, Any]:
    """The flags of `cls` given on the command line, as the nested dict `from_dict(cls, ...)` takes.
    A flag set for one of `others` (classes sharing the parser) but not a field of `cls` raises:
    nothing is accepted and then ignored. Keys in `handled` are the caller's (left out, never checked)."""
    own = {flag.key: flag for flag in config_flags(cls) if flag.key not in handled}
    for other in others:
        for flag in config_flags(other):
            if flag.key not in own and flag.key not in handled and getattr(args, flag.key, None) not in (None, []):
                raise ConfigError(f"{flag.option} is not an option of {cls.__name__} here ({flag.key} belongs to "
                                  f"{other.__name__})")
    data: dict[str, Any] = {}
    for key, flag in own.items():
        raw = getattr(args, key, None)
        if raw is None:
            continue
        if flag.positional and raw == []:
            continue
        parse: Callable[[str], Any] | None = flag.field.metadata.get("parse")
        if isinstance(raw, bool):
            value = raw
        elif parse is not None:
            value = parse(raw)
        elif isinstance(raw, list):  # repeated or positional list: one item per value
            (inner, *_) = get_args(_strip_none(flag.tp)) or (str,)
            value = [_from_text(t, inner, flag.option) for t in raw]
        else:
            value = _from_text(raw, flag.tp, flag.option)
        node = data
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return data
