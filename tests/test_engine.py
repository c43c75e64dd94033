"""The training engine: accumulation equals one big batch, the first-step loss, metric windows, non-finite stops.

Every run trains a tiny GPT-NeoX (hidden 32, 2 layers, no dropout) in float32 on CPU through
`train_reward_model`, with a constant learning rate and no clipping, so two runs that should be
equal are equal up to float32 rounding.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import marginkit.train.rm as rm_module
import marginkit.train.setup as train_setup
from _engine_helpers import (
    load_weights,
    make_pairs,
    one_torch_thread,
    record_optimizers,
    run_config,
    train,
    vocab_words,
)
from marginkit.data.collate import collate_pairs
from marginkit.data.ledger import Ledger
from marginkit.data.schema import Pair
from marginkit.data.tokenize import TokenizeConfig, encode_pairs
from marginkit.evaluate.scorer import score_encoded
from marginkit.margins import MarginInputs, Margins, MarginSpec
from marginkit.margins.fixed import FixedMarginConfig
from marginkit.margins.label import LabelMarginConfig
from marginkit.models.reward import ModelConfig, load_reward_model, reward_head, save_reward_model
from marginkit.train.engine import NonFiniteLossError, epoch_order


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


def logged(result) -> list[dict]:
    """The training rows of a run's history (evaluation rows have no "loss")."""
    return [row for row in result.history if "loss" in row]


def close32(actual, expected, msg: str | None = None) -> None:
    """assert_close at float32 tolerances for logged metrics (Python floats computed in float32)."""
    torch.testing.assert_close(torch.tensor(actual, dtype=torch.float32), torch.tensor(expected, dtype=torch.float32),
                               msg=msg)


def flat_residual(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([(a[k] - b[k]).flatten() for k in sorted(a)])


def hand_mean_grads(model_dir, params: list[torch.Tensor], pairs: list[Pair]) -> list[torch.Tensor]:
    """Gradient of (1/N) sum_i -log sigma(r_c,i - r_r,i) over the N given pairs, at the given parameters,
    computed here from a plain forward (softplus(r_r - r_c) = -log sigma(r_c - r_r)), not by the engine."""
    model, tokenizer = load_reward_model(ModelConfig(name_or_path=str(model_dir), head_init="keep"))
    with torch.no_grad():
        for p, value in zip(model.parameters(), params):
            p.copy_(value)
    model.train()  # dropout is 0 in the tiny model, so train mode changes nothing but matches the engine
    encoded = encode_pairs(pairs, tokenizer, TokenizeConfig(), Ledger())
    batch = collate_pairs(encoded, tokenizer.pad_token_id)
    rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]  # [2N]
    chosen, rejected = rewards.chunk(2)  # [2N] -> [N], [N]
    loss = F.softplus(rejected - chosen).sum() / len(pairs)
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


def pairs_of_step(pairs: list[Pair], seed: int, start: int, stop: int) -> list[Pair]:
    """The pairs the engine feeds at epoch-0 positions [start, stop) (its order is epoch_order)."""
    order = epoch_order(len(pairs), seed, 0)
    return [pairs[i] for i in order[start:stop]]


# ---- 1. gradient accumulation ----

