"""Packing and prefix sharing stay exact under data parallelism: 2 CPU processes (gloo, torchrun) with
train.forward=packed or prefix_shared end with the weights of 1 process with the plain padded forward.

Each process packs only its own share of the global batch (the engine splits pairs before the step, and
the layout is rebuilt on the device), so the gradient all-reduce sees the same per-pair terms as one
process would. This file is also the training script: `python tests/test_speed_ddp.py MODEL OUT N FORWARD`
(run plainly or under torchrun), as tests/scripts/ddp_train.py is for test_ddp.py, whose launch notes apply.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/, for _engine_helpers when run as a script

from _engine_helpers import load_weights  # noqa: E402

ADAM_EPS = 1e-3  # why: tests/test_ddp.py (float32 rounding noise in zero-in-exact-arithmetic gradients)


def run(model_dir: Path, out: Path, n_pairs: int, forward: str, processes: int) -> Path:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "CUDA_VISIBLE_DEVICES": "",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    launcher = [] if processes == 1 else ["-m", "torch.distributed.run", "--standalone",
                                          f"--nproc_per_node={processes}"]
    cmd = [sys.executable, *launcher, __file__, str(model_dir), str(out), str(n_pairs), forward]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank-*.json"))]
    assert [r["num_processes"] for r in ranks] == [processes] * processes
    assert {r["forward"] for r in ranks} == {forward}
    return out


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


@pytest.mark.slow
def test_two_process_packing_and_prefix_sharing_equal_one_padded(tiny_model_dir, tmp_path):
    n_pairs = 22  # 3 steps of 2 micro-batches of 4; the last micro-batch has 2 pairs, split 1 + 1
    one = run(tiny_model_dir, tmp_path / "padded-1", n_pairs, "padded", processes=1)
    w_one = load_weights(one / "model")
    for forward in ("packed", "prefix_shared"):
        two = run(tiny_model_dir, tmp_path / f"{forward}-2", n_pairs, forward, processes=2)
        assert json.loads((two / "rank-0.json").read_text())["backend"] == "gloo"
        rows_one, rows_two = rows(one), rows(two)
        assert [r["step"] for r in rows_two] == [r["step"] for r in rows_one] == [1, 2, 3]
        for key in ("loss", "grad_norm", "rewards/chosen", "rewards/rejected"):
            torch.testing.assert_close(torch.tensor([r[key] for r in rows_two]), torch.tensor([r[key] for r in rows_one]),
                                       msg=lambda m, k=key, f=forward: f"{f} {k}: {m}")
        w_two = load_weights(two / "model")
        assert w_one.keys() == w_two.keys()
        for name, value in w_one.items():
            torch.testing.assert_close(w_two[name], value, msg=lambda m, n=name, f=forward: f"{f} {n}: {m}")


def main() -> None:
    from accelerate import PartialState
    from transformers import AutoTokenizer
    from transformers.utils import logging

    from _engine_helpers import make_pairs, one_torch_thread, run_config, train, vocab_words

    model_dir, output_dir, n_pairs, forward = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    adamw = torch.optim.AdamW
    torch.optim.AdamW = lambda params, **kwargs: adamw(params, **{**kwargs, "eps": ADAM_EPS})
    pairs = make_pairs(vocab_words(AutoTokenizer.from_pretrained(model_dir)), n_pairs)
    cfg = run_config(model_dir, output_dir, batch_size=4, gradient_accumulation_steps=2, padding_side="left",
                     forward=forward)
    with one_torch_thread():
        train(cfg, pairs)
    state = PartialState()
    info = {"num_processes": state.num_processes, "backend": state.backend, "forward": cfg.train.forward}
    (Path(output_dir) / f"rank-{state.process_index}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main()
