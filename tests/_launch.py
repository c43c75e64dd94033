"""Run a multi-process training command for a test, and make a hang say where it hangs.

A torchrun job whose ranks wait on each other forever would otherwise end as a bare TimeoutExpired. Here
every process runs with PYTHONFAULTHANDLER=1 in its own session; on timeout the whole group gets SIGABRT,
on which faulthandler prints each thread's Python stack to stderr, and that stderr goes into the failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable

import pytest


def run_processes(cmd: list[str], env: dict[str, str], timeout: float = 300,
                  finished: Callable[[], bool] | None = None) -> subprocess.CompletedProcess:
    """Run `cmd` in its own process group. On timeout the group is stopped; if `finished()` then says the job
    had written all its results, the run counts as done (exit 0, the stacks kept in stderr): a known torch
    deadlock, a rank blocked in c10d::ProcessGroupGloo::~ProcessGroupGloo (std::thread::join) while its DDP
    Reducer is freed after training, seen with 2-process gloo DPO runs on this 2-core machine (py-spy --native,
    2026-12-02). The CLI and tests/test_fsdp.py's script end with `marginkit.train.launch.end_processes` (free
    the model, barrier, destroy the group), which avoids it; older scripts still rely on this. Anything else
    still running at the timeout fails with every process's stack."""
    env = {**env, "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # torchrun starts its workers in their own process groups: signal every descendant, not only the group
        pids = [proc.pid, *_descendants(proc.pid)]
        _signal(pids, signal.SIGABRT)  # faulthandler: every process prints its stacks, then aborts
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            _signal(pids, signal.SIGKILL)
            out, err = proc.communicate(timeout=20)  # every writer of the pipes is gone now
        if finished is not None and finished():
            print(f"{' '.join(cmd)}: results written, then a process hung at exit (torch gloo teardown); "
                  f"stopped after {timeout:.0f} s")
            return subprocess.CompletedProcess(cmd, 0, out, err)
        pytest.fail(f"{' '.join(cmd)} still running after {timeout:.0f} s; the processes' stacks:\n{err[-12000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc), children before grandchildren."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in os.listdir(f"/proc/{parent}/task") if os.path.isdir(f"/proc/{parent}/task") else []:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
