"""Sharded data parallelism: FSDP2 (torch.distributed.fsdp.fully_shard) through Accelerate's FSDP plugin (issue 17).

Accelerate does the sharding (`accelerator.prepare`: per transformer block wrapping, mixed-precision policy),
the gradient sync switch under accumulation (`no_sync`) and the clipping (`clip_grad_norm_`). What marginkit
adds:

- CPU runs: Accelerate reads ACCELERATE_USE_FSDP only for GPU-like process groups (accelerate/state.py keeps
  a gloo group MULTI_CPU), so `ACCELERATE_USE_CPU=true ACCELERATE_USE_FSDP=true torchrun ...` would train
  plain DDP and say nothing. `enable_cpu_fsdp` gives that state the FSDP plugin the environment describes,
  so the same Accelerate code shards on CPU (gloo) as on GPUs (tests/test_fsdp.py runs it).
- The settings refused, each with its reason (`check_fsdp`): FSDP1, and the options no test here runs (CPU
  offload, FSDP's own activation checkpointing, torch.compile under FSDP).
- The final model: every process takes part in gathering the full state dict (`full_state_dict`, a
  collective), then the main process writes the plain HF folder from it.
- Resumable checkpoints: weights and optimizer states written by every process as shards with
  torch.distributed.checkpoint (`save_sharded`), keyed by parameter name, so `load_sharded` reshards them
  onto this run's processes (tested: 2 FSDP processes, 2 DDP processes, 1 plain process).
- DPO's frozen reference sharded like the policy (`shard_frozen`).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

__all__ = ["SHARDED_DIR", "fsdp_requested", "enable_cpu_fsdp", "is_sharded", "check_fsdp", "full_state_dict",
           "as_number", "shard_frozen", "save_sharded", "load_sharded", "load_full_into_sharded", "unsharded_class"]

SHARDED_DIR = "sharded"  # a checkpoint's torch.distributed.checkpoint folder (train/checkpoint.py layout)


def fsdp_requested(environ: Any = None) -> bool:
    """Whether the launch asked for FSDP (`accelerate launch --config_file fsdp.yaml` sets ACCELERATE_USE_FSDP)."""
    environ = os.environ if environ is None else environ
    return environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("true", "1", "yes")


def enable_cpu_fsdp(acc: Accelerator) -> None:
    """On a multi-process CPU (gloo) run that asked for FSDP, switch Accelerate's state to FSDP with the plugin
    the FSDP_* environment describes (what Accelerate does itself on GPUs). Nothing otherwise."""
    if acc.distributed_type != DistributedType.MULTI_CPU or not fsdp_requested():
        return
    acc.state.distributed_type = DistributedType.FSDP
    plugin = FullyShardedDataParallelPlugin()  # reads FSDP_VERSION, FSDP_AUTO_WRAP_POLICY, ...
    if acc.mixed_precision != "no":  # what AcceleratorState.__init__ does for a GPU FSDP run
        plugin.set_mixed_precision(acc.mixed_precision)
    acc.state.fsdp_plugin = plugin
    # As AcceleratorState.__init__ does: every later AcceleratorState() copies PartialState's shared state over
    # its own, so without this the first one (inside `prepare`) turns the run back into MULTI_CPU.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def is_sharded(acc: Any) -> bool:
    """Whether the model is sharded across processes (FSDP): its full weights exist only when gathered."""
    return getattr(acc, "distributed_type", None) == DistributedType.FSDP


def check_fsdp(train_cfg: Any, acc: Accelerator) -> None:
    """Refuse, before any work, the FSDP settings the engine does not run correctly or that no test runs here
    (docs/speed.md, feature matrix). Each error says what to use instead."""
    plugin = acc.state.fsdp_plugin
    if plugin.fsdp_version != 2:
        raise ValueError(f"FSDP version {plugin.fsdp_version}: marginkit trains with FSDP2 (fully_shard) only. Set "
                         "fsdp_version: 2 in the Accelerate config (configs/accelerate/fsdp.yaml) or FSDP_VERSION=2")
    if _offloads(plugin):
        raise ValueError("fsdp_offload_params: true is not supported (untested): torch's CPUOffloadPolicy pins host "
                         "memory, which needs a GPU, and marginkit's tests run without one. Set it to false (shard "
                         "over more processes instead), or use model.gradient_checkpointing=true to save memory")
    if plugin.activation_checkpointing:
        raise ValueError("fsdp_activation_checkpointing: true is not supported (untested here); set it to false and "
                         "use model.gradient_checkpointing=true, which checkpoints every transformer block the "
                         "same way under FSDP")
    if train_cfg.torch_compile:
        raise ValueError("train.torch_compile=true under FSDP: compiling blocks before fully_shard is untested "
                         "here; train without it, or under DDP")


def shard_frozen(acc: Accelerator, module: Any) -> Any:
    """A frozen model (DPO's in-loop reference) sharded as the trained one is under FSDP (Accelerate's
    `fsdp2_prepare_model`: the same wrapping, precision and loading), else returned as is. Its forward is then a
    collective: every process runs it the same number of times (each step's micro-batches, each evaluation)."""
    if not is_sharded(acc):
        return module
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    for param in module.parameters():
        param.requires_grad_(False)
    return fsdp2_prepare_model(acc, module)


def _offloads(plugin: Any) -> bool:
    from torch.distributed.fsdp import CPUOffloadPolicy

    return isinstance(getattr(plugin, "cpu_offload", None), CPUOffloadPolicy)


def full_state_dict(acc: Accelerator, model: Any) -> dict[str, torch.Tensor] | None:
    """The full (unsharded) state dict, on CPU, on the main process; {} on the others; None when the model is
    not sharded (save the unwrapped model's own weights). Under FSDP a collective: every process must call it,
    at the same point (torch.distributed.checkpoint.state_dict.get_model_state_dict with full_state_dict=True,
    cpu_offload=True: plain tensors; `Accelerator.get_state_dict` returned DTensors here, which safetensors
    cannot write)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not is_sharded(acc):
        return None
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def as_number(value: Any) -> torch.Tensor:
    """A gradient norm as a plain tensor: under FSDP2 `clip_grad_norm_` returns a replicated DTensor."""
    return value.full_tensor() if hasattr(value, "full_tensor") else torch.as_tensor(value)


def _torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # Accelerate's AcceleratedOptimizer wraps the torch one


def save_sharded(model: Any, optimizer: Any, folder: str | os.PathLike) -> None:
    """Write the model's and the optimizer's state as this process's shards into `folder` (a collective under
    torch.distributed: every process calls it; process 0 writes the metadata)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, _torch_optimizer(optimizer))
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(folder))


