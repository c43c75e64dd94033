"""Online RL under data parallelism (issue 16): 2 CPU processes (gloo, torchrun) give the updates, metrics and
held-out evaluation of 1 process on the same rollouts, for GRPO and PPO.

What is proved. With rollout.seed_per_prompt=true each prompt's K completions are sampled with their own seed
(seed, step, the prompt's place in the step), so the 2-process run samples exactly the 1-process rollouts from
the same weights. Then:
- one optimisation step: the step-1 checkpoint's weights (and PPO's value model) of 2 processes equal 1
  process's: the rollout of step 1 comes from the same initial weights, so this is the same-rollout update;
- a short run (2 rollout steps, 2 epochs x 4 minibatches each, warm-up + linear decay): every logged metric,
  the evaluation rows and the final weights agree. Step 2 samples from weights that agree to float32 rounding,
  not bit for bit; a near-tie in sampling could in principle flip a token, which these tiny runs do not hit;
- resume: the 2-process run resumed from its step-1 checkpoint ends with the uninterrupted run's weights.
Without seed_per_prompt (the default) each process samples its share in one batched call, so the rollouts
(not the update rule) depend on the number of processes: not compared here.

GRPO runs with loss_type=grpo (normaliser: the global minibatch's completions) and PPO with bnpo (the global
minibatch's completion tokens) and whitening over every process's tokens; a per-process normaliser or
whitening fails this test (checked by mutation when it was written). Some minibatches lie wholly in one process's
share, so the other forwards a zero-weight stand-in row (asserted below from the minibatch permutation).

This file is also the training script, run plainly or under torchrun: `python tests/test_rl_ddp.py MODEL OUT TASKS`.
`accelerate launch --cpu --num_processes 2` is not used: on CPU it starts one process (tests/test_ddp.py).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/, for the helpers when run as a script

from _engine_helpers import load_weights  # noqa: E402
from _launch import run_processes  # noqa: E402
from _rl_helpers import make_world_lm, metric_rows, rl_config  # noqa: E402

ADAM_EPS = 1e-3  # why: tests/test_ddp.py (float32 rounding noise in zero-in-exact-arithmetic gradients)
P, K, MINIBATCHES, SEED = 4, 3, 4, 1  # prompts per step (2 per process), completions, minibatches, train.seed
RUNS = ("grpo", "ppo")
TIME_KEYS = {"time/rollout_seconds", "time/update_seconds"}


def run_configs(model_dir: str, out: Path) -> dict[str, object]:
    """The two runs: GRPO (grpo aggregation, KL in the loss, evaluation every step) and PPO (bnpo, whitening)."""
    from marginkit.train.rl_config import PPORunConfig

    rollout = {"prompts_per_step": P, "num_generations": K, "seed_per_prompt": True}
    loss = {"num_iterations": 2, "num_minibatches": MINIBATCHES}
    train = {"max_steps": 2, "save_every": 1, "seed": SEED, "lr_scheduler": "linear", "warmup_ratio": 0.2}
    return {
        "grpo": rl_config(model_dir, out / "grpo", rollout=rollout, loss={**loss, "loss_type": "grpo"}, train=train,
                          eval={"prompts": "world:test", "n_prompts": 3, "num_generations": 2, "every": 1}),
        "ppo": rl_config(model_dir, out / "ppo", PPORunConfig, rollout=rollout, loss=loss, train=train),
    }


def run(model_dir: Path, out: Path, processes: int, tasks: str) -> Path:
    """`tasks` (comma-separated: grpo, ppo, grpo-resumed) in one launch: 1 plain process, or `processes` under
    torchrun. One task per multi-process launch: Accelerate's end_training destroys the process group."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "CUDA_VISIBLE_DEVICES": "",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    launcher = [] if processes == 1 else ["-m", "torch.distributed.run", "--standalone",
                                          f"--nproc_per_node={processes}"]
    cmd = [sys.executable, *launcher, __file__, str(model_dir), str(out), tasks]
    ranks_written = lambda: len(list(out.glob(f"{tasks}.rank-*.json"))) == processes  # noqa: E731
    done = run_processes(cmd, env, timeout=150, finished=ranks_written)  # any other hang fails with the stacks
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob(f"{tasks}.rank-*.json"))]
    assert [r["num_processes"] for r in ranks] == [processes] * processes
    assert {r["distributed_type"] for r in ranks} == {"MULTI_CPU" if processes > 1 else "NO"}
    return out