def test_accumulation_4x2_equals_one_batch_of_8(tiny_model_dir, word_tokenizer, tmp_path, monkeypatch):
    pairs = make_pairs(vocab_words(word_tokenizer), 32)
    # Adam divides by sqrt(v) + eps. A gradient that is 0 in exact arithmetic (the key biases: softmax is
    # shift-invariant) is float32 rounding noise (~1e-10) that the default eps=1e-8 turns into a step of up
    # to ±lr, differently in each run (measured: weights 6e-5 apart after 3 steps while the gradients agree
    # to 6e-8). eps=1e-3 keeps the update a smooth function of the gradient, so rounding-level gradient
    # differences stay rounding-level in the weights and default float32 tolerances apply.
    optimizers = record_optimizers(monkeypatch, eps=1e-3)
    acc = train(run_config(tiny_model_dir, tmp_path / "acc", batch_size=2, gradient_accumulation_steps=4,
                           max_steps=3), pairs)
    big = train(run_config(tiny_model_dir, tmp_path / "big", batch_size=8, gradient_accumulation_steps=1,
                           max_steps=3), pairs)
    opt_acc, opt_big = optimizers
    assert len(opt_acc.grads) == len(opt_big.grads) == 3
    # AdamW is invariant to a common scale of the gradient, so weights alone would not see a wrong
    # normalisation (e.g. a sum over micro-batches of means, 4x too large): compare the gradients
    # the optimizer received, and the logged pre-clip grad norm.
    for step in range(3):
        for g_acc, g_big in zip(opt_acc.grads[step], opt_big.grads[step]):
            torch.testing.assert_close(g_acc, g_big)
    rows_acc, rows_big = logged(acc), logged(big)
    assert [r["step"] for r in rows_acc] == [1, 2, 3]
    for key in ("loss", "grad_norm", "rewards/accuracies"):
        close32([r[key] for r in rows_acc], [r[key] for r in rows_big], msg=key)
    for key in ("rewards/chosen", "rewards/rejected"):
        close32(rows_acc[0][key], rows_big[0][key], msg=key)  # step 1: the same weights
        # Steps 2-3 run on weights that differ by float32 rounding (up to 1.5e-7, measured); the mean of
        # rewards of size ~1 that cancel to ~0.1 then differs by up to 1.3e-5 (measured), just above the
        # float32 default atol of 1e-5: compare at the scale of the rewards themselves.
        torch.testing.assert_close([r[key] for r in rows_acc], [r[key] for r in rows_big], rtol=0, atol=1e-4)

    w_acc, w_big = load_weights(acc.model_dir), load_weights(big.model_dir)
    for name in w_acc:
        torch.testing.assert_close(w_acc[name], w_big[name], msg=lambda m, n=name: f"{n}: {m}")
    # Zero-mean residual: rounding noise is symmetric, so the mean difference stays within a few standard
    # errors (std / sqrt(n)) of 0; a one-sided drift (one run taking consistently larger or shifted steps)
    # moves the mean far outside that even when every element passes assert_close.
    # Measured: mean -2e-12 with std 7e-9 over 26,560 values, i.e. 0.06 standard errors.
    residual = flat_residual(w_acc, w_big).double()
    assert residual.mean().abs() <= 5 * residual.std() / residual.numel() ** 0.5 + 1e-15


def test_uneven_micro_batches_normalise_by_pairs(tiny_model_dir, word_tokenizer, tmp_path, monkeypatch):
    """10 pairs as micro-batches 4, 4, 2 (batch 4 x accumulation 3) give one step equal to one batch of 10,
    and both equal the hand-computed gradient of the mean loss over the 10 pairs. Normalising per
    micro-batch instead would weigh the last 2 pairs twice as much as the others."""
    pairs = make_pairs(vocab_words(word_tokenizer), 10)
    optimizers = record_optimizers(monkeypatch)
    train(run_config(tiny_model_dir, tmp_path / "acc", batch_size=4, gradient_accumulation_steps=3, max_steps=1), pairs)
    train(run_config(tiny_model_dir, tmp_path / "big", batch_size=10, gradient_accumulation_steps=1, max_steps=1),
          pairs)
    opt_acc, opt_big = optimizers
    expected = hand_mean_grads(tiny_model_dir, opt_acc.params_before[0], pairs)
    assert any(g.abs().max() > 1e-3 for g in expected)  # a real signal, not a zero gradient
    for g_acc, g_big, g_hand in zip(opt_acc.grads[0], opt_big.grads[0], expected):
        torch.testing.assert_close(g_acc, g_hand)
        torch.testing.assert_close(g_big, g_hand)


