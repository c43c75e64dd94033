"""The configs of `train-grpo` and `train-rloo` (train/rl.py): rollouts, the RL loss, optimisation, composed into
one run config per command. Every option works or is refused here, at parse time.

Defaults follow TRL's GRPOConfig / RLOOConfig where they exist, except (each says why in its help):
beta 0.04 (DeepSeekMath; TRL GRPO now defaults to 0), loss_type grpo (the paper's per-sequence mean; TRL
now defaults to its token-level "dapo"), learning rate 1e-6 (TRL: 1e-6, the same) with a constant schedule
(TRL: linear decay), and the smaller rollout sizes a CPU run needs (TRL: 8 generations, 256 new tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from marginkit.diagnostics.monitor import RLMonitorConfig
from marginkit.losses.rl import LossAggregation
from marginkit.models.policy import PolicyConfig

__all__ = ["RolloutConfig", "RLEvalConfig", "RLLossConfig", "RLOOLossConfig", "RLReferenceConfig", "RLTrainConfig", "RLOOTrainConfig", "GRPORunConfig",
           "RLOORunConfig", "PPOLossConfig", "ValueConfig", "PPOTrainConfig", "PPORunConfig"]


@dataclass
class RolloutConfig:
    """What is sampled each step: P prompts x K completions."""

    prompts: str = field(default="", metadata={
        "help": "Prompt source: world:SPLIT (prompts of the gold world's train, val or test split) or a JSONL file "
                "(a JSON string or {\"prompt\": text or messages} per line)."})
    world_seed: int = field(default=0, metadata={
        "help": "prompts=world:SPLIT: the world's seed (WorldConfig.seed), which decides which requests each split owns."})
    prompt_pool: int = field(default=2000, metadata={
        "help": "prompts=world:SPLIT: distinct draws in the pool the steps go through (a new order each pass)."})
    prompts_per_step: int = field(default=8, metadata={"help": "P: prompts per rollout batch."})
    num_generations: int = field(default=4, metadata={
        "help": "K: completions per prompt, the group of GRPO's and RLOO's baselines (>= 2 for them; TRL: 8)."})
    max_new_tokens: int = field(default=32, metadata={
        "help": "Completion length cap (TRL's max_completion_length, 256); a completion without EOS by then is "
                "counted in completions/clipped_ratio."})
    max_prompt_length: int | None = field(default=512, metadata={
        "help": "Prompt tokens kept, cut from the left (TRL: 512); None keeps them all."})
    temperature: float = field(default=1.0, metadata={
        "help": "Sampling temperature (> 0); the log-probs are read at the same temperature. No top-k/top-p, so "
                "samples follow the policy's own distribution."})
    template: Literal["auto", "plain", "chat"] = field(default="auto", metadata={
        "help": "Prompt rendering, as tokenize.template: chat template for message prompts (auto), or plain text."})
    generation_batch_size: int = field(default=64, metadata={
        "help": "Rows per `generate` call and per no-grad forward of the old and reference log-probs."})
    seed_per_prompt: bool = field(default=False, metadata={
        "help": "Sample each prompt's K completions with their own seed (seed, step, the prompt's place in the "
                "step), one `generate` call per prompt: the rollouts are then the same on any number of processes "
                "(docs/rl.md, Multi-process). false: one seed per process's share, batched across prompts (faster)."})

    def __post_init__(self) -> None:
        for name in ("prompt_pool", "prompts_per_step", "max_new_tokens", "generation_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"rollout.{name}={getattr(self, name)}: must be >= 1")
        if self.num_generations < 1:
            raise ValueError(f"rollout.num_generations={self.num_generations}: must be >= 1")
        if not self.temperature > 0:
            raise ValueError(f"rollout.temperature={self.temperature}: must be > 0")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ValueError(f"rollout.max_prompt_length={self.max_prompt_length}: must be >= 1 (or None)")

    @property
    def rollout_size(self) -> int:
        """N = P K completions per rollout batch."""
        return self.prompts_per_step * self.num_generations


@dataclass
class RLLossConfig:
    """GRPO's loss (losses/rl.py). Dr. GRPO: scale_rewards=false loss_type=dr_grpo."""

    advantage: Literal["grpo", "rloo", "gae"] = field(default="grpo", metadata={
        "help": "grpo: (r - group mean) / (group std + 1e-4); rloo: r - mean of the other K-1; gae: PPO's, from a "
                "value model (train-ppo only) (losses/rl.py)."})
    scale_rewards: bool = field(default=True, metadata={
        "help": "advantage=grpo: divide by the group's std; false is Dr. GRPO (no difficulty bias). Must be false "
                "with advantage=rloo."})
    loss_type: LossAggregation = field(default="grpo", metadata={
        "help": "Token aggregation: grpo (each completion's token mean, then the mean: the paper), bnpo (mean over "
                "all tokens), dr_grpo (sum / (N max_new_tokens): Dr. GRPO). TRL now defaults to its token-level dapo."})
    epsilon: float = field(default=0.2, metadata={"help": "Ratio clip: clip(rho, 1 - epsilon, 1 + epsilon_high)."})
    epsilon_high: float | None = field(default=None, metadata={
        "help": "Upper ratio clip (DAPO's clip-higher, e.g. 0.28); None: epsilon."})
    num_iterations: int = field(default=1, metadata={
        "help": "Optimisation epochs over each rollout batch (TRL's num_iterations, the paper's mu). Above 1 the "
                "ratio leaves 1 and the clip acts."})
    num_minibatches: int = field(default=1, metadata={
        "help": "Optimizer steps per epoch over a rollout batch (its N completions split evenly)."})
    beta: float = field(default=0.04, metadata={
        "help": "KL coefficient to the frozen reference (DeepSeekMath: 0.04; TRL GRPO now 0). 0: no reference loaded."})
    kl_in: Literal["loss", "reward"] = field(default="loss", metadata={
        "help": "loss: beta * KL per token added to the loss (GRPO); reward: beta * the completion's summed KL "
                "estimate subtracted from its reward before the advantages (RLOO, PPO)."})
    kl_estimator: Literal["k1", "k2", "k3"] = field(default="k3", metadata={
        "help": "Per-token KL estimator (Schulman's k1 = log pi - log ref, k2, k3 >= 0; losses/rl.py)."})

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon < 1.0:
            raise ValueError(f"loss.epsilon={self.epsilon}: must be in [0, 1)")
        if self.epsilon_high is not None and self.epsilon_high < 0:
            raise ValueError(f"loss.epsilon_high={self.epsilon_high}: must be >= 0 (or None)")
        for name in ("num_iterations", "num_minibatches"):
            if getattr(self, name) < 1:
                raise ValueError(f"loss.{name}={getattr(self, name)}: must be >= 1")
        if self.beta < 0:
            raise ValueError(f"loss.beta={self.beta}: must be >= 0 (0: no KL term, no reference)")
        if self.advantage != "grpo" and self.scale_rewards:
            raise ValueError(f"loss.advantage={self.advantage} with loss.scale_rewards=true: only GRPO's advantages "
                             "are divided by the group std; set loss.scale_rewards=false (train-rloo's and "
                             "train-ppo's default)")


