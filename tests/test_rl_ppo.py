"""train-ppo: PPO's per-token rewards and whitening by hand, the value model, and the loop on a tiny world LM (a few
steps, learning rate 0 changes nothing, resume equals the uninterrupted run, refusals, CLI)."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from _engine_helpers import load_weights, one_torch_thread
from _rl_helpers import make_world_lm, metric_rows, rl_config
from marginkit.configlib import ConfigError, from_dict, load_config
from marginkit.train.rl import train_ppo
from marginkit.train.rl_config import GRPORunConfig, PPORunConfig
from marginkit.train.rl_value import (
    VALUE_DIR,
    VALUE_FILE,
    load_value_model,
    ppo_advantages,
    token_rewards,
    whiten,
)

T = torch.tensor


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


def test_token_rewards_hand_worked():
    # β = 0.5; row 0: prompt position, then 3 completion tokens with k1 = [0.1, 0.2, 0.3], reward R = 1:
    #   r = [0, -0.05, -0.1, -0.15 + 1] = [0, -0.05, -0.1, 0.85]
    # row 1: one completion token then padding, k1 = 0.4, R = -2: r = [-0.2 - 2, 0, 0, 0] = [-2.2, 0, 0, 0]
    kl = T([[9.0, 0.1, 0.2, 0.3], [0.4, 9.0, 9.0, 9.0]])  # 9s sit off the mask and must not count
    mask = T([[0, 1, 1, 1], [1, 0, 0, 0]])
    assert_close(token_rewards(T([1.0, -2.0]), kl, mask, beta=0.5), T([[0.0, -0.05, -0.1, 0.85], [-2.2, 0.0, 0.0, 0.0]]))


def test_whiten_over_the_mask():
    # masked values [1, 2, 3]: mean 2, population std sqrt(2/3) -> [-1.2247, 0, 1.2247]; off the mask 0
    out = whiten(T([[1.0, 2.0, 100.0], [3.0, -7.0, -7.0]]), T([[1, 1, 0], [1, 0, 0]]))
    s = (2.0 / 3.0) ** 0.5
    assert_close(out, T([[-1 / s, 0.0, 0.0], [1 / s, 0.0, 0.0]]), atol=1e-6, rtol=1e-5)


def test_ppo_advantages_without_whitening_are_gae_of_the_token_rewards():
    # γ = λ = 1, V = 0: A_t = Σ_{s >= t} r_s; tokens r = [-0.05, -0.1, 0.85] -> A = [0.7, 0.75, 0.85] = returns
    kl, mask = T([[0.0, 0.1, 0.2, 0.3]]), T([[0, 1, 1, 1]])
    adv, ret = ppo_advantages(T([1.0]), kl, torch.zeros(1, 4), mask, beta=0.5, gamma=1.0, lam=1.0,
                              whiten_advantages=False)
    assert_close(adv, T([[0.0, 0.7, 0.75, 0.85]]))
    assert_close(ret, adv)


@pytest.fixture(scope="module")
def world_lm(tmp_path_factory):
    return make_world_lm(tmp_path_factory.mktemp("ppo_lm") / "lm")


def test_value_model_starts_at_zero(world_lm):
    model = load_value_model(str(world_lm))
    ids = torch.tensor([[2, 5, 6, 7]])
    assert torch.equal(model(ids, torch.ones_like(ids)), torch.zeros(1, 4))


def config(model_dir, out, **sections) -> PPORunConfig:
    """rl_helpers' run with PPO's rollout: 4 prompts x 1 completion."""
    rollout = {"prompts_per_step": 4, "num_generations": 1, **sections.pop("rollout", {})}
    return rl_config(model_dir, out, PPORunConfig, rollout=rollout, **sections)


rows = metric_rows


def test_ppo_runs_a_few_steps_and_saves_the_value_model(tmp_path, world_lm):
    result = train_ppo(config(world_lm, tmp_path / "run"), console=lambda _: None)
    logged = rows(tmp_path / "run")
    assert [r["step"] for r in logged] == [1, 2, 3]
    assert {"reward", "kl", "entropy", "clip_ratio", "value/loss", "value/clip_ratio", "gold/reward"} <= set(logged[0])
    assert "reward_std" not in logged[0]  # one completion per prompt: no group statistics
    assert logged[-1]["kl"] > 0 and logged[-1]["value/loss"] > 0
    assert (result.model_dir / VALUE_DIR / VALUE_FILE).is_file()


def test_ppo_learning_rate_zero_changes_nothing(tmp_path, world_lm):
    cfg = config(world_lm, tmp_path / "run", loss={"num_minibatches": 1}, train={"learning_rate": 0.0})
    result = train_ppo(cfg, console=lambda _: None)
    before, after = load_weights(world_lm), load_weights(result.model_dir)
    assert all(torch.equal(before[k], after[k]) for k in before)
    value = load_value_model(str(world_lm))
    fresh = {k: v.clone() for k, v in value.state_dict().items()}
    from marginkit.train.rl_value import load_value_weights

    load_value_weights(value, result.model_dir / VALUE_DIR)
    assert all(torch.equal(fresh[k], v) for k, v in value.state_dict().items())  # still the zero head
    for r in rows(tmp_path / "run"):
        assert r["kl"] == 0.0 and r["clip_ratio"] == 0.0


def test_ppo_resume_equals_the_uninterrupted_run(tmp_path, world_lm):
    cfg = config(world_lm, tmp_path / "run", train={"max_steps": 4, "save_every": 2})
    train_ppo(cfg, console=lambda _: None)
    first = rows(tmp_path / "run")
    weights = load_weights(tmp_path / "run" / "model")
    value = (tmp_path / "run" / "model" / VALUE_DIR / VALUE_FILE).read_bytes()
    cfg.train.resume_from = str(tmp_path / "run" / "checkpoints" / "step-000002")
    train_ppo(cfg, console=lambda _: None)
    drop = {"time/rollout_seconds", "time/update_seconds"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in first] == [
        {k: v for k, v in r.items() if k not in drop} for r in rows(tmp_path / "run")]
    after = load_weights(tmp_path / "run" / "model")
    assert all(torch.equal(weights[k], after[k]) for k in weights)
    assert (tmp_path / "run" / "model" / VALUE_DIR / VALUE_FILE).read_bytes() == value


@pytest.mark.parametrize("cls, override, message", [
    (PPORunConfig, "loss.advantage=rloo", "train-ppo's advantages come from its value model"),
    (PPORunConfig, "loss.kl_in=loss", "train-ppo puts the KL penalty in the per-token reward"),
    (PPORunConfig, "value.lam=2", "value.lam=2"),
    (GRPORunConfig, "loss.advantage=gae loss.scale_rewards=false", "use marginkit train-ppo"),
])
def test_ppo_config_refusals(cls, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(cls, None, override.split())


def test_cli_train_ppo(tmp_path, world_lm, capsys):
    from marginkit.cli import main

    code = main(["train-ppo", f"model.name_or_path={world_lm}", "reward=world", "rollout.prompts=world:train",
                 "rollout.prompt_pool=8", "rollout.prompts_per_step=2", "rollout.num_generations=1",
                 "rollout.max_new_tokens=4", "train.max_steps=1", f"train.output_dir={tmp_path / 'cli'}",
                 "train.progress_bar=false"])
    assert code == 0 and "saved policy to" in capsys.readouterr().out


def test_docs_rl_md_names_exactly_the_logged_metrics(tmp_path, world_lm):
    """docs/rl.md's metrics table lists every name train-grpo and train-ppo log on the world, and nothing else."""
    import re
    from pathlib import Path

    from marginkit.train.rl import train_grpo

    table = (Path(__file__).resolve().parents[1] / "docs" / "rl.md").read_text().split("## Metrics")[1]
    documented = set(re.findall(r"^\| `([^`]+)` \|", table, flags=re.M))
    train_ppo(config(world_lm, tmp_path / "ppo", train={"max_steps": 1}), console=lambda _: None)
    grpo = from_dict(GRPORunConfig, {"model": {"name_or_path": str(world_lm)}, "reward": "world",
                                     "rollout": {"prompts": "world:train", "prompt_pool": 4, "prompts_per_step": 2,
                                                 "num_generations": 2, "max_new_tokens": 4},
                                     "train": {"output_dir": str(tmp_path / "grpo"), "max_steps": 1,
                                               "progress_bar": False},
                                     "eval": {"prompts": "world:test", "n_prompts": 2}})
    train_grpo(grpo, console=lambda _: None)
    logged = set()
    for run in ("ppo", "grpo"):
        for row in rows(tmp_path / run):
            logged |= set(row) - {"step"}
    assert logged == documented


def salad_reward(prompts, completions):
    return [c.split().count("salad") / 4 for c in completions]


def test_ppo_positive_control_the_rewarded_word_takes_over(tmp_path, world_lm):
    # as tests/test_rl_train.py's control (measured for PPO: 0.0-0.03 over steps 1-5, 1.0 from step 19 on)
    cfg = config(world_lm, tmp_path / "run", reward="test_rl_ppo:salad_reward",
                 rollout={"prompts_per_step": 4, "num_generations": 4, "max_new_tokens": 4},
                 loss={"beta": 0.0, "num_minibatches": 1}, train={"max_steps": 40, "learning_rate": 3e-2})
    train_ppo(cfg, console=lambda _: None)
    reward = [r["reward"] for r in rows(tmp_path / "run")]
    assert sum(reward[:5]) / 5 < 0.1 and sum(reward[-5:]) / 5 > 0.8, reward
