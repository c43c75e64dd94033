"""train_dpo end to end on a tiny GPT-NeoX (float32, CPU): ln 2 at the first step, the precomputed reference
equals the in-loop one, hashes guard the cache, checkpoints are plain HF causal LMs, resume is exact, every
loss trains, eval-dpo scores as training logs, docs/dpo.md names what is logged, and the CLI runs."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from _engine_helpers import load_weights, make_pairs, one_torch_thread, vocab_words
from marginkit.config import DPORunConfig
from marginkit.configlib import ConfigError, from_dict
from marginkit.data.collate import collate_pairs
from marginkit.data.ledger import Ledger
from marginkit.data.schema import Pair
from marginkit.data.tokenize import TokenizeConfig, encode_pairs
from marginkit.evaluate.dpo_eval import evaluate_dpo_dir
from marginkit.models.logprobs import forward_logps
from marginkit.models.ref_cache import RefCacheError, read_ref_logps
from marginkit.models.tiny import make_tiny_model_dir
from marginkit.train.checkpoint import load_trainer_state
from marginkit.train.dpo import precompute_reference, train_dpo

ROOT = Path(__file__).resolve().parents[1]
LN2 = math.log(2.0)
QUIET = {"log_every": 1, "progress_bar": False, "mixed_precision": "no", "lr_scheduler": "constant",
         "warmup_ratio": 0.0, "learning_rate": 1e-3, "batch_size": 4, "max_grad_norm": None}


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def pairs(word_tokenizer) -> list[Pair]:
    return make_pairs(vocab_words(word_tokenizer), 16)


@pytest.fixture(scope="module")
def eval_pairs(word_tokenizer) -> list[Pair]:
    return make_pairs(vocab_words(word_tokenizer), 6, seed=1)


def config(model_dir, out, cache=None, **sections) -> DPORunConfig:
    train = {**QUIET, "output_dir": str(out), **sections.pop("train", {})}
    data = {"cache_dir": str(cache or Path(out) / "cache"), **sections.pop("data", {})}
    return from_dict(DPORunConfig, {"model": {"name_or_path": str(model_dir)}, "train": train, "data": data, **sections})


def run(cfg, pairs, eval_pairs=None):
    return train_dpo(cfg, pairs, eval_pairs, console=lambda _: None)


def steps(history):
    return [r for r in history if "loss" in r]


def sequence_logps(model, tokenizer, encoded) -> tuple[torch.Tensor, torch.Tensor]:
    """[B] summed response log-probs of the chosen and of the rejected side of encoded pairs (one padded batch)."""
    b = collate_pairs(encoded, tokenizer.pad_token_id)
    with torch.no_grad():
        return forward_logps(model.eval(), b["input_ids"], b["attention_mask"], b["response_mask"]).sum.double().chunk(2)


def outcomes(gap) -> np.ndarray:
    """Per-pair outcome, ties 1/2 (docs/metrics.md): 1 if Δ > 0, 1/2 if Δ = 0, 0 if Δ < 0."""
    gap = np.asarray(gap, dtype=np.float64)
    return (gap > 0) + 0.5 * (gap == 0)


def percentile_bootstrap(values, n_boot: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """The readable bootstrap the reports document: n_boot resamples of B values with replacement, drawn one
    at a time from default_rng(seed); the (1 - level)/2 and (1 + level)/2 quantiles of the resample means."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = [values[rng.integers(0, values.size, size=values.size)].mean() for _ in range(n_boot)]
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def test_first_step_is_ln2_with_policy_equal_to_reference(tiny_model_dir, pairs, tmp_path):
    result = run(config(tiny_model_dir, tmp_path, train={"max_steps": 2}), pairs)
    first = steps(result.history)[0]
    # policy = reference: every log-ratio is 0, so -log σ(β 0) = ln 2 and every reward, margin and gap is 0
    assert first["loss"] == pytest.approx(LN2, abs=1e-6)
    assert first["diagnostics/loss_at_zero_gap"] == pytest.approx(LN2, abs=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logratios/gap_raw", "kl/implicit"):
        assert first[key] == 0.0, key
    assert first["rewards/accuracies"] == 0.5  # every pair a tie (gap 0), and a tie counts ½ (evaluate/accuracy.py)
    assert first["logps/chosen"] < 0 and first["logps/rejected"] < 0
    assert steps(result.history)[1]["loss"] != first["loss"]  # the first update moved the policy


def test_precomputed_reference_gives_the_same_losses(tiny_model_dir, pairs, eval_pairs, tmp_path):
    cache = tmp_path / "cache"
    in_loop = run(config(tiny_model_dir, tmp_path / "a", cache, train={"max_steps": 4}), pairs, eval_pairs)
    cfg = config(tiny_model_dir, tmp_path / "b", cache, train={"max_steps": 4}, reference={"source": "precomputed"})
    written = precompute_reference(cfg, pairs, eval_pairs, console=lambda _: None)
    assert sorted(written) == ["eval", "train"] and all(p.parent == cache / "ref_logps" for p in written.values())
    cached = run(cfg, pairs, eval_pairs)
    a, b = steps(in_loop.history), steps(cached.history)
    assert len(a) == len(b) == 4
    for ra, rb in zip(a, b):
        for key in ("loss", "rewards/chosen", "rewards/rejected", "logratios/gap_raw", "kl/implicit", "grad_norm"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-6), key  # same numbers, other batch shapes
    assert cached.eval["eval_loss"] == pytest.approx(in_loop.eval["eval_loss"], rel=1e-5)
    for name, value in load_weights(in_loop.model_dir).items():
        torch.testing.assert_close(load_weights(cached.model_dir)[name], value, rtol=1e-4, atol=1e-5)
    assert json.loads((cached.model_dir / "marginkit_policy.json").read_text())["reference"]["source"] == "precomputed"


def test_precomputed_reference_refuses_other_data_or_model(tiny_model_dir, word_tokenizer, pairs, tmp_path):
    cache = tmp_path / "cache"
    cfg = config(tiny_model_dir, tmp_path / "a", cache, reference={"source": "precomputed"})
    with pytest.raises(RefCacheError, match="no such file.*precompute-ref"):
        run(cfg, pairs)  # nothing precomputed yet
    path = precompute_reference(cfg, pairs, console=lambda _: None)["train"]
    assert read_ref_logps(path).metadata["n_pairs"] == "16"

    other_pairs = make_pairs(vocab_words(word_tokenizer), 16, seed=7)
    named = config(tiny_model_dir, tmp_path / "b", cache, reference={"source": "precomputed", "cache": str(path)})
    with pytest.raises(RefCacheError, match="data hash .* the data, tokenizer, template or truncation changed"):
        run(named, other_pairs)

    other_model = make_tiny_model_dir(tmp_path / "other", word_tokenizer, hidden_size=32, seed=1)
    with pytest.raises(RefCacheError, match=r"model hash [0-9a-f]{16} != [0-9a-f]{16}"):
        run(config(other_model, tmp_path / "c", cache, reference={"source": "precomputed", "cache": str(path)}), pairs)


def test_checkpoint_is_a_plain_causal_lm_that_scores_like_the_trained_policy(tiny_model_dir, pairs, eval_pairs,
                                                                             tmp_path):
    result = run(config(tiny_model_dir, tmp_path, train={"max_steps": 3, "save_every": 3}), pairs, eval_pairs)
    checkpoint = tmp_path / "checkpoints" / "step-000003" / "model"
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for folder in (result.model_dir, checkpoint):
        model = AutoModelForCausalLM.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        encoded = encode_pairs(eval_pairs, tokenizer, TokenizeConfig(), Ledger())
        chosen, rejected = sequence_logps(model, tokenizer, encoded)
        ref_chosen, ref_rejected = sequence_logps(base, tokenizer, encoded)
        # the trained policy's end-of-run evaluation, logged from memory, is reproduced by the saved folder:
        # means of the log-probs and of r = β (log π - log π_ref) with β = 0.1, the starting model as reference
        assert float(chosen.mean()) == pytest.approx(result.eval["eval_logps/chosen"], rel=1e-5)
        assert float(rejected.mean()) == pytest.approx(result.eval["eval_logps/rejected"], rel=1e-5)
        margins = 0.1 * ((chosen - ref_chosen) - (rejected - ref_rejected))
        assert float(margins.mean()) == pytest.approx(result.eval["eval_rewards/margins"], rel=1e-4, abs=1e-6)
        assert (chosen - ref_chosen).abs().max() > 1e-3  # and the weights are the trained ones, not the start
    torch.testing.assert_close(load_weights(checkpoint), load_weights(result.model_dir), rtol=0, atol=0)


@pytest.fixture(scope="module")
def dropout_model_dir(tmp_path_factory, word_tokenizer):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "neox-dropout", word_tokenizer, hidden_size=32,
                               dropout=0.1)


