"""The gold-reward world: a synthetic preference task where every response has a known true reward.

Prompts ask for a meal for a guest with wishes and restrictions; a base policy answers with short
suggestions; the true reward needs the prompt and the response together. See docs/world.md.

    from marginkit.data.world import WorldConfig, make_world
    world = make_world(WorldConfig(seed=0))
    world.train[0], world.true_reward(prompt, response), world.policy.sample(prompts, n=16, seed=0)
"""

from marginkit.data.world.lexicon import tokenize_words, vocabulary
from marginkit.data.world.policy import BasePolicy
from marginkit.data.world.reward import Request, RewardWeights, parse_request, true_reward, true_rewards
from marginkit.data.world.world import World, WorldConfig, format_pair, make_world

__all__ = [
    "WorldConfig",
    "World",
    "make_world",
    "format_pair",
    "BasePolicy",
    "Request",
    "RewardWeights",
    "parse_request",
    "true_reward",
    "true_rewards",
    "tokenize_words",
    "vocabulary",
]