def test_short_last_step_is_the_mean_over_its_own_pairs(tiny_model_dir, word_tokenizer, tmp_path, monkeypatch):
    """10 pairs, batch 4 x accumulation 2: step 1 has 8 pairs, step 2 only the last 2; each step's gradient
    is the mean over its own pairs (dividing step 2 by 8, the nominal effective batch, would shrink it 4x)."""
    pairs = make_pairs(vocab_words(word_tokenizer), 10)
    optimizers = record_optimizers(monkeypatch)
    result = train(run_config(tiny_model_dir, tmp_path / "run", batch_size=4, gradient_accumulation_steps=2), pairs)
    (opt,) = optimizers
    assert [r["step"] for r in logged(result)] == [1, 2]
    for step, (start, stop) in enumerate([(0, 8), (8, 10)]):
        expected = hand_mean_grads(tiny_model_dir, opt.params_before[step], pairs_of_step(pairs, 0, start, stop))
        for got, want in zip(opt.grads[step], expected):
            torch.testing.assert_close(got, want)


# ---- 2. the first logged loss ----

SOFTPLUS = {0: math.log(2), 1: 1.3132616875182228, 2: 2.1269280110429727, 3: 3.048587351573742}  # log(1 + e^m)


@pytest.mark.parametrize(
    "margin, margins, expected",
    [
        (MarginSpec(), None, math.log(2)),  # Δ = 0 (zero head): -log σ(0) = ln 2 = 0.693147
        (MarginSpec(name="fixed", fixed=FixedMarginConfig(value=2.0)), None, SOFTPLUS[2]),  # -log σ(0 - 2)
        # per-pair label margins 0, 1, 2, 3 (twice): mean of softplus(m) = 7.181924 / 4 = 1.795481
        (MarginSpec(name="label", label=LabelMarginConfig(source="margin")), [0, 1, 2, 3] * 2,
         sum(SOFTPLUS.values()) / 4),
    ],
    ids=["bt", "fixed-2", "label-0123"],
)
def test_first_step_loss_with_zero_head(tiny_model_dir, word_tokenizer, tmp_path, margin, margins, expected):
    pairs = make_pairs(vocab_words(word_tokenizer), 8)
    if margins is not None:
        pairs = [Pair(p.prompt, p.chosen, p.rejected, margin=float(m), id=p.id) for p, m in zip(pairs, margins)]
    cfg = run_config(tiny_model_dir, tmp_path, head_init="zero", margin=margin, batch_size=4,
                     gradient_accumulation_steps=2, max_steps=1)
    result = train(cfg, pairs)
    (row,) = logged(result)
    assert row["step"] == 1
    close32(row["loss"], expected)
    close32(row["rewards/chosen"], 0.0)
    close32(row["rewards/margins"], 0.0)
    # every Δ = 0 at a zero head: each pair is a tie, and a tie counts 1/2 (evaluate/accuracy.py), so 4 x ½ / 4
    assert row["rewards/accuracies"] == 0.5
    (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(line) == row


# ---- 3. metrics cover every micro-batch of the window ----

@pytest.fixture(scope="module")
def nonzero_head_dir(tmp_path_factory, tiny_model_dir):
    """The tiny model with a random (fixed, saved) head, so rewards differ before any training."""
    torch.manual_seed(0)
    model, tokenizer = load_reward_model(ModelConfig(name_or_path=str(tiny_model_dir), head_init="normal"))
    out = tmp_path_factory.mktemp("rm") / "rm"
    save_reward_model(model, tokenizer, out)
    return out


def test_metrics_average_every_micro_batch(nonzero_head_dir, word_tokenizer, tmp_path):
    """Micro-batches of 4, 4, 2 pairs arranged to be all right, all wrong, all right: the step's accuracy
    is 6/10 = 0.6 (pairs), not 1.0 (last micro-batch) nor 2/3 (mean of micro-batch means)."""
    pairs = make_pairs(vocab_words(word_tokenizer), 10)
    model, tokenizer = load_reward_model(ModelConfig(name_or_path=str(nonzero_head_dir), head_init="keep"))
    chosen, rejected = score_encoded(model, encode_pairs(pairs, tokenizer, TokenizeConfig(), Ledger()),
                                     tokenizer.pad_token_id)
    order = epoch_order(len(pairs), 0, 0)
    want_right = {i: (pos // 4) != 1 for pos, i in enumerate(order)}  # micro-batch 0 and 2 right, 1 wrong
    arranged, c_rewards, r_rewards = [], [0.0] * 10, [0.0] * 10
    for i, p in enumerate(pairs):
        assert chosen[i] != rejected[i]
        keep = (chosen[i] > rejected[i]) == want_right[i]
        arranged.append(p if keep else Pair(p.prompt, p.rejected, p.chosen, id=p.id))
        c_rewards[i], r_rewards[i] = (chosen[i], rejected[i]) if keep else (rejected[i], chosen[i])
    gaps = torch.tensor(c_rewards, dtype=torch.float64) - torch.tensor(r_rewards, dtype=torch.float64)
    micro_acc = [float((gaps[order[s:s + 4]] > 0).double().mean()) for s in (0, 4, 8)]
    assert micro_acc == [1.0, 0.0, 1.0]

    cfg = run_config(nonzero_head_dir, tmp_path, head_init="keep", batch_size=4, gradient_accumulation_steps=3,
                     max_steps=1)
    (row,) = logged(train(cfg, arranged))
    assert row["rewards/accuracies"] == pytest.approx(0.6)
    close32(row["rewards/chosen"], sum(c_rewards) / 10)
    close32(row["rewards/rejected"], sum(r_rewards) / 10)
    close32(row["rewards/margins"], float(gaps.mean()))
    close32(row["loss"], float(F.softplus(-gaps).mean()))


def test_log_window_spans_optimizer_steps(tiny_model_dir, word_tokenizer, tmp_path):
    """log_every=3 logs the pair-weighted mean of the 3 steps (4, 4, 2 pairs) that log_every=1 shows one by one."""
    pairs = make_pairs(vocab_words(word_tokenizer), 10)
    every = logged(train(run_config(tiny_model_dir, tmp_path / "1", batch_size=4, log_every=1), pairs))
    (window,) = logged(train(run_config(tiny_model_dir, tmp_path / "3", batch_size=4, log_every=3), pairs))
    assert [r["step"] for r in every] == [1, 2, 3] and window["step"] == 3
    counts = [4, 4, 2]
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        expected = sum(n * r[key] for n, r in zip(counts, every)) / 10
        close32(window[key], expected, msg=key)
    close32(window["grad_norm"], sum(r["grad_norm"] for r in every) / 3)


# ---- 4. non-finite values stop the run before the optimizer steps ----

class PoisonMargin:
    """Demands an infinite margin (loss softplus(inf - Δ) = inf) from the pairs that have a label margin;
    the others get plain BT."""

    needs: frozenset[str] = frozenset()

    def prepare(self, setup) -> None:
        pass

    def __call__(self, inputs: MarginInputs) -> Margins:
        poisoned = torch.isfinite(inputs.label_margin)
        margin = torch.where(poisoned, math.inf, 0.0)
        return Margins(margin, torch.ones_like(poisoned))

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def keep_model(monkeypatch) -> list:
    """Record the model train_reward_model loads, to inspect it after an exception."""
    models: list = []
    real = rm_module.load_reward_model

    def load(*args, **kwargs):
        model, tokenizer = real(*args, **kwargs)
        models.append(model)
        return model, tokenizer

    monkeypatch.setattr(rm_module, "load_reward_model", load)
    return models


def assert_weights_of_checkpoint(model: torch.nn.Module, checkpoint) -> None:
    saved = load_weights(checkpoint / "model")
    state = model.state_dict()
    for name, value in saved.items():
        torch.testing.assert_close(state[name], value, rtol=0, atol=0)


def test_infinite_loss_stops_naming_step_and_pairs(tiny_model_dir, word_tokenizer, tmp_path, monkeypatch):
    pairs = make_pairs(vocab_words(word_tokenizer), 16)
    order = epoch_order(16, 0, 0)
    culprits = order[8:10]  # step 3 (batch 2 x accumulation 2) = positions 8-11; its first micro-batch = 8, 9
    pairs = [Pair(p.prompt, p.chosen, p.rejected, margin=1.0 if i in culprits else None, id=p.id)
             for i, p in enumerate(pairs)]
    monkeypatch.setattr(train_setup, "build_margin", lambda spec: PoisonMargin())
    models = keep_model(monkeypatch)
    cfg = run_config(tiny_model_dir, tmp_path, batch_size=2, gradient_accumulation_steps=2, save_every=1,
                     save_total_limit=0)
    with pytest.raises(NonFiniteLossError) as err:
        train(cfg, pairs)
    message = str(err.value)
    assert "optimizer step 3" in message and "micro-batch 1 of 2" in message and "'bt'" in message
    assert "inf" in message
    named = {f"pair-{i}" for i in range(16) if f"'pair-{i}'" in message}
    assert named == {f"pair-{i}" for i in culprits}
    # No optimizer step with the non-finite values: the weights are those saved after step 2.
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["step-000001", "step-000002"]
    assert_weights_of_checkpoint(models[0], tmp_path / "checkpoints" / "step-000002")
    assert not (tmp_path / "model").exists()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_nan_gradient_stops_before_the_optimizer_step(tiny_model_dir, word_tokenizer, tmp_path, monkeypatch):
    """A NaN that appears only in backward (finite loss) is caught by the grad norm, also before stepping."""
    pairs = make_pairs(vocab_words(word_tokenizer), 16)
    calls = []

    def nan_on_third_backward(grad: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return grad * math.nan if len(calls) == 3 else grad

    real = rm_module.load_reward_model

    def load(*args, **kwargs):
        model, tokenizer = real(*args, **kwargs)
        reward_head(model).weight.register_hook(nan_on_third_backward)
        return model, tokenizer

    monkeypatch.setattr(rm_module, "load_reward_model", load)
    models = keep_model(monkeypatch)
    cfg = run_config(tiny_model_dir, tmp_path, batch_size=4, save_every=1, save_total_limit=0)
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient norm \(nan\) at optimizer step 3"):
        train(cfg, pairs)
    assert_weights_of_checkpoint(models[0], tmp_path / "checkpoints" / "step-000002")


def test_run_writes_target_vs_learned_margins(tmp_path, tiny_model_dir):
    # fixed margin 0.5: every target is 0.5, every pair active; the snapshot's gaps are the final
    # model's gaps on the training pairs, so they equal a fresh scoring of those pairs.
    from marginkit.config import RMRunConfig
    from marginkit.configlib import from_dict
    from marginkit.train.rm import train_reward_model

    pairs = [Pair(f"please help {w}", "yes great", "no bad", id=str(i)) for i, w in enumerate(["me", "a", "the", "cat"])]
    cfg = from_dict(RMRunConfig, {"model": {"name_or_path": str(tiny_model_dir)},
                                  "margin": {"name": "fixed", "fixed": {"value": 0.5}},
                                  "train": {"output_dir": str(tmp_path), "batch_size": 2, "progress_bar": False}})
    result = train_reward_model(cfg, pairs, console=lambda s: None)
    snap = np.load(tmp_path / "margins.npz")
    assert snap["target"].tolist() == [0.5] * 4 and snap["active"].all()
    model, tok = load_reward_model(ModelConfig(name_or_path=str(result.model_dir), head_init="keep"))
    enc = encode_pairs(pairs, tok, TokenizeConfig(), Ledger(), False)
    c, r = score_encoded(model, enc, tok.pad_token_id, "right")
    np.testing.assert_allclose(snap["gap"], c - r, atol=1e-5)
    assert (tmp_path / "target_vs_learned.png").stat().st_size > 1000
