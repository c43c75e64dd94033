"""Batch-statistic margins give the same targets with 2 processes as with 1 on the same global batch (issue 17).

OT's cost matrix and plan couple every pair of the micro-batch, the confidence margin compares each gap with the
batch mean, and β-DPO draws its filter and its β from the batch: computed per process, each would give other
targets with 2 processes than with 1. This file is also the 2-process script: the test runs it under
`torch.distributed.run` (gloo, CPU); each rank takes the contiguous rows the engine gives it
(train/engine.py `_shard`: 7 pairs split 3 + 4, so the shards are uneven) and writes what the strategies return.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch.testing import assert_close

N_PAIRS, DIM, BATCHES = 7, 6, 2


def global_batches() -> list[dict[str, torch.Tensor]]:
    """Two global micro-batches of N_PAIRS pairs: reward gaps, embeddings, DPO log-probs (seeded)."""
    gen = torch.Generator().manual_seed(17)
    out = []
    for _ in range(BATCHES):
        logps = -10.0 * torch.rand(4, N_PAIRS, generator=gen)  # [4, B]: π_c, π_r, ρ_c, ρ_r
        out.append({"gap": torch.randn(N_PAIRS, generator=gen), "emb_c": torch.randn(N_PAIRS, DIM, generator=gen),
                    "emb_r": torch.randn(N_PAIRS, DIM, generator=gen), "logps": logps,
                    "lengths": torch.randint(1, 9, (2, N_PAIRS), generator=gen)})
    return out


def strategies():
    from marginkit.losses import BetaDPO, BetaDPOConfig
    from marginkit.margins.confidence import ConfidenceMargin
    from marginkit.margins.ot import OTMargin, OTMarginConfig

    return (OTMargin(OTMarginConfig(sinkhorn_tol=0.0)), ConfidenceMargin(),
            BetaDPO(BetaDPOConfig(alpha=0.6, momentum=0.5, filter_fraction=0.4), beta=0.1, seed=3))


def targets(lo: int, hi: int) -> dict[str, torch.Tensor]:
    """What each strategy returns for rows [lo, hi) of every global batch, stacked over the batches."""
    from marginkit.losses import PreferenceLogps
    from marginkit.margins import MarginInputs

    ot, confidence, beta_dpo = strategies()
    found: dict[str, list[torch.Tensor]] = {}
    for step, full in enumerate(global_batches()):
        b = {k: v[..., lo:hi] if k in ("logps", "lengths") else v[lo:hi] for k, v in full.items()}
        nan = torch.full_like(b["gap"], float("nan"))
        inputs = MarginInputs(b["gap"], nan, nan, nan, step, b["emb_c"], b["emb_r"])
        m_ot, m_conf = ot(inputs), confidence(inputs)
        loss = beta_dpo(PreferenceLogps(*b["logps"], *b["lengths"]))
        values = {"ot": m_ot.target_margin, "ot_active": m_ot.active.float(), "confidence": m_conf.target_margin,
                  "confidence_active": m_conf.active.float(), "beta_dpo_losses": loss.losses,
                  "beta_dpo_weight": loss.extras["pair_weight"], "beta_dpo_beta": loss.extras["beta"],
                  **{f"ot/{k}": v.expand(hi - lo) for k, v in m_ot.diagnostics.items()},
                  **{f"confidence/{k}": v.expand(hi - lo) for k, v in m_conf.diagnostics.items()}}
        for k, v in values.items():
            found.setdefault(k, []).append(v.float())
    return {k: torch.stack(v) for k, v in found.items()}  # [BATCHES, hi - lo] each


def test_two_processes_give_the_targets_of_one(tmp_path):
    from _launch import run_processes

    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__, str(tmp_path)]
    done = run_processes(cmd, env, timeout=180)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    ranks = [torch.load(tmp_path / f"rank-{r}.pt") for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["rows"] for r in ranks] == [(0, 3), (3, 7)]  # uneven shards, as train/engine.py _shard cuts them
    one = targets(0, N_PAIRS)  # one process, no torch.distributed
    for key, value in one.items():
        two = torch.cat([r["targets"][key] for r in ranks], dim=1)  # [BATCHES, 3] + [BATCHES, 4] -> [BATCHES, 7]
        assert_close(two, value, msg=lambda m, k=key: f"{k}: {m}")
    # the checks can fail: β-DPO drops pairs, the confidence filter leaves some inactive, OT margins vary
    assert (one["beta_dpo_weight"] == 0).any() and (one["confidence_active"] == 0).any()
    assert one["ot"].std() > 0.01


def test_per_process_targets_would_differ():
    """The test above would catch a strategy that computed its statistics per process: the targets of the
    two shards computed apart (what each process saw before issue 17) differ from the global batch's."""
    one = targets(0, N_PAIRS)
    apart = {k: torch.cat([a, b], dim=1) for (k, a), b in zip(targets(0, 3).items(), targets(3, N_PAIRS).values())}
    for key in ("ot", "confidence", "beta_dpo_weight"):
        assert not torch.allclose(apart[key], one[key]), key


def _main(out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    lo, hi = rank * N_PAIRS // size, (rank + 1) * N_PAIRS // size  # train/engine.py _shard
    result = {"world_size": size, "rows": (lo, hi), "targets": targets(lo, hi)}
    torch.save(result, Path(out) / f"rank-{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()  # explicit: gloo's destructor at exit can hang (tests/_launch.py)


if __name__ == "__main__":
    _main(sys.argv[1])
