"""Tokenisation, truncation and collation: the worked example, the ledger, masks, and reward positions."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from _pretrained_helpers import needs_smollm2
from marginkit.data.collate import collate_pairs
from marginkit.data.ledger import Ledger
from marginkit.data.schema import DataError, Pair
from marginkit.data.tokenize import EncodedPair, TokenizeConfig, encode_pair
from marginkit.models.reward import ModelConfig, load_reward_model, reward_head, reward_positions, score_batch


def enc(c, r, plen, i=0):
    return EncodedPair(c, r, plen, float("nan"), float("nan"), float("nan"), i)


def test_collate_worked_example_right_padding():
    # the example in data/collate.py's docstring
    b = collate_pairs([enc([5, 6, 7], [5, 6, 8, 9], 2), enc([5, 7], [5, 8], 1, 1)], pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 0], [5, 7, 0, 0], [5, 6, 8, 9], [5, 8, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert b["response_mask"].int().tolist() == [[0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 1, 1], [0, 1, 0, 0]]
    assert b["index"].tolist() == [0, 1]


def test_collate_left_padding_and_reward_position():
    b = collate_pairs([enc([5, 6, 7], [5, 6, 8, 9], 2)], pad_id=0, padding_side="left")
    assert b["input_ids"].tolist() == [[0, 5, 6, 7], [5, 6, 8, 9]]
    assert b["response_mask"].int().tolist() == [[0, 0, 0, 1], [0, 0, 1, 1]]
    assert reward_positions(b["input_ids"], b["attention_mask"], encoder=False).tolist() == [3, 3]


def test_encode_layout_and_eos(word_tokenizer):
    tok = word_tokenizer
    e = encode_pair(Pair("please help", "yes", "no maybe"), 0, tok, TokenizeConfig(), Ledger())
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert e.chosen_ids == [tok.bos_token_id] + ids("please help") + ids("yes") + [tok.eos_token_id]
    assert e.rejected_ids == [tok.bos_token_id] + ids("please help") + ids("no maybe") + [tok.eos_token_id]
    assert e.prompt_len == 3


def test_truncation_trims_prompt_left_first_and_records_it(word_tokenizer):
    # bos + 10 prompt words + 2 response words + eos = 14 tokens; max_length 10 -> the 4 leftmost prompt words go
    prompt = "please help me choose a good answer the question is"
    ledger = Ledger()
    cfg = TokenizeConfig(max_length=10, min_prompt_tokens=2)
    e = encode_pair(Pair(prompt, "yes no", "maybe"), 0, word_tokenizer, cfg, ledger)
    assert word_tokenizer.convert_ids_to_tokens(e.chosen_ids) == [
        "<bos>", "a", "good", "answer", "the", "question", "is", "yes", "no", "<eos>"]
    assert e.prompt_len == 7  # chosen and rejected share the same trimmed prompt
    assert e.rejected_ids[:7] == e.chosen_ids[:7]
    assert ledger.truncated["prompt_left"] == 1 and ledger.truncated_tokens["prompt_left"] == 4
    assert not ledger.dropped


def test_truncation_cuts_responses_only_when_prompt_is_at_minimum(word_tokenizer):
    ledger = Ledger()
    cfg = TokenizeConfig(max_length=8, min_prompt_tokens=2)
    e = encode_pair(Pair("please help me", "yes no maybe great fine bad", "ok"), 3, word_tokenizer, cfg, ledger)
    assert len(e.chosen_ids) == 8 and e.prompt_len == 3  # bos + 2 prompt tokens
    assert ledger.truncated["prompt_left"] == 1 and ledger.truncated["chosen_right"] == 1
    assert ledger.truncated_tokens["chosen_right"] == 2  # room = 8 - 2 specials - 2 prompt = 4 of 6 tokens
    assert "rejected_right" not in ledger.truncated


def test_drop_and_error_policies(word_tokenizer):
    ledger = Ledger()
    long = Pair("please " * 20, "yes", "no", id="p7")
    assert encode_pair(long, 0, word_tokenizer, TokenizeConfig(max_length=8, on_too_long="drop"), ledger) is None
    assert ledger.dropped["too_long"] == 1 and "p7" in ledger.examples["dropped: too_long"][0]
    with pytest.raises(DataError, match="max_length=8"):
        encode_pair(long, 0, word_tokenizer, TokenizeConfig(max_length=8, on_too_long="error"), Ledger())


@pytest.fixture(scope="module")
def rm(tiny_model_dir):
    model, tok = load_reward_model(ModelConfig(name_or_path=str(tiny_model_dir)))
    torch.manual_seed(0)
    reward_head(model).weight.data.normal_()  # a non-zero head so rewards differ
    model.eval()
    return model, tok


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.integers(1, 7), st.integers(1, 7)), min_size=1, max_size=5),
       st.sampled_from(["right", "left"]), st.integers(1, 8))
def test_reward_independent_of_padding_and_batch(rm, shape, side, multiple):
    model, tok = rm
    rng = torch.Generator().manual_seed(len(shape))
    pairs = []
    for i, (p, c, r) in enumerate(shape):
        prompt = torch.randint(4, len(tok), (p,), generator=rng).tolist()
        pairs.append(enc(prompt + torch.randint(4, len(tok), (c,), generator=rng).tolist() + [tok.eos_token_id],
                         prompt + torch.randint(4, len(tok), (r,), generator=rng).tolist() + [tok.eos_token_id], p, i))
    b = collate_pairs(pairs, tok.pad_token_id, side, multiple)
    with torch.no_grad():
        together, _ = score_batch(model, b["input_ids"], b["attention_mask"])
        for i, pair in enumerate(pairs):  # each pair alone, no padding at all
            alone = collate_pairs([pair], tok.pad_token_id)
            single, _ = score_batch(model, alone["input_ids"], alone["attention_mask"])
            assert_close(together[[i, i + len(pairs)]], single, atol=1e-5, rtol=1e-5)
    # reward read at the last real token, on the response side
    pos = reward_positions(b["input_ids"], b["attention_mask"], encoder=False)
    assert b["response_mask"][torch.arange(len(pos)), pos].all()
    assert (b["input_ids"][torch.arange(len(pos)), pos] == tok.eos_token_id).all()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 5)), min_size=1, max_size=4),
       st.sampled_from(["right", "left"]))
def test_response_mask_never_covers_prompt_or_padding(shape, side):
    pairs = [enc([7] * p + [8] * c, [7] * p + [9] * r, p, i) for i, (p, c, r) in enumerate(shape)]
    b = collate_pairs(pairs, pad_id=0, padding_side=side)
    ids, resp = b["input_ids"], b["response_mask"]
    assert not (resp & (ids == 0)).any() and not (resp & (ids == 7)).any()  # no padding, no prompt
    assert resp.sum().item() == sum(c + r for _, c, r in shape)  # every response token covered


# ---- chat templates that close the assistant turn with EOS (ChatML) --------------------------------------

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def chatml_tokenizer(eos: str = "<|im_end|>"):
    """Word-level, '\\n' its own token (as SmolLM2's id 198), ChatML's turn markers special. Ids: 0 <pad>,
    1 <unk>, 2 <|im_start|>, 3 <|im_end|>, 4 '\\n', 5 user, 6 assistant, 7 cats, 8 yes, 9 no, 10 maybe,
    11 <eos> (the EOS only when eos='<eos>')."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "\n", "user", "assistant",
                                         "cats", "yes", "no", "maybe", "<eos>"])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex("\n"), "isolated"),
                                                     pre_tokenizers.Split(Regex(" "), "removed")])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token=eos,
                                  additional_special_tokens=["<|im_start|>", "<|im_end|>", "<eos>"])
    tok.chat_template = CHATML
    return tok


