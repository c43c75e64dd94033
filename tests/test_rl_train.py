"""train-grpo / train-rloo on a tiny GPT-NeoX with the gold world's vocabulary, on CPU: a few steps complete and log
TRL's metric names; with learning rate 0 the policy and its samples are unchanged and KL = 0; a resumed run
equals the uninterrupted one; the configs refuse what cannot work; the CLI runs."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from _engine_helpers import load_weights, make_pairs, one_torch_thread, run_config, train, vocab_words
from _rl_helpers import make_world_lm, metric_rows, rl_config
from marginkit.configlib import ConfigError, load_config
from marginkit.data.world import WorldConfig, make_world, true_rewards
from marginkit.models.generation import HFGenerator
from marginkit.models.policy import PolicyConfig, load_policy
from marginkit.train.engine import TrainingInterrupted
from marginkit.train.rl import load_prompts, step_prompts, train_grpo, train_rloo
from marginkit.train.rl_config import GRPORunConfig, RLOORunConfig

TRL_NAMES = {"reward", "reward_std", "frac_reward_zero_std", "kl", "entropy", "clip_ratio", "loss", "grad_norm",
             "learning_rate", "completions/mean_length", "completions/min_length", "completions/max_length",
             "completions/clipped_ratio", "completions/mean_terminated_length"}


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def world_lm(tmp_path_factory):
    return make_world_lm(tmp_path_factory.mktemp("world_lm") / "lm")


config, rows = rl_config, metric_rows


def test_grpo_runs_a_few_steps_and_logs_trl_names(tmp_path, world_lm):
    result = train_grpo(config(world_lm, tmp_path / "run"), console=lambda _: None)
    logged = rows(tmp_path / "run")
    assert [r["step"] for r in logged] == [1, 2, 3]
    assert TRL_NAMES <= set(logged[0])
    assert {"gold/reward", "gold/reward_std", "time/rollout_seconds", "time/update_seconds"} <= set(logged[0])
    for r in logged:
        assert r["reward"] == r["gold/reward"]  # reward=world: the reward is the gold reward
        assert 1 <= r["completions/min_length"] <= r["completions/mean_length"] <= r["completions/max_length"] <= 8
        assert r["kl"] >= 0 and r["entropy"] > 0 and 0 <= r["clip_ratio"] <= 1
    assert logged[-1]["kl"] > 0 and logged[-1]["clip_ratio"] > 0  # at lr 1e-2 the policy has moved and is clipped
    model, _ = load_policy(PolicyConfig(name_or_path=str(result.model_dir)))  # a plain HF folder
    assert sum(p.numel() for p in model.parameters()) > 0


def test_learning_rate_zero_leaves_policy_samples_and_kl_unchanged(tmp_path, world_lm):
    # one minibatch per rollout: the optimisation forward is the rollout's forward on the same rows and weights
    cfg = config(world_lm, tmp_path / "run", loss={"num_iterations": 2, "num_minibatches": 1},
                 train={"learning_rate": 0.0})
    result = train_grpo(cfg, console=lambda _: None)
    before, after = load_weights(world_lm), load_weights(result.model_dir)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    for r in rows(tmp_path / "run"):
        assert r["kl"] == 0.0 and r["clip_ratio"] == 0.0
        assert r["ratio"] == pytest.approx(1.0, abs=1e-6)
    prompts = step_prompts(load_prompts(cfg)[0], 2, 1, 0)
    samples = []
    for folder in (world_lm, result.model_dir):
        model, tok = load_policy(PolicyConfig(name_or_path=str(folder)))
        samples.append(HFGenerator(model, tok).generate(prompts, n=3, max_new_tokens=8, temperature=1.0, seed=5))
    assert torch.equal(samples[0].input_ids, samples[1].input_ids) and samples[0].texts == samples[1].texts


def test_resume_equals_the_uninterrupted_run(tmp_path, world_lm):
    # log_every 3 with save_every 2: the checkpoint closes the logging window (rows at steps 2, 3, 4)
    full = config(world_lm, tmp_path / "full", train={"max_steps": 4, "save_every": 2, "log_every": 3})
    train_grpo(full, console=lambda _: None)
    resumed = config(world_lm, tmp_path / "full", train={"max_steps": 4, "save_every": 2, "log_every": 3,
                                                         "resume_from": str(tmp_path / "full" / "checkpoints" / "step-000002")})
    first = rows(tmp_path / "full")
    weights = load_weights(tmp_path / "full" / "model")
    train_grpo(resumed, console=lambda _: None)  # trains steps 3 and 4 again from the step-2 checkpoint
    again = rows(tmp_path / "full")
    assert [r["step"] for r in first] == [r["step"] for r in again] == [2, 3, 4]
    drop = {"time/rollout_seconds", "time/update_seconds"}
    for a, b in zip(first, again):
        assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}
    after = load_weights(tmp_path / "full" / "model")
    assert all(torch.equal(weights[k], after[k]) for k in weights)


CALLS = {"n": 0, "signal_at": 0}


def world_then_sigint(prompts, completions):
    """The world's true reward; on call number CALLS["signal_at"], a SIGINT to this process (a Ctrl-C mid-rollout)."""
    CALLS["n"] += 1
    if CALLS["n"] == CALLS["signal_at"]:
        os.kill(os.getpid(), signal.SIGINT)
    return true_rewards(prompts, completions)