def assert_same_weights(one: Path, two: Path, what: str) -> None:
    w_one, w_two = load_weights(one), load_weights(two)
    assert w_one.keys() == w_two.keys()
    for name, value in w_one.items():
        torch.testing.assert_close(w_two[name], value, rtol=0.0, atol=1e-6, msg=lambda m, n=name: f"{what} {n}: {m}")


def assert_same_rows(one: list[dict], two: list[dict], what: str) -> None:
    assert [r["step"] for r in two] == [r["step"] for r in one]
    for a, b in zip(one, two):
        assert a.keys() == b.keys(), what
        for key in sorted(a.keys() - TIME_KEYS - {"step"}):
            torch.testing.assert_close(torch.tensor(b[key], dtype=torch.float64), torch.tensor(a[key], dtype=torch.float64),
                                       rtol=1e-5, atol=1e-6, msg=lambda m, k=key, s=a["step"]: f"{what} step {s} {k}: {m}")


@pytest.mark.slow
def test_two_processes_equal_one_for_grpo_and_ppo(tmp_path):
    from marginkit.train.rl import _minibatches

    model_dir = make_world_lm(tmp_path / "lm")
    one = run(model_dir, tmp_path / "one", processes=1, tasks="grpo,ppo")
    two = tmp_path / "two"
    for task in ("grpo", "ppo", "grpo-resumed"):
        if task == "grpo-resumed":  # the finished run's folder, to resume from its step-1 checkpoint
            shutil.copytree(two / "grpo", two / task)
        run(model_dir, two, processes=2, tasks=task)
    for name in RUNS:
        rows_one, rows_two = metric_rows(one / name), metric_rows(two / name)
        assert [r["step"] for r in rows_one if "reward" in r] == [1, 2]
        assert_same_rows(rows_one, rows_two, name)  # training rows, and GRPO's evaluation rows
        assert_same_weights(one / name / "checkpoints" / "step-000001" / "model", two / name / "checkpoints" /
                            "step-000001" / "model", f"{name} after one step:")
        assert_same_weights(one / name / "model", two / name / "model", f"{name} after the run:")
    assert_same_weights(one / "ppo" / "model" / "value", two / "ppo" / "model" / "value", "ppo value model:")
    assert any("eval_reward" in r for r in metric_rows(two / "grpo"))
    # resumed from step 1 on 2 processes: the uninterrupted 2-process run's rows and weights
    assert_same_rows(metric_rows(two / "grpo"), metric_rows(two / "grpo-resumed"), "grpo resumed")
    assert_same_weights(two / "grpo" / "model", two / "grpo-resumed" / "model", "grpo resumed:")
    # the case a per-process share cannot see: some minibatch wholly in one process's rows (a stand-in row)
    half = P * K // 2
    chunks = [c for step in range(2) for it in range(2) for c in _minibatches(P * K, MINIBATCHES, SEED, step, it)]
    assert any(bool((c < half).all() or (c >= half).all()) for c in chunks)


