"""Confidence margin (seed 000): hand-worked batch-mean filtering and values, reduction to BT, reference
and ensemble gaps scored as eval-rm scores them, the on-disk cache, resume state, and a short training run."""

from __future__ import annotations

import math
import os
import random
import socket
from pathlib import Path

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

import marginkit.models.reward as reward_module
from _engine_helpers import make_pairs, one_torch_thread, run_config, vocab_words
from conftest import WORDS
from marginkit.data.collate import collate_pairs
from marginkit.data.ledger import Ledger
from marginkit.data.schema import Pair
from marginkit.data.tokenize import TokenizeConfig, encode_pairs
from marginkit.evaluate.rm_eval import EvalConfig, evaluate_rm_dir
from marginkit.evaluate.scorer import score_encoded, score_rm_dir
from marginkit.margins import MarginInputs, MarginSetup, MarginSpec
from marginkit.margins.confidence import ConfidenceMargin, ConfidenceMarginConfig, batch_mean
from marginkit.margins.none import NoMargin
from marginkit.margins.reference import ensemble_gaps, model_fingerprint, pairs_fingerprint
from marginkit.models.reward import ModelConfig, load_reward_model, save_reward_model
from marginkit.models.tiny import build_word_tokenizer, make_tiny_model_dir
from marginkit.train.rm import train_reward_model
from marginkit.train.rm_step import rm_step

NAN = math.nan


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


def gaps_in(gap, index=None) -> MarginInputs:
    g = torch.tensor(gap, dtype=torch.float32)
    nan = torch.full_like(g, NAN)
    idx = None if index is None else torch.tensor(index, dtype=torch.long)
    return MarginInputs(g, nan, nan, nan, 0, None, None, idx)


def confidence(**options) -> ConfidenceMargin:
    return ConfidenceMargin(ConfidenceMarginConfig(**options))


# ---------------------------------------------------------------- batch-mean filtering and values (hand-worked)

def test_below_batch_mean_hand_worked():
    # Δ = [-1, 0, 1, 4]: μ_B = (-1 + 0 + 1 + 4) / 4 = 1.
    # below_batch_mean: Δ < 1 -> [T, T, F, F] (Δ = 1 equals μ_B, not below it).
    # source batch_mean: m = max(1 · μ_B, 0) = 1 on the active pairs, 0 on the others.
    out = confidence()(gaps_in([-1.0, 0.0, 1.0, 4.0]))
    assert out.active.tolist() == [True, True, False, False]
    assert_close(out.target_margin, torch.tensor([1.0, 1.0, 0.0, 0.0]))
    # diagnostics: μ_B = 1, mean m over the 2 active pairs = 1 (the filtered share 2/4 is the step's own
    # target_margins/filtered_fraction = mean(1 - active), so the strategy does not log it a second time)
    assert set(out.diagnostics) == {"batch_mean_gap", "active_mean"}
    assert_close(out.diagnostics["batch_mean_gap"], torch.tensor(1.0))
    assert_close(out.diagnostics["active_mean"], torch.tensor(1.0))


def test_scale_and_clip():
    # same batch, μ_B = 1; α = 2 -> 2; clipped to max 1.5 -> 1.5 on the active pairs
    out = confidence(scale=2.0, max_margin=1.5)(gaps_in([-1.0, 0.0, 1.0, 4.0]))
    assert_close(out.target_margin, torch.tensor([1.5, 1.5, 0.0, 0.0]))
    assert_close(out.diagnostics["active_mean"], torch.tensor(1.5))


def test_negative_batch_mean_clipped_at_zero_by_default():
    # Δ = [-4, -2, 0]: μ_B = -2; only Δ = -4 is below it. Default min_margin 0: m = max(-2, 0) = 0;
    # with min_margin=None the signed value -2 is kept.
    default = confidence()(gaps_in([-4.0, -2.0, 0.0]))
    assert default.active.tolist() == [True, False, False]
    assert_close(default.target_margin, torch.zeros(3))
    signed = confidence(min_margin=None)(gaps_in([-4.0, -2.0, 0.0]))
    assert_close(signed.target_margin, torch.tensor([-2.0, 0.0, 0.0]))