def test_sigint_checkpoints_and_the_resumed_run_equals_the_uninterrupted_one(tmp_path, world_lm):
    full = train_grpo(config(world_lm, tmp_path / "full", train={"max_steps": 4}), console=lambda _: None)
    CALLS.update(n=0, signal_at=2)  # during step 2's rollout: step 2 finishes, then the run stops
    cut = config(world_lm, tmp_path / "cut", reward="test_rl_train:world_then_sigint", train={"max_steps": 4})
    with pytest.raises(TrainingInterrupted, match="after optimizer step 2 of 4") as stopped:
        train_grpo(cut, console=lambda _: None)
    assert stopped.value.exit_code == 130 and (tmp_path / "cut" / "checkpoints" / "step-000002").is_dir()
    CALLS.update(signal_at=0)
    cut.train.resume_from = "latest"
    train_grpo(cut, console=lambda _: None)
    drop = {"time/rollout_seconds", "time/update_seconds"}
    a, b = rows(tmp_path / "full"), rows(tmp_path / "cut")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [{k: v for k, v in r.items() if k not in drop} for r in a] == [
        {k: v for k, v in r.items() if k not in drop} for r in b]
    before, after = load_weights(full.model_dir), load_weights(tmp_path / "cut" / "model")
    assert all(torch.equal(before[k], after[k]) for k in before)


def salad_reward(prompts, completions):
    """The fraction of a 4-token completion's words that are "salad": about 1/300 for the random LM."""
    return [c.split().count("salad") / 4 for c in completions]


@pytest.mark.parametrize("cls, loss", [
    (GRPORunConfig, {}),
    (GRPORunConfig, {"scale_rewards": False, "loss_type": "dr_grpo"}),  # Dr. GRPO
    (RLOORunConfig, {}),
])
def test_positive_control_the_rewarded_word_takes_over(tmp_path, world_lm, cls, loss):
    # A sign or mask error in the advantages, the surrogate or the log-probs would leave the reward at 0
    # (measured: 0.0-0.03 over steps 1-5, 1.0 from step 25 on for GRPO).
    cfg = config(world_lm, tmp_path / "run", cls=cls, reward="test_rl_train:salad_reward",
                 rollout={"prompts_per_step": 4, "num_generations": 4, "max_new_tokens": 4},
                 loss={"beta": 0.0, "num_iterations": 1, "num_minibatches": 1, **loss},
                 train={"max_steps": 40, "learning_rate": 3e-2})
    (train_rloo if cls is RLOORunConfig else train_grpo)(cfg, console=lambda _: None)
    reward = [r["reward"] for r in rows(tmp_path / "run")]
    assert sum(reward[:5]) / 5 < 0.1 and sum(reward[-5:]) / 5 > 0.8, reward