def test_token_weights_of_the_shares_sum_to_the_whole_batch():
    """Each process aggregates its rows with the whole batch's normalisers; summed over the shares, that is the
    one-process loss for every aggregation (and with each share's own normaliser it is not)."""
    from marginkit.losses.rl import aggregate_tokens

    gen = torch.Generator().manual_seed(0)
    per_token = torch.randn(6, 5, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0],
                         [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    shares = (slice(0, 2), slice(2, 6))  # uneven: 2 and 4 rows, 7 and 13 tokens
    for aggregation in ("grpo", "bnpo", "dr_grpo"):
        whole = aggregate_tokens(per_token, mask, aggregation, 5)
        summed = sum(aggregate_tokens(per_token[s], mask[s], aggregation, 5, n_rows=6, n_tokens=mask.sum())
                     for s in shares)
        torch.testing.assert_close(summed, whole)
        own = sum(aggregate_tokens(per_token[s], mask[s], aggregation, 5) for s in shares) / len(shares)  # DDP's mean
        assert not torch.allclose(own, whole), aggregation


def test_seed_per_prompt_samples_a_share_as_the_whole_step_does(tmp_path):
    """rollout.seed_per_prompt: the completions of prompts 2-3 sampled as a process's share (first=2) are rows 6-11
    of the whole step's, token for token; by default (one batched call per share) they are not."""
    from types import SimpleNamespace

    from marginkit.models.generation import HFGenerator
    from marginkit.models.policy import PolicyConfig, load_policy
    from marginkit.train.rl import _sample, load_prompts

    model_dir = make_world_lm(tmp_path / "lm")
    model, tokenizer = load_policy(PolicyConfig(name_or_path=str(model_dir)))
    for per_prompt in (True, False):
        cfg = rl_config(model_dir, tmp_path / "out", rollout={"prompts_per_step": P, "num_generations": K,
                                                              "seed_per_prompt": per_prompt})
        prompts = load_prompts(cfg)[0][:P]
        run = SimpleNamespace(cfg=cfg, generator=HFGenerator(model, tokenizer))
        whole, share = _sample(run, prompts, 7, first=0), _sample(run, prompts[2:], 7, first=2)
        rows = range(2 * K, P * K)
        same = [whole.texts[i] for i in rows] == share.texts and torch.equal(whole.lengths[2 * K:], share.lengths)
        for j, i in enumerate(rows) if per_prompt else ():  # every completion token, laid out in its own batch
            assert torch.equal(whole.input_ids[i][whole.completion_mask[i].bool()],
                               share.input_ids[j][share.completion_mask[j].bool()])
        assert same == per_prompt, f"seed_per_prompt={per_prompt}"


def test_prompts_per_step_must_divide_between_the_processes(tmp_path):
    from marginkit.configlib import ConfigError
    from marginkit.train.rl import _check_processes, _share

    cfg = rl_config(tmp_path / "lm", tmp_path / "out", rollout={"prompts_per_step": 3}, loss={"num_minibatches": 1})
    _check_processes(cfg, 1)
    _check_processes(cfg, 3)
    with pytest.raises(ConfigError, match=r"rollout.prompts_per_step=3 must be divisible by the 2 processes"):
        _check_processes(cfg, 2)
    assert [_share(8, rank, 4) for rank in range(4)] == [(0, 2), (2, 4), (4, 6), (6, 8)]


def main() -> None:
    """Train each task of argv[3] (grpo, ppo, or grpo-resumed: the test's copy of the grpo run, resumed from its
    step-1 checkpoint); each process then writes a rank file."""
    from accelerate import PartialState
    from accelerate.state import AcceleratorState
    from transformers.utils import logging

    from _engine_helpers import one_torch_thread
    from marginkit.train.launch import end_processes
    from marginkit.train.rl import train_rl

    model_dir, out, tasks = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    adamw = torch.optim.AdamW
    torch.optim.AdamW = lambda params, **kwargs: adamw(params, **{**kwargs, "eps": ADAM_EPS})
    configs = run_configs(model_dir, out)
    with one_torch_thread():
        for task in tasks.split(","):
            cfg = configs[task.removesuffix("-resumed")]
            if task == "grpo-resumed":  # a copy of the uninterrupted run's folder (made by the test), from its step 1
                resumed = out / task
                cfg.train.output_dir, cfg.train.resume_from = str(resumed), str(resumed / "checkpoints" / "step-000001")
            train_rl(cfg, console=lambda _: None, stage=task.removesuffix("-resumed"))
    state = PartialState()
    found = {"num_processes": state.num_processes, "distributed_type": AcceleratorState().distributed_type.name}
    (out / f"{tasks}.rank-{state.process_index}.json").write_text(json.dumps(found))
    end_processes()  # as the CLI does: no gloo teardown hang at exit


if __name__ == "__main__":
    main()