def test_equal_gaps_and_single_pair_have_no_active_pair():
    # at initialisation (zero head) every Δ = 0 = μ_B: nothing is strictly below, so the loss is plain BT
    assert not confidence()(gaps_in([0.0, 0.0, 0.0])).active.any()
    assert not confidence()(gaps_in([0.7])).active.any()
    out = confidence()(gaps_in([0.0, 0.0]))
    assert_close(out.diagnostics["active_mean"], torch.tensor(0.0))  # 0 / max(0, 1)
    assert out.active.tolist() == [False, False]  # filtered share 1


def test_below_confidence_with_tau():
    # τ = 0.75: σ(Δ) < 0.75 <=> Δ < ln 3 = 1.0986.
    # Δ = [0, 1, 2, -1]: σ = [0.5, 0.731, 0.881, 0.269] -> active [T, T, F, T].
    # μ_B = (0 + 1 + 2 - 1) / 4 = 0.5 -> m = 0.5 on the active pairs.
    out = confidence(filter="below_confidence", tau=0.75)(gaps_in([0.0, 1.0, 2.0, -1.0]))
    assert out.active.tolist() == [True, True, False, True]
    assert_close(out.target_margin, torch.tensor([0.5, 0.5, 0.0, 0.5]))


def test_filter_none_gives_every_pair_the_batch_mean():
    out = confidence(filter="none")(gaps_in([-1.0, 0.0, 1.0, 4.0]))
    assert out.active.all()
    assert_close(out.target_margin, torch.ones(4))


def test_margins_detached_shape_b_even_from_a_grad_carrying_gap():
    gap = torch.tensor([0.5, -0.2, 1.0, 3.0], requires_grad=True)
    for options in ({}, {"filter": "none"}, {"filter": "below_confidence", "tau": 0.6}):
        x = MarginInputs(gap, torch.zeros(4), torch.zeros(4), torch.zeros(4), 0)
        out = confidence(**options)(x)
        assert out.target_margin.shape == (4,) and out.active.shape == (4,) and out.active.dtype == torch.bool
        assert not out.target_margin.requires_grad
        assert all(not v.requires_grad for v in out.diagnostics.values())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-20, 20, width=32), min_size=1, max_size=12), st.randoms(use_true_random=False))
@example([2.6746582984924316] * 3, random.Random(0))  # equal gaps: a float32 mean was one ulp above them
def test_properties_below_batch_mean(gaps, rnd):
    out = confidence(min_margin=None)(gaps_in(gaps))
    g = torch.tensor(gaps, dtype=torch.float32)
    mu = g.double().mean()  # μ_B is computed in float64 (a float32 mean of [a, a, a] can exceed a)
    assert out.target_margin.shape == g.shape
    assert (g[out.active] < mu).all()  # active pairs lie below the batch mean
    assert not out.active[g.argmax()]  # the largest gap is never below the mean
    assert (out.target_margin[~out.active] == 0).all()  # inactive pairs: plain BT
    # permuting the batch permutes the margins (μ_B does not depend on the order)
    perm = list(range(len(gaps)))
    rnd.shuffle(perm)
    permuted = confidence(min_margin=None)(gaps_in([gaps[i] for i in perm]))
    assert_close(permuted.target_margin, out.target_margin[perm])


def test_config_rejects_what_it_would_ignore():
    with pytest.raises(ValueError, match="tau"):
        ConfidenceMarginConfig(filter="below_confidence")
    with pytest.raises(ValueError, match="tau"):
        ConfidenceMarginConfig(tau=0.7)  # filter is below_batch_mean: tau would be ignored
    with pytest.raises(ValueError, match="reference_model"):
        ConfidenceMarginConfig(source="reference")
    with pytest.raises(ValueError, match="reference_model"):
        ConfidenceMarginConfig(reference_model="some/rm")
    with pytest.raises(ValueError, match=">= 2"):
        ConfidenceMarginConfig(source="ensemble", ensemble_models=["a"])
    with pytest.raises(ValueError, match="only used with source=ensemble"):
        ConfidenceMarginConfig(ensemble_std_coef=1.0)
    with pytest.raises(ValueError, match="min_margin"):
        ConfidenceMarginConfig(min_margin=2.0, max_margin=1.0)
    with pytest.raises(ValueError, match="scale"):
        ConfidenceMarginConfig(scale=-1.0)


