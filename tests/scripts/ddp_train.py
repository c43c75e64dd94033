"""Train the tiny RM for test_ddp.py: run once as a plain process and once under torchrun.

Usage: ddp_train.py MODEL_DIR OUTPUT_DIR N_PAIRS ADAM_EPS

Same data, seed and global batch (train.batch_size is the global micro-batch; Accelerate splits it
between the processes), so the 1- and 2-process runs must end with the same weights. Each process
writes rank-<i>.json with the process count Accelerate saw, so the test knows two really ran.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import AutoTokenizer
from transformers.utils import logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for _engine_helpers

from _engine_helpers import make_pairs, one_torch_thread, run_config, train, vocab_words  # noqa: E402


def main() -> None:
    model_dir, output_dir, n_pairs, eps = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    adamw = torch.optim.AdamW
    torch.optim.AdamW = lambda params, **kwargs: adamw(params, **{**kwargs, "eps": eps})  # why: see test_ddp.py
    pairs = make_pairs(vocab_words(AutoTokenizer.from_pretrained(model_dir)), n_pairs)
    cfg = run_config(model_dir, output_dir, batch_size=4, gradient_accumulation_steps=2)
    with one_torch_thread():
        train(cfg, pairs)
    state = PartialState()
    info = {"num_processes": state.num_processes, "backend": state.backend}
    (Path(output_dir) / f"rank-{state.process_index}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main()
