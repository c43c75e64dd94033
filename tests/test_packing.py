"""Padding-free packing (models/packing.py): the layout by hand, and packed rewards, log-probs and gradients
equal to the padded forward for GPT-NeoX and Llama, either padding side, ragged lengths; a packed (and a
prefix-shared) training run equals a padded one."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from _engine_helpers import make_pairs, one_torch_thread, run_config, train, vocab_words
from marginkit.data.collate import FORWARD_LAYOUTS, LayoutPairCollator, collate_pairs
from marginkit.data.tokenize import EncodedPair
from marginkit.models.packing import (
    Piece,
    _pack_rows,
    build_layout,
    check_layout_support,
    compile_blocks,
    dense_mask,
    flex_mask_mod,
    packed_layout,
    packed_response_logps,
    packed_rewards,
    resolve_attention,
    selective_logps,
    spans,
)
from marginkit.models.pair_forward import batch_logps as pair_sequence_logps
from marginkit.models.pair_forward import score_pairs
from marginkit.models.reward import score_batch
from marginkit.models.tiny import make_tiny_model_dir
from marginkit.train.engine import TrainConfig

PAD = 0  # the word tokenizer's <pad>


# ---- models (module scope: built once) ----

@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, word_tokenizer):
    root = tmp_path_factory.mktemp("packing")
    return {arch: make_tiny_model_dir(root / arch, word_tokenizer, arch=arch, hidden_size=32, seed=3)
            for arch in ("gpt_neox", "llama")}


def load_rm(path):
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    torch.manual_seed(0)
    torch.nn.init.normal_(model.score.weight, std=0.5)  # a non-zero head, so rewards differ between sequences
    return model.eval()


@pytest.fixture(scope="module")
def rms(model_dirs):
    return {arch: load_rm(path) for arch, path in model_dirs.items()}


@pytest.fixture(scope="module")
def lms(model_dirs):
    return {arch: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            for arch, path in model_dirs.items()}


def naive_response_logps(lm, batch) -> torch.Tensor:
    """The readable reference: full logits of the padded batch, log_softmax, the label at t read from t - 1."""
    ids, mask = batch["input_ids"], batch["response_mask"]
    logits = lm(input_ids=ids, attention_mask=batch["attention_mask"], use_cache=False).logits.float()  # [N, T, V]
    picked = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # [N, T-1]
    out = torch.zeros(ids.shape)
    out[:, 1:] = torch.where(mask[:, 1:], picked, 0.0)
    return out


pair_lengths = st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)), min_size=1, max_size=3)


def encoded(lengths, seed=0) -> list[EncodedPair]:
    """Pairs with the given (prompt, chosen, rejected) lengths and random word ids 4..30."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i, (p, c, r) in enumerate(lengths):
        ids = torch.randint(4, 31, (p + c + r,), generator=gen).tolist()
        out.append(EncodedPair(ids[:p + c], ids[:p] + ids[p + c:], p, math.nan, math.nan, math.nan, i))
    return out


# ---- layout, by hand ----

def test_first_fit_decreasing_by_hand():
    # lengths 5, 3, 4, 2 into rows of 7, longest first: 5 -> row 0 (fill 5); 4 does not fit row 0 (9) -> row 1
    # (fill 4); 3 does not fit row 0 (8), fits row 1 at offset 4 (fill 7); 2 fits row 0 at offset 5 (fill 7).
    rows, offsets, fills = _pack_rows([5, 3, 4, 2], 7)
    assert rows == [0, 1, 1, 0]
    assert offsets == [0, 4, 0, 5]
    assert fills == [7, 7]


