"""Packing and prefix sharing stay exact under data parallelism: 2 CPU processes (gloo, torchrun) with
train.forward=packed or prefix_shared end with the weights of 1 process with the plain padded forward, for
reward models and for DPO (reference in the loop, or precomputed). Which parallel set-ups are accepted or
refused at setup: tests/test_fsdp.py.

Each process packs only its own share of the global batch (the engine splits pairs before the step, and
the layout is rebuilt on the device), so the gradient all-reduce sees the same per-pair terms as one
process would. This file is also the training script, run plainly or under torchrun:
`python tests/test_speed_ddp.py MODEL OUT N_PAIRS FORWARD TASK REFERENCE` (TASK rm or dpo; REFERENCE model or
precomputed), as tests/scripts/ddp_train.py is for test_ddp.py, whose launch notes apply.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/, for _engine_helpers when run as a script

from _engine_helpers import load_weights  # noqa: E402
from _launch import run_processes  # noqa: E402

ADAM_EPS = 1e-3  # why: tests/test_ddp.py (float32 rounding noise in zero-in-exact-arithmetic gradients)


def run(model_dir: Path, out: Path, n_pairs: int, forward: str, processes: int, task: str = "rm",
        reference: str = "model") -> Path:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "CUDA_VISIBLE_DEVICES": "",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    launcher = [] if processes == 1 else ["-m", "torch.distributed.run", "--standalone",
                                          f"--nproc_per_node={processes}"]
    cmd = [sys.executable, *launcher, __file__, str(model_dir), str(out), str(n_pairs), forward, task, reference]
    # finished: the model folder is saved (after the last step, before the closing barrier). A rank that then
    # hangs freeing its DDP model (torch's ProcessGroupGloo destructor, seen under load; see _launch.py) has
    # already written everything this test compares.
    done = run_processes(cmd, env, finished=lambda: (out / "model" / "config.json").exists())
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    ranks = [json.loads(p.read_text()) for p in sorted(out.parent.glob(f"{out.name}.rank-*.json"))]
    # every rank that got past training agrees (a rank stopped in the teardown hang above writes none)
    assert ranks and [r["num_processes"] for r in ranks] == [processes] * len(ranks)
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
        assert json.loads((two.parent / f"{two.name}.rank-0.json").read_text())["backend"] == "gloo"
        rows_one, rows_two = rows(one), rows(two)
        assert [r["step"] for r in rows_two] == [r["step"] for r in rows_one] == [1, 2, 3]
        for key in ("loss", "grad_norm", "rewards/chosen", "rewards/rejected"):
            torch.testing.assert_close(torch.tensor([r[key] for r in rows_two]), torch.tensor([r[key] for r in rows_one]),
                                       msg=lambda m, k=key, f=forward: f"{f} {k}: {m}")
        w_two = load_weights(two / "model")
        assert w_one.keys() == w_two.keys()
        for name, value in w_one.items():
            torch.testing.assert_close(w_two[name], value, msg=lambda m, n=name, f=forward: f"{f} {n}: {m}")


def dpo_config(model_dir: str | Path, output_dir: str | Path, forward: str, reference: str, cache: str | Path):
    """A DPO run like test_dpo_train.py's (float32, constant lr), 2 micro-batches of 4 pairs a step."""
    from marginkit.config import DPORunConfig
    from marginkit.configlib import from_dict

    train = {"log_every": 1, "progress_bar": False, "mixed_precision": "no", "lr_scheduler": "constant",
             "warmup_ratio": 0.0, "learning_rate": 1e-3, "batch_size": 4, "gradient_accumulation_steps": 2,
             "max_grad_norm": None, "output_dir": str(output_dir), "forward": forward}
    return from_dict(DPORunConfig, {"model": {"name_or_path": str(model_dir)}, "train": train,
                                    "data": {"cache_dir": str(cache), "padding_side": "left"},
                                    "reference": {"source": reference}})


@pytest.mark.slow
def test_two_process_dpo_packing_prefix_and_precomputed_reference_equal_one_padded(tiny_model_dir, word_tokenizer,
                                                                                   tmp_path):
    from _engine_helpers import make_pairs, vocab_words
    from marginkit.train.dpo import precompute_reference

    n_pairs = 22
    one = run(tiny_model_dir, tmp_path / "dpo-padded-1", n_pairs, "padded", 1, task="dpo")
    # the reference artefact, written once by one process where the 2-process runs look for it
    precompute_reference(dpo_config(tiny_model_dir, tmp_path / "pre", "padded", "precomputed", tmp_path / "cache"),
                         make_pairs(vocab_words(word_tokenizer), n_pairs), console=lambda _: None)
    w_one = load_weights(one / "model")
    for forward, reference in (("packed", "model"), ("prefix_shared", "model"), ("prefix_shared", "precomputed")):
        two = run(tiny_model_dir, tmp_path / f"dpo-{forward}-{reference}-2", n_pairs, forward, 2, "dpo", reference)
        rows_one, rows_two = rows(one), rows(two)
        assert [r["step"] for r in rows_two] == [r["step"] for r in rows_one] == [1, 2, 3]
        for key in ("loss", "grad_norm", "logps/chosen", "logps/rejected", "rewards/margins"):
            torch.testing.assert_close(torch.tensor([r[key] for r in rows_two]), torch.tensor([r[key] for r in rows_one]),
                                       msg=lambda m, k=key, f=forward: f"{f} {k}: {m}")
        w_two = load_weights(two / "model")
        for name, value in w_one.items():
            torch.testing.assert_close(w_two[name], value, msg=lambda m, n=name, f=forward: f"{f} {n}: {m}")


def main() -> None:
    from accelerate import PartialState
    from transformers import AutoTokenizer
    from transformers.utils import logging

    from _engine_helpers import make_pairs, one_torch_thread, run_config, train, vocab_words

    model_dir, output_dir, n_pairs, forward, task, reference = sys.argv[1:7]
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    adamw = torch.optim.AdamW
    torch.optim.AdamW = lambda params, **kwargs: adamw(params, **{**kwargs, "eps": ADAM_EPS})
    pairs = make_pairs(vocab_words(AutoTokenizer.from_pretrained(model_dir)), int(n_pairs))
    with one_torch_thread():
        if task == "rm":
            cfg = run_config(model_dir, output_dir, batch_size=4, gradient_accumulation_steps=2, padding_side="left",
                             forward=forward)
            train(cfg, pairs)
        else:
            from marginkit.train.dpo import train_dpo

            cfg = dpo_config(model_dir, output_dir, forward, reference, Path(output_dir).parent / "cache")
            train_dpo(cfg, pairs, console=lambda _: None)
    state = PartialState()
    info = {"num_processes": state.num_processes, "backend": state.backend, "forward": cfg.train.forward}
    out = Path(output_dir)  # beside the run folder, not in it
    (out.parent / f"{out.name}.rank-{state.process_index}.json").write_text(json.dumps(info))

if __name__ == "__main__":
    main()
