"""Runs are never mixed up or lost (issue 14, "Runs get mixed up or lost"): a resume refuses a checkpoint of
another run, a folder holding a run is refused unless resumed or overwritten, SIGINT/SIGTERM save a resumable
checkpoint and the model, final writes are atomic, and resumed metrics hold each step once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from _engine_helpers import load_weights, make_pairs, one_torch_thread, run_config, train, vocab_words
from marginkit.atomic import write_dir_atomic, write_text_atomic
from marginkit.cli import main
from marginkit.configlib import ConfigError
from marginkit.margins import MarginSpec
from marginkit.train.checkpoint import latest_checkpoint, load_trainer_state
from marginkit.train.engine import Engine, TrainingInterrupted
from marginkit.train.identity import IDENTITY_FILE, run_identity
from marginkit.train.setup import finish_run


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


def pairs_for(word_tokenizer, n: int = 8, seed: int = 0):
    return make_pairs(vocab_words(word_tokenizer), n, seed)


# ---- 1. a resume refuses a checkpoint of another run ----

def test_resume_refuses_changed_settings_naming_each_key(tiny_model_dir, word_tokenizer, tmp_path):
    """The issue's case: checkpoints of a label-margin run resumed with another margin, learning rate, step
    count and data trained nothing and saved the old weights under the new config."""
    pairs = pairs_for(word_tokenizer)
    cfg = run_config(tiny_model_dir, tmp_path, max_steps=4, save_every=2)
    train(cfg, pairs)
    changed = run_config(tiny_model_dir, tmp_path, max_steps=8, save_every=2, resume_from="latest",
                         learning_rate=1e-2, margin=MarginSpec(name="fixed"))
    before = (tmp_path / "config.yaml").read_text()
    with pytest.raises(ConfigError) as err:
        train(changed, pairs_for(word_tokenizer, seed=1))
    msg = str(err.value)
    assert "\n" not in msg
    for key, old, new in [("train.learning_rate", "0.001", "0.01"), ("train.max_steps", "4", "8"),
                          ("margin.name", "'none'", "'fixed'")]:
        assert f"{key}: {old} -> {new}" in msg, msg
    assert "data.train_sha256" in msg  # other pairs
    assert "train.resume_allow_changes=[" in msg
    assert (tmp_path / "config.yaml").read_text() == before  # refused before anything was written


def test_resume_allows_a_listed_change_and_says_so(tiny_model_dir, word_tokenizer, tmp_path, capsys):
    pairs = pairs_for(word_tokenizer)
    train(run_config(tiny_model_dir, tmp_path, max_steps=4, save_every=2), pairs)
    said: list[str] = []
    from marginkit.train.rm import train_reward_model

    # log_every and save_every do not change the result: not in the identity, no permission needed
    cfg = run_config(tiny_model_dir, tmp_path, max_steps=6, save_every=3, log_every=2, resume_from="latest",
                     resume_allow_changes=["train.max_steps"])
    result = train_reward_model(cfg, pairs, console=said.append)
    assert result.history[-1]["step"] == 6
    assert "resume: train.max_steps changed on purpose (train.resume_allow_changes): 4 -> 6" in said
    state = load_trainer_state(latest_checkpoint(tmp_path))
    assert state["run_identity"]["settings"]["train.max_steps"] == 6  # the checkpoint records the new identity
    assert json.loads((tmp_path / IDENTITY_FILE).read_text()) == state["run_identity"]
    fewer = run_config(tiny_model_dir, tmp_path, max_steps=2, resume_from="latest",
                       resume_allow_changes=["train.max_steps"])
    train_reward_model(fewer, pairs, console=said.append)
    assert "step 6 reaches the 2 planned optimizer steps: nothing left to train" in capsys.readouterr().out


def test_identity_holds_the_data_content_and_not_the_bookkeeping(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    cfg = run_config("m", tmp_path / "run")
    cfg.data.train = str(data)
    first = run_identity(cfg)
    cfg.train.output_dir, cfg.train.log_every, cfg.train.save_every = "elsewhere", 7, 3
    cfg.train.report_to, cfg.train.progress_bar = ["tensorboard"], True
    assert run_identity(cfg) == first
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "d"}\n')  # same name, other content
    changed = run_identity(cfg)
    assert changed["hash"] != first["hash"]
    assert [k for k in changed["settings"] if changed["settings"][k] != first["settings"][k]] == ["data.train_sha256"]


# ---- 2. a folder holding a run is refused unless resumed or overwritten ----

def test_rerun_into_a_used_folder_is_refused_and_overwrite_clears_old_checkpoints(tiny_model_dir, word_tokenizer,
                                                                                  tmp_path):
    pairs = pairs_for(word_tokenizer)
    train(run_config(tiny_model_dir, tmp_path, max_steps=4, save_every=2), pairs)
    with pytest.raises(ConfigError, match=r"already holds a run \(checkpoints, .*train.overwrite=true"):
        train(run_config(tiny_model_dir, tmp_path, max_steps=2), pairs)
    train(run_config(tiny_model_dir, tmp_path, max_steps=2, overwrite=True), pairs)  # no save_every
    assert latest_checkpoint(tmp_path) is None  # resume_from=latest cannot pick up the old run's checkpoints
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_bare_train_rm_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train-rm"]) == 2
    assert "data.train is not set" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# ---- 4. final writes are atomic ----

def full_disk_after_one_file(path: Path) -> None:
    (path / "config.json").write_text("{}")
    raise OSError(28, "No space left on device")


def stub_acc() -> SimpleNamespace:
    return SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None, end_training=lambda: None)


def test_a_failed_final_save_leaves_the_previous_model_folder_or_none(tmp_path):
    with pytest.raises(OSError, match="No space"):
        finish_run(stub_acc(), tmp_path, full_disk_after_one_file)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no half folder under any name

    def good(path: Path) -> None:
        (path / "config.json").write_text('{"v": 1}')
        (path / "model.safetensors").write_text("weights")

    finish_run(stub_acc(), tmp_path, good)
    with pytest.raises(OSError, match="No space"):
        finish_run(stub_acc(), tmp_path, full_disk_after_one_file)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors"]
    assert (tmp_path / "model" / "config.json").read_text() == '{"v": 1}'


def test_atomic_text_and_folder_writes_replace_whole(tmp_path):
    target = tmp_path / "ledger.json"
    write_text_atomic(target, "old")

    def failing(tmp: Path) -> None:
        raise OSError(28, "No space left on device")

    from marginkit.atomic import write_file_atomic

    with pytest.raises(OSError):
        write_file_atomic(target, failing)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["ledger.json"]
    write_dir_atomic(tmp_path / "d", lambda p: (p / "a").write_text("1"))
    write_dir_atomic(tmp_path / "d", lambda p: (p / "b").write_text("2"))
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["b"]


# ---- 5. resumed metrics hold each step once ----

def test_resumed_metrics_have_no_duplicate_steps(tiny_model_dir, word_tokenizer, tmp_path):
    """Checkpoint at step 4 of 6, then resume from it: the rows of steps 5 and 6 are written again, once,
    and (resume is exact) equal the first run's."""
    pairs = pairs_for(word_tokenizer)
    train(run_config(tiny_model_dir, tmp_path, max_steps=6, save_every=4), pairs)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    train(run_config(tiny_model_dir, tmp_path, max_steps=6, save_every=4, resume_from="latest"), pairs)
    again = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in again] == [1, 2, 3, 4, 5, 6]
    for old, new in zip(rows[4:], again[4:]):
        assert old["loss"] == new["loss"]