def test_packed_layout_worked_example():
    # Three padded rows, T = 4: row 0 right-padded [a b c .], row 1 left-padded [. . d e], row 2 full [f g h i].
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1], [1, 1, 1, 1]])
    assert spans(mask) == ([0, 2, 0], [3, 2, 4])
    layout = packed_layout(mask, capacity=5)
    # Longest first into rows of 5: row 2 (4 tokens) -> packed row 0; row 0 (3) -> packed row 1; row 1 (2) ->
    # packed row 1 at offset 3. Width 5: packed row 0 has one filler slot.
    assert layout.source.tolist() == [[8, 9, 10, 11, -1], [0, 1, 2, 6, 7]]  # flat padded index (row * 4 + col)
    assert layout.position_ids.tolist() == [[0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]  # restart per sequence
    assert layout.doc.tolist() == [[2, 2, 2, 2, -1], [0, 0, 0, 1, 1]]  # filler gets its own (negative) id
    assert layout.slot_of.tolist() == [[5, 6, 7, -1], [-1, -1, 8, 9], [0, 1, 2, 3]]
    assert layout.last_slot.tolist() == [7, 9, 3]
    ids = torch.tensor([[11, 12, 13, 0], [0, 0, 14, 15], [16, 17, 18, 19]])
    assert layout.input_ids(ids, PAD).tolist() == [[16, 17, 18, 19, 0], [11, 12, 13, 14, 15]]


def test_packed_mask_is_block_diagonal_causal():
    # Two sequences of 2 and 1 tokens in one row: each attends to itself causally, never to the other.
    layout = build_layout([[Piece(0, 0, 2)], [Piece(1, 0, 1)]], n_rows=2, width=2, kind="packed")
    assert dense_mask(layout)[0, 0].int().tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]


def test_flex_mask_mod_equals_dense_mask():
    from torch.nn.attention.flex_attention import create_mask

    # A prefix item (prompt 2, chosen 2, rejected 2), a packed sequence of 3 and filler, in rows of 11.
    items = [[Piece(0, 0, 2), Piece(0, 2, 2, 2, 1), Piece(1, 2, 2, 2, 2)], [Piece(2, 0, 3)]]
    layout = build_layout(items, n_rows=3, width=4, kind="prefix_shared", capacity=11, multiple=4)
    r, w = layout.shape
    flex = create_mask(flex_mask_mod(layout), r, 1, w, w, device="cpu")
    assert torch.equal(flex, dense_mask(layout))


def test_spans_refuse_holes():
    with pytest.raises(ValueError, match="row 1 has padding between real tokens"):
        spans(torch.tensor([[1, 1, 0], [1, 0, 1]]))


# ---- selective log-softmax ----

@pytest.mark.parametrize("chunk", [1, 2, 64])
def test_selective_logps_equal_naive(chunk):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, generator=gen, requires_grad=True)
    rows = torch.tensor([0, 0, 3, 4, 2])  # row 0 serves two targets (a shared prompt's last token)
    targets = torch.tensor([1, 6, 0, 2, 2])
    fast = selective_logps(logits, rows, targets, chunk)
    naive = logits.float().log_softmax(-1)[rows, targets]
    torch.testing.assert_close(fast, naive)
    w = torch.randn(5, generator=gen)
    (g_fast,) = torch.autograd.grad((fast * w).sum(), logits)
    (g_naive,) = torch.autograd.grad((naive * w).sum(), logits)
    torch.testing.assert_close(g_fast, g_naive)


def test_selective_logps_bf16_logits_in_float32():
    # bf16 logits: the log-softmax is taken in float32, so it equals the float32 computation on the same values.
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    rows, targets = torch.tensor([0, 1, 2]), torch.tensor([5, 7, 9])
    out = selective_logps(logits, rows, targets, chunk=2)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, logits.float().log_softmax(-1)[rows, targets])


# ---- exactness against the padded forward ----

@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lengths=pair_lengths, side=st.sampled_from(["right", "left"]), rows=st.sampled_from([None, 1, 8]))
def test_packed_rewards_equal_padded(rms, arch, lengths, side, rows):
    model = rms[arch]
    batch = collate_pairs(encoded(lengths), PAD, side)
    with torch.no_grad(), one_torch_thread():
        padded, _ = score_batch(model, batch["input_ids"], batch["attention_mask"])
        # capacity None: rows as wide as the padded batch; 1: every sequence alone; 8: several rows with filler
        packed, _ = packed_rewards(model, batch["input_ids"], batch["attention_mask"], PAD, capacity=rows)
    torch.testing.assert_close(packed, padded)


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lengths=pair_lengths, side=st.sampled_from(["right", "left"]))
def test_packed_response_logps_equal_padded(lms, arch, lengths, side):
    model = lms[arch]
    batch = collate_pairs(encoded(lengths, seed=1), PAD, side)
    with torch.no_grad(), one_torch_thread():
        naive = naive_response_logps(model, batch)
        packed = packed_response_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"], PAD)
    torch.testing.assert_close(packed, naive)
    assert (packed != 0).sum() == (batch["response_mask"][:, 1:]).sum()  # every response token scored, nothing else


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_packed_reward_gradients_equal_padded(model_dirs, arch, side):
    # One backward of a weighted sum of rewards: every parameter's gradient equals the padded forward's.
    batch = collate_pairs(encoded([(3, 2, 5), (1, 4, 1), (6, 1, 2)], seed=2), PAD, side)
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0, 2.0])
    grads = []
    with one_torch_thread():
        for fn in ("padded", "packed"):
            model = load_rm(model_dirs[arch])
            if fn == "padded":
                rewards, _ = score_batch(model, batch["input_ids"], batch["attention_mask"])
            else:
                rewards, _ = packed_rewards(model, batch["input_ids"], batch["attention_mask"], PAD, capacity=8)
            (rewards * weights).sum().backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