@dataclass
class RLOOLossConfig(RLLossConfig):
    """RLLossConfig with RLOO's defaults (Ahmadian et al. 2024; TRL's RLOOConfig): leave-one-out advantages,
    a k1 KL penalty of beta 0.05 in the reward."""

    advantage: Literal["grpo", "rloo", "gae"] = field(default="rloo", metadata={
        "help": "rloo: r - mean of the other K-1; grpo: (r - group mean) / (group std + 1e-4); gae: train-ppo only."})
    scale_rewards: bool = field(default=False, metadata={
        "help": "advantage=grpo only: divide by the group's std (must stay false with advantage=rloo)."})
    beta: float = field(default=0.05, metadata={"help": "KL coefficient to the frozen reference (TRL RLOO: 0.05)."})
    kl_in: Literal["loss", "reward"] = field(default="reward", metadata={
        "help": "reward: beta * the completion's summed KL estimate subtracted from its reward (RLOO); loss: per "
                "token in the loss (GRPO)."})
    kl_estimator: Literal["k1", "k2", "k3"] = field(default="k1", metadata={
        "help": "Per-token KL estimator; k1 = log pi - log ref summed over the completion is RLOO's penalty."})


@dataclass
class PPOLossConfig(RLLossConfig):
    """RLLossConfig with PPO's defaults (TRL's PPOConfig): GAE advantages from a value model, a k1 KL penalty of
    beta 0.05 in the per-token reward, 4 epochs over each rollout."""

    advantage: Literal["grpo", "rloo", "gae"] = field(default="gae", metadata={
        "help": "gae: from the value model (train/rl_value.py); train-ppo takes no other."})
    scale_rewards: bool = field(default=False, metadata={"help": "advantage=grpo only; must stay false for PPO."})
    loss_type: LossAggregation = field(default="bnpo", metadata={
        "help": "Token aggregation of the policy and value losses: bnpo (mean over all tokens: TRL PPO's masked_mean), "
                "grpo, dr_grpo."})
    num_iterations: int = field(default=4, metadata={"help": "Epochs over each rollout (TRL's num_ppo_epochs: 4)."})
    beta: float = field(default=0.05, metadata={"help": "KL coefficient in the per-token reward (TRL PPO kl_coef: 0.05)."})
    kl_in: Literal["loss", "reward"] = field(default="reward", metadata={
        "help": "reward: -beta x KL per token in PPO's per-token reward (train-ppo takes no other)."})
    kl_estimator: Literal["k1", "k2", "k3"] = field(default="k1", metadata={
        "help": "Per-token KL estimator of the penalty (TRL PPO: k1)."})