def test_resume_equals_uninterrupted_run(dropout_model_dir, pairs, tmp_path):
    # β-DPO with filtering (a running state and a private generator), dropout on (the global RNG), cosine
    # schedule with warm-up, 2 x 2 pairs per step over 2 epochs: everything resume must restore.
    def cfg(out, **train):
        return config(dropout_model_dir, out, model={"name_or_path": str(dropout_model_dir), "disable_dropout": False},
                      loss={"name": "beta_dpo", "beta_dpo": {"filter_fraction": 0.5}},
                      train={"batch_size": 2, "gradient_accumulation_steps": 2, "num_epochs": 2, "max_steps": 6,
                             "lr_scheduler": "cosine", "warmup_ratio": 0.2, "save_total_limit": 0, **train})

    full = run(cfg(tmp_path / "A", save_every=3), pairs)
    checkpoint = tmp_path / "A" / "checkpoints" / "step-000003"
    assert load_trainer_state(checkpoint)["stateful"]["loss"]["reference_margin"] is not None
    shutil.copytree(checkpoint, tmp_path / "B" / "checkpoints" / checkpoint.name)
    resumed = run(cfg(tmp_path / "B", resume_from="latest"), pairs)
    rows_full = {r["step"]: r for r in steps(full.history)}
    rows_resumed = {r["step"]: r for r in steps(resumed.history)}
    assert sorted(rows_resumed) == [4, 5, 6]
    for step, row in rows_resumed.items():
        for key in ("loss", "grad_norm", "learning_rate", "beta/effective", "beta/selected_fraction", "epoch"):
            assert row[key] == rows_full[step][key], (step, key)
    for name, value in load_weights(full.model_dir).items():
        torch.testing.assert_close(load_weights(resumed.model_dir)[name], value, rtol=0, atol=0)


