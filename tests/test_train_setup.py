"""The one run setup (train/setup.py) every trainer shares: the points where the trainers' copies had drifted
(config.yaml written by every process in train-rm, AdamW given frozen parameters in train-rm, a second flat
config), the margin strategy prepared with the injected scorer, and nothing set up a second way in train/."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import marginkit.train.setup as train_setup
from _engine_helpers import make_pairs, run_config, vocab_words
from marginkit.config import DPORunConfig, SFTRunConfig
from marginkit.data.schema import DataError, Pair
from marginkit.evaluate.scorer import score_rm_dir
from marginkit.margins import MarginSpec
from marginkit.margins.label import LabelMarginConfig
from marginkit.train.engine import SFTTrainConfig, TrainConfig

TRAIN = Path(train_setup.__file__).parent


class StubAccelerator:
    """What start_run and load_data read from an Accelerator: which process this is, and its device."""

    def __init__(self, main: bool) -> None:
        self.is_main_process = main
        self.device = torch.device("cpu")


def start(monkeypatch, cfg, main: bool) -> tuple[Path, list[str]]:
    monkeypatch.setattr(train_setup, "make_accelerator", lambda train_cfg: StubAccelerator(main))
    said: list[str] = []
    cfg.model.name_or_path = cfg.model.name_or_path or "unused-model"
    _, out, say, _ = train_setup.start_run(cfg, said.append, train_pairs=[])
    say("hello")
    return out, said


# ---- the run folder: config.yaml and metrics.jsonl belong to the main process ----

def sft_config(out: Path) -> SFTRunConfig:
    return SFTRunConfig(train=SFTTrainConfig(output_dir=str(out), mixed_precision="no", progress_bar=False))


@pytest.mark.parametrize("make_cfg", [
    lambda out: run_config("unused-model", out),
    sft_config,
], ids=["train-rm", "train-sft"])
def test_only_the_main_process_writes_config_yaml(monkeypatch, tmp_path, make_cfg):
    cfg = make_cfg(tmp_path / "run")
    out, said = start(monkeypatch, cfg, main=False)
    assert out.is_dir() and not (out / "config.yaml").exists() and said == []  # another rank: silent, writes nothing
    out, said = start(monkeypatch, cfg, main=True)
    assert said == ["hello"]
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["output_dir"] == str(tmp_path / "run")


def test_a_folder_holding_a_run_is_refused_unless_resumed_or_overwritten(monkeypatch, tmp_path):
    from marginkit.configlib import ConfigError
    from marginkit.train.identity import IDENTITY_FILE, run_identity

    cfg = run_config("unused-model", tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ConfigError, match="already holds a run .*metrics.jsonl.*train.resume_from=latest.*"
                                          "train.overwrite=true"):
        start(monkeypatch, cfg, main=True)
    assert not (tmp_path / "config.yaml").exists()  # refused before anything is written
    cfg.train.resume_from = "latest"
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        start(monkeypatch, cfg, main=True)
    ckpt = tmp_path / "checkpoints" / "step-000001"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.pt").write_text("")
    (ckpt / IDENTITY_FILE).write_text(json.dumps(run_identity(cfg, [])))
    start(monkeypatch, cfg, main=True)
    assert (tmp_path / "metrics.jsonl").exists()  # resumed: the history continues
    (tmp_path / "marginkit").mkdir()  # the TensorBoard tracker's folder: the old curves must go too
    (tmp_path / "marginkit" / "events.out.tfevents.1").write_text("")
    cfg.train.resume_from, cfg.train.overwrite = None, True
    start(monkeypatch, cfg, main=False)
    assert (tmp_path / "metrics.jsonl").exists() and ckpt.exists()  # only the main process clears
    start(monkeypatch, cfg, main=True)
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "checkpoints").exists()
    assert not (tmp_path / "marginkit").exists()
    assert (tmp_path / "config.yaml").exists() and (tmp_path / IDENTITY_FILE).exists()
    cfg.train.overwrite = False
    start(monkeypatch, cfg, main=True)  # only the files every start writes: a start that failed can be rerun


def test_only_the_main_process_writes_the_ledger(word_tokenizer, tmp_path):
    pairs = make_pairs(vocab_words(word_tokenizer), 3)
    data = run_config("unused-model", tmp_path).data
    said: list[str] = []
    loaded = train_setup.load_data(data, word_tokenizer, pairs, None, StubAccelerator(False), tmp_path, lambda _: None)
    assert len(loaded[1]) == 3 and not (tmp_path / "ledger.json").exists()
    train_setup.load_data(data, word_tokenizer, pairs, None, StubAccelerator(True), tmp_path, said.append)
    assert json.loads((tmp_path / "ledger.json").read_text())["rows_read"] == 3
    assert said and said[0].startswith("data: ")


def test_no_training_pair_left_is_an_error_naming_the_ledger(word_tokenizer, tmp_path):
    data = run_config("unused-model", tmp_path).data
    with pytest.raises(ValueError, match="no training pairs left"):
        train_setup.load_encoded(data, word_tokenizer, [], None)


def test_a_run_that_lost_every_pair_still_writes_its_ledger(word_tokenizer, tmp_path):
    data = run_config("unused-model", tmp_path).data
    with pytest.raises(ValueError, match="no training pairs left"):
        train_setup.load_data(data, word_tokenizer, [], None, StubAccelerator(True), tmp_path, lambda _: None)
    assert json.loads((tmp_path / "ledger.json").read_text())["rows_read"] == 0


def test_skipped_eval_rows_are_counted_in_their_own_ledger(word_tokenizer, tmp_path):
    words = vocab_words(word_tokenizer)
    rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in make_pairs(words, 2)]
    rows.append({"prompt": words[0], "chosen": "", "rejected": words[1]})  # empty chosen: skipped, counted
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = run_config("unused-model", tmp_path)
    cfg.data.eval, cfg.data.on_invalid = str(eval_file), "skip"
    said: list[str] = []
    loaded = train_setup.load_data(cfg.data, word_tokenizer, make_pairs(words, 3), None, StubAccelerator(True),
                                   tmp_path, said.append)
    assert len(loaded[3]) == 2
    ledger = json.loads((tmp_path / "ledger_eval.json").read_text())
    assert (ledger["rows_read"], ledger["kept"]) == (3, 2)
    assert any(line.startswith("eval data: ") for line in said)


# ---- the optimizer: trainable parameters only ----

def test_frozen_parameters_never_reach_adamw():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    model[0].weight.requires_grad_(False)  # a frozen backbone matrix
    train = TrainConfig(learning_rate=0.5, weight_decay=0.25, adam_beta1=0.8, adam_beta2=0.9, lr_scheduler="constant",
                        warmup_ratio=0.0, batch_size=2, gradient_accumulation_steps=2)
    optimizer, scheduler, total = train_setup.make_optimizer(model, train, n_pairs=9)
    given = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(given) == 3 and all(p is not model[0].weight for p in given)  # bias 0, weight 1, bias 1
    group = optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["betas"]) == (0.5, 0.25, (0.8, 0.9))
    assert total == 3  # ceil(ceil(9 / 2) / 2) = ceil(5 / 2) = 3 optimizer steps in one epoch
    assert scheduler.get_last_lr() == [0.5]


def test_flat_config_hand_worked():
    nested = {"train": {"lr": 0.1, "report_to": ["wandb"], "resume_from": None}, "seed": 3, "name": "bt"}
    assert train_setup.flat_config(nested) == {"train.lr": 0.1, "train.report_to": '["wandb"]',
                                               "train.resume_from": "null", "seed": 3, "name": "bt"}


# ---- the margin strategy: built, checked against the data, prepared with the injected scorer ----

def test_setup_margin_checks_the_data_then_prepares_with_the_eval_rm_scorer(monkeypatch, word_tokenizer, tmp_path):
    pairs = [Pair("cats", "yes", "no", margin=2.0, id="a"), Pair("dogs", "yes", "no", id="b")]
    data = run_config("unused-model", tmp_path).data
    _, encoded, _, _, _ = train_setup.load_encoded(data, word_tokenizer, pairs, None)
    cfg = run_config("unused-model", tmp_path, margin=MarginSpec(name="label", label=LabelMarginConfig(source="margin")))
    with pytest.raises(DataError, match=r"pair id b"):  # pair b has no margin, and the label strategy needs one
        train_setup.setup_margin(cfg, encoded, pairs, word_tokenizer.pad_token_id, torch.device("cpu"), print)

    seen = []

    class Recording:
        needs: frozenset[str] = frozenset()

        def prepare(self, setup):
            seen.append(setup)

    monkeypatch.setattr(train_setup, "build_margin", lambda spec: Recording())
    strategy = train_setup.setup_margin(cfg, encoded, pairs, 7, torch.device("cpu"), print)
    (setup,) = seen
    assert isinstance(strategy, Recording)
    assert setup.score_rm is score_rm_dir and setup.pad_id == 7 and list(setup.pairs) == pairs
    assert setup.cache_dir == cfg.data.resolved_cache_dir()


def test_pair_ids_name_pairs_without_an_id_by_position():
    assert train_setup.pair_ids([Pair("p", "a", "b", id="x"), Pair("p", "a", "b")]) == ["x", "#1"]


# ---- one setup: no trainer builds these a second way, and config.py loads no trainer ----

SETUP_ONLY = {"Accelerator", "AdamW", "get_scheduler", "set_seed", "DataLoaderConfiguration", "init_trackers"}


@pytest.mark.parametrize("module", ["rm.py", "sft.py", "dpo.py", "rm_step.py", "dpo_step.py", "sft_step.py"])
def test_trainers_use_the_one_setup(module):
    tree = ast.parse((TRAIN / module).read_text())
    called = {node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
              for node in ast.walk(tree) if isinstance(node, ast.Call)}
    assert not called & SETUP_ONLY, f"train/{module} sets up {sorted(called & SETUP_ONLY)} itself; use train/setup.py"
    names = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)}
    assert "config.yaml" not in names and "ledger.json" not in names, f"train/{module} writes the run folder itself"


def test_importing_config_loads_no_trainer():
    code = ("import sys, marginkit.config; "
            "print([m for m in ('marginkit.train.rm', 'marginkit.train.sft', 'marginkit.train.dpo') if m in sys.modules])")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_trainer_configs_compose_without_the_trainers():
    assert DPORunConfig().train.learning_rate == 1e-6 and DPORunConfig().train.output_dir == "runs/dpo"
    assert SFTRunConfig().train.learning_rate == 2e-5 and SFTRunConfig().loss.length_normalized is True