@dataclass
class ValueConfig:
    """PPO's value model and GAE."""

    name_or_path: str | None = field(default=None, metadata={
        "help": "The backbone the value model starts from (None: the policy's, model.name_or_path; TRL starts it from "
                "the reward model)."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss (TRL: 0.1)."})
    cliprange_value: float | None = field(default=0.2, metadata={
        "help": "Value clipping around the rollout's values (TRL: 0.2); None: the plain squared error."})
    gamma: float = field(default=1.0, metadata={"help": "Discount (TRL: 1.0)."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda (TRL: 0.95)."})
    whiten_advantages: bool = field(default=True, metadata={
        "help": "Whiten the advantages over the rollout's completion tokens (TRL does)."})

    def __post_init__(self) -> None:
        if self.vf_coef < 0:
            raise ValueError(f"value.vf_coef={self.vf_coef}: must be >= 0")
        if self.cliprange_value is not None and self.cliprange_value < 0:
            raise ValueError(f"value.cliprange_value={self.cliprange_value}: must be >= 0 (or None)")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ValueError(f"value.gamma={self.gamma}, value.lam={self.lam}: both must be in [0, 1]")


@dataclass
class RLEvalConfig:
    """A held-out evaluation during training: fixed prompts, fixed sampling seed, every `every` steps and at the end."""

    prompts: str = field(default="", metadata={
        "help": "Evaluation prompts: world:SPLIT (e.g. world:test) or a JSONL file; empty: no evaluation."})
    n_prompts: int = field(default=64, metadata={"help": "Prompts evaluated (the first n of the source)."})
    num_generations: int = field(default=2, metadata={"help": "Completions sampled per evaluation prompt."})
    every: int = field(default=0, metadata={"help": "Evaluate every k rollout steps (0: only after the last)."})

    def __post_init__(self) -> None:
        for name in ("n_prompts", "num_generations"):
            if getattr(self, name) < 1:
                raise ValueError(f"eval.{name}={getattr(self, name)}: must be >= 1")
        if self.every < 0:
            raise ValueError(f"eval.every={self.every}: must be >= 0")


@dataclass
class RLReferenceConfig:
    name_or_path: str | None = field(default=None, metadata={
        "help": "The frozen reference of the KL term (None: the policy's starting weights, model.name_or_path)."})


@dataclass
class RLTrainConfig:
    """Optimisation and bookkeeping of an online RL run. One step = one rollout batch, then num_iterations x
    num_minibatches optimizer steps on it."""

    output_dir: str = field(default="runs/grpo", metadata={"help": "Run folder: metrics, checkpoints, final policy."})
    seed: int = field(default=42, metadata={
        "help": "Seed of the prompt order, the sampling of each step and the minibatch order."})
    max_steps: int = field(default=100, metadata={"help": "Rollout steps to run."})
    learning_rate: float = field(default=1e-6, metadata={
        "help": "AdamW learning rate (TRL: 1e-6); 0 is allowed (a run that must not change the policy)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2."})
    lr_scheduler: Literal["constant", "linear", "cosine"] = field(default="constant", metadata={
        "help": "Decay over the optimizer steps after warm-up (TRL: linear)."})
    warmup_ratio: float = field(default=0.0, metadata={"help": "Fraction of optimizer steps with linear warm-up."})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "Clip the global grad norm (None: no clipping)."})
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = field(default="auto", metadata={
        "help": "auto: bf16 on a GPU that supports it, else no."})
    log_every: int = field(default=1, metadata={
        "help": "Rollout steps per logged line (a checkpoint also writes one, closing the window)."})
    save_every: int = field(default=0, metadata={"help": "Checkpoint every k rollout steps (0: only the final model)."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept (oldest removed)."})
    resume_from: str | None = field(default=None, metadata={
        "help": "Checkpoint folder, or 'latest' in output_dir; its run identity must match (see resume_allow_changes)."})
    resume_allow_changes: list[str] = field(default_factory=list, metadata={
        "help": "Run-identity keys a resume may change on purpose (e.g. [train.max_steps])."})
    overwrite: bool = field(default=False, metadata={
        "help": "Start afresh in an output_dir that holds a previous run (its checkpoints, model and metrics removed)."})
    report_to: list[str] = field(default_factory=list, metadata={
        "help": "Extra trackers via Accelerate (tensorboard, wandb, trackio); JSONL is always written."})
    progress_bar: bool = field(default=True, metadata={"help": "Show a progress bar on the main process."})
    monitor: RLMonitorConfig = field(default_factory=RLMonitorConfig)

    def __post_init__(self) -> None:
        for name in ("max_steps", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name}={getattr(self, name)}: must be >= 1")
        if self.learning_rate < 0:
            raise ValueError(f"train.learning_rate={self.learning_rate}: must be >= 0")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"train.warmup_ratio={self.warmup_ratio}: must be in [0, 1)")


@dataclass
class RLOOTrainConfig(RLTrainConfig):
    """RLTrainConfig with output_dir runs/rloo."""

    output_dir: str = field(default="runs/rloo", metadata={"help": "Run folder: metrics, checkpoints, final policy."})


@dataclass
class GRPORunConfig:
    """Everything `marginkit train-grpo` needs."""

    model: PolicyConfig = field(default_factory=PolicyConfig)
    reference: RLReferenceConfig = field(default_factory=RLReferenceConfig)
    reward: str = field(default="", metadata={
        "help": "world (the gold world's true reward), a reward-model folder (train-rm's output), or "
                "module:function returning one float per completion (rewards.py)."})
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    loss: RLLossConfig = field(default_factory=RLLossConfig)
    train: RLTrainConfig = field(default_factory=RLTrainConfig)
    eval: RLEvalConfig = field(default_factory=RLEvalConfig)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Cross-section rules: group baselines need K >= 2; GAE needs train-ppo's value model; minibatches divide N."""
        if self.loss.advantage == "gae":
            raise ValueError("loss.advantage=gae needs a value model: use marginkit train-ppo")
        if self.rollout.num_generations < 2:
            raise ValueError(f"rollout.num_generations={self.rollout.num_generations}: must be >= 2 (the group "
                             "baseline of GRPO and RLOO needs at least two completions per prompt)")
        self._check_minibatches()

    def _check_minibatches(self) -> None:
        if self.rollout.rollout_size % self.loss.num_minibatches:
            raise ValueError(f"loss.num_minibatches={self.loss.num_minibatches} must divide the "
                             f"{self.rollout.rollout_size} completions of a rollout (rollout.prompts_per_step x "
                             "rollout.num_generations)")


@dataclass
class RLOORunConfig(GRPORunConfig):
    """Everything `marginkit train-rloo` needs: train-grpo's options with RLOO's loss defaults."""

    loss: RLOOLossConfig = field(default_factory=RLOOLossConfig)
    train: RLOOTrainConfig = field(default_factory=RLOOTrainConfig)


@dataclass
class PPOTrainConfig(RLTrainConfig):
    """RLTrainConfig with output_dir runs/ppo."""

    output_dir: str = field(default="runs/ppo", metadata={"help": "Run folder: metrics, checkpoints, final policy."})


@dataclass
class PPORunConfig(GRPORunConfig):
    """Everything `marginkit train-ppo` needs: train-grpo's options with PPO's loss defaults, plus the value model."""

    loss: PPOLossConfig = field(default_factory=PPOLossConfig)
    value: ValueConfig = field(default_factory=ValueConfig)
    train: PPOTrainConfig = field(default_factory=PPOTrainConfig)

    def check(self) -> None:
        if self.loss.advantage != "gae":
            raise ValueError(f"loss.advantage={self.loss.advantage}: train-ppo's advantages come from its value model "
                             "(gae); use train-grpo or train-rloo for group baselines")
        if self.loss.kl_in != "reward":
            raise ValueError("loss.kl_in=loss: train-ppo puts the KL penalty in the per-token reward (kl_in=reward)")
        self._check_minibatches()