def test_held_out_evaluation_rows_leave_training_unchanged(tmp_path, world_lm):
    plain = config(world_lm, tmp_path / "plain", train={"max_steps": 4})
    train_grpo(plain, console=lambda _: None)
    evaluated = config(world_lm, tmp_path / "eval", train={"max_steps": 4},
                       eval={"prompts": "world:test", "n_prompts": 4, "num_generations": 2, "every": 2})
    train_grpo(evaluated, console=lambda _: None)
    logged = rows(tmp_path / "eval")
    evals = [r for r in logged if "eval_reward" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert set(evals[0]) == {"step", "eval_reward", "eval_gold/reward", "eval_kl", "eval_completions/mean_length"}
    assert evals[0]["eval_reward"] == evals[0]["eval_gold/reward"]  # reward=world
    assert evals[-1]["eval_kl"] > 0  # the policy has moved from its reference
    drop = {"time/rollout_seconds", "time/update_seconds"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in logged if "eval_reward" not in r] == [
        {k: v for k, v in r.items() if k not in drop} for r in rows(tmp_path / "plain")]  # sampling RNG forked


def test_held_out_evaluation_at_learning_rate_zero_repeats_itself_with_zero_kl(tmp_path, world_lm):
    cfg = config(world_lm, tmp_path / "run", train={"max_steps": 2, "learning_rate": 0.0},
                 eval={"prompts": "world:test", "n_prompts": 4, "every": 1})
    train_grpo(cfg, console=lambda _: None)
    evals = [r for r in rows(tmp_path / "run") if "eval_reward" in r]
    assert len(evals) == 2 and evals[0]["eval_kl"] == evals[1]["eval_kl"] == 0.0
    assert {k: v for k, v in evals[0].items() if k != "step"} == {k: v for k, v in evals[1].items() if k != "step"}


def test_rloo_runs_with_the_kl_penalty_in_the_reward(tmp_path, world_lm):
    cfg = config(world_lm, tmp_path / "rloo", cls=RLOORunConfig, train={"max_steps": 2})
    assert (cfg.loss.advantage, cfg.loss.kl_in, cfg.loss.kl_estimator, cfg.loss.beta) == ("rloo", "reward", "k1", 0.05)
    train_rloo(cfg, console=lambda _: None)
    assert [r["step"] for r in rows(tmp_path / "rloo")] == [1, 2]


def test_grpo_against_an_rm_folder_logs_the_gold_reward_beside_it(tmp_path, world_lm, tiny_model_dir, word_tokenizer):
    rm_cfg = run_config(tiny_model_dir, tmp_path / "rm", batch_size=2, max_steps=3)
    rm_cfg.data.tokenize.max_length = 64
    rm = train(rm_cfg, make_pairs(vocab_words(word_tokenizer), 8, seed=5)).model_dir
    train_grpo(config(world_lm, tmp_path / "run", reward=str(rm), train={"max_steps": 2}), console=lambda _: None)
    for r in rows(tmp_path / "run"):
        assert r["reward"] != r["gold/reward"]  # the RM's score, with the world's true reward logged beside it


def test_grpo_reads_prompts_from_a_jsonl_file(tmp_path, world_lm):
    world = make_world(WorldConfig(seed=0, n_train=4, n_val=0, n_test=0))
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p.prompt}) + "\n" for p in world.train))
    cfg = config(world_lm, tmp_path / "run", rollout={"prompts": str(path)}, train={"max_steps": 2})
    assert load_prompts(cfg) == ([p.prompt for p in world.train], False)
    train_grpo(cfg, console=lambda _: None)
    assert "gold/reward" not in rows(tmp_path / "run")[0]  # prompts off the world: no gold reward


def test_a_folder_holding_a_run_is_refused(tmp_path, world_lm):
    cfg = config(world_lm, tmp_path / "run", train={"max_steps": 1})
    train_grpo(cfg, console=lambda _: None)
    with pytest.raises(ConfigError, match="already holds a run"):
        train_grpo(cfg, console=lambda _: None)


@pytest.mark.parametrize("override, message", [
    ("rollout.num_generations=1", "num_generations=1: must be >= 2"),
    ("loss.num_minibatches=5", "must divide the 32 completions"),
    ("loss.advantage=rloo", "set loss.scale_rewards=false"),
    ("loss.beta=-1", "loss.beta=-1"),
    ("loss.epsilon=1.5", "loss.epsilon=1.5"),
    ("train.learning_rate=-1", "train.learning_rate=-1"),
    ("loss.loss_type=mean", "loss.loss_type"),
])
def test_configs_refuse_what_cannot_work(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(GRPORunConfig, None, [override])


def test_cli_train_grpo(tmp_path, world_lm, capsys):
    from marginkit.cli import main

    code = main(["train-grpo", f"model.name_or_path={world_lm}", "reward=world", "rollout.prompts=world:train",
                 "rollout.prompt_pool=8", "rollout.prompts_per_step=2", "rollout.num_generations=2",
                 "rollout.max_new_tokens=4", "train.max_steps=1", f"train.output_dir={tmp_path / 'cli'}",
                 "train.progress_bar=false"])
    assert code == 0
    assert "saved policy to" in capsys.readouterr().out
    assert (tmp_path / "cli" / "model" / "config.json").exists()
