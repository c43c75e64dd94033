"""Entropic optimal transport by log-domain Sinkhorn (Cuturi 2013; Peyré & Cuturi 2019, sec. 4.4).

Given a cost C [n, m] and marginals a [n], b [m] (each >= 0, equal totals), the entropic plan is

    P* = argmin_{P >= 0, P 1 = a, P^T 1 = b}  <P, C> - eps H(P),   H(P) = -sum_ij P_ij (log P_ij - 1),

and has the Gibbs form P*_ij = exp(u_i + v_j - C_ij / eps). Sinkhorn alternates the two marginal
projections on the log-scalings u [n], v [m] (the same order as POT's `ot.bregman.sinkhorn_log`,
so both give the same plan after any number of iterations):

    v_j <- log b_j - logsumexp_i(u_i - C_ij / eps)        (columns now sum to b)
    u_i <- log a_i - logsumexp_j(v_j - C_ij / eps)        (rows now sum to a)

Everything is in log space (logsumexp, never exp of a large number), so a small eps does not
overflow the kernel exp(-C/eps) the way plain Sinkhorn does. The maths runs in float32 with
autocast disabled, whatever the input dtype. Two worked points (both tested):
- 2x2, uniform marginals: P = [[p, 1/2 - p], [1/2 - p, p]] with p / (1/2 - p) = exp(-s / (2 eps)),
  s = C_11 + C_22 - C_12 - C_21 (the cross ratio P_11 P_22 / (P_12 P_21) = exp(-s / eps)).
- eps -> 0: P* tends to the optimal plan of the linear programme (a permutation / n for a square
  cost with a unique optimal assignment and uniform marginals).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["SinkhornResult", "sinkhorn_log", "plan_entropy"]


@dataclass(frozen=True)
class SinkhornResult:
    """plan:           [n, m] float32 transport plan, >= 0, rows sum to a (exactly, up to rounding).
    log_plan:       [n, m] float32 log of the plan (finite where the marginals are > 0), for entropies.
    iterations:     Sinkhorn iterations run (< n_iters when `tol` stopped it early).
    marginal_error: scalar float32, |P 1 - a|_1 + |P^T 1 - b|_1 at the end."""

    plan: torch.Tensor
    log_plan: torch.Tensor
    iterations: int
    marginal_error: torch.Tensor


def _log_marginal(weights: torch.Tensor | None, size: int, total: float, name: str, device: torch.device) -> torch.Tensor:
    if weights is None:
        return torch.full((size,), math.log(total / size), dtype=torch.float32, device=device)
    w = weights.to(device=device, dtype=torch.float32)
    if w.shape != (size,):
        raise ValueError(f"sinkhorn_log: marginal {name} has shape {tuple(w.shape)}; expected ({size},) to match the cost")
    if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"sinkhorn_log: marginal {name} must be finite, >= 0 and not all 0; got {w.tolist()[:8]}")
    return w.log()


def sinkhorn_log(
    cost: torch.Tensor,
    eps: float,
    n_iters: int = 100,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    tol: float = 1e-6,
    check_every: int = 10,
) -> SinkhornResult:
    """Entropic OT plan for `cost` [n, m] with marginals a [n], b [m] (uniform 1/n, 1/m when None).

    eps:         entropic regularisation (> 0), in the cost's units; plans sharpen towards the
                 exact OT plan as eps -> 0 and flatten towards a b^T as eps -> inf. With costs in
                 [0, 1], 0.01-0.5 is the useful range; below ~0.01 convergence takes hundreds of
                 iterations.
    n_iters:     maximum iterations (>= 1); each is two logsumexps over [n, m].
    tol:         stop when |P^T 1 - b|_1 <= tol, checked every `check_every` iterations (each check
                 is a host sync on GPU); 0 runs exactly n_iters iterations with no check.
    Returns a SinkhornResult (plan, log_plan, iterations, marginal_error). No gradient is needed by
    marginkit, but the function is differentiable if called with grad enabled.
    """
    if cost.dim() != 2 or cost.shape[0] == 0 or cost.shape[1] == 0:
        raise ValueError(f"sinkhorn_log: cost must be a non-empty [n, m] matrix; got shape {tuple(cost.shape)}")
    if not eps > 0 or not math.isfinite(eps):
        raise ValueError(f"sinkhorn_log: eps={eps}; must be a finite number > 0")
    if n_iters < 1 or check_every < 1 or tol < 0:
        raise ValueError(f"sinkhorn_log: n_iters={n_iters}, check_every={check_every} must be >= 1 and tol={tol} >= 0")
    n, m = cost.shape
    with torch.autocast(device_type=cost.device.type, enabled=False):
        c = cost.to(torch.float32)
        if not torch.isfinite(c).all():
            raise ValueError("sinkhorn_log: cost has NaN or inf entries")
        total = float(a.sum()) if a is not None else 1.0
        log_a = _log_marginal(a, n, total, "a", c.device)  # [n]
        log_b = _log_marginal(b, m, total, "b", c.device)  # [m]
        if (a is not None or b is not None) and abs(float(log_a.exp().sum()) - float(log_b.exp().sum())) > 1e-5 * total:
            raise ValueError(f"sinkhorn_log: marginals a and b must have equal totals (balanced OT); "
                             f"got {float(log_a.exp().sum())} and {float(log_b.exp().sum())}")
        neg_c = -c / eps  # [n, m], log of the Gibbs kernel
        u = torch.zeros(n, dtype=torch.float32, device=c.device)
        v = torch.zeros(m, dtype=torch.float32, device=c.device)
        iterations = n_iters
        for it in range(1, n_iters + 1):
            v = log_b - torch.logsumexp(neg_c + u[:, None], dim=0)  # [m]
            u = log_a - torch.logsumexp(neg_c + v[None, :], dim=1)  # [n]
            if tol > 0 and it % check_every == 0 and it < n_iters:
                col_err = ((neg_c + u[:, None] + v[None, :]).exp().sum(0) - log_b.exp()).abs().sum()
                if col_err.item() <= tol:  # host sync, once per check_every iterations
                    iterations = it
                    break
        log_plan = neg_c + u[:, None] + v[None, :]  # [n, m]
        plan = log_plan.exp()
        err = (plan.sum(1) - log_a.exp()).abs().sum() + (plan.sum(0) - log_b.exp()).abs().sum()
    return SinkhornResult(plan, log_plan, iterations, err)


def plan_entropy(result: SinkhornResult) -> torch.Tensor:
    """Shannon entropy -sum_ij P_ij log P_ij (nats, scalar float32) of a plan, from its log (0 log 0 = 0).

    For an n x n plan with uniform marginals it lies in [log n (a permutation / n), 2 log n (the
    independent plan 1/n^2)]."""
    terms = torch.where(result.plan > 0, result.plan * result.log_plan, torch.zeros_like(result.plan))
    return -terms.sum()
