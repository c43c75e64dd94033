"""Two processes equal one: data-parallel training on CPU (gloo) ends with the single-process weights.

tests/scripts/ddp_train.py trains the tiny RM (batch 4 = the global micro-batch, accumulation 2,
float32) once as a plain process and once as two processes under torchrun. `accelerate launch --cpu
--num_processes 2` is not used: on CPU it starts two processes only through MPI (mpirun), and
without it silently runs one. Accelerate reads torchrun's environment and, with
ACCELERATE_USE_CPU=true, joins a gloo process group.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from _engine_helpers import load_weights
from _launch import run_processes

SCRIPT = Path(__file__).parent / "scripts" / "ddp_train.py"
# Adam divides by sqrt(v) + eps. Gradients that are 0 in exact arithmetic (key biases and the final
# LayerNorm bias: they shift r_c and r_r alike) are float32 rounding noise, and the gloo all-reduce sums
# in another order than one process does, so the default eps=1e-8 turns that noise into steps of up to
# ±lr that differ between the runs (measured: 1.1e-3 apart after 3 steps). eps=1e-3 keeps the update a
# smooth function of the gradient, so the runs agree to float32 rounding (measured: 1.2e-7).
ADAM_EPS = "1e-3"


def run(model_dir: Path, out: Path, n_pairs: int, processes: int) -> Path:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "CUDA_VISIBLE_DEVICES": "",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    launcher = [] if processes == 1 else ["-m", "torch.distributed.run", "--standalone",
                                          f"--nproc_per_node={processes}"]
    cmd = [sys.executable, *launcher, str(SCRIPT), str(model_dir), str(out), str(n_pairs), ADAM_EPS]
    done = run_processes(cmd, env)  # a hang fails with every process's stack
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank-*.json"))]
    assert [r["num_processes"] for r in ranks] == [processes] * processes
    return out


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("n_pairs", [
    24,  # 6 micro-batches of 4 = 3 steps of 8 pairs
    22,  # the last micro-batch has 2 pairs: split 1 + 1, never padded with repeated pairs (even_batches off)
])
def test_two_processes_equal_one(tiny_model_dir, tmp_path, n_pairs):
    one = run(tiny_model_dir, tmp_path / "one", n_pairs, processes=1)
    two = run(tiny_model_dir, tmp_path / "two", n_pairs, processes=2)
    assert json.loads((two / "rank-0.json").read_text())["backend"] == "gloo"

    rows_one, rows_two = rows(one), rows(two)
    assert [r["step"] for r in rows_two] == [r["step"] for r in rows_one] == [1, 2, 3]
    for key in ("loss", "grad_norm", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "learning_rate"):
        torch.testing.assert_close(torch.tensor([r[key] for r in rows_two], dtype=torch.float32),
                                   torch.tensor([r[key] for r in rows_one], dtype=torch.float32), msg=lambda m, k=key: f"{k}: {m}")
    w_one, w_two = load_weights(one / "model"), load_weights(two / "model")
    assert w_one.keys() == w_two.keys()
    for name, value in w_one.items():
        torch.testing.assert_close(w_two[name], value, msg=lambda m, n=name: f"{n}: {m}")  # float32 defaults