def test_reference_source_without_prepare_says_so():
    m = confidence(source="reference", reference_model="runs/x/model")
    with pytest.raises(RuntimeError, match="prepare"):
        m(gaps_in([0.0, 1.0], index=[0, 1]))


def test_ensemble_mean_and_std_hand_worked():
    # three models' gaps on two pairs: pair 0 -> [0, 2, 4], pair 1 -> [1, 1, 1].
    # pair 0: mean 2, sample variance ((0-2)^2 + 0 + (4-2)^2) / (3-1) = 4 -> std 2; pair 1: mean 1, std 0
    mean, std = ensemble_gaps(torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]]))
    assert_close(mean, torch.tensor([2.0, 1.0]))
    assert_close(std, torch.tensor([2.0, 0.0]))
    with pytest.raises(ValueError, match="K >= 2"):
        ensemble_gaps(torch.zeros(1, 3))


# ---------------------------------------------------------------- reduction to BT through the real step

def test_filter_none_zero_scale_is_exactly_bt(tiny_model_dir, word_tokenizer):
    # filter none, α = 0: every pair active with m = 0, so the step's loss equals the plain BT step's.
    # The head's draw is seeded: unseeded, it followed whatever the previous test left in the global RNG,
    # and after tests/test_engine.py it gave μ_B < 0, so m = max(μ_B, 0) = 0 and the last claim failed.
    torch.manual_seed(2)
    model, tok = load_reward_model(ModelConfig(name_or_path=str(tiny_model_dir), head_init="normal"))
    pairs = make_pairs(vocab_words(tok), 4, seed=1)
    batch = collate_pairs(encode_pairs(pairs, tok, TokenizeConfig(), Ledger()), tok.pad_token_id)
    margin = confidence(filter="none", scale=0.0)
    out = rm_step(model, batch, margin, 0)
    bt = rm_step(model, batch, NoMargin(), 0)
    assert_close(out.loss_sum, bt.loss_sum, rtol=0, atol=0)
    assert_close(out.stats["target_margins/active_fraction"], torch.tensor(4.0))
    # the same step with the default margin demands m = μ_B > 0 of the below-mean pairs: loss grows
    default = rm_step(model, batch, confidence(), 0)
    assert default.stats["target_margins/batch_mean_gap"] > 0  # the premise (seed 2: μ_B ≈ 0.096)
    assert default.loss_sum > bt.loss_sum


def test_batch_mean_across_two_processes_equals_one(tmp_path):
    # gloo, 2 CPU processes, each holding half of Δ = [-1, 0, 1, 4]: μ_B must be 1 on both
    import torch.multiprocessing as mp

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_two_process_worker, args=(str(tmp_path), port), nprocs=2, start_method="fork")
    results = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    # rank 0 holds [-1, 0], both below μ_B = 1; rank 1 holds [1, 4], neither below
    assert results == ["[1.0, 1.0]|[True, True]", "[1.0, 1.0]|[False, False]"]


def _two_process_worker(rank: int, out: str, port: int) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        shard = [[-1.0, 0.0], [1.0, 4.0]][rank]
        res = confidence()(gaps_in(shard))
        local = batch_mean(torch.tensor(shard), across_processes=False)  # the shard's own mean differs
        assert float(local) == [-0.5, 2.5][rank]
        text = f"{[float(res.diagnostics['batch_mean_gap'])] * 2}|{res.active.tolist()}"
        Path(out, f"rank{rank}.txt").write_text(text)
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- reference and ensemble RMs

