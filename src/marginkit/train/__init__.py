"""Training: the engine (engine.py), one step per objective (rm_step.py, dpo_step.py, sft_step.py), the run
setup every trainer shares (setup.py), and the trainers (rm.py, sft.py, dpo.py), imported from their modules.

The package imports no trainer, so `marginkit.config` (which imports the engine and the steps' configs)
never loads one."""

from marginkit.train.engine import (
           DPOTrainConfig,
           Engine,
           NonFiniteLossError,
           SFTTrainConfig,
           StepOutput,
           TrainConfig,
           epoch_order,
)

__all__ = ["DPOTrainConfig", "Engine", "NonFiniteLossError", "SFTTrainConfig", "StepOutput", "TrainConfig",
           "epoch_order"]
