"""Configs: YAML + dotted overrides, strict keys and types, generated docs stay current."""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_type_hints

import pytest

from marginkit.config import RMRunConfig
from marginkit.configlib import ConfigError, apply_overrides, describe_markdown, from_dict, load_config

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_yaml_and_overrides(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("model: {name_or_path: m}\ntrain: {learning_rate: 1e-5, batch_size: 4}\nmargin: {name: fixed}\n")
    cfg = load_config(RMRunConfig, f, ["margin.fixed.value=2", "train.learning_rate=3e-4", "train.report_to=[tensorboard]"])
    assert cfg.train.learning_rate == pytest.approx(3e-4) and cfg.train.batch_size == 4
    assert cfg.margin.name == "fixed" and cfg.margin.fixed.value == 2.0
    assert cfg.train.report_to == ["tensorboard"]
    assert cfg.train.pairs_per_step == 4  # derived, not a field


def test_yaml_reads_exponent_floats(tmp_path):
    # YAML 1.1 reads "1e-5" (no dot) as a string; we read it as the number users mean.
    f = tmp_path / "run.yaml"
    f.write_text("train: {learning_rate: 1e-5}\n")
    assert load_config(RMRunConfig, f).train.learning_rate == pytest.approx(1e-5)


@pytest.mark.parametrize("override, message", [
    ("train.learnin_rate=1", r"unknown config key\(s\) \['learnin_rate'\] in train; allowed: \[.*'learning_rate'"),
    ("margin.name=magic", r"margin.name='magic': must be one of \['none', 'fixed', 'label', 'oracle', 'confidence', 'ot'\]"),
    ("train.batch_size=two", r"train.batch_size='two': expected an integer"),
    ("train.batch_size=0", r"train.batch_size=0: must be >= 1"),
    ("train.max_grad_norm=true", r"train.max_grad_norm=True: expected a number"),
    ("data.tokenize.max_length=4", r"tokenize.max_length=4: must be >= 8"),
    ("loss.center_rewards_coefficient=-1", r"center_rewards_coefficient=-1.0: must be >= 0"),
    ("margin.label.table={1: x}", r"margin.label.table\[1\]='x': expected a number"),
])
def test_bad_values_rejected_at_parse_time(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RMRunConfig, None, [override])


def test_override_needs_equals():
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["train.learning_rate"])


def test_from_dict_roundtrip_defaults():
    assert from_dict(RMRunConfig, {}) == RMRunConfig()


def test_docs_config_md_is_generated_and_current(capsys):
    from marginkit.cli import main

    assert main(["config", "--markdown"]) == 0
    assert (DOCS / "config.md").read_text() == capsys.readouterr().out, (
        "docs/config.md is stale: run `marginkit config --markdown > docs/config.md`")
    assert describe_markdown(RMRunConfig, "`marginkit train-rm`") in (DOCS / "config.md").read_text()


# ----------------------------------------------------------------------------- flags generated from fields


@dataclass
class _Inner:
    temperature: float = field(default=1.0, metadata={"help": "T."})
    batch_size: int = field(default=4, metadata={"help": "Inner batch.", "flag": "--gen-batch-size"})


@dataclass
class _Cmd:
    name: str = field(default="", metadata={"help": "A name.", "required": True})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "Seeds."})
    rms: list[str] = field(default_factory=list, metadata={"help": "RMs.", "flag": "--rm", "repeat": True})
    limit: int | None = field(default=3, metadata={"help": "Limit."})
    mode: Literal["a", "b"] = field(default="a", metadata={"help": "Mode."})
    progress: bool = field(default=True, metadata={"help": "Bars."})
    quick: bool = field(default=False, metadata={"help": "Small."})
    ns: list[int] = field(default_factory=list, metadata={"help": "Ns.", "parse": lambda t: [int(t) * 2]})
    batch_size: int = field(default=8, metadata={"help": "Outer batch."})
    inner: _Inner = field(default_factory=_Inner, metadata={"help": "Inner settings."})


def _parse(argv):
    import argparse

    from marginkit.configlib import add_config_flags, flag_values

    p = argparse.ArgumentParser()
    add_config_flags(p, _Cmd)
    return from_dict(_Cmd, flag_values(_Cmd, p.parse_args(argv)))


def test_flags_from_fields_by_hand():
    # one flag per leaf field: --field-name, metadata["flag"], --no-x for a bool that defaults to true
    cfg = _parse(["--name", "x", "--seeds", "1,2", "--rm", "a=p", "--rm", "b", "c", "--limit", "none", "--mode", "b",
                  "--no-progress", "--quick", "--ns", "5", "--batch-size", "16", "--temperature", "0.5",
                  "--gen-batch-size", "2"])
    assert cfg == _Cmd(name="x", seeds=[1, 2], rms=["a=p", "b", "c"], limit=None, mode="b", progress=False,
                       quick=True, ns=[10], batch_size=16, inner=_Inner(temperature=0.5, batch_size=2))
    assert _parse(["--name", "x"]) == _Cmd(name="x")  # flags not given keep the field defaults


@pytest.mark.parametrize("argv, message", [
    (["--name", "x", "--seeds", "1,b"], r"--seeds 'b': expected an integer"),
    (["--name", "x", "--limit", "1.5"], r"--limit '1.5': expected an integer"),
])
def test_bad_flag_values_are_config_errors(argv, message):
    with pytest.raises(ConfigError, match=message):
        _parse(argv)


def test_flag_choices_and_required_are_argparse_errors(capsys):
    for argv in (["--seeds", "1"], ["--name", "x", "--mode", "c"]):
        with pytest.raises(SystemExit):
            _parse(argv)
    assert "invalid choice: 'c'" in capsys.readouterr().err


def test_two_fields_wanting_one_flag_raise():
    from marginkit.configlib import config_flags

    @dataclass
    class Clash:
        batch_size: int = field(default=1, metadata={"help": "a"})
        inner: _Cmd = field(default_factory=_Cmd, metadata={"help": "b"})

    with pytest.raises(ValueError, match="both want --batch-size"):
        config_flags(Clash)


# ----------------------------------------------------------------------------- every command's options


def _fields(cls, prefix=""):
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        yield f"{prefix}{f.name}", f, hints[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _fields(hints[f.name], f"{prefix}{f.name}.")


def _commands():
    from marginkit.cli import COMMANDS

    return [c for c in COMMANDS if c.config_paths]


@pytest.mark.parametrize("command", _commands(), ids=lambda c: c.words)
def test_every_option_has_help_and_is_in_help_output(command, capsys):
    """Each leaf field of each command's config has help text (flag commands: every field, sections too),
    and `marginkit CMD --help` lists it: the flag and the key for flag commands, the key for YAML ones."""
    from marginkit.cli import build_parser
    from marginkit.configlib import config_flags

    argv = [*command.words.split(), "--help"]
    with pytest.raises(SystemExit):
        build_parser(argv).parse_args(argv)
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for cls in command.configs():
        fields = list(_fields(cls))
        leaves = {key for key, _, tp in fields if not dataclasses.is_dataclass(tp)}
        missing = [key for key, f, _ in fields if not f.metadata.get("help") and (key in leaves or command.style == "flags")]
        assert not missing, f"{command.words}: {cls.__name__} fields without help: {missing}"
        if command.style == "yaml":
            assert all(f"{key} = " in out for key in leaves), [k for k in leaves if f"{k} = " not in out]
            continue
        for flag in config_flags(cls):
            if flag.key in command.skip:
                continue
            shown = flag.option if not flag.positional else flag.key.upper()
            assert shown in out and f"[{flag.key};" in out, (command.words, flag.key)

