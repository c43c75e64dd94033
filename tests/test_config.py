"""Configs: YAML + dotted overrides, strict keys and types, generated docs stay current."""

from pathlib import Path

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


def test_docs_config_md_is_generated_and_current():
    assert (DOCS / "config.md").read_text() == describe_markdown(RMRunConfig, "marginkit train-rm"), (
        "docs/config.md is stale: run `marginkit config train-rm --markdown > docs/config.md`")
