"""Prefix sharing (models/prefix_share.py): the layout and mask by hand, and prefix-shared rewards, response
log-probs and gradients equal to separate padded forwards (float32, GPT-NeoX and Llama, either padding side,
ragged lengths); different prompts are refused. (The prefix-shared training run is compared with a padded one
in test_packing.py, with the packed one.)"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM

from _engine_helpers import one_torch_thread
from marginkit.data.collate import collate_pairs
from marginkit.data.tokenize import EncodedPair
from marginkit.models.packing import dense_mask
from marginkit.models.prefix_share import prefix_layout, prefix_shared_response_logps, prefix_shared_rewards
from marginkit.models.reward import score_batch
from marginkit.models.tiny import make_tiny_model_dir
from test_packing import PAD, encoded, load_rm, naive_response_logps, pair_lengths


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, word_tokenizer):
    root = tmp_path_factory.mktemp("prefix")
    return {arch: make_tiny_model_dir(root / arch, word_tokenizer, arch=arch, hidden_size=32, seed=5)
            for arch in ("gpt_neox", "llama")}


@pytest.fixture(scope="module")
def rms(model_dirs):
    return {arch: load_rm(path) for arch, path in model_dirs.items()}


@pytest.fixture(scope="module")
def lms(model_dirs):
    return {arch: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            for arch, path in model_dirs.items()}


# ---- layout and mask, by hand ----

def test_prefix_layout_worked_example():
    # One pair, prompt [a b], chosen [c], rejected [d e]; right padding, T = 4:
    #   chosen row 0:   a b c .      rejected row 1:   a b d e
    # One sequence [a b | c | d e]: slots 0-1 prompt, 2 chosen, 3-4 rejected.
    pair = EncodedPair([10, 11, 12], [10, 11, 13, 14], 2, 0.0, 0.0, 0.0, 0)
    batch = collate_pairs([pair], PAD)
    layout = prefix_layout(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    assert layout.source.tolist() == [[0, 1, 2, 6, 7]]  # padded flat index: row * 4 + col
    assert layout.input_ids(batch["input_ids"], PAD).tolist() == [[10, 11, 12, 13, 14]]
    assert layout.position_ids.tolist() == [[0, 1, 2, 2, 3]]  # rejected restarts after the prompt (at 2)
    assert layout.segment.tolist() == [[0, 0, 1, 2, 2]]
    # The rejected row's prompt tokens are the shared prompt slots 0-1; its own tokens are slots 3-4.
    assert layout.slot_of.tolist() == [[0, 1, 2, -1], [0, 1, 3, 4]]
    assert layout.last_slot.tolist() == [2, 4]  # rewards: at c, and at e
    # 5 positions computed instead of the 7 real tokens of the two padded rows (the prompt once, not twice).
    assert int((layout.source >= 0).sum()) == 5 and int(batch["attention_mask"].sum()) == 7
    # q attends k (1): prompt causal; chosen c sees a b c; rejected d sees a b d (not c), e sees a b d e.
    assert dense_mask(layout)[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 0, 1, 0],
        [1, 1, 0, 1, 1],
    ]


def test_two_pairs_never_see_each_other():
    pairs = [EncodedPair([10, 12], [10, 13], 1, 0.0, 0.0, 0.0, 0), EncodedPair([11, 14], [11, 15], 1, 0.0, 0.0, 0.0, 1)]
    batch = collate_pairs(pairs, PAD)
    layout = prefix_layout(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    mask = dense_mask(layout)[0, 0]
    doc = layout.doc[0]
    assert not mask[doc[:, None] != doc[None, :]].any()  # no attention across pairs


def test_prefix_refusals():
    # Rejected row with another prompt token: prefix sharing would silently use chosen's prompt.
    pair = EncodedPair([10, 11, 12], [10, 9, 13], 2, 0.0, 0.0, 0.0, 0)
    batch = collate_pairs([pair], PAD)
    with pytest.raises(ValueError, match="pair 0: chosen and rejected differ inside the prompt"):
        prefix_layout(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    batch["response_mask"][1, 1] = True  # rejected prompt now 1 token, chosen 2
    with pytest.raises(ValueError, match="pair 0: the chosen prompt has 2 tokens and the rejected 1"):
        prefix_layout(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    odd = collate_pairs([pair], PAD)
    with pytest.raises(ValueError, match="pair batch"):
        prefix_layout(odd["input_ids"][:1], odd["attention_mask"][:1], odd["response_mask"][:1])


# ---- exactness against separate padded forwards ----

@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lengths=pair_lengths, side=st.sampled_from(["right", "left"]), rows=st.sampled_from([None, 1, 12]))
def test_prefix_rewards_equal_padded(rms, arch, lengths, side, rows):
    model = rms[arch]
    batch = collate_pairs(encoded(lengths), PAD, side)
    with torch.no_grad(), one_torch_thread():
        padded, _ = score_batch(model, batch["input_ids"], batch["attention_mask"])
        shared, _ = prefix_shared_rewards(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"],
                                          PAD, capacity=rows)
    torch.testing.assert_close(shared, padded)


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lengths=pair_lengths, side=st.sampled_from(["right", "left"]))
def test_prefix_response_logps_equal_padded(lms, arch, lengths, side):
    model = lms[arch]
    batch = collate_pairs(encoded(lengths, seed=1), PAD, side)
    with torch.no_grad(), one_torch_thread():
        naive = naive_response_logps(model, batch)
        shared = prefix_shared_response_logps(model, batch["input_ids"], batch["attention_mask"],
                                              batch["response_mask"], PAD, chunk=2)
    torch.testing.assert_close(shared, naive)
    # the first response token of both sides is scored (it is predicted from the shared prompt's last token)
    assert bool((shared != 0).eq(batch["response_mask"].bool() & (torch.arange(shared.shape[1]) > 0)).all())


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_prefix_reward_gradients_equal_padded(model_dirs, arch, side):
    # The prompt's hidden states get gradient from both responses in one pass: the sum of the two separate ones.
    batch = collate_pairs(encoded([(3, 2, 5), (1, 4, 1), (6, 1, 2)], seed=2), PAD, side)
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0, 2.0])
    grads = []
    with one_torch_thread():
        for fn in ("padded", "prefix"):
            model = load_rm(model_dirs[arch])
            if fn == "padded":
                rewards, _ = score_batch(model, batch["input_ids"], batch["attention_mask"])
            else:
                rewards, _ = prefix_shared_rewards(model, batch["input_ids"], batch["attention_mask"],
                                                   batch["response_mask"], PAD)
            (rewards * weights).sum().backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
def test_prefix_logp_gradients_equal_padded(model_dirs, arch):
    batch = collate_pairs(encoded([(3, 2, 5), (2, 4, 1)], seed=3), PAD, "right")
    weights = torch.tensor([1.0, 2.0, -1.0, -3.0])  # DPO-like: chosen up, rejected down
    grads = []
    with one_torch_thread():
        for fn in ("padded", "prefix"):
            model = AutoModelForCausalLM.from_pretrained(model_dirs[arch], dtype=torch.float32)
            if fn == "padded":
                logps = naive_response_logps(model, batch)
            else:
                logps = prefix_shared_response_logps(model, batch["input_ids"], batch["attention_mask"],
                                                     batch["response_mask"], PAD)
            (logps.sum(-1) * weights).sum().backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, msg=lambda m, n=name: f"{n}: {m}")


def test_prefix_hidden_and_eager_equal_padded(model_dirs):
    model = load_rm(model_dirs["gpt_neox"])
    batch = collate_pairs(encoded([(2, 3, 1), (4, 1, 2)]), PAD, "left")
    with torch.no_grad():
        r_pad, h_pad = score_batch(model, batch["input_ids"], batch["attention_mask"], with_hidden=True)
        r_sh, h_sh = prefix_shared_rewards(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"],
                                           PAD, with_hidden=True)
        model.set_attn_implementation("eager")  # the additive float mask
        r_eager, _ = prefix_shared_rewards(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"], PAD)
    torch.testing.assert_close(h_sh, h_pad)
    torch.testing.assert_close(r_sh, r_pad)
    torch.testing.assert_close(r_eager, r_pad)


@pytest.mark.slow
def test_flex_attention_forward_on_cpu(model_dirs):
    """The GPU path's kernel (FlexAttention with a BlockMask), forward only: FlexAttention has no CPU backward.
    Compiles on first use (about 2 minutes on the 2-core machine)."""
    model = load_rm(model_dirs["llama"])
    batch = collate_pairs(encoded([(3, 2, 4), (1, 5, 2)]), PAD)
    with torch.no_grad():
        padded, _ = score_batch(model, batch["input_ids"], batch["attention_mask"])
        model.set_attn_implementation("flex_attention")
        shared, _ = prefix_shared_rewards(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"], PAD)
    torch.testing.assert_close(shared, padded)


# A prefix-shared training run equals a padded one: test_packing.py test_layout_training_equals_padded.
