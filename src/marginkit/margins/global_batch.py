"""The global micro-batch of a data-parallel run: each process's rows gathered in process order (issue 17).

The engine (train/engine.py `_shard`) gives process p the contiguous rows [lo_p, hi_p) of every global
micro-batch, lo_0 = 0 and hi_p = lo_{p+1}. A statistic over the batch (OT's cost matrix and plan, β-DPO's
gap statistics and filtering draws) is therefore the same with P processes as with one exactly when each
process computes it on the rows of all processes concatenated in process order, then keeps its own slice:

    global = cat_p(rows_p)        [N, ...]   N = Σ_p n_p (shards may differ by one row)
    mine   = global[lo:hi]        [n, ...]   this process's rows, bit-identical to its input

Inputs are detached (margins and batch statistics carry no gradient), so a plain `all_gather` is enough:
no autograd through the collective. Without torch.distributed (or with one process) nothing is gathered.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["world_size", "gather_rows"]


def world_size() -> int:
    """Processes in the default process group (1 when torch.distributed is not running)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_rows(rows: torch.Tensor) -> tuple[torch.Tensor, slice]:
    """(every process's `rows` [n_p, ...] concatenated in process order [N, ...], this process's slice of it).

    A sync point: two all_gathers (the row counts, then the rows padded to the longest shard). Every
    process must call it with the same trailing shape and dtype. The result is detached."""
    rows = rows.detach()
    if world_size() == 1:
        return rows, slice(0, rows.shape[0])
    counts = [torch.zeros(1, dtype=torch.long, device=rows.device) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor([rows.shape[0]], dtype=torch.long, device=rows.device))
    sizes = [int(c.item()) for c in counts]  # [P]
    longest = max(sizes)
    padded = rows.new_zeros((longest, *rows.shape[1:]))  # [max n_p, ...]: all_gather needs equal shapes
    padded[: rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    rank = dist.get_rank()
    lo = sum(sizes[:rank])
    return torch.cat([part[:n] for part, n in zip(parts, sizes)]), slice(lo, lo + sizes[rank])
