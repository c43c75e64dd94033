"""evaluate/sections.py: sections from files and formats, per-side prompts, accuracy per section and the
unweighted mean (worked by hand), an RM scored exactly as eval-rm, and the built-in real sections."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import shared_data_dir
from marginkit.cli import main
from marginkit.data.schema import Pair
from marginkit.evaluate.sections import (
    BUILTIN_SECTIONS,
    SectionSpec,
    build_section,
    builtin_sections,
    evaluate_sections,
    format_sections,
    load_section_specs,
    pair_items,
    parse_section_spec,
    section_gaps,
    sections_report,
)


def test_report_by_hand():
    # section A: gaps [1, -1, 0, 2] -> (1 + 0 + 1/2 + 1) / 4 = 0.625; section B: [3, 1] -> 1.0
    # unweighted mean over sections: (0.625 + 1.0) / 2 = 0.8125 (pooled over pairs it would be 4.5/6 = 0.75)
    rep = sections_report({"A": np.array([1.0, -1.0, 0.0, 2.0]), "B": np.array([3.0, 1.0])}, n_boot=300)
    assert [s.accuracy.value for s in rep.sections] == [0.625, 1.0]
    assert rep.mean == 0.8125
    # the mean's interval by hand, as the docstring states it: replicate b resamples A's 4 outcomes (1, 0, 1/2, 1),
    # then B's 2, from one default_rng(0); B's outcomes are all 1, so a replicate is (A's resampled accuracy + 1) / 2
    outcomes_a, rng, reps = np.array([1.0, 0.0, 0.5, 1.0]), np.random.default_rng(0), []
    for _ in range(300):
        accuracy_a = outcomes_a[rng.integers(0, 4, size=4)].mean()
        rng.integers(0, 2, size=2)  # B's resample
        reps.append((accuracy_a + 1.0) / 2)
    assert (rep.mean_low, rep.mean_high) == pytest.approx(tuple(np.quantile(reps, [0.025, 0.975])))
    assert rep.mean_low < rep.mean_high  # A's pairs vary, so the interval does not collapse
    perfect = sections_report({"A": np.ones(5), "B": np.ones(3)}, n_boot=50)
    assert (perfect.mean, perfect.mean_low, perfect.mean_high) == (1.0, 1.0, 1.0)
    table = format_sections(rep)
    assert "| A | 4 | 0.625" in table and "| **mean** | | 0.812" in table


def test_label_buckets_only_for_graded_sections():
    rep = sections_report({"g": np.array([1.0, -1.0, 2.0, 3.0]), "u": np.array([1.0, 1.0])},
                          labels={"g": np.array([0.5, 0.5, 2.0, 2.0]), "u": np.array([np.nan, np.nan])},
                          n_boot=20, n_buckets=2)
    g, u = rep.sections
    # |label| buckets [0.5, 2.0): gaps [1, -1] -> 0.5; [2.0, 2.0]: gaps [2, 3] -> 1.0
    assert [b.accuracy for b in g.by_label] == [0.5, 1.0] and u.by_label is None


def test_each_side_scored_under_its_own_prompt():
    pairs = [Pair("q", "long answer", "no"),
             Pair("q2", "x", "yy", metadata={"chosen_prompt": "own prompt", "rejected_prompt": "p"})]
    prompts, responses = pair_items(pairs)
    assert prompts == ["q", "own prompt", "q", "p"] and responses == ["long answer", "x", "no", "yy"]

    def score(prompts, responses):  # a fake RM: 10 x response length + prompt length
        return np.array([10 * len(r) + len(p) for p, r in zip(prompts, responses)], dtype=float)

    # pair 0: (110 + 1) - (20 + 1) = 90; pair 1: (10 + 10) - (20 + 1) = -1
    np.testing.assert_allclose(section_gaps(score, pairs), [90.0, -1.0])


def test_specs():
    assert parse_section_spec("mine=data/x.jsonl") == SectionSpec("mine", "data/x.jsonl", "auto")
    assert parse_section_spec("qa=dev.json@finegrained") == SectionSpec("qa", "dev.json", "finegrained")
    with pytest.raises(ValueError, match="NAME=PATH"):
        parse_section_spec("no-name")


def _user_file(tmp_path):
    rows = [{"prompt": "please help me", "chosen": "yes good answer", "rejected": "no"},
            {"prompt": "the question is about cats", "chosen": "cats", "rejected": "dogs dogs"},
            {"prompt": "the question is about fish", "chosen": "fish food", "rejected": "fish food"}]  # identical
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_user_section_from_a_file_and_a_spec_list(tmp_path):
    path = _user_file(tmp_path)
    section = build_section(SectionSpec("mine", path.name), data_dir=tmp_path)
    assert len(section.pairs) == 2 and section.ledger.dropped == {"rejected: identical to chosen": 1}
    specs_file = tmp_path / "sections.yaml"
    specs_file.write_text(f"- name: mine\n  path: {path}\n  format: native\n- name: qa\n  path: x.json\n"
                          "  format: finegrained\n  options: {ties: keep}\n")
    specs = load_section_specs(specs_file)
    assert specs[0] == SectionSpec("mine", str(path), "native") and specs[1].options == {"ties": "keep"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("- name: x\n  file: y\n")
    with pytest.raises(ValueError, match="need name and path"):
        load_section_specs(bad)


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, tiny_model_dir):
    from marginkit.models.reward import ModelConfig, load_reward_model, save_reward_model

    model, tok = load_reward_model(ModelConfig(name_or_path=str(tiny_model_dir), head_init="normal"))
    out = tmp_path_factory.mktemp("sections") / "rm"
    save_reward_model(model, tok, out, {"tokenize": {"max_length": 64}, "padding_side": "right"})
    return out


def test_rm_sections_equal_eval_rm(tmp_path, rm_dir):
    from marginkit.evaluate.rm_eval import evaluate_rm_dir

    section = build_section(SectionSpec("mine", str(_user_file(tmp_path))))
    rep = evaluate_sections(rm_dir, [section, build_section(SectionSpec("again", str(_user_file(tmp_path))))],
                            n_boot=50)
    expected = evaluate_rm_dir(rm_dir, section.pairs, progress=False).gaps
    gaps = np.where(expected > 0, 1.0, np.where(expected == 0, 0.5, 0.0))
    assert rep.sections[0].accuracy.value == pytest.approx(gaps.mean())
    assert rep.mean == pytest.approx(gaps.mean())  # two identical sections
    with pytest.raises(ValueError, match="repeat"):
        evaluate_sections(rm_dir, [section, section])


def test_cli_eval_sections(tmp_path, rm_dir, capsys):
    path = _user_file(tmp_path)
    out = tmp_path / "out"
    assert main(["eval-sections", "--model", str(rm_dir), "--section", f"mine={path}@native", "--out", str(out),
                 "--n-boot", "20"]) == 0
    report = json.loads((out / "sections.json").read_text())
    assert [s["name"] for s in report["sections"]] == ["mine"] and report["ledgers"]["mine"]["kept"] == 2
    assert "| mine | 2 |" in capsys.readouterr().out


@pytest.mark.shared_data
def test_builtin_sections_counts():
    data = shared_data_dir()
    missing = [s.path for s in BUILTIN_SECTIONS.values() if not (data / s.path).exists()]
    if missing:
        pytest.skip(f"shared data files absent: {missing}")
    sections = {s.name: s for s in builtin_sections(data)}
    # PROVENANCE.md: 2,616 strict FineGrained pairs; 371 of 480 MT-Bench and 322 of 480 Vicuna pairs non-tied
    assert {name: len(s.pairs) for name, s in sections.items()} == {
        "finegrained-qa": 2616, "mt-bench-gpt4": 371, "vicuna-gpt4": 322}
    mt = sections["mt-bench-gpt4"].pairs
    prompts, _ = pair_items(mt)
    # each side is scored under its own dialogue; they differ except in 2 pairs (groups 107 and 132) where
    # chatgpt and wizardlm_13b wrote the same first answer
    b = len(mt)
    assert sum(prompts[i] != prompts[b + i] for i in range(b)) == b - 2
    assert prompts[b] == mt[0].metadata["rejected_prompt"]