LOSS_SECTIONS = {
    "sigmoid": {}, "ipo": {}, "hinge": {}, "cdpo": {}, "robust": {}, "beta_dpo": {},
    "simpo": {},
    "odpo": {"margin": {"name": "label", "label": {"source": "score_gap", "scale": 0.5}}},
}


ZERO_GAP_LOSS = {"sigmoid": LN2, "ipo": 25.0, "hinge": 1.0, "cdpo": LN2, "robust": LN2, "beta_dpo": LN2,
                 "odpo": math.log1p(math.e)}  # softplus(Δ) with Δ = 1, see below


@pytest.mark.parametrize("name", sorted(LOSS_SECTIONS))
def test_every_loss_trains_and_logs(tiny_model_dir, word_tokenizer, tmp_path, name):
    graded = [Pair(p.prompt, p.chosen, p.rejected, score_chosen=3, score_rejected=1, id=p.id)
              for p in make_pairs(vocab_words(word_tokenizer), 8)]
    result = run(config(tiny_model_dir, tmp_path, loss={"name": name, "nll_weight": 0.5}, train={"max_steps": 2},
                        **LOSS_SECTIONS[name]), graded)
    first, last = steps(result.history)
    assert math.isfinite(last["loss"]) and last["grad_norm"] > 0
    if name == "simpo":  # reference-free: no reference log-probs, no KL, no known starting value
        assert "kl/implicit" not in first and "diagnostics/loss_at_zero_gap" not in first
    else:
        # h = 0 at the start: the loss is its zero-gap value plus 0.5 * NLL of the chosen tokens
        assert first["loss"] == pytest.approx(first["diagnostics/loss_at_zero_gap"], rel=1e-5)
        # and the zero-gap value is the named loss's own, by hand at β = 0.1 (losses/dpo.py docstrings): a name
        # that silently ran another loss would show here (IPO 1/(4β²) = 25, hinge 1, ODPO below, the rest ln 2)
        assert first["loss"] - 0.5 * first["nll/chosen"] == pytest.approx(ZERO_GAP_LOSS[name], rel=1e-5)
    if name == "odpo":  # Δ = 0.5 * (3 - 1) = 1 for every pair: zero-gap loss softplus(1) + 0.5 NLL
        assert first["target_margins/mean"] == pytest.approx(1.0)
        assert first["diagnostics/loss_at_zero_gap"] == pytest.approx(math.log1p(math.e) + 0.5 * first["nll/chosen"],
                                                                      rel=1e-5)
    if name == "beta_dpo":
        assert first["beta/effective"] == pytest.approx(0.1)  # the first batch sets M_0 to its own mean


