"""Response log-probs: the shift by one and the mask by hand, mask properties for any lengths and padding
side, the chunked form against the naive one-liner, and a real model scoring left and right padding alike."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM

from marginkit.data.collate import collate_pairs
from marginkit.data.tokenize import EncodedPair
from marginkit.models.logprobs import (
    SequenceLogps,
    forward_logps,
    naive_token_logps,
    position_ids_from_mask,
    sequence_logps,
    token_logps,
)

GARBAGE = [7.0, -7.0, 3.0]  # logits at positions whose prediction must never be read


def test_shift_and_mask_by_hand_for_both_padding_sides():
    # Vocabulary {0, 1, 2}, pad id 1 (an ordinary id, on purpose: masks come from lengths, not pad ids).
    # Sequence x = [2, 1, 0, 2] with a 2-token prompt [2, 1] and response [0, 2].
    # Response token x_2 = 0 is predicted by the logits at position 1: [ln 2, 0, 0] -> softmax
    #   [2/4, 1/4, 1/4], so log π(0) = ln(2/4) = -ln 2.
    # Response token x_3 = 2 is predicted by the logits at position 2: [0, 0, 0] -> log π(2) = -ln 3.
    # Sum = -ln 2 - ln 3 = -ln 6; 2 response tokens; mean = -ln 6 / 2.
    # Position 0 predicts a prompt token and position 3 predicts past the end: both hold GARBAGE, and
    # would change the result if the mask were not shifted (an unshifted mask reads positions 2 and 3).
    # The chosen row is padded by one (the rejected row is one token longer), on either side; only the
    # chosen row (row 0 of [2B, T]) is checked. Its two predictions sit at positions 1 and 2 (right
    # padding) or 2 and 3 (left padding); every other position holds GARBAGE.
    pair = EncodedPair([2, 1, 0, 2], [2, 1, 0, 2, 0], prompt_len=2, label_margin=0.0, score_gap=0.0,
                       gold_gap=0.0, index=0)
    ln2 = math.log(2.0)
    first, second = [ln2, 0.0, 0.0], [0.0, 0.0, 0.0]
    cases = {"right": ([2, 1, 0, 2, 1], [GARBAGE, first, second, GARBAGE, GARBAGE]),
             "left": ([1, 2, 1, 0, 2], [GARBAGE, GARBAGE, first, second, GARBAGE])}
    for side, (ids, rows) in cases.items():
        batch = collate_pairs([pair], pad_id=1, padding_side=side)
        assert batch["input_ids"][0].tolist() == ids
        out = sequence_logps(torch.tensor(rows)[None], batch["input_ids"][:1], batch["response_mask"][:1])
        torch.testing.assert_close(out.sum, torch.tensor([-math.log(6.0)]))
        torch.testing.assert_close(out.n_tokens, torch.tensor([2.0]))
        torch.testing.assert_close(out.mean, torch.tensor([-math.log(6.0) / 2]))


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"logits must be \[N, T, V\]"):
        sequence_logps(torch.zeros(2, 5, 3), torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="response_mask"):
        sequence_logps(torch.zeros(2, 4, 3), torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 3, dtype=torch.bool))


def test_split_and_mean_forms():
    logps = SequenceLogps(torch.tensor([-4.0, -6.0, -9.0, 0.0]), torch.tensor([2.0, 3.0, 3.0, 0.0]))
    chosen, rejected = logps.split()
    # mean = sum / |y|: -4/2 = -2, -6/3 = -2; rejected -9/3 = -3, and an empty response counts 0, not NaN.
    torch.testing.assert_close(chosen.mean, torch.tensor([-2.0, -2.0]))
    torch.testing.assert_close(rejected.mean, torch.tensor([-3.0, 0.0]))


PROMPT_IDS, RESPONSE_IDS, PAD = range(10, 20), range(20, 30), 0
lengths = st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)), min_size=1, max_size=4)


def _pairs(draw_lengths, rng: torch.Generator) -> list[EncodedPair]:
    """Pairs with prompt ids in 10..19 and response ids in 20..29, so a position's role is visible in its id."""
    pairs = []
    for i, (p, c, r) in enumerate(draw_lengths):
        prompt = torch.randint(10, 20, (p,), generator=rng).tolist()
        chosen = prompt + torch.randint(20, 30, (c,), generator=rng).tolist()
        rejected = prompt + torch.randint(20, 30, (r,), generator=rng).tolist()
        pairs.append(EncodedPair(chosen, rejected, p, 0.0, 0.0, 0.0, i))
    return pairs


