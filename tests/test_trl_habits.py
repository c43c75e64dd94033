"""TRL habits that used to fail silently (issue 14): each now does what a TRL user expects, or says why not.

- train.max_steps overrides num_epochs (transformers' TrainingArguments): the data is passed over again.
- a TRL `margin` column is kept as the pair's margin, counted in the ledger, and a run that ignores it
  (margin.name=none) says what to set.
- `accelerate launch --cpu --num_processes 2` (one process on CPU) is refused with what works instead.
- conversational prompts rendered without a chat template are counted and noted once, naming the template.
- TRL 1.16 RewardTrainer's metric names are mapped to the logged ones in docs/metrics.md.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType

import marginkit.train.launch as launch
import marginkit.train.setup as train_setup
from _engine_helpers import load_weights, make_pairs, one_torch_thread, run_config, train, vocab_words
from marginkit.data.ledger import Ledger
from marginkit.data.load import load_pairs
from marginkit.data.schema import Pair
from marginkit.data.tokenize import TokenizeConfig, encode_pairs
from marginkit.errors import UserError
from marginkit.margins import MarginSpec
from marginkit.margins.label import LabelMarginConfig
from marginkit.train.engine import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


# ---- 1. max_steps overrides num_epochs ----


def test_max_steps_beyond_the_epochs_keeps_training_in_new_epochs(tiny_model_dir, word_tokenizer, tmp_path, capsys):
    # 8 pairs in micro-batches of 4, no accumulation: 2 steps per epoch. num_epochs=1 used to cap the run
    # at 2 steps; max_steps=5 now trains 5, passing over the data in epochs 0, 0, 1, 1, 2.
    cfg = TrainConfig(batch_size=4, num_epochs=1, max_steps=5)
    assert (cfg.steps_per_epoch(8), cfg.total_steps(8)) == (2, 5)
    assert TrainConfig(batch_size=4, num_epochs=3, max_steps=-1).total_steps(8) == 6  # epochs decide
    assert TrainConfig(batch_size=4, num_epochs=3, max_steps=4).total_steps(8) == 4  # max_steps decides

    pairs = make_pairs(vocab_words(word_tokenizer), 8)
    result = train(run_config(tiny_model_dir, tmp_path, batch_size=4, num_epochs=1, max_steps=5), pairs)
    rows = [r for r in result.history if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["epoch"] for r in rows] == [0, 0, 1, 1, 2]
    assert ("train.max_steps=5 overrides train.num_epochs=1 (as in TRL): 2 steps per epoch, so the 8 pairs are "
            "passed over 2.5 times") in capsys.readouterr().out  # said at start
    assert cfg.max_steps_note(8) and TrainConfig(batch_size=4, num_epochs=3, max_steps=4).max_steps_note(8) is None


def test_resume_past_the_configured_epochs_equals_the_uninterrupted_run(tiny_model_dir, word_tokenizer, tmp_path):
    # 8 pairs, 2 x 2 per step: 2 steps per epoch; num_epochs=1, max_steps=5. The checkpoint at step 3 is in
    # the middle of epoch 1, an epoch num_epochs alone would never reach: resume must restore its order
    # (epoch_order(8, seed, 1)) and its position in it.
    pairs = make_pairs(vocab_words(word_tokenizer), 8)
    settings = dict(batch_size=2, gradient_accumulation_steps=2, num_epochs=1, max_steps=5, save_total_limit=0)
    full = train(run_config(tiny_model_dir, tmp_path / "A", save_every=3, **settings), pairs)
    checkpoint = tmp_path / "A" / "checkpoints" / "step-000003"
    resumed = train(run_config(tiny_model_dir, tmp_path / "B", resume_from=str(checkpoint), **settings), pairs)

    rows_full = {r["step"]: r for r in full.history if "loss" in r}
    rows_resumed = {r["step"]: r for r in resumed.history if "loss" in r}
    assert sorted(rows_resumed) == [4, 5]
    for step, row in rows_resumed.items():
        for key in ("loss", "grad_norm", "rewards/chosen", "epoch"):
            assert row[key] == rows_full[step][key], (step, key)  # same process, same order of operations
    w_full, w_resumed = load_weights(full.model_dir), load_weights(resumed.model_dir)
    for name, value in w_full.items():
        torch.testing.assert_close(w_resumed[name], value, rtol=0, atol=0, msg=lambda m, n=name: f"{n}: {m}")


# ---- 2. a TRL margin column ----


def _conversation(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": "cats"}, {"role": "assistant", "content": content}]


def test_trl_margin_column_becomes_the_pairs_margin_and_is_counted(word_tokenizer, tmp_path):
    rows = [{"chosen": _conversation("yes"), "rejected": _conversation("no"), "margin": 2.0},  # conversational
            {"chosen": "cats yes", "rejected": "cats no", "margin": 0.5},  # implicit prompt
            {"chosen": "cats yes", "rejected": "cats no"}]  # no margin
    path = tmp_path / "trl.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs, _ = load_pairs(str(path), format="trl")
    assert [p.margin for p in pairs] == [2.0, 0.5, None]
    assert all("margin" not in p.metadata for p in pairs)

    ledger = Ledger()
    encode_pairs(pairs, word_tokenizer, TokenizeConfig(), ledger)
    assert ledger.counts["with_margin"] == 2
    assert ledger.to_dict()["counts"]["with_margin"] == 2
    assert "2 pairs carry a margin value" in ledger.summary()


def test_a_run_without_a_margin_strategy_says_how_to_use_the_margin_column(word_tokenizer, tmp_path):
    pairs = [Pair("cats", "yes", "no", margin=2.0, id="a"), Pair("dogs", "yes", "no", margin=1.0, id="b"),
             Pair("fish", "yes", "no", id="c")]
    data = run_config("unused-model", tmp_path).data
    _, encoded, _, _, _ = train_setup.load_encoded(data, word_tokenizer, pairs, None)

    said: list[str] = []
    cfg = run_config("unused-model", tmp_path)  # margin.name=none
    train_setup.setup_margin(cfg, encoded, pairs, word_tokenizer.pad_token_id, torch.device("cpu"), said.append)
    notes = [line for line in said if "margin value" in line]
    assert len(notes) == 1
    assert "2 of 3 training pairs" in notes[0]
    assert "margin.name=label margin.label.source=margin" in notes[0]

    said.clear()  # with the label strategy reading the column there is nothing to say
    with_label = [Pair(p.prompt, p.chosen, p.rejected, margin=1.0, id=p.id) for p in pairs]
    _, encoded, _, _, _ = train_setup.load_encoded(data, word_tokenizer, with_label, None)
    cfg = run_config("unused-model", tmp_path, margin=MarginSpec(name="label", label=LabelMarginConfig(source="margin")))
    train_setup.setup_margin(cfg, encoded, with_label, word_tokenizer.pad_token_id, torch.device("cpu"), said.append)
    assert not [line for line in said if "margin value" in line]
    assert train_setup.unused_margin_note("none", encoded[:0]) is None  # no pairs with margins: nothing to say


# ---- 3. accelerate launch --cpu --num_processes 2 ----


def _accelerator(processes: int) -> SimpleNamespace:
    return SimpleNamespace(distributed_type=DistributedType.NO, num_processes=processes,
                           state=SimpleNamespace(deepspeed_plugin=None))


def test_a_launcher_asking_for_more_processes_than_started_is_refused(monkeypatch):
    monkeypatch.setattr(launch, "parent_argv", lambda: [])
    monkeypatch.delenv("ACCELERATE_NUM_PROCESSES", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    train_setup.check_parallel(TrainConfig(), _accelerator(1))  # nothing asked: one process is fine

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match=r"WORLD_SIZE=2 asked for 2 processes but only 1 started.*torchrun"):
        train_setup.check_parallel(TrainConfig(), _accelerator(1))
    train_setup.check_parallel(TrainConfig(), _accelerator(2))  # the two joined: fine
    monkeypatch.delenv("WORLD_SIZE")

    # accelerate's CPU launcher sets no count in the environment: it is read from its command line
    argv = ["/venv/bin/python", "/venv/bin/accelerate", "launch", "--num_processes", "2", "--cpu", "-m",
            "marginkit.cli", "train-rm"]
    monkeypatch.setattr(launch, "parent_argv", lambda: argv)
    with pytest.raises(UserError, match=r"accelerate launch --num_processes 2 asked for 2 processes.*"
                                         r"ACCELERATE_USE_CPU=true torchrun --standalone --nproc_per_node 2"):
        train_setup.check_parallel(TrainConfig(), _accelerator(1))
    assert launch.requested_processes({}, ["accelerate", "launch", "--num-processes=4", "x.py"]) == (
        4, "accelerate launch --num_processes 4")
    assert launch.requested_processes({}, ["python", "train.py", "--num_processes", "2"]) is None  # not a launcher


@pytest.mark.slow
def test_accelerate_launch_cpu_with_two_processes_is_detected_for_real(tmp_path):
    """The real launcher: it starts one process, and that process finds the request on its parent's command line."""
    script = tmp_path / "probe.py"
    script.write_text("from accelerate import Accelerator\nfrom marginkit.train.launch import check_launch\n"
                      "check_launch(Accelerator().num_processes)\nprint('no refusal')\n")
    accelerate = Path(sys.executable).parent / "accelerate"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run([str(accelerate), "launch", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--cpu", str(script)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "no refusal" not in done.stdout
    assert "asked for 2 processes but only 1 started" in done.stderr


# ---- 4. conversations without a chat template ----


def test_conversations_without_a_chat_template_are_noted_once(word_tokenizer):
    assert not getattr(word_tokenizer, "chat_template", None)
    pairs = [Pair(({"role": "user", "content": w},), "yes", "no") for w in ("cats", "dogs", "fish")]
    ledger = Ledger()
    encoded = encode_pairs(pairs, word_tokenizer, TokenizeConfig(), ledger)
    assert ledger.counts["conversations_rendered_plain"] == 3
    assert list(ledger.notes) == ["template"]
    note = ledger.notes["template"]
    assert "plain template" in note and "'role: content'" in note and "no chat template" in note
    assert ledger.summary().count("NOTE") == 1  # said once, however many pairs
    assert ledger.summary().splitlines()[1] == f"NOTE {note}"  # on a line of its own
    assert ledger.to_dict()["notes"] == {"template": note}
    # what "plain" means: "user: cats\n" then the response, as the note says
    prompt = word_tokenizer.decode(encoded[0].chosen_ids[:encoded[0].prompt_len], skip_special_tokens=True)
    assert "cats" in prompt

    text_only = Ledger()  # plain-text prompts have no template to choose: nothing to note
    encode_pairs([Pair("cats", "yes", "no")], word_tokenizer, TokenizeConfig(), text_only)
    assert not text_only.notes and not text_only.counts

    with_template = copy.deepcopy(word_tokenizer)  # a tokenizer with a chat template renders through it
    with_template.chat_template = ("{% for m in messages %}{{ m['content'] }} {% endfor %}"
                                   "{% if add_generation_prompt %}{% endif %}")
    quiet = Ledger()
    encode_pairs(pairs, with_template, TokenizeConfig(), quiet)
    assert not quiet.notes and not quiet.counts


# ---- 5. TRL's metric names ----


def test_the_trl_name_mapping_points_at_logged_metrics():
    doc = (ROOT / "docs" / "metrics.md").read_text()
    logged = set(re.findall(r"^\| `([^`]+)` \|", doc, flags=re.M))  # test_imports_and_docs: == what is logged
    section = doc.split("## TRL's names", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| RewardTrainer")]
    mapped = {re.search(r"`([^`]+)`", row.split("|")[1]).group(1): re.findall(r"`([^`]+)`", row.split("|")[2])
              for row in rows}
    assert set(mapped) == {"accuracy", "margin", "mean_reward"}
    assert mapped["accuracy"] == ["rewards/accuracies"] and mapped["margin"] == ["rewards/margins"]
    assert mapped["mean_reward"] == ["rewards/chosen", "rewards/rejected"]
    assert all(name in logged for names in mapped.values() for name in names)
    readme = (ROOT / "README.md").read_text()
    assert "`accuracy`, `margin` and `mean_reward`" in readme
