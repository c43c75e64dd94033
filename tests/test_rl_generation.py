"""models/generation.py: the completion layout by example, HFGenerator's samples (seeded, masks cover exactly the
completion up to and including EOS), and completion log-probs read with DPO's shift and mask."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close
from transformers import AutoModelForCausalLM

from marginkit.diagnostics.mask_audit import probe_loss_mask
from marginkit.models.generation import HFGenerator, completion_logps, layout_completions, prompt_token_ids
from marginkit.models.logprobs import forward_logps, token_logps

PROMPTS = ["please help me", "the question is about cats", "dogs"]


def test_layout_completions_worked_example():
    # the module docstring's example: pad 0, EOS 3; prompts [5, 6] and [7]; generated [8, 3, 9] (EOS, then a
    # token generate wrote after it) and [8, 9, 9] (no EOS: truncated at max_new_tokens)
    out = layout_completions([[5, 6], [7]], [[8, 3, 9], [8, 9, 9]], eos_id=3, pad_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 8, 3, 0], [0, 7, 8, 9, 9]]  # prompt left-padded to width 2
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]]
    assert out["completion_mask"].tolist() == [[0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]  # EOS in, the 9 after it out
    assert out["lengths"].tolist() == [2, 3]
    assert out["truncated"].tolist() == [False, True]
    # pad id = EOS id (tokenizers without a pad token): the masks come from lengths, so nothing changes
    same = layout_completions([[5, 6], [7]], [[8, 3, 9], [8, 9, 9]], eos_id=3, pad_id=3)
    assert same["completion_mask"].tolist() == out["completion_mask"].tolist()
    assert same["input_ids"].tolist() == [[5, 6, 8, 3, 3], [3, 7, 8, 9, 9]]


@pytest.fixture(scope="module")
def policy(tiny_model_dir, word_tokenizer):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), word_tokenizer


def raw_generate(model, tokenizer, prompts, n, max_new_tokens, seed):
    """n completions per prompt at temperature 1 from HFGenerator (HF `generate` with the KV cache)."""
    gen = HFGenerator(model, tokenizer)
    return gen.generate(prompts, n=n, max_new_tokens=max_new_tokens, temperature=1.0, seed=seed)


def test_generate_is_seeded_and_leaves_the_global_rng(policy):
    model, tok = policy
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = raw_generate(model, tok, PROMPTS, 4, 12, seed=7)
    assert torch.equal(torch.get_rng_state(), before)  # sampling ran under fork_rng
    b = raw_generate(model, tok, PROMPTS, 4, 12, seed=7)
    c = raw_generate(model, tok, PROMPTS, 4, 12, seed=8)
    assert torch.equal(a.input_ids, b.input_ids) and a.texts == b.texts
    assert not torch.equal(a.input_ids, c.input_ids)
    assert a.prompt_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4  # prompt-major
    assert model.training is False


def test_completion_mask_covers_exactly_the_completion_up_to_and_including_eos(policy):
    model, tok = policy
    eos = tok.eos_token_id
    out = raw_generate(model, tok, PROMPTS, 8, 20, seed=3)
    # the random tiny LM ends some completions with EOS and runs others to max_new_tokens: both cases occur
    assert out.truncated.any() and (~out.truncated).any()
    prompts = [prompt_token_ids(p, tok) for p in PROMPTS]
    width = max(len(p) for p in prompts)
    for i in range(len(out)):
        ids, comp, attn = out.input_ids[i], out.completion_mask[i].bool(), out.attention_mask[i].bool()
        prompt = prompts[int(out.prompt_index[i])]
        assert ids[width - len(prompt):width].tolist() == prompt
        completion = ids[comp].tolist()
        assert completion == ids[width:width + int(out.lengths[i])].tolist()  # contiguous, right after the prompt
        if out.truncated[i]:
            assert eos not in completion and len(completion) == 20
        else:
            assert completion.index(eos) == len(completion) - 1  # ends at its first EOS, EOS included
        assert not comp[:width].any() and not comp[width + len(completion):].any()  # no prompt, no padding
        assert attn.tolist() == [width - len(prompt) <= t < width + len(completion) for t in range(len(ids))]
        assert out.texts[i] == tok.decode([t for t in completion if t != eos], skip_special_tokens=True).strip()


def test_the_log_prob_code_reads_exactly_the_completion_tokens(policy):
    model, tok = policy
    out = raw_generate(model, tok, PROMPTS, 4, 16, seed=5)
    # Probe by gradient which logits the per-token log-probs read (diagnostics/mask_audit.py): exactly the
    # positions whose next token is a completion token, i.e. completion_mask shifted by one.
    ids = out.input_ids

    def read_fn(logits):
        return torch.where(out.completion_mask[:, 1:].bool(), token_logps(logits, torch.zeros_like(ids)), 0.0).sum(-1)

    read = probe_loss_mask(read_fn, torch.zeros_like(ids), 2)
    assert read.tolist() == out.completion_mask[:, 1:].bool().tolist()
    with torch.no_grad():
        mine = completion_logps(model, ids, out.attention_mask, out.completion_mask)
        dpo = forward_logps(model, ids, out.attention_mask, out.completion_mask)  # the DPO path on the same rows
    assert mine.mask.tolist() == out.completion_mask[:, 1:].bool().tolist()
    assert_close(mine.logps.sum(-1), dpo.sum)
    assert_close(mine.mask.sum(-1).float(), out.lengths.float())


def test_completion_logps_equal_each_row_run_alone_and_follow_the_temperature(policy):
    model, tok = policy
    out = raw_generate(model, tok, PROMPTS, 2, 10, seed=11)
    with torch.no_grad():
        batched = completion_logps(model, out.input_ids, out.attention_mask, out.completion_mask, temperature=0.5,
                                   with_entropy=True)
        for i in range(len(out)):
            real = out.attention_mask[i].bool()
            ids = out.input_ids[i][real][None]  # [1, t]: the row without padding
            n_comp = int(out.lengths[i])
            logits = model(input_ids=ids).logits / 0.5
            alone = torch.log_softmax(logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None]).squeeze(-1)[-n_comp:]
            assert_close(batched.logps[i][batched.mask[i]], alone, atol=1e-5, rtol=1e-5)  # padding changes sums
            probs = torch.softmax(logits[0, :-1].float(), -1)[-n_comp:]
            entropy = -(probs * probs.log()).sum(-1)
            assert_close(batched.entropy[i][batched.mask[i]], entropy, atol=1e-5, rtol=1e-5)
    assert batched.entropy[~batched.mask].abs().sum() == 0


def test_generator_refuses_impossible_requests(policy):
    model, tok = policy
    with pytest.raises(ValueError, match="temperature=0"):
        HFGenerator(model, tok).generate(PROMPTS, n=2, max_new_tokens=4, temperature=0.0, seed=0)


def test_rows_selects_a_minibatch_and_drops_all_padding_columns(policy):
    model, tok = policy
    out = raw_generate(model, tok, PROMPTS, 2, 8, seed=1)
    sub = out.rows([4, 5])  # the two completions of "dogs" (the shortest prompt)
    assert sub.texts == out.texts[4:6] and sub.prompt_index.tolist() == [2, 2]
    assert sub.attention_mask.bool().any(0).all()  # no column is padding in every row
    with torch.no_grad():
        full = completion_logps(model, out.input_ids, out.attention_mask, out.completion_mask)
        part = completion_logps(model, sub.input_ids, sub.attention_mask, sub.completion_mask)
    assert_close(part.logps.sum(-1), full.logps.sum(-1)[4:6], atol=1e-5, rtol=1e-5)


def test_kv_cache_samples_equal_the_uncached_reference(policy):
    # The fast path (KV cache) against the readable one (every token reruns the whole sequence): same seed,
    # same completions, and the same per-token log-probs read afterwards.
    model, tok = policy
    widths: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: widths.append((kwargs.get("input_ids") if "input_ids" in kwargs else args[0]).shape[1]),
        with_kwargs=True)
    try:
        cached = HFGenerator(model, tok).generate(PROMPTS, n=4, max_new_tokens=12, temperature=1.0, seed=9)
        n_cached = len(widths)
        plain = HFGenerator(model, tok, use_cache=False).generate(PROMPTS, n=4, max_new_tokens=12, temperature=1.0,
                                                                  seed=9)
    finally:
        hook.remove()
    assert set(widths[1:n_cached]) == {1}  # with the cache, each new token runs one position
    assert widths[n_cached + 1] > 1  # without it, the whole sequence again
    assert torch.equal(cached.input_ids, plain.input_ids) and cached.texts == plain.texts


def test_the_models_own_generation_defaults_do_not_change_the_samples(policy):
    # A checkpoint's generation_config (top_k, repetition_penalty, ...) would bend the sampled distribution
    # away from the policy's; HFGenerator samples with its own settings.
    model, tok = policy
    plain = HFGenerator(model, tok).generate(PROMPTS, n=4, max_new_tokens=12, temperature=1.0, seed=9)
    saved = model.generation_config
    model.generation_config = type(saved)(**{**saved.to_dict(), "top_k": 2, "repetition_penalty": 10.0})
    try:
        bent = HFGenerator(model, tok).generate(PROMPTS, n=4, max_new_tokens=12, temperature=1.0, seed=9)
    finally:
        model.generation_config = saved
    assert torch.equal(plain.input_ids, bent.input_ids) and plain.texts == bent.texts
