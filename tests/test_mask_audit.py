"""The loss-mask audit: the worked example, broken masks caught with clear messages, the gradient probe of a
real log-prob function, and a hypothesis property over padding side and lengths."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from marginkit.data.collate import collate_pairs
from marginkit.data.tokenize import EncodedPair
from marginkit.diagnostics.mask_audit import (
    MaskAuditError,
    audit_loss_mask,
    expected_loss_mask,
    probe_loss_mask,
)


def enc(prompt: list[int], chosen: list[int], rejected: list[int], index: int = 0) -> EncodedPair:
    nan = float("nan")
    return EncodedPair(prompt + chosen, prompt + rejected, len(prompt), nan, nan, nan, index)


def ids_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def correct_logps(batch):
    """A correctly shifted log-prob sum (the readable form of models/logprobs.py)."""
    def fn(logits):
        per_token = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch["input_ids"][:, 1:, None])
        return (per_token.squeeze(-1) * batch["response_mask"][:, 1:]).sum(-1)
    return fn


def unshifted_logps(batch):
    """The bug from seed 001's warning: logits and labels shifted, the mask not."""
    def fn(logits):
        per_token = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch["input_ids"][:, 1:, None])
        return (per_token.squeeze(-1) * batch["response_mask"][:, :-1]).sum(-1)
    return fn


# ---- the worked example of the module docstring ----

@pytest.fixture
def example(word_tokenizer):
    # prompt "please help" (2 tokens), chosen "yes great", rejected "no" (+ one pad on the right).
    tok = word_tokenizer
    p, c, r = ids_of(tok, "please help"), ids_of(tok, "yes great"), ids_of(tok, "no")
    return collate_pairs([enc(p, c, r)], tok.pad_token_id, "right"), (p, c, r)


def test_worked_example_by_hand(example, word_tokenizer):
    batch, (p, c, r) = example
    # chosen row   [p0, p1, c0, c1]   response_mask [0, 0, 1, 1]   labels [p1, c0, c1]   loss mask [0, 1, 1]
    # rejected row [p0, p1, r0, pad]  response_mask [0, 0, 1, 0]   labels [p1, r0, pad]  loss mask [0, 1, 0]
    want = torch.tensor([[False, True, True], [False, True, False]])
    assert torch.equal(expected_loss_mask(batch), want)
    report = audit_loss_mask(batch, word_tokenizer)
    assert report.n_rows == 2 and report.n_supervised == 3 and report.padding_side == "right"
    assert [v.supervised for v in report.rows] == ["yes great", "no"]
    assert [v.prompt for v in report.rows] == ["please help", "please help"]
    assert "rejected of pair 0" in report.summary()


def test_unshifted_mask_is_named(example, word_tokenizer):
    batch, _ = example
    # response_mask[:, :-1] = [[0, 0, 1], [0, 0, 1]]: drops the first response token of both rows and, in
    # the rejected row, supervises the pad after "no".
    broken = batch["response_mask"][:, :-1]
    with pytest.raises(MaskAuditError, match=r"not shifted by one") as e:
        audit_loss_mask(batch, word_tokenizer, loss_mask=broken)
    assert "covers 1 padding target(s)" in str(e.value) and "misses 2 response token(s)" in str(e.value)
    assert "'yes'" in str(e.value)  # the missed token, decoded


def test_prompt_in_mask_is_named(example, word_tokenizer):
    batch, _ = example
    broken = batch["attention_mask"][:, 1:].bool()  # every real target: includes the prompt token "help"
    with pytest.raises(MaskAuditError, match=r"covers 2 prompt token\(s\) \(e\.g\. row 0 \(chosen of pair 0\): 'help'\)"):
        audit_loss_mask(batch, word_tokenizer, loss_mask=broken)


def test_unshifted_shape_is_named(example, word_tokenizer):
    batch, _ = example
    with pytest.raises(MaskAuditError, match=r"shape \(2, 4\).*not shifted by one"):
        audit_loss_mask(batch, word_tokenizer, loss_mask=batch["response_mask"])


def test_probe_reads_the_mask_a_function_applies(example, word_tokenizer):
    batch, _ = example
    vocab = len(word_tokenizer)
    assert torch.equal(probe_loss_mask(correct_logps(batch), batch["input_ids"], vocab), expected_loss_mask(batch))
    unshifted = probe_loss_mask(unshifted_logps(batch), batch["input_ids"], vocab)
    assert torch.equal(unshifted, batch["response_mask"][:, :-1])
    with pytest.raises(MaskAuditError, match="not shifted by one"):
        audit_loss_mask(batch, word_tokenizer, loss_mask=unshifted)