def test_packed_logp_gradients_equal_padded(model_dirs, arch):
    batch = collate_pairs(encoded([(3, 2, 5), (2, 4, 1)], seed=3), PAD, "left")
    grads = []
    with one_torch_thread():
        for fn in ("padded", "packed"):
            model = AutoModelForCausalLM.from_pretrained(model_dirs[arch], dtype=torch.float32)
            if fn == "padded":
                logps = naive_response_logps(model, batch)
            else:
                logps = packed_response_logps(model, batch["input_ids"], batch["attention_mask"],
                                              batch["response_mask"], PAD, chunk=3)
            logps.sum().backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, msg=lambda m, n=name: f"{n}: {m}")


def test_packed_hidden_states_equal_padded(rms):
    model = rms["gpt_neox"]
    batch = collate_pairs(encoded([(2, 3, 1), (4, 1, 2)]), PAD, "left")
    with torch.no_grad():
        r_pad, h_pad = score_batch(model, batch["input_ids"], batch["attention_mask"], with_hidden=True)
        r_pack, h_pack = packed_rewards(model, batch["input_ids"], batch["attention_mask"], PAD, with_hidden=True)
    torch.testing.assert_close(h_pack, h_pad)
    torch.testing.assert_close(r_pack, r_pad)


def test_eager_attention_packed_equal_padded(model_dirs):
    model = load_rm(model_dirs["llama"])
    batch = collate_pairs(encoded([(2, 3, 1), (4, 1, 2)]), PAD, "right")
    with torch.no_grad():
        padded, _ = score_batch(model, batch["input_ids"], batch["attention_mask"])
        model.set_attn_implementation("eager")
        packed, _ = packed_rewards(model, batch["input_ids"], batch["attention_mask"], PAD)
    torch.testing.assert_close(packed, padded)


# ---- the batch marker, dispatch and DPO-facing sums ----

def test_layout_collator_worked_example():
    pairs = [EncodedPair([5, 6, 7], [5, 6, 8, 9], 2, 0.0, 0.0, 0.0, 0), EncodedPair([5, 7], [5, 8], 1, 0.0, 0.0, 0.0, 1)]
    batch = LayoutPairCollator(0, "prefix_shared")(pairs)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [5, 7, 0, 0], [5, 6, 8, 9], [5, 8, 0, 0]]
    assert batch["layout"].tolist() == [2, 2]  # FORWARD_LAYOUTS.index("prefix_shared")
    assert FORWARD_LAYOUTS[2] == "prefix_shared"
    with pytest.raises(ValueError, match="known"):
        LayoutPairCollator(0, "packd")


@pytest.mark.parametrize("layout", ["packed", "prefix_shared"])
def test_score_pairs_follows_the_collated_layout(rms, layout):
    model = rms["llama"]
    pairs = encoded([(3, 2, 1), (1, 2, 3)])
    with torch.no_grad():
        padded, _ = score_pairs(model, collate_pairs(pairs, PAD))
        fast, _ = score_pairs(model, LayoutPairCollator(PAD, layout)(pairs))
    torch.testing.assert_close(fast, padded)


@pytest.mark.parametrize("layout", ["packed", "prefix_shared"])
def test_pair_sequence_logps_equal_logprobs_forward(lms, layout):
    from marginkit.models.logprobs import forward_logps

    model = lms["gpt_neox"]
    pairs = encoded([(3, 2, 4), (2, 5, 1)], seed=4)
    with torch.no_grad():
        ref = forward_logps(model, **{k: v for k, v in collate_pairs(pairs, PAD).items()
                                      if k in ("input_ids", "attention_mask", "response_mask")})
        fast = pair_sequence_logps(model, LayoutPairCollator(PAD, layout)(pairs))
    torch.testing.assert_close(fast.sum, ref.sum)
    torch.testing.assert_close(fast.n_tokens, ref.n_tokens)