@settings(max_examples=60, deadline=None)
@given(lens=lengths, side=st.sampled_from(["right", "left"]), seed=st.integers(0, 2**16))
def test_shifted_mask_covers_exactly_the_response_tokens(lens, side, seed):
    pairs = _pairs(lens, torch.Generator().manual_seed(seed))
    batch = collate_pairs(pairs, PAD, side)
    labels, mask = batch["input_ids"][:, 1:], batch["response_mask"][:, 1:]  # the mask shifts with the labels
    rows = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    for row, lab, m, plen in zip(rows, labels, mask, [p.prompt_len for p in pairs] * 2):
        picked = lab[m].tolist()
        assert picked == row[plen:]  # exactly the response tokens, in order: no prompt id, no pad
        assert all(t in RESPONSE_IDS for t in picked)
        assert int(m.sum()) == len(row) - plen


@settings(max_examples=40, deadline=None)
@given(lens=lengths, side=st.sampled_from(["right", "left"]), seed=st.integers(0, 2**16))
def test_sequence_logps_equals_a_loop_over_each_real_sequence(lens, side, seed):
    gen = torch.Generator().manual_seed(seed)
    pairs = _pairs(lens, gen)
    batch = collate_pairs(pairs, PAD, side)
    n, width = batch["input_ids"].shape
    logits = torch.randn(n, width, 30, generator=gen)
    out = sequence_logps(logits, batch["input_ids"], batch["response_mask"])
    rows = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    for i, (row, plen) in enumerate(zip(rows, [p.prompt_len for p in pairs] * 2)):
        start = 0 if side == "right" else width - len(row)
        # token j of the real sequence is predicted by the logits at padded position start + j - 1
        expected = sum(torch.log_softmax(logits[i, start + j - 1], -1)[row[j]] for j in range(plen, len(row)))
        torch.testing.assert_close(out.sum[i], torch.as_tensor(expected, dtype=torch.float32))
        assert out.n_tokens[i] == len(row) - plen


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), width=st.integers(2, 12), vocab=st.integers(2, 40), chunk=st.integers(0, 13),
       seed=st.integers(0, 2**16), half=st.booleans())
def test_chunked_token_logps_equal_the_naive_one_liner(n, width, vocab, chunk, seed, half):
    gen = torch.Generator().manual_seed(seed)
    dtype = torch.bfloat16 if half else torch.float32
    logits = (3 * torch.randn(n, width, vocab, generator=gen)).to(dtype).requires_grad_(True)
    ids = torch.randint(0, vocab, (n, width), generator=gen)
    weights = torch.randn(n, width - 1, generator=gen)
    fast = token_logps(logits, ids, chunk_size=chunk)
    (g_fast,) = torch.autograd.grad((fast * weights).sum(), logits)
    slow = naive_token_logps(logits, ids)
    (g_slow,) = torch.autograd.grad((slow * weights).sum(), logits)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, slow)
    # bf16 gradients are rounded once to bf16 in either path; compare at bf16 resolution then.
    tol = {"atol": 1e-2, "rtol": 1e-2} if half else {}
    torch.testing.assert_close(g_fast, g_slow, **tol)


def test_position_ids_count_real_tokens_only():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2]]


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


@settings(max_examples=8, deadline=None)
@given(lens=lengths, seed=st.integers(0, 2**16))
def test_a_model_scores_left_and_right_padding_alike_and_ignores_pad_ids(tiny_lm, lens, seed):
    pairs = _pairs(lens, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        results = []
        for side, pad in (("right", 0), ("left", 0), ("right", 5), ("left", 7)):
            b = collate_pairs(pairs, pad, side)
            results.append(forward_logps(tiny_lm, b["input_ids"], b["attention_mask"], b["response_mask"]).sum)
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], atol=1e-5, rtol=1e-5)  # padded attention: float noise only