# ---- 3. SIGINT / SIGTERM ----

def test_a_signal_saves_a_checkpoint_and_the_model_and_restores_the_handlers(tiny_model_dir, word_tokenizer,
                                                                              tmp_path, monkeypatch):
    """SIGTERM raised in the middle of step 3 (from the monitor's hook, inside fit): step 3 is finished, a
    checkpoint at step 3 and the model folder are written, the exit code is 143, the handlers are restored,
    and resuming gives the uninterrupted run's final weights."""
    pairs = pairs_for(word_tokenizer)
    full = train(run_config(tiny_model_dir, tmp_path / "full", max_steps=6), pairs)
    monitor = Engine._monitor

    def hook(self, step_sums):
        if self.step == 3:
            signal.raise_signal(signal.SIGTERM)
        return monitor(self, step_sums)

    monkeypatch.setattr(Engine, "_monitor", hook)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    out = tmp_path / "cut"
    with pytest.raises(TrainingInterrupted) as err:
        train(run_config(tiny_model_dir, out, max_steps=6), pairs)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    assert err.value.exit_code == 143 and "\n" not in str(err.value)
    assert "SIGTERM after optimizer step 3 of 6" in str(err.value) and "train.resume_from=latest" in str(err.value)
    assert latest_checkpoint(out).name == "step-000003" and (out / "model" / "config.json").exists()
    monkeypatch.setattr(Engine, "_monitor", monitor)
    resumed = train(run_config(tiny_model_dir, out, max_steps=6, resume_from="latest"), pairs)
    for name, tensor in load_weights(full.model_dir).items():
        torch.testing.assert_close(load_weights(resumed.model_dir)[name], tensor, rtol=0, atol=0)