def test_config_rules(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="reference.source=model: loss.name=simpo is reference-free"):
        config(tiny_model_dir, tmp_path, loss={"name": "simpo"}, reference={"source": "model"})
    with pytest.raises(ConfigError, match="margin.name=label only applies with loss.name=odpo"):
        config(tiny_model_dir, tmp_path, margin={"name": "label"})
    with pytest.raises(ConfigError, match="needs a reference"):
        config(tiny_model_dir, tmp_path, reference={"source": "none"})
    assert config(tiny_model_dir, tmp_path, loss={"name": "simpo"}).reference_source == "none"


def test_eval_dpo_scores_exactly_as_training_logs(tiny_model_dir, pairs, eval_pairs, tmp_path):
    result = run(config(tiny_model_dir, tmp_path, train={"max_steps": 3}), pairs, eval_pairs)
    report = evaluate_dpo_dir(result.model_dir, eval_pairs, progress=False)
    for key, value in report.metrics.items():
        assert value == pytest.approx(result.eval["eval_" + key], rel=1e-6, abs=1e-7), key
    assert report.n_pairs == 6 and report.loss_name == "sigmoid" and report.beta == pytest.approx(0.1)
    # the per-pair gaps by hand: Δ = β ((π_c - ρ_c) - (π_r - ρ_r)), the starting model as the reference
    tokenizer = AutoTokenizer.from_pretrained(result.model_dir)
    encoded = encode_pairs(eval_pairs, tokenizer, TokenizeConfig(), Ledger())
    chosen, rejected = sequence_logps(AutoModelForCausalLM.from_pretrained(result.model_dir), tokenizer, encoded)
    ref_chosen, ref_rejected = sequence_logps(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, encoded)
    gap = (0.1 * ((chosen - ref_chosen) - (rejected - ref_rejected))).numpy()
    np.testing.assert_allclose(report.gaps, gap, rtol=1e-4, atol=1e-6)
    assert np.abs(gap).min() > 1e-4  # no pair within rounding of a tie: the outcomes below are exact
    # accuracy: the fraction of pairs ranked correctly, ties 1/2; its interval: the percentile bootstrap over
    # those 6 per-pair outcomes (evaluate_dpo_dir: 1000 resamples, seed 0)
    assert report.accuracy.value == outcomes(gap).mean()
    assert (report.accuracy.low, report.accuracy.high) == pytest.approx(percentile_bootstrap(outcomes(gap), 1000, 0))
    assert report.accuracy.n == 6 and report.accuracy.level == 0.95


def documented(table: str) -> set[str]:
    return set(re.findall(r"^\| `([^`]+)` \|", table, flags=re.M))


def test_docs_name_exactly_the_logged_metrics(tiny_model_dir, word_tokenizer, tmp_path):
    gold = [Pair(p.prompt, p.chosen, p.rejected, score_chosen=3, score_rejected=1, gold_chosen=1.0,
                 gold_rejected=0.0, id=p.id) for p in make_pairs(vocab_words(word_tokenizer), 8)]
    logged: set[str] = set()
    for i, sections in enumerate([{"loss": {"name": "odpo", "nll_weight": 0.1}, "margin": {"name": "label"}},
                                  {"loss": {"name": "beta_dpo"}}]):
        out = tmp_path / str(i)
        run(config(tiny_model_dir, out, train={"max_steps": 1}, **sections), gold, gold[:4])
        for line in (out / "metrics.jsonl").read_text().splitlines():
            logged |= set(json.loads(line)) - {"step", "epoch"}
    dpo_doc = documented((ROOT / "docs" / "dpo.md").read_text())
    engine_doc = documented((ROOT / "docs" / "metrics.md").read_text())
    sft_names = {"nll/token", "eval_nll/token"}  # the SFT table of docs/dpo.md
    assert logged - engine_doc <= dpo_doc  # every DPO metric is documented
    assert dpo_doc - sft_names <= logged  # and every documented DPO metric is logged