def make_rm(path: Path, tokenizer, seed: int, scorer: dict | None = None) -> Path:
    """A tiny RM folder: a random GPT-NeoX with a random (normal) head, saved with scorer settings."""
    base = make_tiny_model_dir(path.with_name(path.name + "-base"), tokenizer, hidden_size=32, seed=seed)
    torch.manual_seed(seed)
    model, tok = load_reward_model(ModelConfig(name_or_path=str(base), head_init="normal"))
    save_reward_model(model, tok, path, scorer if scorer is not None else {"tokenize": {}, "padding_side": "right"})
    return path


@pytest.fixture(scope="module")
def reference_rms(tmp_path_factory):
    """Two RMs whose tokenizer numbers the words in reverse order (so the training tokenizer's ids would
    score differently), one with left padding and a plain template, and the pairs to score."""
    root = tmp_path_factory.mktemp("refs")
    ref_tok = build_word_tokenizer(list(reversed(WORDS)))
    a = make_rm(root / "rm-a", ref_tok, seed=1)
    b = make_rm(root / "rm-b", ref_tok, seed=2, scorer={"tokenize": {"template": "plain"}, "padding_side": "left"})
    pairs = make_pairs(list(WORDS), 6, seed=3)
    return a, b, pairs


def setup_for(pairs: list[Pair], word_tokenizer, cache: Path, said: list[str]) -> MarginSetup:
    train_set = encode_pairs(pairs, word_tokenizer, TokenizeConfig(), Ledger())
    return MarginSetup(train_set, pairs, word_tokenizer.pad_token_id, "right", torch.device("cpu"), cache, said.append,
                       score_rm_dir)


def eval_gaps(model_dir: Path, pairs: list[Pair]) -> torch.Tensor:
    rep = evaluate_rm_dir(model_dir, pairs, EvalConfig(n_boot=10, swap_test=False), progress=False)
    return torch.tensor(rep.gaps, dtype=torch.float32)


