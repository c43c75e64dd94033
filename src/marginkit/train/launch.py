"""How many processes the launcher asked for, against how many the Accelerator joined (issue 14).

`accelerate launch --num_processes 2 --cpu -m marginkit.cli train-rm ...` starts ONE process: on CPU,
Accelerate's simple launcher starts several only through MPI (`--mpirun_hostfile`), and it sets no
environment variable that names the requested count (measured with accelerate 1.x: only
ACCELERATE_USE_CPU, MASTER_ADDR and MASTER_PORT). The request is then visible only on the launcher's
command line, which is our parent process. A result-changing mismatch it is not (train.batch_size is the
global micro-batch, so one process computes the same steps), but the user asked for parallel training
and would silently get none, so it is refused with what works instead (tests/test_ddp.py runs exactly
that: torchrun with ACCELERATE_USE_CPU=true joins a gloo process group).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from marginkit.errors import UserError

__all__ = ["requested_processes", "parent_argv", "check_launch", "end_processes"]

_ENV_COUNTS = ("WORLD_SIZE", "ACCELERATE_NUM_PROCESSES")  # set by torchrun / some launchers


def parent_argv() -> list[str]:
    """The parent process's command line (Linux /proc), or [] where it cannot be read."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _flag_value(argv: Sequence[str], names: tuple[str, ...]) -> str | None:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def requested_processes(environ: Mapping[str, str], launcher_argv: Sequence[str]) -> tuple[int, str] | None:
    """(processes the launch asked for, where that was read) or None when nothing says.

    Read from WORLD_SIZE / ACCELERATE_NUM_PROCESSES, else from an `accelerate launch` parent command line
    (`--num_processes N`, `--num-processes N`)."""
    for name in _ENV_COUNTS:
        value = environ.get(name, "")
        if value.isdigit():
            return int(value), f"{name}={value}"
    is_accelerate = any(Path(a).name == "accelerate" or a.endswith("accelerate.commands.accelerate_cli")
                        for a in launcher_argv[:3])
    if is_accelerate and "launch" in launcher_argv:
        value = _flag_value(launcher_argv, ("--num_processes", "--num-processes"))
        if value is not None and value.isdigit():
            return int(value), f"accelerate launch --num_processes {value}"
    return None


def check_launch(num_processes: int, environ: Mapping[str, str] | None = None,
                 launcher_argv: Sequence[str] | None = None) -> None:
    """Raise UserError (one line, exit 2 from the CLI) when the launch asked for more processes than joined."""
    environ = os.environ if environ is None else environ
    asked = requested_processes(environ, parent_argv() if launcher_argv is None else launcher_argv)
    if asked is None or asked[0] <= num_processes:
        return
    n, source = asked
    raise UserError(
        f"{source} asked for {n} processes but only {num_processes} started (on CPU, `accelerate launch --cpu` "
        f"starts several only through MPI). For {n} CPU processes run `ACCELERATE_USE_CPU=true torchrun "
        f"--standalone --nproc_per_node {n} -m marginkit.cli ...` (gloo backend); on GPUs use `accelerate launch "
        f"--multi_gpu --num_processes {n} ...`; or drop --num_processes to train in one process")


def end_processes() -> None:
    """End a multi-process run in order: free the trained DDP/FSDP modules, wait for every process, destroy the
    process group. Left to the interpreter's exit, torch frees the gloo group while a DDP Reducer still holds
    it, in no fixed order across processes, and a rank can block for good in ProcessGroupGloo's destructor
    joining its thread (seen with 2-process gloo runs on the 2-core test machine, py-spy --native; the
    workaround in tests/_launch.py). Call it once the command's work is done on every process, with no
    reference to the prepared model left; nothing happens without torch.distributed."""
    import gc

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()  # the prepared modules sit in reference cycles (Accelerate, hooks): free them while all are here
    dist.barrier()
    dist.destroy_process_group()
