"""Training: the Accelerate engine (engine.py), the RM step (rm_step.py), the train-rm pipeline (rm.py)."""

from marginkit.train.engine import Engine, NonFiniteLossError, TrainConfig, epoch_order
from marginkit.train.rm import RMRunResult, train_reward_model
from marginkit.train.rm_step import StepOutput, rm_step

__all__ = ["Engine", "NonFiniteLossError", "RMRunResult", "StepOutput", "TrainConfig", "epoch_order", "rm_step",
           "train_reward_model"]
