"""torch's intra-op thread count for the CPU paths (demo, studies, world pipeline): chosen, said, restored.

Why: torch starts one intra-op thread per core. Two such processes on a 2-core machine oversubscribe it
and each slows about tenfold: `world pipeline --size quick` took 47 s of CPU with 1 thread and 407 s
with 2 threads beside another training process (issue 14); the tiny models gain nothing from more
threads when alone. So these paths default to 1 thread (which also keeps their numbers the same on every
machine: the thread count changes the order of float sums), and `threads=0` picks the cores that look
free: this process's usable cores (`os.sched_getaffinity`) minus the 1-minute load average of
the rest of the machine, at least 1, shared out among `jobs` worker processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["THREADS_HELP", "check_threads", "choose_threads", "free_cores", "torch_threads", "run_units"]

THREADS_HELP = ("torch intra-op threads per process during the run (restored after). 0: the cores that look "
                "free (usable cores minus the 1-minute load average, shared among the jobs), -1: torch's own "
                "default (one per core). Beside another CPU job, torch's default oversubscribes the cores and "
                "runs about 10x slower (world pipeline --quick: 47 s with 1 thread, 407 s with 2 contending). "
                "Results are the same for the same count; another count changes their last digits (float sums).")


def check_threads(threads: int) -> None:
    """For a config's __post_init__: a `threads` value outside what `choose_threads` takes raises."""
    if threads < -1:
        raise ValueError(f"threads={threads}: must be >= 1, 0 (the free cores) or -1 (torch's default)")


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def free_cores() -> tuple[int, str]:
    """(cores that look free, how that was worked out): usable cores minus the rounded 1-minute load
    average, at least 1. The load includes this process only as far as it has run so far (at a run's
    start: its imports), so it mostly measures the other jobs."""
    cores = _usable_cores()
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this platform
        return cores, f"{cores} usable cores"
    free = max(1, min(cores, cores - round(load)))
    return free, f"{cores} usable cores, 1-minute load {load:.1f}"


def choose_threads(requested: int, jobs: int = 1) -> tuple[int, str]:
    """(threads per process, why): `requested` > 0 as given; 0 the free cores shared among `jobs`
    (at least 1 each); -1 torch's current setting."""
    check_threads(requested)
    if requested > 0:
        return requested, f"threads={requested}"
    if requested == -1:
        import torch  # here, not at the top: the configs that use THREADS_HELP load without torch

        return torch.get_num_threads(), "torch's default (threads=-1)"
    free, how = free_cores()
    share = max(1, free // max(1, jobs))
    return share, f"threads=0: {free} free ({how})" + (f", shared by {jobs} jobs" if jobs > 1 else "")


@contextmanager
def torch_threads(requested: int, say: Callable[[str], None] | None = print, jobs: int = 1) -> Iterator[int]:
    """Set torch's intra-op threads for the block as `choose_threads` decides, say what was chosen
    (unless `say` is None), restore the previous setting after. Yields the chosen count."""
    import torch

    before = torch.get_num_threads()
    n, why = choose_threads(requested, jobs)
    if say is not None:
        say(f"torch threads: {n} per process ({why})")
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


def run_units(fn: Callable[..., Any], units: Sequence[tuple[Any, ...]], jobs: int, threads: int,
              say: Callable[[str], None] = print) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Yield (unit, fn(*unit)) for every unit of a study, as each finishes: in this process under
    `torch_threads(threads)` when jobs <= 1 or there is one unit, else in min(jobs, len(units)) worker
    processes, each with its share of the cores (`choose_threads`) and the libraries' chatter quieted.
    For jobs > 1, `fn` must pickle (a module-level function, or a functools.partial of one)."""
    if jobs <= 1 or len(units) <= 1:
        with torch_threads(threads, say):
            for unit in units:
                yield unit, fn(*unit)
        return
    from concurrent.futures import ProcessPoolExecutor, as_completed

    n = min(jobs, len(units))
    per_process, why = choose_threads(threads, n)
    say(f"torch threads: {per_process} in each of {n} processes ({why})")
    with ProcessPoolExecutor(n) as pool:
        futures = {pool.submit(_run_in_worker, fn, unit, per_process): unit for unit in units}
        for fut in as_completed(futures):
            yield futures[fut], fut.result()


def _run_in_worker(fn: Callable[..., Any], unit: tuple[Any, ...], threads: int) -> Any:
    import torch

    from marginkit.console import quiet_libraries

    torch.set_num_threads(threads)
    quiet_libraries()
    return fn(*unit)