def load_sharded(model: Any, optimizer: Any, folder: str | os.PathLike) -> None:
    """Load what `save_sharded` wrote into `model` and `optimizer`, resharded to this run's processes (any
    count; a plain model in one process reads the full tensors). A collective under torch.distributed."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    optim = _torch_optimizer(optimizer)
    model_state, optim_state = get_state_dict(model, optim)  # the layout to fill (optimizer states initialised)
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, optim, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def unsharded_class(model: Any) -> type:
    """The model's own class: `fully_shard` swaps a module's class for a generated FSDP<Name> subclass, whose
    `from_pretrained` would build that subclass without sharding it."""
    from torch.distributed.fsdp import FSDPModule

    cls = type(model)
    return next((c for c in cls.__mro__[1:] if not issubclass(c, FSDPModule)), cls) if issubclass(cls, FSDPModule) \
        else cls


def load_full_into_sharded(model: Any, optimizer: Any, weights: dict[str, torch.Tensor],
                           optim_state: dict[str, Any]) -> None:
    """Load a checkpoint written without FSDP (full weights by parameter name; torch's optimizer state_dict,
    keyed by the position of each parameter in the optimizer) into a sharded model and optimizer: each process
    keeps its shard. The optimizer was built over the trainable parameters in `named_parameters` order
    (train/setup.py make_optimizer), which gives each position its name."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    names = [name for name, param in model.named_parameters() if param.requires_grad]
    groups = optim_state["param_groups"]
    if sum(len(g["params"]) for g in groups) != len(names):
        raise ValueError(f"the checkpoint's optimizer holds {sum(len(g['params']) for g in groups)} parameters, the "
                         f"model trains {len(names)}: it was written for another model")
    by_name = {"state": {names[i]: s for i, s in optim_state["state"].items()},
               "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in groups]}
    # strict=False only because tied weights are saved once (as the plain resume reads them); anything
    # unexpected is an error
    result = set_state_dict(model, _torch_optimizer(optimizer), model_state_dict=weights, optim_state_dict=by_name,
                            options=StateDictOptions(full_state_dict=True, strict=False))
    if result.unexpected_keys:
        raise ValueError(f"the checkpoint does not match the model: unexpected {result.unexpected_keys[:5]}")