# ---- setup: attention choice, refusals, compilation ----

def test_resolve_attention():
    assert resolve_attention("padded", "auto", cuda=True) is None  # padded keeps the model's own kernel
    assert resolve_attention("packed", "auto", cuda=False) == "sdpa"
    assert resolve_attention("prefix_shared", "auto", cuda=True) == "flex_attention"
    assert resolve_attention("prefix_shared", "eager", cuda=True) == "eager"  # an explicit choice wins


def test_refusals(rms):
    with pytest.raises(ValueError, match="flash_attention_2"):
        TrainConfig(forward="prefix_shared", attention="flash_attention_2")
    with pytest.raises(ValueError, match="varlen kernels"):
        check_layout_support(rms["llama"], "prefix_shared", "flash_attention_2")
    check_layout_support(rms["llama"], "packed", "flash_attention_2")  # packed runs varlen


def test_encoder_refused(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    bert = BertForSequenceClassification(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=32, num_labels=1))
    with pytest.raises(ValueError, match="bidirectional encoder"):
        check_layout_support(bert, "packed")


def test_compile_blocks_in_place(model_dirs):
    # backend "eager": dynamo captures each block without generating code (fast); keys and outputs unchanged.
    model = load_rm(model_dirs["gpt_neox"])
    keys = set(model.state_dict())
    batch = collate_pairs(encoded([(2, 3, 1)]), PAD)
    with torch.no_grad():
        before, _ = packed_rewards(model, batch["input_ids"], batch["attention_mask"], PAD)
        assert compile_blocks(model, backend="eager") == 2  # two layers
        after, _ = packed_rewards(model, batch["input_ids"], batch["attention_mask"], PAD)
    assert set(model.state_dict()) == keys
    torch.testing.assert_close(after, before)


# ---- training: packed and prefix-shared runs equal a padded one ----

@pytest.mark.parametrize("forward, module, function, side", [
    ("packed", "marginkit.models.packing", "packed_rewards", "right"),
    ("prefix_shared", "marginkit.models.prefix_share", "prefix_shared_rewards", "left"),
])
def test_layout_training_equals_padded(tiny_model_dir, word_tokenizer, tmp_path, monkeypatch, forward, module,
                                       function, side):
    import importlib

    fast = importlib.import_module(module)
    calls = []
    real = getattr(fast, function)
    monkeypatch.setattr(fast, function, lambda *a, **k: calls.append(1) or real(*a, **k))
    pairs = make_pairs(vocab_words(word_tokenizer), 12)
    losses = {}
    with one_torch_thread():
        for layout in ("padded", forward):
            cfg = run_config(tiny_model_dir, tmp_path / layout, batch_size=4, padding_side=side, forward=layout)
            losses[layout] = [row["loss"] for row in train(cfg, pairs).history if "loss" in row]
    assert len(losses["padded"]) == 3
    assert len(calls) == 3  # the run really used the layout: one such forward per micro-batch
    torch.testing.assert_close(torch.tensor(losses[forward]), torch.tensor(losses["padded"]))


# ---- docs/speed.md names only what exists ----

def test_speed_doc_names_real_keys_paths_and_files():
    import importlib
    import re
    from pathlib import Path

    from marginkit.config import DPORunConfig, RMRunConfig
    from marginkit.configlib import describe

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "speed.md").read_text()
    keys = set(re.findall(r"`((?:train|model|reference|data)\.[a-z_.]+)(?:=[^`]*)?`", text))
    known = {row[0] for cls in (RMRunConfig, DPORunConfig) for row in describe(cls)}
    assert len(keys) >= 8 and keys <= known, keys - known
    for dotted in set(re.findall(r"`(marginkit(?:\.\w+)+)`", text)):
        module, _, attr = dotted.rpartition(".")
        try:
            importlib.import_module(dotted)
        except ModuleNotFoundError:
            assert hasattr(importlib.import_module(module), attr), dotted
    for path in set(re.findall(r"`((?:tests|configs|benchmarks|docs)/[\w/.-]+)`", text)):
        assert (root / path).exists(), path
    for name in set(re.findall(r"`(test_\w+)`", text)):
        assert any(name in f.read_text() for f in (root / "tests").glob("test_*.py")), name
