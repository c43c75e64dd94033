"""OT adaptive margin: the cost and margin by hand, reduction to BT, hard pairs first, permutation
equivariance, autocast, warm-up, the external-encoder path with its cache, and training end to end."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

import marginkit.margins.ot as ot_module
from _engine_helpers import one_torch_thread, run_config, train
from marginkit.data.collate import collate_pairs
from marginkit.data.ledger import Ledger
from marginkit.data.schema import Pair
from marginkit.data.tokenize import TokenizeConfig, encode_pairs
from marginkit.data.world import WorldConfig, make_world
from marginkit.losses import bt_loss
from marginkit.margins import MarginInputs, MarginSetup, MarginSpec, build_margin
from marginkit.margins.ot import OTMargin, OTMarginConfig, margin_from_plan, ot_cost
from marginkit.models.reward import ModelConfig, load_reward_model, score_batch
from marginkit.models.tiny import build_word_tokenizer, make_tiny_model_dir

NAN = math.nan


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


def inputs(gap, emb_c=None, emb_r=None, step=0, index=None) -> MarginInputs:
    gap = torch.as_tensor(gap, dtype=torch.float32)
    nan = torch.full_like(gap, NAN)
    return MarginInputs(gap, nan, nan, nan, step, emb_c, emb_r, index)


# Hand-worked batch of two pairs (no centring, w_s = w_r = 1, t = 1):
#   e_c = [(1, 0), (0, 1)], e_r = [(1, 0), (-1, 0)]  ->  cos = [[1, -1], [0, 0]],  S = (1 - cos) / 2 = [[0, 1], [1/2, 1/2]]
#   Δ = (0, 2 ln 3): cross gaps (Δ_i + Δ_j) / 2 = [[0, ln 3], [ln 3, 2 ln 3]]
#   R = sigmoid(.) = [[1/2, 3/4], [3/4, 9/10]]       (sigmoid(ln 3) = 3/4, sigmoid(2 ln 3) = 9/10)
#   C = (S + R) / 2 = [[0.25, 0.875], [0.625, 0.7]]
EMB_C = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
EMB_R = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
GAP = torch.tensor([0.0, 2 * math.log(3)])
COST = torch.tensor([[0.25, 0.875], [0.625, 0.7]])
# Plan: s = C_11 + C_22 - C_12 - C_21 = 0.25 + 0.7 - 0.875 - 0.625 = -0.55; with eps = 0.275 / ln 3,
# p / (1/2 - p) = exp(-s / (2 eps)) = exp(ln 3) = 3 -> T = [[3/8, 1/8], [1/8, 3/8]] (see test_sinkhorn.py).
HAND_EPS = 0.275 / math.log(3)
PLAN = torch.tensor([[3 / 8, 1 / 8], [1 / 8, 3 / 8]])


def hand_config(**kw) -> OTMarginConfig:
    settings_ = dict(center_embeddings=False, epsilon=HAND_EPS, sinkhorn_iters=500, sinkhorn_tol=1e-7)
    settings_.update(kw)
    return OTMarginConfig(**settings_)


def test_cost_by_hand():
    assert_close(ot_cost(EMB_C, EMB_R, GAP, hand_config()), COST)


def test_cost_weights_and_temperature_by_hand():
    # w_s = 3, w_r = 1: C = (3 S + R) / 4; row 0 = ((0 + 1/2) / 4, (3 + 3/4) / 4) = (0.125, 0.9375).
    # t = 2 halves the cross gaps: R_01 = sigmoid(ln 3 / 2) = sqrt(3) / (1 + sqrt(3)).
    c = ot_cost(EMB_C, EMB_R, GAP, hand_config(semantic_weight=3.0))
    assert_close(c[0], torch.tensor([0.125, 0.9375]))
    c = ot_cost(EMB_C, EMB_R, GAP, hand_config(semantic_weight=0.0, temperature=2.0))
    assert_close(c[0, 1], torch.tensor(math.sqrt(3) / (1 + math.sqrt(3))))


def test_margin_transport_cost_by_hand():
    # h_i = 1 - B sum_j T_ij C_ij:
    #   h_1 = 1 - 2 (3/8 * 0.25 + 1/8 * 0.875) = 1 - 2 (0.09375 + 0.109375) = 0.59375
    #   h_2 = 1 - 2 (1/8 * 0.625 + 3/8 * 0.7)  = 1 - 2 (0.078125 + 0.2625)  = 0.31875
    # scale 2 -> m = (1.1875, 0.6375): pair 1 (identical responses, zero gap) gets the larger margin.
    out = OTMargin(hand_config(scale=2.0))(inputs(GAP, EMB_C, EMB_R))
    assert_close(out.target_margin, torch.tensor([1.1875, 0.6375]))
    assert out.active.all()
    # diagnostics: trace(T) = 3/4; mean C_ii = (0.25 + 0.7) / 2 = 0.475;
    # entropy H = -(2 * 3/8 ln 3/8 + 2 * 1/8 ln 1/8), reported as (H - ln 2) / ln 2
    h = -(0.75 * math.log(3 / 8) + 0.25 * math.log(1 / 8))
    assert_close(out.diagnostics["ot_diagonal_mass"], torch.tensor(0.75))
    assert_close(out.diagnostics["ot_cost_diagonal"], torch.tensor(0.475))
    assert_close(out.diagnostics["ot_plan_entropy"], torch.tensor((h - math.log(2)) / math.log(2)))
    assert out.diagnostics["ot_marginal_error"] < 1e-5


def test_margin_diagonal_mass_by_hand():
    # h_i = B T_ii = 2 * 3/8 = 3/4 for both pairs (a 2x2 plan with uniform marginals has equal diagonal
    # entries: this reading cannot rank two pairs, see the module docstring); scale 2 -> 1.5 each.
    out = OTMargin(hand_config(scale=2.0, margin_from="diagonal_mass"))(inputs(GAP, EMB_C, EMB_R))
    assert_close(out.target_margin, torch.tensor([1.5, 1.5]))


def test_margin_from_identity_plan():
    # An identity plan / 3 gives transport_cost h_i = 1 - C_ii and diagonal_mass h_i = 1.
    plan, cost = torch.eye(3) / 3, torch.tensor([[0.2, 0.9, 0.9], [0.9, 0.5, 0.9], [0.9, 0.9, 1.0]])
    assert_close(margin_from_plan(plan, cost, "transport_cost"), torch.tensor([0.8, 0.5, 0.0]))
    assert_close(margin_from_plan(plan, cost, "diagonal_mass"), torch.ones(3))


def test_single_pair_batch():
    # B = 1: the plan is [[1]], so h = 1 - C_11. Centring is skipped (the mean of one pair is its midpoint,
    # which would make cos = -1): identical responses give S = 0, and Δ = 0 gives R = 1/2, so
    # C = (0 + 1/2) / 2 = 1/4 and m = λ h = 1 * 3/4 with λ = 1.
    e = torch.tensor([[1.0, 2.0]])
    out = OTMargin(OTMarginConfig(scale=1.0))(inputs([0.0], e, e.clone()))
    assert_close(out.target_margin, torch.tensor([0.75]))
    assert_close(out.diagnostics["ot_plan_entropy"], torch.tensor(0.0))


def test_detached_shape_b_even_from_grad_inputs():
    gap = torch.tensor([0.5, -0.2, 1.0, 0.1], requires_grad=True)
    emb = torch.randn(4, 8, requires_grad=True)
    out = OTMargin()(MarginInputs(gap, gap.detach() * NAN, gap.detach() * NAN, gap.detach() * NAN, 0, emb, emb * 2))
    assert out.target_margin.shape == (4,) and out.active.shape == (4,) and out.active.dtype == torch.bool
    assert not out.target_margin.requires_grad
    assert all(not v.requires_grad and v.dim() == 0 for v in out.diagnostics.values())


def test_scale_zero_is_exactly_bt():
    gen = torch.Generator().manual_seed(0)
    emb_c, emb_r = torch.randn(5, 6, generator=gen), torch.randn(5, 6, generator=gen)
    chosen, rejected = torch.randn(5, generator=gen), torch.randn(5, generator=gen)
    out = OTMargin(OTMarginConfig(scale=0.0))(inputs(chosen - rejected, emb_c, emb_r))
    assert torch.equal(out.target_margin, torch.zeros(5))
    assert torch.equal(bt_loss(chosen, rejected, out.target_margin).losses, bt_loss(chosen, rejected).losses)


@pytest.mark.parametrize("margin_from", ["transport_cost", "diagonal_mass"])
def test_near_duplicate_hard_pair_gets_the_largest_margin(margin_from):
    # Pair 0: rejected = chosen + 1e-3 noise (cos ~ 1) and gap 0.01; pairs 1-5: independent random
    # responses (cos ~ 0) and gap 4. Pair 0 must get the largest margin, by a clear step.
    gen = torch.Generator().manual_seed(1)
    emb_c, emb_r = torch.randn(6, 32, generator=gen), torch.randn(6, 32, generator=gen)
    emb_r[0] = emb_c[0] + 1e-3 * torch.randn(32, generator=gen)
    gap = torch.tensor([0.01, 4.0, 4.0, 4.0, 4.0, 4.0])
    m = OTMargin(OTMarginConfig(margin_from=margin_from))(inputs(gap, emb_c, emb_r)).target_margin
    assert m.argmax().item() == 0
    assert m[0] > m[1:].max() + 0.2, m


def test_hard_pair_is_found_wherever_it_sits():
    # Same batch, hard pair moved to position 3: the largest margin moves with it.
    gen = torch.Generator().manual_seed(2)
    emb_c, emb_r = torch.randn(5, 16, generator=gen), torch.randn(5, 16, generator=gen)
    emb_r[3] = emb_c[3]
    gap = torch.tensor([3.0, 3.0, 3.0, -0.1, 3.0])
    assert OTMargin()(inputs(gap, emb_c, emb_r)).target_margin.argmax().item() == 3


@settings(max_examples=40, deadline=None)
@given(b=st.integers(2, 8), d=st.integers(2, 8), seed=st.integers(0, 2**31 - 1), data=st.data(),
       margin_from=st.sampled_from(["transport_cost", "diagonal_mass"]), center=st.booleans())
def test_property_permuting_the_batch_permutes_the_margins(b, d, seed, data, margin_from, center):
    gen = torch.Generator().manual_seed(seed)
    emb_c, emb_r = torch.randn(b, d, generator=gen), torch.randn(b, d, generator=gen)
    gap = 3 * torch.randn(b, generator=gen)
    perm = torch.tensor(data.draw(st.permutations(range(b))))
    # tol = 0: a fixed number of iterations, so rounding cannot make the two runs stop at different counts
    strategy = OTMargin(OTMarginConfig(margin_from=margin_from, center_embeddings=center, sinkhorn_tol=0.0,
                                       sinkhorn_iters=200))
    plain = strategy(inputs(gap, emb_c, emb_r)).target_margin
    permuted = strategy(inputs(gap[perm], emb_c[perm], emb_r[perm])).target_margin
    assert_close(permuted, plain[perm], atol=1e-5, rtol=0)


def test_bf16_autocast_and_bf16_embeddings():
    gen = torch.Generator().manual_seed(3)
    emb_c = torch.randn(4, 8, generator=gen).to(torch.bfloat16)  # what a bf16 model's hidden states look like
    emb_r = torch.randn(4, 8, generator=gen).to(torch.bfloat16)
    gap = torch.tensor([0.5, -1.0, 2.0, 0.0])
    reference = OTMargin()(inputs(gap, emb_c.float(), emb_r.float()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = OTMargin()(inputs(gap, emb_c, emb_r))
    assert inside.target_margin.dtype == torch.float32
    assert torch.equal(inside.target_margin, reference.target_margin)  # float32 maths either way: bit-identical


def test_warmup_inactive_then_on_and_clip():
    gen = torch.Generator().manual_seed(4)
    emb_c, emb_r = torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen)
    gap = torch.tensor([0.0, 1.0, -1.0])
    strategy = OTMargin(OTMarginConfig(warmup_steps=5, max_margin=0.3))
    before = strategy(inputs(gap, emb_c, emb_r, step=4))
    after = strategy(inputs(gap, emb_c, emb_r, step=5))
    assert torch.equal(before.target_margin, torch.zeros(3)) and not before.active.any()
    assert set(before.diagnostics) == set(after.diagnostics)  # the plan is still logged during warm-up
    assert after.active.all() and (after.target_margin > 0).all() and (after.target_margin <= 0.3).all()
    unclipped = OTMargin(OTMarginConfig())(inputs(gap, emb_c, emb_r, step=5)).target_margin
    assert_close(after.target_margin, unclipped.clamp(max=0.3))


def test_config_errors_name_the_field():
    for kwargs, field in [({"epsilon": 0.0}, "epsilon"), ({"temperature": -1.0}, "temperature"),
                          ({"scale": -1.0}, "scale"), ({"sinkhorn_iters": 0}, "sinkhorn_iters"),
                          ({"warmup_steps": -1}, "warmup_steps")]:
        with pytest.raises(ValueError, match=f"margin.ot.{field}="):
            OTMarginConfig(**kwargs)
    with pytest.raises(ValueError, match="both 0"):
        OTMarginConfig(semantic_weight=0.0, reward_weight=0.0)
    with pytest.raises(ValueError, match="encoder"):
        OTMarginConfig(embeddings="external")
    with pytest.raises(ValueError, match="min_margin"):
        OTMarginConfig(min_margin=1.0, max_margin=0.5)


def test_missing_inputs_are_named():
    with pytest.raises(ValueError, match="embeddings=hidden needs"):
        OTMargin()(inputs([0.0, 1.0]))
    external = OTMargin(OTMarginConfig(embeddings="external", encoder="/nowhere"))
    assert external.needs == frozenset() and OTMargin().needs == {"embeddings"}
    with pytest.raises(ValueError, match="prepare"):
        external(inputs([0.0, 1.0], index=torch.tensor([0, 1])))
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        OTMargin()(inputs([0.0, 1.0], torch.zeros(3, 4), torch.zeros(3, 4)))


def test_registered():
    assert isinstance(build_margin(MarginSpec(name="ot")), OTMargin)


# ---- external sentence encoder ----

ENCODER_WORDS = "yes no great bad fine awful cats dogs fish food water quick slow".split()


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    from transformers import BertConfig, BertModel

    tokenizer = build_word_tokenizer(ENCODER_WORDS)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("bert") / "encoder"
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def encoder_pairs() -> list[Pair]:
    return [Pair("p", "yes great", "no bad"), Pair("p", "cats dogs fish", "cats dogs"), Pair("p", "quick", "slow food water")]


def setup_for(pairs, cache_dir, messages=None) -> MarginSetup:
    say = messages.append if messages is not None else (lambda _: None)
    return MarginSetup([], pairs, 0, "right", torch.device("cpu"), cache_dir, say)


def test_encode_texts_is_masked_mean_pooling(bert_dir):
    from transformers import AutoTokenizer, BertModel

    # "cats dogs fish" alone (no padding) vs in a batch with a shorter text (padded): same vector, equal to
    # the plain mean of its token states, L2-normalised.
    together = ot_module.encode_texts(["cats dogs fish", "yes"], bert_dir, batch_size=2)
    tokenizer, model = AutoTokenizer.from_pretrained(bert_dir), BertModel.from_pretrained(bert_dir).eval()
    with torch.no_grad():
        states = model(**tokenizer(["cats dogs fish"], return_tensors="pt")).last_hidden_state[0]  # [T, 16]
    expected = states.mean(0) / states.mean(0).norm()
    assert_close(together[0], expected)
    assert_close(together.norm(dim=1), torch.ones(2))


def test_external_prepare_lookup_and_cache(bert_dir, tmp_path, monkeypatch):
    pairs = encoder_pairs()
    cfg = OTMarginConfig(embeddings="external", encoder=str(bert_dir), center_embeddings=False)
    messages: list[str] = []
    first = OTMargin(cfg)
    first.prepare(setup_for(pairs, tmp_path, messages))
    assert "encoding 6 distinct responses" in messages[-1]
    expected = ot_module.encode_texts([p.chosen for p in pairs] + [p.rejected for p in pairs], bert_dir)
    table_c, table_r = first._table
    assert_close(table_c, expected[:3])
    assert_close(table_r, expected[3:])

    # Looked up by index: pairs (2, 0) give the same margins as the hidden path fed those rows.
    gap = torch.tensor([0.3, -0.2])
    index = torch.tensor([2, 0])
    via_index = first(inputs(gap, index=index)).target_margin
    direct = OTMargin(OTMarginConfig(center_embeddings=False))(inputs(gap, expected[[2, 0]], expected[[5, 3]]))
    assert_close(via_index, direct.target_margin)

    # Second prepare: a cache hit, the encoder is never called.
    def no_encoding(*args, **kwargs):
        raise AssertionError("encoder called despite a cached result")

    monkeypatch.setattr(ot_module, "encode_texts", no_encoding)
    second = OTMargin(cfg)
    second.prepare(setup_for(pairs, tmp_path, messages))
    assert "loaded from cache" in messages[-1]
    assert torch.equal(second._table[0], table_c) and torch.equal(second._table[1], table_r)
    # Different texts: a different key, so the (now forbidden) encoder is called.
    with pytest.raises(AssertionError, match="encoder called"):
        OTMargin(cfg).prepare(setup_for(pairs[:2], tmp_path))


def test_cache_key_follows_texts_and_encoder_files(bert_dir, tmp_path):
    import shutil

    key = ot_module._cache_key(["a"], ["b"], bert_dir, 256)
    assert key == ot_module._cache_key(["a"], ["b"], bert_dir, 256)
    assert key != ot_module._cache_key(["b"], ["a"], bert_dir, 256)
    assert key != ot_module._cache_key(["a"], ["b"], bert_dir, 128)
    copy = tmp_path / "encoder"
    shutil.copytree(bert_dir, copy)
    assert ot_module._cache_key(["a"], ["b"], copy, 256) == key  # the bytes matter, not the path
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("16", "16 "))
    assert ot_module._cache_key(["a"], ["b"], copy, 256) != key


def test_external_needs_a_local_folder(tmp_path):
    with pytest.raises(ValueError, match="not a local folder"):
        OTMargin(OTMarginConfig(embeddings="external", encoder=str(tmp_path / "missing"))).prepare(
            setup_for(encoder_pairs(), tmp_path))


# ---- end to end: train_reward_model with the ot margin ----


@pytest.fixture(scope="module")
def world_setup(tmp_path_factory):
    world = make_world(WorldConfig(seed=0, n_train=8, n_val=0, n_test=0))
    root = tmp_path_factory.mktemp("ot_world")
    tokenizer = build_word_tokenizer(world.vocabulary())
    return world.train, make_tiny_model_dir(root / "neox", tokenizer, hidden_size=32), tokenizer


def test_train_with_ot_margin_first_loss_is_mean_softplus_of_the_margins(world_setup, tmp_path):
    pairs, model_dir, _ = world_setup
    cfg = run_config(model_dir, tmp_path / "run", head_init="zero", margin=MarginSpec(name="ot"), batch_size=8,
                     num_epochs=2, max_steps=2)
    result = train(cfg, pairs)
    rows = [r for r in result.history if "loss" in r]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    assert {"target_margins/ot_plan_entropy", "target_margins/ot_marginal_error"} <= set(rows[0])

    # Step 1 by hand: a zero head gives Δ = 0, so each pair's loss is softplus(m_i) with m from the RM's own
    # hidden states; the batch holds all 8 pairs (in some order, which the margins follow: equivariance).
    model, tokenizer = load_reward_model(ModelConfig(name_or_path=str(model_dir), head_init="zero"))
    batch = collate_pairs(encode_pairs(pairs, tokenizer, TokenizeConfig(), Ledger()), tokenizer.pad_token_id)
    with torch.no_grad():
        rewards, hidden = score_batch(model.eval(), batch["input_ids"], batch["attention_mask"], with_hidden=True)
    chosen_h, rejected_h = hidden.chunk(2)
    margins = OTMargin()(inputs(torch.zeros(8), chosen_h, rejected_h)).target_margin
    assert (margins > 0).all()
    assert_close(torch.tensor(rows[0]["loss"]), torch.nn.functional.softplus(margins).mean(), atol=1e-5, rtol=1e-5)
    assert rows[0]["loss"] > math.log(2) + 0.05  # the margin is in the loss, not plain BT's ln 2


def test_train_with_external_encoder_margin_first_loss_is_mean_softplus_of_the_margins(world_setup, tmp_path):
    from transformers import BertConfig, BertModel

    pairs, model_dir, tokenizer = world_setup
    folder = tmp_path / "encoder"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=128)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    spec = MarginSpec(name="ot", ot=OTMarginConfig(embeddings="external", encoder=str(folder)))
    cfg = run_config(model_dir, tmp_path / "run", head_init="zero", margin=spec, batch_size=8, num_epochs=2,
                     max_steps=2)
    cfg.data.cache_dir = str(tmp_path / "cache")
    rows = [r for r in train(cfg, pairs).history if "loss" in r]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    assert len(list((tmp_path / "cache" / "ot_embeddings").glob("*.pt"))) == 1

    # Step 1 by hand: the zero head gives Δ = 0, so each pair's loss is softplus(m_i), with m from the encoder's
    # embeddings of the responses (not the RM's hidden states); all 8 pairs are in the batch, in some order.
    emb = ot_module.encode_texts([p.chosen for p in pairs] + [p.rejected for p in pairs], folder)  # [16, 16]
    margins = OTMargin(OTMarginConfig())(inputs(torch.zeros(8), emb[:8], emb[8:])).target_margin
    assert (margins > 0).all()
    assert_close(torch.tensor(rows[0]["target_margins/mean"]), margins.mean(), atol=1e-5, rtol=1e-5)
    assert_close(torch.tensor(rows[0]["loss"]), torch.nn.functional.softplus(margins).mean(), atol=1e-5, rtol=1e-5)
    assert rows[0]["loss"] > math.log(2) + 0.05  # the margin is in the loss, not plain BT's ln 2
