"""Checkpoints: the saved folder scores like the trained model, resume is exact, saves are atomic.

Runs train a tiny GPT-NeoX (hidden 32, 2 layers) in float32 on CPU through `train_reward_model`.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from _engine_helpers import load_weights, make_pairs, one_torch_thread, run_config, train, vocab_words
from marginkit.configlib import ConfigError
from marginkit.data.ledger import Ledger
from marginkit.data.tokenize import TokenizeConfig, encode_pairs
from marginkit.evaluate.scorer import score_encoded
from marginkit.models.tiny import make_tiny_model_dir
from marginkit.train.checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


# ---- 5. save -> load -> same rewards ----


def hf_rewards(model, rows: list[list[int]], pad_id: int, side: str) -> torch.Tensor:
    """Plain Hugging Face scoring of exact token ids: pad by hand, one forward, logits[:, 0]. The
    *ForSequenceClassification head reads each row at its right-most token that is not pad_token_id."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        where = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        ids[i, where] = torch.tensor(row)
        mask[i, where] = 1
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits[:, 0].double()


@pytest.mark.parametrize("side", ["right", "left"])
def test_saved_model_scores_like_the_trained_one(tiny_model_dir, word_tokenizer, tmp_path, side):
    words = vocab_words(word_tokenizer)
    pairs, eval_pairs = make_pairs(words, 16), make_pairs(words, 6, seed=1)
    result = train(run_config(tiny_model_dir, tmp_path, padding_side=side, batch_size=4, max_steps=3), pairs,
                   eval_pairs)
    trained_gaps = result.eval_gaps  # [6] Δ of the in-memory model after training

    model = AutoModelForSequenceClassification.from_pretrained(result.model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(result.model_dir)
    assert model.config.pad_token_id == tokenizer.pad_token_id  # HF finds the reward token with it
    encoded = encode_pairs(eval_pairs, tokenizer, TokenizeConfig(), Ledger())
    chosen, rejected = score_encoded(model, encoded, tokenizer.pad_token_id, side)
    np.testing.assert_allclose(chosen - rejected, trained_gaps, rtol=1.3e-6, atol=1e-5)  # float32 defaults
    assert np.abs(trained_gaps).max() > 1e-3  # training moved the rewards away from the tie at 0

    ragged = [e.chosen_ids for e in encoded] + [e.rejected_ids for e in encoded]
    assert len({len(r) for r in ragged}) > 1  # padding matters
    for hf_side in ("right", "left"):  # either padding side in plain HF gives marginkit's rewards
        plain = hf_rewards(model, ragged, tokenizer.pad_token_id, hf_side)
        torch.testing.assert_close(plain, torch.from_numpy(np.concatenate([chosen, rejected])),
                                   rtol=1.3e-6, atol=1e-5)  # float32 defaults (values are float32 upcast)


# ---- 6. exact resume ----


@pytest.fixture(scope="module")
def dropout_model_dir(tmp_path_factory, word_tokenizer):
    """The tiny model with dropout 0.1: training draws from the RNG, so resume must restore its state."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "neox-dropout", word_tokenizer, hidden_size=32,
                               dropout=0.1)


def resume_config(model_dir, out, **train_settings):
    # 16 pairs, 2 x 2 per step: 4 steps per epoch, so 6 steps cross an epoch boundary. Cosine with warm-up
    # makes the learning rate differ every step, so the scheduler state must be restored too.
    return run_config(model_dir, out, batch_size=2, gradient_accumulation_steps=2, num_epochs=2, max_steps=6,
                      lr_scheduler="cosine", warmup_ratio=0.2, save_total_limit=0, **train_settings)


@pytest.mark.parametrize("save_every, resume_step, resume_from", [
    (3, 3, "latest"),  # mid-epoch: the data position inside the epoch must be restored
    (2, 4, "path"),  # at the end of epoch 0: the next epoch's order must follow
])
def test_resume_equals_uninterrupted_run(dropout_model_dir, word_tokenizer, tmp_path, save_every, resume_step,
                                         resume_from):
    pairs = make_pairs(vocab_words(word_tokenizer), 16)
    full = train(resume_config(dropout_model_dir, tmp_path / "A", save_every=save_every), pairs)
    checkpoint = tmp_path / "A" / "checkpoints" / f"step-{resume_step:06d}"
    assert load_trainer_state(checkpoint)["step"] == resume_step

    copied = tmp_path / "B" / "checkpoints" / checkpoint.name
    shutil.copytree(checkpoint, copied)
    where = "latest" if resume_from == "latest" else str(copied)
    resumed = train(resume_config(dropout_model_dir, tmp_path / "B", resume_from=where), pairs)

    rows_full = {r["step"]: r for r in full.history if "loss" in r}
    rows_resumed = {r["step"]: r for r in resumed.history if "loss" in r}
    assert sorted(rows_resumed) == list(range(resume_step + 1, 7))
    for step, row in rows_resumed.items():
        for key in ("loss", "grad_norm", "learning_rate", "rewards/chosen", "epoch"):
            assert row[key] == rows_full[step][key], (step, key)  # same process, same order of operations
    w_full, w_resumed = load_weights(full.model_dir), load_weights(resumed.model_dir)
    for name, value in w_full.items():
        torch.testing.assert_close(w_resumed[name], value, rtol=0, atol=0, msg=lambda m, n=name: f"{n}: {m}")


def test_dropout_is_active_in_the_resume_model(dropout_model_dir):
    """Two train-mode forwards of the same input differ: training draws dropout masks from the global RNG,
    so the resume test above fails unless the checkpoint restores the RNG state exactly."""
    model = AutoModelForSequenceClassification.from_pretrained(dropout_model_dir, num_labels=1).train()
    ids = torch.arange(4, 12).unsqueeze(0)
    with torch.no_grad():
        assert not torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)


def test_resume_latest_without_checkpoint_raises(tiny_model_dir, word_tokenizer, tmp_path):
    cfg = run_config(tiny_model_dir, tmp_path, max_steps=1, resume_from="latest")
    with pytest.raises(ConfigError, match="checkpoints holds no checkpoint"):
        train(cfg, make_pairs(vocab_words(word_tokenizer), 4))
    assert not any(tmp_path.iterdir())  # refused before anything was written


# ---- 7. atomic checkpoints ----


def writer(text: str):
    """A save_model that writes one file into the model folder."""
    def save_model(path):
        path.mkdir(parents=True)
        (path / "weights.txt").write_text(text)
    return save_model


def contents(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_save_checkpoint_renames_and_keeps_the_newest(tmp_path):
    root = tmp_path / "checkpoints"
    for step in range(1, 5):
        path = save_checkpoint(root / f"step-{step:06d}", writer(f"w{step}"), {"step": step}, keep=2)
        assert path == root / f"step-{step:06d}"
        assert not list(tmp_path.rglob("*.tmp"))
    assert sorted(p.name for p in root.iterdir()) == ["step-000003", "step-000004"]
    assert latest_checkpoint(tmp_path) == root / "step-000004"
    assert (root / "step-000004" / "model" / "weights.txt").read_text() == "w4"
    assert load_trainer_state(root / "step-000004") == {"step": 4}


def test_save_checkpoint_keep_zero_keeps_all(tmp_path):
    for step in range(1, 4):
        save_checkpoint(tmp_path / "checkpoints" / f"step-{step:06d}", writer("w"), {"step": step}, keep=0)
    assert len(list((tmp_path / "checkpoints").iterdir())) == 3


def test_crash_in_save_model_leaves_previous_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    save_checkpoint(root / "step-000001", writer("good"), {"step": 1}, keep=1)
    before = contents(root / "step-000001")

    def crash(path):
        path.mkdir(parents=True)
        (path / "weights.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(root / "step-000002", crash, {"step": 2}, keep=1)
    assert not (root / "step-000002").exists()  # no half-written final folder
    assert contents(root / "step-000001") == before  # the previous one untouched (keep=1 pruned nothing)
    assert latest_checkpoint(tmp_path) == root / "step-000001"  # a leftover .tmp is never picked up

    save_checkpoint(root / "step-000002", writer("retry"), {"step": 2}, keep=1)  # a retry replaces the leftover
    assert sorted(p.name for p in root.iterdir()) == ["step-000002"]
    assert (root / "step-000002" / "model" / "weights.txt").read_text() == "retry"


def test_crash_while_saving_over_an_existing_checkpoint_keeps_it(tmp_path):
    """Saving the same step again (e.g. after a resume) must not delete the old copy before the new one is
    complete."""
    root = tmp_path / "checkpoints"
    save_checkpoint(root / "step-000001", writer("good"), {"step": 1})
    before = contents(root / "step-000001")

    def crash(path):
        raise OSError("disk full")

    with pytest.raises(OSError):
        save_checkpoint(root / "step-000001", crash, {"step": 1})
    assert contents(root / "step-000001") == before


def test_engine_checkpoint_is_a_loadable_model_and_trainer_state(tiny_model_dir, word_tokenizer, tmp_path):
    result = train(run_config(tiny_model_dir, tmp_path, max_steps=4, save_every=2, save_total_limit=1),
                   make_pairs(vocab_words(word_tokenizer), 8))
    (checkpoint,) = (tmp_path / "checkpoints").iterdir()  # step 2 was removed when step 4 was written
    assert checkpoint.name == "step-000004"
    assert not list(tmp_path.rglob("*.tmp"))
    state = load_trainer_state(checkpoint)
    assert (state["step"], state["epoch"], state["batches_done"]) == (4, 0, 4)
    assert {"optimizer", "scheduler", "rng", "stateful"} <= set(state)
    AutoModelForSequenceClassification.from_pretrained(checkpoint / "model")
    final, saved = load_weights(result.model_dir), load_weights(checkpoint / "model")
    for name, value in final.items():
        torch.testing.assert_close(saved[name], value, rtol=0, atol=0)
