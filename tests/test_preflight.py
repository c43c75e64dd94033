"""The reward-token pre-flight check fails loudly on the bugs behind "loss stuck at 0.693"."""

import copy

import pytest

from marginkit.data.collate import collate_pairs
from marginkit.data.tokenize import EncodedPair
from marginkit.diagnostics.preflight import PreflightError, check_reward_tokens


def enc(c, r, plen, i=0):
    return EncodedPair(c, r, plen, float("nan"), float("nan"), float("nan"), i)


def test_healthy_batch_passes_and_reports_tokens(word_tokenizer):
    tok = word_tokenizer
    eos = tok.eos_token_id
    b = collate_pairs([enc([2, 10, 11, eos], [2, 10, 12, 13, eos], 2)], tok.pad_token_id)
    report = check_reward_tokens(b, tok, encoder=False)
    assert report.tokens_seen == {"<eos>": 2}


def test_pad_equals_eos_trap(word_tokenizer):
    # A tokenizer that pads with EOS: Hugging Face reads the reward before the EOS, not at it.
    tok = copy.deepcopy(word_tokenizer)
    tok.pad_token = tok.eos_token
    eos = tok.eos_token_id
    b = collate_pairs([enc([2, 10, 11, eos], [2, 10, 12, 13, eos], 2)], tok.pad_token_id)
    with pytest.raises(PreflightError, match="pad = EOS"):
        check_reward_tokens(b, tok, encoder=False)


def test_reward_inside_prompt(word_tokenizer):
    tok = word_tokenizer
    # the responses were truncated away: the last real token belongs to the prompt
    b = collate_pairs([enc([2, 10, 11], [2, 10, 12, 13, 3], 3)], tok.pad_token_id)
    with pytest.raises(PreflightError, match="inside the prompt"):
        check_reward_tokens(b, tok, encoder=False)


def test_identical_prefix_for_chosen_and_rejected(word_tokenizer):
    tok = word_tokenizer
    eos = tok.eos_token_id
    b = collate_pairs([enc([2, 10, 11, eos], [2, 10, 11, eos], 2, 5)], tok.pad_token_id)
    with pytest.raises(PreflightError, match="pair 5: the chosen and rejected rewards are read after identical text"):
        check_reward_tokens(b, tok, encoder=False)


def test_encoder_reads_cls_and_skips_causal_checks(word_tokenizer):
    tok = word_tokenizer
    b = collate_pairs([enc([2, 10, 11], [2, 10, 11], 2)], tok.pad_token_id)
    assert check_reward_tokens(b, tok, encoder=True).tokens_seen == {"<bos>": 2}
