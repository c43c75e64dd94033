"""A signal that reaches one process of two stops both after the same step (tests/test_run_safety.py).

Usage (under torchrun, 2 processes): ddp_interrupt.py MODEL_DIR OUTPUT_DIR

Rank 1 alone raises SIGTERM in the middle of optimizer step 2 (a scheduler may signal one process first).
The engine all-reduces the flag after each step, so rank 0 must stop after step 2 as well; were it to train
on alone, it would wait forever in step 3's gradient all-reduce. Each process writes rank-<i>.json with the
step it stopped at and its exit code.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from accelerate import PartialState
from transformers import AutoTokenizer
from transformers.utils import logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for _engine_helpers

from _engine_helpers import make_pairs, one_torch_thread, run_config, train, vocab_words  # noqa: E402
from marginkit.train.engine import Engine, TrainingInterrupted  # noqa: E402


def main() -> None:
    model_dir, output_dir = sys.argv[1], sys.argv[2]
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    rank = int(os.environ.get("RANK", "0"))  # torchrun's; PartialState is made only after training, as Accelerator
    monitor = Engine._monitor

    def hook(self, step_sums):
        if self.step == 2 and rank == 1:
            signal.raise_signal(signal.SIGTERM)
        return monitor(self, step_sums)

    Engine._monitor = hook
    pairs = make_pairs(vocab_words(AutoTokenizer.from_pretrained(model_dir)), 40)
    cfg = run_config(model_dir, output_dir, batch_size=4, max_steps=8)
    info: dict = {}
    with one_torch_thread():
        try:
            train(cfg, pairs)
        except TrainingInterrupted as e:
            info.update(exit_code=e.exit_code, message=str(e))
    state = PartialState()
    info["num_processes"] = state.num_processes
    (Path(output_dir) / f"rank-{state.process_index}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main()
