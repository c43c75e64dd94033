"""CLI smoke runs with tiny budgets: world make -> train-rm (YAML + overrides) -> eval-rm -> data check."""

import json

import pytest
from transformers import AutoModelForSequenceClassification

from marginkit.cli import main
from marginkit.data.world import WorldConfig, make_world
from marginkit.models.tiny import build_word_tokenizer, make_tiny_model_dir


@pytest.fixture(scope="module")
def world_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    assert main(["world", "make", "--out", str(root / "world"), "seed=3", "n_train=64", "n_val=16", "n_test=32"]) == 0
    world = make_world(WorldConfig(seed=3, n_train=64, n_val=16, n_test=32))
    base = make_tiny_model_dir(root / "base", build_word_tokenizer(world.vocabulary()), hidden_size=32)
    return root, base


def test_world_make_writes_splits(world_files):
    root, _ = world_files
    lines = (root / "world" / "train.jsonl").read_text().splitlines()
    assert len(lines) == 64 and {"prompt", "chosen", "rejected", "gold_chosen"} <= set(json.loads(lines[0]))


def test_train_rm_then_eval_rm(world_files, capsys):
    root, base = world_files
    cfg = root / "run.yaml"
    cfg.write_text(f"model: {{name_or_path: {base}}}\n"
                   f"data: {{train: {root / 'world' / 'train.jsonl'}, eval: {root / 'world' / 'val.jsonl'}}}\n"
                   "train: {batch_size: 16, learning_rate: 1e-3, progress_bar: false, log_every: 1}\n")
    out = root / "run"
    assert main(["train-rm", "--config", str(cfg), f"train.output_dir={out}", "margin.name=oracle"]) == 0
    for name in ("metrics.jsonl", "ledger.json", "config.yaml", "model/config.json", "model/marginkit_scorer.json"):
        assert (out / name).exists(), name
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert "eval_rewards/accuracies" in rows[-1]
    AutoModelForSequenceClassification.from_pretrained(out / "model")  # plain HF folder
    capsys.readouterr()
    assert main(["eval-rm", "--model", str(out / "model"), "--data", str(root / "world" / "test.jsonl"),
                 "--out", str(root / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "accuracy (true preference)" in printed and "swap test: passed" in printed
    report = json.loads((root / "eval" / "test.jsonl.json").read_text())  # named with the data file's extension
    assert report["n_pairs"] == 32 and report["swap"]["passed"]
    assert (root / "eval" / "test.jsonl_reliability.png").exists()
    rewards = [json.loads(x) for x in (root / "eval" / "test.jsonl.rewards.jsonl").read_text().splitlines()]
    assert len(rewards) == 32 and {"id", "chosen_reward", "rejected_reward", "gap"} <= set(rewards[0])


def test_bad_override_is_a_clean_error(capsys):
    assert main(["train-rm", "train.learnin_rate=1"]) == 2
    assert "unknown config key(s) ['learnin_rate']" in capsys.readouterr().err


def test_data_check_reports_every_problem(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n'
                   '{"prompt": "p", "chosen": "", "rejected": "b"}\n'
                   '{"prompt": "p", "chosen": "same", "rejected": "same"}\n')
    assert main(["data", "check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "row 1" in out and "row 2" in out and "chosen" in out


# ----------------------------------------------------------------------------- documented command lines


def _documented_commands():
    """Every `marginkit ...` line in the fenced code blocks of README.md and docs/*.md (continuations joined,
    comments cut, shell variables given a value)."""
    import re
    import shlex
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = []
    for md in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", md.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.strip()
                if line.startswith("marginkit "):
                    line = re.sub(r"\$\{?\w+\}?", "0", line.split(" #", 1)[0])
                    out.append((md.name, shlex.split(line)[1:]))
    return out


def test_docs_name_commands():
    assert len(_documented_commands()) >= 20


@pytest.mark.parametrize("where, argv", _documented_commands(), ids=lambda x: " ".join(x) if isinstance(x, list) else x)
def test_documented_commands_parse_into_configs(where, argv):
    """Each command line the docs show parses, and its flags build a valid config (nothing is run)."""
    from pathlib import Path

    from marginkit.cli import make_config, parse

    command, args = parse(argv)
    if command.style == "yaml":  # the docs' YAML files are the reader's own; the overrides must hold
        from marginkit.configlib import load_config

        path = args.config if args.config and Path(args.config).exists() else None
        load_config(command.configs()[0], path, args.overrides)
        return
    assert make_config(command, args) is not None or command.words == "config"


@pytest.mark.parametrize("argv, message", [
    (["study", "margins", "--task", "hh", "--noises", "0.5"], "--noises is not an option of RealStudyConfig"),
    (["study", "margins", "--data-dir", "x"], "--data-dir is not an option of StudyConfig"),
    (["study", "margins", "--tune-head"], "--tune-head: real tasks only"),
    (["study", "margins", "--task", "all", "--config", "configs/study/hh.yaml"], "--config names one task's file"),
    (["bon", "--rm", "a", "--n-prompts", "x"], "--n-prompts 'x': expected an integer"),
])
def test_options_of_another_config_are_rejected(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_real_task_flags_override_the_yaml_and_size_preset():
    from marginkit.cli import make_config, parse

    command, args = parse(["study", "margins", "--task", "hh", "--config", "configs/study/hh.yaml", "--size", "full",
                           "--seeds", "3,4", "--out", "runs/x", "head_epochs=2", "--head-epochs", "5"])
    (cfg,) = make_config(command, args)
    assert (cfg.task, cfg.seeds, cfg.out, cfg.max_length, cfg.head_epochs) == ("hh", [3, 4], "runs/x/hh", 256, 5)
    assert cfg.head_lr == 3e-3  # the YAML's value (chosen by --tune-head)
