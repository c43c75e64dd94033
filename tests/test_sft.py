"""train_sft: the loss is the NLL of the chosen response tokens only (checked against plain HF scoring of each
unpadded sequence), the chosen-rows collator by example, training fits, checkpoints are plain causal LMs,
resume is exact, and the CLI runs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from _engine_helpers import load_weights, make_pairs, one_torch_thread, vocab_words
from marginkit.config import SFTRunConfig
from marginkit.configlib import from_dict
from marginkit.data.ledger import Ledger
from marginkit.data.tokenize import EncodedPair, TokenizeConfig, encode_pairs
from marginkit.train.sft import ChosenCollator, train_sft

QUIET = {"log_every": 1, "progress_bar": False, "mixed_precision": "no", "lr_scheduler": "constant",
         "warmup_ratio": 0.0, "learning_rate": 1e-2, "batch_size": 4, "max_grad_norm": None}


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


def config(model_dir, out, **sections) -> SFTRunConfig:
    train = {**QUIET, "output_dir": str(out), **sections.pop("train", {})}
    return from_dict(SFTRunConfig, {"model": {"name_or_path": str(model_dir)}, "train": train, **sections})


def run(cfg, pairs, eval_pairs=None):
    return train_sft(cfg, pairs, eval_pairs, console=lambda _: None)


def test_chosen_collator_worked_example():
    # pairs ([5,6,7], [5,6,8,9], prompt_len 2) and ([5,7], [5,8], prompt_len 1), pad 0, right padding:
    # collate_pairs pads all four rows to width 4 (the longest is the first rejected row); the chosen rows
    # [5,6,7,0] and [5,7,0,0] keep 3 columns once the all-padding column is dropped.
    pairs = [EncodedPair([5, 6, 7], [5, 6, 8, 9], 2, 0.0, 0.0, 0.0, 0), EncodedPair([5, 7], [5, 8], 1, 0.0, 0.0, 0.0, 1)]
    batch = ChosenCollator(0)(pairs)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 7, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["response_mask"].tolist() == [[0, 0, 1], [0, 1, 0]]
    assert batch["index"].tolist() == [0, 1]
    left = ChosenCollator(0, "left")(pairs)  # left padding drops the leading all-padding column
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 5, 7]]
    assert left["response_mask"].tolist() == [[0, 0, 1], [0, 0, 1]]


def plain_nll(model, encoded: list[EncodedPair]) -> float:
    """Mean over pairs of -(1/|y|) Σ log p(y_t | x, y_<t), each unpadded chosen sequence run on its own."""
    values = []
    with torch.no_grad():
        for e in encoded:
            ids = torch.tensor([e.chosen_ids])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)  # [T, V]
            # token j (j >= prompt_len) is predicted at position j - 1
            picked = [logp[j - 1, e.chosen_ids[j]] for j in range(e.prompt_len, len(e.chosen_ids))]
            values.append(-torch.stack(picked).mean())
    return float(torch.stack(values).mean())


@pytest.mark.parametrize("side", ["right", "left"])
def test_first_loss_is_the_nll_of_the_chosen_response_tokens(tiny_model_dir, word_tokenizer, tmp_path, side):
    pairs = make_pairs(vocab_words(word_tokenizer), 4)
    result = run(config(tiny_model_dir, tmp_path, data={"padding_side": side}, train={"max_steps": 1}), pairs)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    encoded = encode_pairs(pairs, word_tokenizer, TokenizeConfig(), Ledger())
    row = result.history[0]
    assert row["loss"] == pytest.approx(plain_nll(model, encoded), rel=1e-5)
    assert row["nll/token"] == pytest.approx(row["loss"], rel=1e-6)  # length-normalised by default


def test_training_fits_and_saves_a_plain_causal_lm(tiny_model_dir, word_tokenizer, tmp_path):
    pairs = make_pairs(vocab_words(word_tokenizer), 8)
    result = run(config(tiny_model_dir, tmp_path, train={"num_epochs": 8}), pairs, pairs[:4])
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert losses[-1] < 0.5 * losses[0]  # 8 pairs memorised well below the uniform ~ln V start
    model = AutoModelForCausalLM.from_pretrained(result.model_dir).eval()
    encoded = encode_pairs(pairs[:4], word_tokenizer, TokenizeConfig(), Ledger())
    final_eval = result.history[-1]["eval_loss"]
    assert plain_nll(model, encoded) == pytest.approx(final_eval, rel=1e-5)  # saved weights = trained weights
    assert json.loads((result.model_dir / "marginkit_policy.json").read_text())["stage"] == "sft"


def test_resume_equals_uninterrupted_run(tiny_model_dir, word_tokenizer, tmp_path):
    pairs = make_pairs(vocab_words(word_tokenizer), 12)

    def cfg(out, **train):
        return config(tiny_model_dir, out, train={"batch_size": 2, "gradient_accumulation_steps": 2, "num_epochs": 2,
                                                  "lr_scheduler": "cosine", "warmup_ratio": 0.2,
                                                  "learning_rate": 1e-3, "save_total_limit": 0, **train})

    full = run(cfg(tmp_path / "A", save_every=4), pairs)
    shutil.copytree(tmp_path / "A" / "checkpoints" / "step-000004", tmp_path / "B" / "checkpoints" / "step-000004")
    resumed = run(cfg(tmp_path / "B", resume_from="latest"), pairs)
    a = {r["step"]: r for r in full.history if "loss" in r}
    b = {r["step"]: r for r in resumed.history if "loss" in r}
    assert sorted(b) == [5, 6]
    for step in b:
        assert b[step]["loss"] == a[step]["loss"] and b[step]["grad_norm"] == a[step]["grad_norm"]
    for name, value in load_weights(full.model_dir).items():
        torch.testing.assert_close(load_weights(resumed.model_dir)[name], value, rtol=0, atol=0)


def test_packed_forward_is_refused(tiny_model_dir, word_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="train-sft runs padded rows only"):
        run(config(tiny_model_dir, tmp_path, train={"forward": "packed"}), make_pairs(vocab_words(word_tokenizer), 4))


def test_cli_train_sft(tiny_model_dir, word_tokenizer, tmp_path):
    from marginkit.cli import main

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(p.to_record()) + "\n" for p in make_pairs(vocab_words(word_tokenizer), 8)))
    out = tmp_path / "sft"
    assert main(["train-sft", f"model.name_or_path={tiny_model_dir}", f"data.train={data}",
                 f"train.output_dir={out}", "train.batch_size=4", "train.progress_bar=false"]) == 0
    assert (out / "model" / "config.json").exists() and (out / "metrics.jsonl").exists()
    assert main(["config", "train-sft"]) == 0