def test_probe_catches_logits_read_past_the_end(example, word_tokenizer):
    batch, _ = example

    def own_position(logits):  # each token scored by its own position's logits: reads logits[:, T-1]
        per_token = torch.log_softmax(logits[:, 1:], -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        return (per_token * batch["response_mask"][:, 1:]).sum(-1)

    with pytest.raises(MaskAuditError, match="last position"):
        probe_loss_mask(own_position, batch["input_ids"], len(word_tokenizer))


def test_probe_of_the_models_logprobs(example, word_tokenizer):
    logprobs = pytest.importorskip("marginkit.models.logprobs")
    batch, _ = example
    fn = lambda lg: logprobs.sequence_logps(lg, batch["input_ids"], batch["response_mask"]).sum  # noqa: E731
    mask = probe_loss_mask(fn, batch["input_ids"], len(word_tokenizer))
    assert audit_loss_mask(batch, word_tokenizer, loss_mask=mask).n_supervised == 3


# ---- broken batches ----

def test_wrong_prompt_length_in_one_row(example, word_tokenizer):
    batch, _ = example
    batch["response_mask"][1, 1] = True  # rejected row: response starts one token early, inside the prompt
    with pytest.raises(MaskAuditError, match=r"pair 0: chosen and rejected rows have different prompts.*'please help' vs 'please'"):
        audit_loss_mask(batch, word_tokenizer)


def test_response_truncated_away(example, word_tokenizer):
    batch, _ = example
    batch["response_mask"][1] = False
    with pytest.raises(MaskAuditError, match=r"row 1 \(rejected of pair 0\): no response tokens"):
        audit_loss_mask(batch, word_tokenizer)


def test_response_on_padding(example, word_tokenizer):
    batch, _ = example
    batch["response_mask"][1, 3] = True  # the pad after "no"
    with pytest.raises(MaskAuditError, match=r"response mask covers padding positions \[3\]"):
        audit_loss_mask(batch, word_tokenizer)


# ---- property: any lengths, either padding side ----

pair_lengths = st.lists(st.tuples(st.integers(1, 5), st.integers(1, 6), st.integers(1, 6)), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(lengths=pair_lengths, side=st.sampled_from(["right", "left"]), multiple=st.sampled_from([1, 4]),
       seed=st.integers(0, 10_000))
def test_mask_is_exactly_the_response_for_any_padding(word_tokenizer, lengths, side, multiple, seed):
    gen = torch.Generator().manual_seed(seed)
    word_ids = lambda k: (torch.randint(4, len(word_tokenizer), (k,), generator=gen)).tolist()  # noqa: E731
    pairs = [enc(word_ids(p), word_ids(c), word_ids(r), i) for i, (p, c, r) in enumerate(lengths)]
    batch = collate_pairs(pairs, word_tokenizer.pad_token_id, side, multiple)
    report = audit_loss_mask(batch, word_tokenizer, n_rows=2)

    # Independent ground truth: the supervised labels of each row are exactly its response ids.
    mask = probe_loss_mask(correct_logps(batch), batch["input_ids"], len(word_tokenizer))
    assert torch.equal(mask, expected_loss_mask(batch))
    rows = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    plens = [p.prompt_len for p in pairs] * 2
    for r, (row, plen) in enumerate(zip(rows, plens)):
        assert batch["input_ids"][r, 1:][mask[r]].tolist() == row[plen:]
    assert report.n_supervised == sum(len(row) - plen for row, plen in zip(rows, plens))

    with pytest.raises(MaskAuditError, match="not shifted by one"):
        audit_loss_mask(batch, word_tokenizer, loss_mask=batch["response_mask"][:, :-1] & batch["attention_mask"][:, :-1].bool())
    # Every real token predicted from a real token: the whole row except its first token (and, with left
    # padding, except the first real token, which only a pad position would predict).
    attention = batch["attention_mask"].bool()
    every_real_target = attention[:, :-1] & attention[:, 1:]
    if max(p for p, _, _ in lengths) >= 2:  # some prompt token is a target: including it must be caught
        with pytest.raises(MaskAuditError, match="prompt token"):
            audit_loss_mask(batch, word_tokenizer, loss_mask=every_real_target)
    else:  # one-token prompts: every real target is a response token, so that mask is right
        audit_loss_mask(batch, word_tokenizer, loss_mask=every_real_target)