def test_cli_precompute_train_eval(tiny_model_dir, pairs, eval_pairs, tmp_path, capsys):
    from marginkit.cli import main

    for split, rows in (("train", pairs), ("eval", eval_pairs)):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(p.to_record()) + "\n" for p in rows))
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(f"model: {{name_or_path: {tiny_model_dir}}}\n"
                        f"data: {{train: {tmp_path / 'train.jsonl'}, eval: {tmp_path / 'eval.jsonl'}, "
                        f"cache_dir: {tmp_path / 'cache'}}}\n"
                        "reference: {source: precomputed}\n"
                        "train: {batch_size: 4, learning_rate: 1e-3, progress_bar: false, log_every: 1}\n")
    out = tmp_path / "run"
    assert main(["train-dpo", "--config", str(run_yaml), f"train.output_dir={out}"]) == 2  # not precomputed yet
    assert "precompute-ref" in capsys.readouterr().err
    assert main(["precompute-ref", "--config", str(run_yaml), f"train.output_dir={out}"]) == 0
    assert main(["train-dpo", "--config", str(run_yaml), f"train.output_dir={out}", "train.max_steps=2"]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2] and "eval_rewards/accuracies" in rows[-1]
    capsys.readouterr()
    assert main(["eval-dpo", "--model", str(out / "model"), "--data", str(tmp_path / "eval.jsonl"),
                 "--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "accuracy (labels)" in printed and "beta 0.1" in printed
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["n_pairs"] == 6 and report["metrics"]["rewards/margins"] == pytest.approx(rows[-1]["eval_rewards/margins"])
    # the eval split's precomputed artefact as the reference gives the same numbers as the reference model
    (eval_artefact,) = [p for p in (tmp_path / "cache" / "ref_logps").glob("*.safetensors")
                        if read_ref_logps(p).metadata["n_pairs"] == "6"]
    assert main(["eval-dpo", "--model", str(out / "model"), "--data", str(tmp_path / "eval.jsonl"),
                 "--reference", str(eval_artefact), "--out", str(tmp_path / "eval2")]) == 0
    again = json.loads((tmp_path / "eval2" / "eval.json").read_text())
    assert again["metrics"]["rewards/margins"] == pytest.approx(report["metrics"]["rewards/margins"], rel=1e-5)
    # and the training split's artefact is refused for the eval pairs, naming the data hash
    (train_artefact,) = [p for p in (tmp_path / "cache" / "ref_logps").glob("*.safetensors") if p != eval_artefact]
    capsys.readouterr()
    assert main(["eval-dpo", "--model", str(out / "model"), "--data", str(tmp_path / "eval.jsonl"),
                 "--reference", str(train_artefact)]) == 2
    assert "data hash" in capsys.readouterr().err


@pytest.mark.parametrize("forward", ["packed", "prefix_shared"])
def test_packed_and_prefix_shared_forwards_train_like_padded(tiny_model_dir, pairs, tmp_path, forward):
    padded = run(config(tiny_model_dir, tmp_path / "padded", loss={"name": "ipo"}, train={"max_steps": 3}), pairs)
    other = run(config(tiny_model_dir, tmp_path / forward, loss={"name": "ipo"},
                       train={"max_steps": 3, "forward": forward}), pairs)
    for a, b in zip(steps(padded.history), steps(other.history)):
        for key in ("loss", "logps/chosen", "logratios/gap_raw", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-5), key  # same maths, other float order


def test_world_pipeline_at_tiny_size(tmp_path):
    from marginkit.data.world import WorldConfig, make_world
    from marginkit.study.world_pipeline import (
        PIPELINE_SIZES,
        WorldPipelineConfig,
        run_world_pipeline,
        sample_responses,
    )

    cfg = WorldPipelineConfig(out=str(tmp_path), size="tiny", seed=0)
    result = run_world_pipeline(cfg, console=lambda _: None)
    assert [s.name for s in result.scores] == ["base policy (world sampler)", "sft", "dpo"]
    base, sft, dpo = result.scores
    assert base.kl_to_sft is None and sft.kl_to_sft == 0.0  # the SFT model against itself: identical log-probs
    assert all(s.n_samples == 8 * 2 for s in result.scores) and all(math.isfinite(s.true_reward) for s in result.scores)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["scores"]) == 3 and summary["dpo_test_pairs"] == pytest.approx(result.dpo_pairs)

    # Every number of the DPO policy, recomputed from what the pipeline saved: the world it built (same config),
    # the DPO and SFT folders, and the samples file.
    size = PIPELINE_SIZES["tiny"]
    world = make_world(WorldConfig(seed=0, n_train=size.n_train, n_val=200, n_test=size.n_test_pairs, noise=cfg.noise))
    policy = AutoModelForCausalLM.from_pretrained(result.dpo_dir).eval()
    reference = AutoModelForCausalLM.from_pretrained(result.sft_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(result.dpo_dir)
    tokenize = TokenizeConfig(max_length=64)  # the pipeline's DPO tokenisation (DPO_DEFAULTS)

    # the saved policy is the trained one: it reproduces the log-probs its run logged at the end, on world.val[:200]
    (last_eval,) = [r for r in result.dpo_history if "eval_logps/chosen" in r]
    val = encode_pairs(world.val[:200], tokenizer, tokenize, Ledger())
    val_chosen, val_rejected = sequence_logps(policy, tokenizer, val)
    # absolute 1e-5 on a mean of about -50: float32 sums in other batch shapes differ by ~1e-7 here, while saving the
    # weights rounded to bf16 moves these means by ~3e-4
    assert float(val_chosen.mean()) == pytest.approx(last_eval["eval_logps/chosen"], rel=0, abs=1e-5)
    assert float(val_rejected.mean()) == pytest.approx(last_eval["eval_logps/rejected"], rel=0, abs=1e-5)

    # true reward of the DPO samples: their mean, and the percentile bootstrap of the per-sample rewards
    # (500 resamples, seed = the pipeline's seed); mean length in words
    rows = [json.loads(x) for x in (tmp_path / "samples_dpo.jsonl").read_text().splitlines()]
    prompts, texts = [r["prompt"] for r in rows], [r["response"] for r in rows]
    reward = world.true_rewards(prompts, texts)
    assert dpo.true_reward == pytest.approx(reward.mean())
    assert (dpo.true_reward_low, dpo.true_reward_high) == pytest.approx(percentile_bootstrap(reward, 500, 0))
    assert dpo.mean_words == pytest.approx(np.mean([len(t.split()) for t in texts]))

    # the samples are the saved policy's (seeded), and KL to SFT = mean over them of log π(y|x) - log π_sft(y|x)
    test_prompts = world.sample_prompts(size.n_prompts, seed=0, split="test")
    assert prompts == [p for p in test_prompts for _ in range(2)]
    again, sampled = sample_responses(policy, tokenizer, test_prompts, 2, 0, cfg.max_new_tokens)
    assert again == texts
    lp_policy, _ = sequence_logps(policy, tokenizer, sampled)
    lp_sft, _ = sequence_logps(reference, tokenizer, sampled)
    assert dpo.kl_to_sft == pytest.approx(float((lp_policy - lp_sft).mean()), rel=1e-4, abs=1e-6)

    # implicit-reward accuracy on the test pairs: Δ = β ((π_c - ρ_c) - (π_r - ρ_r)), β = 0.1, SFT as reference;
    # against the labels, and against the true preference (sign of the gold gap, true ties left out)
    test = encode_pairs(world.test, tokenizer, tokenize, Ledger())
    chosen, rejected = sequence_logps(policy, tokenizer, test)
    ref_chosen, ref_rejected = sequence_logps(reference, tokenizer, test)
    gap = (0.1 * ((chosen - ref_chosen) - (rejected - ref_rejected))).numpy()
    assert np.abs(gap).min() > 1e-7  # no pair within rounding of a tie
    assert result.dpo_pairs["accuracy"] == pytest.approx(outcomes(gap).mean())
    gold = np.array([e.gold_gap for e in test])
    decided = gold != 0
    assert result.dpo_pairs["accuracy_true"] == pytest.approx(outcomes(np.sign(gold) * gap)[decided].mean())


def test_sampled_rows_are_the_exact_tokens(tiny_model_dir, word_tokenizer):
    from marginkit.study.world_pipeline import sample_responses, sequence_logps_of

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompts = ["please help me choose", "the question is about cats"]
    texts, rows = sample_responses(model, word_tokenizer, prompts, n=3, seed=5, max_new_tokens=6)
    again, rows2 = sample_responses(model, word_tokenizer, prompts, n=3, seed=5, max_new_tokens=6)
    assert texts == again and [r.chosen_ids for r in rows] == [r.chosen_ids for r in rows2]  # seeded
    eos = word_tokenizer.eos_token_id
    for i, row in enumerate(rows):
        prompt = [word_tokenizer.bos_token_id] + word_tokenizer(prompts[i // 3], add_special_tokens=False)["input_ids"]
        assert row.chosen_ids[:row.prompt_len] == prompt  # the prompt exactly as training tokenises it
        response = row.chosen_ids[row.prompt_len:]
        assert response[-1] == eos or len(response) == 6  # ends at EOS or at the length cap
        assert eos not in response[:-1]
        assert word_tokenizer.decode([t for t in response if t != eos], skip_special_tokens=True).strip() == texts[i]
    assert sequence_logps_of(model, rows, word_tokenizer.pad_token_id).shape == (6,)


def test_mask_audit_runs_first_and_catches_an_unshifted_mask(monkeypatch, tiny_model_dir, pairs, tmp_path):
    import marginkit.train.setup as setup
    from marginkit.diagnostics.mask_audit import MaskAuditError
    from marginkit.models.logprobs import SequenceLogps

    def unshifted(logits, input_ids, response_mask, chunk_size=None):  # seed 001's silent bug: the mask not shifted
        lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        return SequenceLogps((lp * response_mask[:, :-1]).sum(-1), response_mask.sum(-1).float())

    messages: list[str] = []
    train_dpo(config(tiny_model_dir, tmp_path / "ok", train={"max_steps": 1}), pairs, console=messages.append)
    assert any("the loss covers exactly the response tokens" in m for m in messages)
    monkeypatch.setattr(setup, "sequence_logps", unshifted)
    with pytest.raises(MaskAuditError, match=r"response_mask\[:, 1:\]"):
        run(config(tiny_model_dir, tmp_path / "a"), pairs)
    messages.clear()
    train_dpo(config(tiny_model_dir, tmp_path / "b", mask_audit="warn", train={"max_steps": 1}), pairs,
              console=messages.append)
    assert any(m.startswith("WARNING loss mask is wrong") for m in messages)


def test_odpo_offsets_from_a_trained_reward_models_gap(tiny_model_dir, pairs, tmp_path):
    """The bridge between the two halves: ODPO's per-pair offset is a trained RM's reward gap (the confidence
    margin's reference source), scored once before training and looked up by pair index."""
    from _engine_helpers import run_config, train

    rm = train(run_config(tiny_model_dir, tmp_path / "rm", batch_size=4, max_steps=4), pairs)
    margin = {"name": "confidence", "confidence": {"source": "reference", "reference_model": str(rm.model_dir),
                                                   "filter": "none"}}
    result = run(config(tiny_model_dir, tmp_path / "dpo", loss={"name": "odpo"}, margin=margin,
                        train={"max_steps": 2, "batch_size": 16}), pairs)
    first = steps(result.history)[0]
    # m_i = max(RM gap_i, 0) with the default clip at 0; at h = 0 the loss is the mean of softplus(m_i)
    from marginkit.evaluate.scorer import score_encoded
    from marginkit.models.reward import ModelConfig, load_reward_model

    model, tok = load_reward_model(ModelConfig(name_or_path=str(rm.model_dir), head_init="keep"))
    c, r = score_encoded(model, encode_pairs(pairs, tok, TokenizeConfig(), Ledger()), tok.pad_token_id)
    m = torch.from_numpy(c - r).float().clamp(min=0)
    assert first["target_margins/mean"] == pytest.approx(float(m.mean()), rel=1e-4)
    assert first["loss"] == pytest.approx(float(torch.nn.functional.softplus(m).mean()), rel=1e-4)
    with pytest.raises(ConfigError, match="margin.name=ot reads reward-model hidden states"):
        config(tiny_model_dir, tmp_path / "ot", loss={"name": "odpo"}, margin={"name": "ot"})


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
def test_dropout_is_disabled_so_the_first_loss_is_ln2(word_tokenizer, pairs, tmp_path, arch):
    model_dir = make_tiny_model_dir(tmp_path / arch, word_tokenizer, arch=arch, hidden_size=32, dropout=0.2)
    on = run(config(model_dir, tmp_path / "on", train={"max_steps": 1}), pairs)
    assert steps(on.history)[0]["loss"] == pytest.approx(LN2, abs=1e-6)  # dropout zeroed: policy = reference
    off = run(config(model_dir, tmp_path / "off", model={"name_or_path": str(model_dir), "disable_dropout": False},
                     train={"max_steps": 1}), pairs)
    assert abs(steps(off.history)[0]["loss"] - LN2) > 1e-4  # with dropout the policy differs from its reference