def write_cli_run(tmp_path: Path, model_dir: Path, pairs, out: Path, **train_settings) -> Path:
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, "id": p.id})
                            + "\n" for p in pairs))
    settings = {"output_dir": str(out), "seed": 0, "learning_rate": 1e-3, "lr_scheduler": "constant",
                "warmup_ratio": 0.0, "mixed_precision": "no", "log_every": 1, "progress_bar": False,
                "batch_size": 2, **train_settings}
    cfg = {"model": {"name_or_path": str(model_dir), "head_init": "normal"}, "data": {"train": str(data)},
           "train": settings}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "marginkit.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_sigint_to_train_rm_leaves_a_resumable_checkpoint_and_a_loadable_model(tiny_model_dir, word_tokenizer,
                                                                               tmp_path):
    """`marginkit train-rm` in a subprocess gets SIGINT once metrics.jsonl has a line: it exits 130 with one
    line saying how to resume; the checkpoint resumes (in a second subprocess) to the weights of an
    uninterrupted run (a third), and the interrupted run's model folder loads."""
    from transformers import AutoModelForSequenceClassification

    pairs = pairs_for(word_tokenizer, n=16)
    steps = 400  # long enough to be mid-run when the signal comes (about 10 ms a step)
    cfg = write_cli_run(tmp_path, tiny_model_dir, pairs, tmp_path / "cut", max_steps=steps)
    proc = cli("train-rm", "--config", str(cfg))
    metrics = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().strip()) and proc.poll() is None:
        assert time.monotonic() < deadline, "no metrics line within 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert "interrupted by SIGINT after optimizer step" in last and "train.resume_from=latest" in last, err
    assert "Traceback" not in err
    ckpt = latest_checkpoint(tmp_path / "cut")
    assert ckpt is not None and 0 < load_trainer_state(ckpt)["step"] < steps
    AutoModelForSequenceClassification.from_pretrained(tmp_path / "cut" / "model")  # the model folder loads

    resume = cli("train-rm", "--config", str(cfg), "train.resume_from=latest")
    full = cli("train-rm", "--config", str(cfg), f"train.output_dir={tmp_path / 'full'}")
    for p in (resume, full):
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    rows = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if "loss" in line]
    assert rows == sorted(set(rows)) and rows[-1] == steps  # each step at most once
    for name, tensor in load_weights(tmp_path / "full" / "model").items():
        torch.testing.assert_close(load_weights(tmp_path / "cut" / "model")[name], tensor, rtol=0, atol=0)


@pytest.mark.slow
def test_a_signal_to_one_of_two_processes_stops_both_after_the_same_step(tiny_model_dir, tmp_path):
    """Under torchrun (gloo, CPU), SIGTERM reaches rank 1 only: both ranks stop after step 2 (the flag is
    all-reduced every step), one checkpoint at step 2 is written, and both raise TrainingInterrupted."""
    script = Path(__file__).parent / "scripts" / "ddp_interrupt.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "CUDA_VISIBLE_DEVICES": "",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(tiny_model_dir), str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    ranks = [json.loads((tmp_path / f"rank-{i}.json").read_text()) for i in range(2)]
    assert [r["num_processes"] for r in ranks] == [2, 2]
    assert [r["exit_code"] for r in ranks] == [143, 143]
    assert all("after optimizer step 2 of 8" in r["message"] for r in ranks), ranks
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000002"]
    assert (tmp_path / "model" / "config.json").exists()


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_policy_trainers_stop_on_a_signal_the_same_way(tiny_model_dir, word_tokenizer, tmp_path, monkeypatch, stage):
    """train-sft and train-dpo share the engine and finish_run: SIGINT in step 2 gives a checkpoint at step 2,
    the model folder, and TrainingInterrupted (exit 130)."""
    from marginkit.config import DPORunConfig, SFTRunConfig
    from marginkit.configlib import from_dict
    from marginkit.train.dpo import train_dpo
    from marginkit.train.sft import train_sft

    monitor = Engine._monitor

    def hook(self, step_sums):
        if self.step == 2:
            signal.raise_signal(signal.SIGINT)
        return monitor(self, step_sums)

    monkeypatch.setattr(Engine, "_monitor", hook)
    train = {"output_dir": str(tmp_path), "max_steps": 4, "batch_size": 2, "mixed_precision": "no",
             "progress_bar": False, "log_every": 1}
    settings = {"model": {"name_or_path": str(tiny_model_dir)}, "train": train,
                "data": {"cache_dir": str(tmp_path.parent / "cache")}}
    cls, fit = (SFTRunConfig, train_sft) if stage == "sft" else (DPORunConfig, train_dpo)
    with pytest.raises(TrainingInterrupted) as err:
        fit(from_dict(cls, settings), pairs_for(word_tokenizer), None, console=lambda _: None)
    assert err.value.exit_code == 130 and "after optimizer step 2 of 4" in str(err.value)
    assert latest_checkpoint(tmp_path).name == "step-000002" and (tmp_path / "model" / "config.json").exists()
