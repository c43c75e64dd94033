"""rewards.py: the three reward sources (gold world, RM folder scored as eval-rm scores, module:function) and
the refusals (an unknown spec, a wrong count, a non-finite value)."""

from __future__ import annotations

import numpy as np
import pytest

from _engine_helpers import make_pairs, one_torch_thread, run_config, train, vocab_words
from marginkit.configlib import ConfigError
from marginkit.data.schema import Pair
from marginkit.data.world import WorldConfig, make_world, true_rewards
from marginkit.evaluate.rm_eval import EvalConfig, evaluate_rm_dir
from marginkit.rewards import CallableReward, RMFolderReward, WorldReward, load_reward


def length_reward(prompts, completions):
    return [float(len(c.split())) for c in completions]


def short_reward(prompts, completions):
    return [1.0]


def nan_reward(prompts, completions):
    return [float("nan")] * len(completions)


def test_world_reward_is_the_true_reward():
    world = make_world(WorldConfig(seed=0, n_train=4, n_val=0, n_test=0))
    prompts = [p.prompt for p in world.train]
    completions = [p.chosen for p in world.train]
    reward = load_reward("world")
    assert isinstance(reward, WorldReward)
    np.testing.assert_array_equal(reward(prompts, completions), true_rewards(prompts, completions))


def test_callable_reward_by_module_and_function():
    reward = load_reward("test_rl_rewards:length_reward")
    assert isinstance(reward, CallableReward)
    assert reward(["p", "q"], ["a b c", "d"]).tolist() == [3.0, 1.0]
    with pytest.raises(ValueError, match="returned 1 values for 2 completions"):
        load_reward("test_rl_rewards:short_reward")(["p", "q"], ["a", "b"])
    with pytest.raises(ValueError, match="non-finite reward"):
        load_reward("test_rl_rewards:nan_reward")(["p"], ["a"])


@pytest.mark.parametrize("spec", ["", "no_such_thing", "no_such_module_xyz:f", "test_rl_rewards:missing", "a b:c"])
def test_unknown_reward_specs_are_refused_with_the_forms(spec):
    with pytest.raises(ConfigError, match="reward="):
        load_reward(spec)


def test_rm_folder_reward_scores_like_eval_rm(tmp_path, tiny_model_dir, word_tokenizer):
    pairs = make_pairs(vocab_words(word_tokenizer), 8, seed=5)
    cfg = run_config(tiny_model_dir, tmp_path / "rm", batch_size=2, max_steps=3)
    cfg.data.tokenize.max_length = 64
    with one_torch_thread():
        folder = train(cfg, pairs).model_dir
        reward = load_reward(str(folder))
        assert isinstance(reward, RMFolderReward)
        prompts, completions = [p.prompt for p in pairs[:5]], [p.chosen for p in pairs[:5]]  # odd: one slot shared
        got = reward(prompts, completions)
        as_pairs = [Pair(p, c, c) for p, c in zip(prompts, completions)]
        report = evaluate_rm_dir(folder, as_pairs, EvalConfig(swap_test=False, n_boot=10), progress=False)
    np.testing.assert_allclose(got, report.chosen_rewards, atol=1e-5)  # batch shapes differ: float32 rounding
    assert np.ptp(got) > 1e-4  # a trained head scores completions differently