def count_loads(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = reward_module.load_reward_model

    def counted(cfg, *args, **kwargs):
        calls.append(cfg.name_or_path)
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(reward_module, "load_reward_model", counted)
    return calls


def test_reference_values_are_the_reference_rm_own_scores_and_cached(reference_rms, word_tokenizer, tmp_path,
                                                                     monkeypatch):
    a, _, pairs = reference_rms
    loads = count_loads(monkeypatch)
    said: list[str] = []
    opts = dict(source="reference", reference_model=str(a), filter="none", min_margin=None)
    m = confidence(**opts)
    m.prepare(setup_for(pairs, word_tokenizer, tmp_path / "cache", said))
    assert loads == [str(a)] and "cache miss" in said[0]
    n = len(pairs)
    out = m(gaps_in([0.0] * n, index=list(range(n))))
    expected = eval_gaps(a, pairs)  # what `eval-rm` reports for this RM
    assert_close(out.target_margin, expected)
    # the training tokenizer numbers words differently: scoring with it would give other gaps
    model, _ = load_reward_model(ModelConfig(name_or_path=str(a), head_init="keep"))
    c, r = score_encoded(model, encode_pairs(pairs, word_tokenizer, TokenizeConfig(), Ledger()),
                         word_tokenizer.pad_token_id)
    assert not torch.allclose(torch.tensor(c - r, dtype=torch.float32), expected, atol=1e-3)
    # per-batch lookup by index: pairs 4 and 1 in that order
    assert_close(m(gaps_in([0.0, 0.0], index=[4, 1])).target_margin, expected[[4, 1]])

    # a second run (a new strategy, e.g. another seed) reads the cache: the model is not loaded again
    loads.clear()
    said.clear()
    again = confidence(**opts)
    again.prepare(setup_for(pairs, word_tokenizer, tmp_path / "cache", said))
    assert loads == [] and "cache hit" in said[0]
    assert_close(again(gaps_in([0.0] * n, index=list(range(n)))).target_margin, expected)
    files = sorted(p.name for p in (tmp_path / "cache" / "reference_gaps").iterdir())
    assert len(files) == 1 and files[0].endswith(".npz")  # no temporary file left behind


def test_cache_key_follows_data_and_weights(reference_rms, tmp_path):
    a, b, pairs = reference_rms
    assert model_fingerprint(a) != model_fingerprint(b)
    assert model_fingerprint(a) == model_fingerprint(a)
    changed = [Pair(p.prompt, p.chosen, p.rejected + " yes", id=p.id) for p in pairs]
    assert pairs_fingerprint(changed) != pairs_fingerprint(pairs)
    assert pairs_fingerprint(pairs[::-1]) != pairs_fingerprint(pairs)  # values are looked up by position
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model_fingerprint(tmp_path / "missing")


def test_ensemble_is_the_mean_of_the_members_minus_kappa_std(reference_rms, word_tokenizer, tmp_path, monkeypatch):
    a, b, pairs = reference_rms
    ga, gb = eval_gaps(a, pairs), eval_gaps(b, pairs)
    assert not torch.allclose(ga, gb)
    n = len(pairs)
    said: list[str] = []
    m = confidence(source="ensemble", ensemble_models=[str(a), str(b)], ensemble_std_coef=0.5, filter="none",
                   min_margin=None)
    m.prepare(setup_for(pairs, word_tokenizer, tmp_path / "cache", said))
    out = m(gaps_in([0.0] * n, index=list(range(n))))
    # K = 2: mean (a + b)/2, sample std |a - b| / sqrt(2); κ = 0.5
    std = (ga - gb).abs() / math.sqrt(2)
    assert_close(out.target_margin, (ga + gb) / 2 - 0.5 * std)
    assert_close(out.diagnostics["ensemble_std"], std)
    # a reference run on member a then reuses a's cached gaps
    loads = count_loads(monkeypatch)
    said.clear()
    confidence(source="reference", reference_model=str(a)).prepare(
        setup_for(pairs, word_tokenizer, tmp_path / "cache", said))
    assert loads == [] and "cache hit" in said[0]


def test_state_dict_round_trip_and_changed_reference_refused(reference_rms, word_tokenizer, tmp_path):
    a, b, pairs = reference_rms
    said: list[str] = []
    first = confidence(source="reference", reference_model=str(a))
    first.prepare(setup_for(pairs, word_tokenizer, tmp_path / "cache", said))
    state = first.state_dict()
    assert len(state["reference_keys"]) == 1
    resumed = confidence(source="reference", reference_model=str(a))
    resumed.prepare(setup_for(pairs, word_tokenizer, tmp_path / "cache", said))
    resumed.load_state_dict(state)  # same reference: accepted
    assert resumed.state_dict() == state
    other = confidence(source="reference", reference_model=str(b))
    other.prepare(setup_for(pairs, word_tokenizer, tmp_path / "cache", said))
    with pytest.raises(ValueError, match="resume with the same"):
        other.load_state_dict(state)
    plain = confidence()  # batch_mean: nothing to check
    plain.load_state_dict(plain.state_dict())


def test_pair_the_reference_drops_is_a_clear_error(word_tokenizer, tmp_path):
    ref = make_rm(tmp_path / "rm-drop", word_tokenizer, seed=4,
                  scorer={"tokenize": {"max_length": 8, "on_too_long": "drop"}, "padding_side": "right"})
    long_pair = Pair("please help me choose a good answer", "yes great fine ok", "no bad", id="long")
    pairs = [Pair("cats", "yes", "no", id="short"), long_pair]
    m = confidence(source="reference", reference_model=str(ref))
    with pytest.raises(ValueError, match=r"training pair 1 \(id long\).*on_too_long"):
        m.prepare(setup_for(pairs, word_tokenizer, tmp_path / "cache", []))


# ---------------------------------------------------------------- end to end on the gold world

@pytest.fixture(scope="module")
def gold_world(tmp_path_factory):
    from marginkit.data.world import WorldConfig, make_world

    root = tmp_path_factory.mktemp("gold")
    world = make_world(WorldConfig(seed=3, n_train=8, n_val=4, n_test=4))
    tok = build_word_tokenizer(world.vocabulary())
    base = make_tiny_model_dir(root / "base", tok, hidden_size=32)
    return world, base, make_rm(root / "ref", tok, seed=5)


def scored_gaps(model_dir, pairs) -> torch.Tensor:
    """Δ [B] (float32) of a saved RM on pairs, tokenised as the runs below train (TokenizeConfig defaults)."""
    model, tok = load_reward_model(ModelConfig(name_or_path=str(model_dir), head_init="keep"))
    chosen, rejected = score_encoded(model.eval(), encode_pairs(pairs, tok, TokenizeConfig(), Ledger()), tok.pad_token_id)
    return torch.as_tensor(chosen - rejected, dtype=torch.float32)


@pytest.mark.parametrize("source", ["batch_mean", "reference"])
def test_train_reward_model_with_confidence_margin(gold_world, tmp_path, source):
    world, base, ref = gold_world
    extra = {"reference_model": str(ref), "filter": "none"} if source == "reference" else {}
    spec = MarginSpec(name="confidence", confidence=ConfidenceMarginConfig(source=source, **extra))

    def run(seed: int, said: list[str]):
        # one batch of all 8 pairs per step, two epochs; the model after step 1 is kept. lr 0.05: the first step
        # moves the zero head far enough (gaps ~0.1, not ~1e-3) that step 2's margin term is well above rounding
        cfg = run_config(base, tmp_path / f"run-{seed}", head_init="zero", margin=spec, batch_size=8, num_epochs=2,
                         save_every=1, save_total_limit=0, learning_rate=0.05)
        cfg.data.cache_dir = str(tmp_path / "cache")
        return train_reward_model(cfg, world.train, world.val, console=said.append)

    said: list[str] = []
    rows = [r for r in run(0, said).history if "loss" in r]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    for key in ("target_margins/filtered_fraction", "target_margins/active_mean"):
        assert key in rows[1]
    if source == "batch_mean":
        # step 1: a zero head gives Δ = 0 = μ_B for every pair, none below the mean: plain BT, loss ln 2
        assert rows[0]["target_margins/filtered_fraction"] == 1.0
        assert rows[0]["target_margins/batch_mean_gap"] == 0.0
        assert_close(torch.tensor(rows[0]["loss"]), torch.tensor(math.log(2.0)))
        # step 2 by hand from the model after step 1: μ_B = mean Δ; pairs with Δ < μ_B get m = max(μ_B, 0), the
        # others m = 0; loss = mean softplus(m - Δ)
        gap = scored_gaps(tmp_path / "run-0" / "checkpoints" / "step-000001" / "model", world.train)  # [8]
        mu = gap.mean()
        assert mu > 0  # step 1 pushed the gaps up on average: the margin is not 0
        m = torch.where(gap < mu, mu.clamp(min=0), 0.0)
        assert rows[1]["target_margins/batch_mean_gap"] == pytest.approx(float(mu), rel=1e-4, abs=1e-6)
        assert rows[1]["target_margins/filtered_fraction"] == pytest.approx(float((gap >= mu).float().mean()))
        assert_close(torch.tensor(rows[1]["loss"]), torch.nn.functional.softplus(m - gap).mean(), rtol=1e-4, atol=1e-6)
    else:
        # step 1 by hand: Δ = 0 and every pair active (filter none), m = max(reference RM's gap, 0):
        # loss = mean softplus(m), above BT's ln 2 wherever the reference prefers the chosen response
        m = scored_gaps(ref, world.train).clamp(min=0)
        assert (m > 0).any()
        assert_close(torch.tensor(rows[0]["target_margins/mean"]), m.mean(), rtol=1e-4, atol=1e-6)
        assert_close(torch.tensor(rows[0]["loss"]), torch.nn.functional.softplus(m).mean(), rtol=1e-4, atol=1e-6)
        assert any("cache miss" in s for s in said)
        said2: list[str] = []
        run(1, said2)  # another seed: the reference gaps come from the cache
        assert any("cache hit" in s for s in said2) and not any("cache miss" in s for s in said2)