def test_chatml_response_ends_with_one_eos_by_hand():
    """The template writes 'yes<|im_end|>\\n' = [8, 3, 4]; append_eos used to add 3 again: [8, 3, 4, 3]. Now
    the template's <|im_end|> is the response's one EOS and the '\\n' after it is dropped, so the response
    ends as a rollout does (at its first EOS, nothing after); the prompt part is unchanged."""
    tok = chatml_tokenizer()
    assert tok("<|im_start|>user\ncats<|im_end|>\n", add_special_tokens=False)["input_ids"] == [2, 5, 4, 7, 3, 4]
    prompt = [2, 5, 4, 7, 3, 4, 2, 6, 4]  # <|im_start|>user\ncats<|im_end|>\n<|im_start|>assistant\n
    pair = Pair(({"role": "user", "content": "cats"},), "yes", "no maybe")
    for append_eos in (True, False):
        e = encode_pair(pair, 0, tok, TokenizeConfig(append_eos=append_eos), Ledger())
        assert e.prompt_len == 9 and e.chosen_ids[:9] == e.rejected_ids[:9] == prompt
        assert e.chosen_ids[9:] == [8, 3] and e.rejected_ids[9:] == [9, 10, 3]
    # a string prompt is wrapped as one user turn: the same ids
    assert encode_pair(Pair("cats", "yes", "no maybe"), 0, tok, TokenizeConfig(template="chat"), Ledger()).chosen_ids \
        == prompt + [8, 3]


def test_chatml_eos_survives_response_truncation():
    """Prompt 9 + longest response 2 + EOS 1 = 12 > 11, and the prompt is at its minimum: the responses are cut
    from the right to 1 token and the EOS is still the last token (the reward token of an RM)."""
    tok, ledger = chatml_tokenizer(), Ledger()
    pair = Pair(({"role": "user", "content": "cats"},), "yes", "no maybe")
    e = encode_pair(pair, 0, tok, TokenizeConfig(max_length=11, min_prompt_tokens=9), ledger)
    assert e.chosen_ids[9:] == [8, 3] and e.rejected_ids[9:] == [9, 3]
    assert ledger.truncated["rejected_right"] == 1 and not ledger.truncated.get("chosen_right")


def test_chat_turn_closed_by_another_token_keeps_the_template_and_appends_eos():
    """EOS '<eos>' (11) differs from the turn's closing <|im_end|>: the turn is kept as rendered, then EOS."""
    tok = chatml_tokenizer(eos="<eos>")
    e = encode_pair(Pair(({"role": "user", "content": "cats"},), "yes", "no"), 0, tok, TokenizeConfig(), Ledger())
    assert e.chosen_ids[9:] == [8, 3, 4, 11] and e.rejected_ids[9:] == [9, 3, 4, 11]


@needs_smollm2
def test_smollm2_response_ends_with_one_im_end(smollm2_dir):
    """SmolLM2-135M-Instruct's ChatML: the response ids end [..., <|im_end|>] once (they were [..., 2, 198, 2])."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token_id == im_end == 2
    messages = ({"role": "user", "content": "What is the capital of France?"},)
    e = encode_pair(Pair(messages, "Paris.", "Lyon, I think."), 0, tok, TokenizeConfig(), Ledger())
    head = tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    assert e.chosen_ids[:e.prompt_len] == tok(head, add_special_tokens=False)["input_ids"]
    for ids, text in ((e.chosen_ids, "Paris."), (e.rejected_ids, "Lyon, I think.")):
        response = ids[e.prompt_len:]
        assert response == tok(text, add_special_tokens=False)["input_ids"] + [im_end]
        assert response.count(im_end) == 1
