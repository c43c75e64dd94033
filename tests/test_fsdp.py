"""FSDP2 through Accelerate (issue 17): 2 CPU processes (gloo, torchrun) with every weight sharded train the
tiny RM and the tiny DPO policy to the losses, metrics and final weights of 1 plain process on the same global
batch, and the saved folder (full weights gathered on rank 0) loads in plain transformers with the same rewards.

The launch is what a CPU user runs: `ACCELERATE_USE_CPU=true ACCELERATE_USE_FSDP=true FSDP_VERSION=2 ...
torchrun --nproc_per_node 2 -m marginkit.cli train-rm ...`, the FSDP_* variables mirroring
configs/accelerate/fsdp.yaml (per transformer block wrapping, reshard after forward, CPU-RAM-efficient
loading). Accelerate keeps a gloo group MULTI_CPU and would ignore FSDP; train/sharding.py gives it the plugin.
This file is also the training script, run plainly or under torchrun:
`python tests/test_fsdp.py MODEL OUT N_PAIRS FORWARD TASK MARGIN` (TASK rm, rm-interrupt, rm-resume, sft or dpo;
MARGIN the RM's margin strategy, or DPO's reference source), as test_speed_ddp.py is.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/, for _engine_helpers when run as a script

from _engine_helpers import load_weights  # noqa: E402
from _launch import run_processes  # noqa: E402

ADAM_EPS = 1e-3  # why: tests/test_ddp.py (float32 rounding noise in zero-in-exact-arithmetic gradients)
N_PAIRS = 22  # 3 steps of 2 micro-batches of 4; the last micro-batch has 2 pairs, split 1 + 1
# configs/accelerate/fsdp.yaml as the environment `accelerate launch` would set from it
FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
            "FSDP_RESHARD_AFTER_FORWARD": "true", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true",
            "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT", "FSDP_OFFLOAD_PARAMS": "false"}


EXIT_ABORT = "terminate called without an active exception"  # a joinable C++ thread destroyed at exit


def run(model_dir: Path, out: Path, forward: str, processes: int, task: str = "rm", margin: str = "none",
        extra_env: dict[str, str] | None = None, n_pairs: int = N_PAIRS, fsdp: bool = True) -> Path:
    """Train with 1 plain process, or `processes` under torchrun: FSDP2 (`fsdp`), else DDP."""
    fsdp = fsdp and processes > 1
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "CUDA_VISIBLE_DEVICES": "",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", **(FSDP_ENV if fsdp else {}),
           **(extra_env or {})}
    launcher = [] if processes == 1 else ["-m", "torch.distributed.run", "--standalone",
                                          f"--nproc_per_node={processes}"]
    cmd = [sys.executable, *launcher, __file__, str(model_dir), str(out), str(n_pairs), forward, task, margin]
    done = run_processes(cmd, env, timeout=400)  # a hang fails with every process's stack
    ranks = [json.loads(p.read_text()) for p in sorted(out.parent.glob(f"{out.name}.rank-*.json"))]
    if done.returncode != 0 and len(ranks) == processes and EXIT_ABORT in done.stderr:
        # Known, not fixed: every process finished its work and end_processes() ran (each wrote its rank file
        # last), then one aborted in C++ static teardown at interpreter exit. Seen on 2 of 12 FSDP resumes from a
        # plain checkpoint on the 2-core VM (2026-12-02; docs/speed.md, "Known issue"). The results are checked
        # below as for any run; any other failure still fails here.
        print(f"{' '.join(cmd)}: every process finished, then one aborted at exit ({EXIT_ABORT!r})")
    else:
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    assert [r["num_processes"] for r in ranks] == [processes] * processes
    assert {r["distributed_type"] for r in ranks} == {"FSDP" if fsdp else "MULTI_CPU" if processes > 1 else "NO"}
    if fsdp:
        kind = "reference" if task == "precompute" else "sharded"  # precompute-ref trains nothing
        assert all(r[f"{kind}_sharded" if kind == "reference" else "sharded_params"] > 0 for r in ranks)
        assert all(r["reference_full" if kind == "reference" else "full_params"] == 0 for r in ranks)  # all shards
    return out


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def assert_same_run(one: Path, two: Path, keys: tuple[str, ...], evals: bool = True) -> None:
    rows_one, rows_two = rows(one), rows(two)
    assert [r["step"] for r in rows_two] == [r["step"] for r in rows_one] == [1, 2, 3]
    for key in keys:
        torch.testing.assert_close(torch.tensor([r[key] for r in rows_two]), torch.tensor([r[key] for r in rows_one]),
                                   msg=lambda m, k=key: f"{k}: {m}")
    found = [[json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"eval_' in line]
             for out in (one, two)]
    assert len(found[0]) == len(found[1]) or not evals  # a run without eval pairs against one with them
    for row_one, row_two in zip(*found) if evals else ():
        for key, value in row_one.items():
            if key.startswith("eval_") and isinstance(value, float):
                torch.testing.assert_close(torch.tensor(row_two[key], dtype=torch.float32),
                                           torch.tensor(value, dtype=torch.float32), msg=lambda m, k=key: f"{k}: {m}")
    w_one, w_two = load_weights(one / "model"), load_weights(two / "model")
    assert w_one.keys() == w_two.keys()
    for name, value in w_one.items():
        torch.testing.assert_close(w_two[name], value, msg=lambda m, n=name: f"{n}: {m}")  # float32 defaults


@pytest.mark.slow
@pytest.mark.parametrize("forward", ["padded", "packed", "prefix_shared"])
def test_fsdp_reward_model_equals_one_process(tiny_model_dir, word_tokenizer, tmp_path, forward):
    from transformers import AutoModelForSequenceClassification

    from _engine_helpers import make_pairs, vocab_words
    from marginkit.data.collate import collate_pairs
    from marginkit.data.ledger import Ledger
    from marginkit.data.tokenize import TokenizeConfig, encode_pairs

    margin = "ot"  # a batch-statistic margin: 2 processes must gather the global batch to match 1
    one = run(tiny_model_dir, tmp_path / "one", "padded", 1, margin=margin)
    two = run(tiny_model_dir, tmp_path / "two", forward, 2, margin=margin)
    assert_same_run(one, two, ("loss", "grad_norm", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
                               "target_margins/mean", "target_margins/ot_plan_entropy", "learning_rate"))
    # the folder loads in plain transformers and scores as the 1-process folder does
    encoded = encode_pairs(make_pairs(vocab_words(word_tokenizer), 6, seed=5), word_tokenizer, TokenizeConfig(),
                           Ledger())
    batch = collate_pairs(encoded, word_tokenizer.pad_token_id, "left")
    rewards = []
    for folder in (one / "model", two / "model"):
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        with torch.no_grad():
            rewards.append(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0])
    torch.testing.assert_close(rewards[1], rewards[0])
    margins_one, margins_two = (dict(__import__("numpy").load(d / "margins.npz")) for d in (one, two))
    torch.testing.assert_close(torch.as_tensor(margins_two["target"]), torch.as_tensor(margins_one["target"]))


@pytest.mark.slow
def test_fsdp_dpo_equals_one_process(tiny_model_dir, word_tokenizer, tmp_path):
    """train-dpo under FSDP, the frozen reference sharded too (or its log-probs precomputed), with the padded,
    packed and prefix-shared forwards, ends as 1 padded process does."""
    from safetensors.torch import load_file

    from _engine_helpers import make_pairs, vocab_words
    from marginkit.train.dpo import precompute_reference
    from test_speed_ddp import dpo_config

    one = run(tiny_model_dir, tmp_path / "one", "padded", 1, task="dpo", margin="model")
    # the reference artefact, written once by one process where the 2-process run looks for it
    precompute_reference(dpo_config(tiny_model_dir, tmp_path / "pre", "padded", "precomputed", tmp_path / "cache"),
                         make_pairs(vocab_words(word_tokenizer), N_PAIRS), console=lambda _: None)
    # precompute-ref itself sharded: 2 FSDP processes write the artefact of 1
    sharded = run(tiny_model_dir, tmp_path / "pre-2", "padded", 2, task="precompute")
    (mine,), (theirs,) = ((d / "ref_logps").glob("*.safetensors") for d in (tmp_path / "cache", sharded / "cache"))
    assert mine.name == theirs.name  # same model and data hashes
    for key, value in load_file(str(mine)).items():
        torch.testing.assert_close(load_file(str(theirs))[key], value, msg=lambda m, k=key: f"{k}: {m}")
    for forward, reference in (("padded", "model"), ("packed", "model"), ("prefix_shared", "model"),
                               ("prefix_shared", "precomputed")):
        two = run(tiny_model_dir, tmp_path / f"two-{forward}-{reference}", forward, 2, task="dpo", margin=reference)
        if reference == "model":  # every reference parameter a shard
            assert all(r["reference_sharded"] > 0 and r["reference_full"] == 0
                       for r in (json.loads((two.parent / f"{two.name}.rank-{i}.json").read_text()) for i in range(2)))
        assert_same_run(one, two, ("loss", "grad_norm", "logps/chosen", "logps/rejected", "rewards/margins"),
                        evals=reference == "model")


@pytest.mark.slow
def test_fsdp_sft_with_gradient_checkpointing_equals_one_process(tiny_model_dir, tmp_path):
    """train-sft under FSDP with model.gradient_checkpointing=true (transformers' per-block checkpointing, the
    memory saver the FSDP setup points to) ends as 1 plain process does."""
    one = run(tiny_model_dir, tmp_path / "sft-one", "padded", 1, task="sft")
    two = run(tiny_model_dir, tmp_path / "sft-two", "padded", 2, task="sft",
              extra_env={"MARGINKIT_TEST_GRADIENT_CHECKPOINTING": "1"})
    assert_same_run(one, two, ("loss", "grad_norm", "learning_rate"))


@pytest.mark.slow
def test_fsdp_bf16_stays_close_to_one_process(tiny_model_dir, tmp_path):
    """train.mixed_precision=bf16 under FSDP (Accelerate's MixedPrecisionPolicy: bf16 parameters in the forward,
    float32 master weights saved) trains as 1 bf16-autocast process does, to bf16 tolerance: bf16 keeps 8
    mantissa bits (relative rounding 2^-8 = 4e-3 per op), and the two runs round in different places (measured:
    losses 1.3e-3 apart, weights 3.9e-3)."""
    env = {"MARGINKIT_TEST_PRECISION": "bf16"}
    one = run(tiny_model_dir, tmp_path / "bf16-one", "padded", 1, extra_env=env)
    two = run(tiny_model_dir, tmp_path / "bf16-two", "padded", 2, extra_env=env)
    for key in ("loss", "grad_norm"):
        torch.testing.assert_close(torch.tensor([r[key] for r in rows(two)]), torch.tensor([r[key] for r in rows(one)]),
                                   atol=2e-2, rtol=2e-2, msg=lambda m, k=key: f"{k}: {m}")
    w_one, w_two = load_weights(one / "model"), load_weights(two / "model")
    assert {v.dtype for v in w_two.values()} == {torch.float32}  # the master weights, not the bf16 compute copy
    for name, value in w_one.items():
        torch.testing.assert_close(w_two[name], value, atol=2e-2, rtol=2e-2, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_on_two_and_on_one_process(tiny_model_dir, tmp_path):
    """A 2-process FSDP run stopped by SIGTERM after step 1 of 3 writes a sharded checkpoint (weights and
    optimizer states as torch.distributed.checkpoint shards); resumed on 2 FSDP processes, on 2 DDP processes
    and on 1 plain process, it ends as the uninterrupted run does: the same metrics and the same weights. A
    plain 1-process checkpoint resumes under FSDP the same way."""
    from marginkit.train.checkpoint import latest_checkpoint, load_trainer_state

    one = run(tiny_model_dir, tmp_path / "one", "padded", 1)
    cut = run(tiny_model_dir, tmp_path / "cut", "padded", 2, task="rm-interrupt")
    ckpt = latest_checkpoint(cut)
    assert ckpt.name == "step-000001" and (ckpt / "sharded" / ".metadata").is_file()
    assert load_trainer_state(ckpt)["optimizer"] is None  # the optimizer states are in the shards
    for processes, fsdp in ((2, True), (2, False), (1, False)):
        again = tmp_path / f"resumed-{processes}-{'fsdp' if fsdp else 'plain'}"
        shutil.copytree(cut, again)
        run(tiny_model_dir, again, "padded", processes, task="rm-resume", fsdp=fsdp)
        assert_same_run(one, again, ("loss", "grad_norm", "rewards/chosen", "rewards/rejected", "learning_rate"))
    # and the other way: a plain 1-process checkpoint (full weights and optimizer state) resumed under FSDP
    plain = run(tiny_model_dir, tmp_path / "cut-plain", "padded", 1, task="rm-interrupt")
    assert latest_checkpoint(plain).name == "step-000001" and not (latest_checkpoint(plain) / "sharded").exists()
    again = tmp_path / "resumed-from-plain"
    shutil.copytree(plain, again)
    run(tiny_model_dir, again, "padded", 2, task="rm-resume")
    assert_same_run(one, again, ("loss", "grad_norm", "rewards/chosen", "rewards/rejected", "learning_rate"))


def fake_accelerator(kind: str, zero_stage: int | None = None, processes: int = 2, fsdp_version: int = 2,
                     activation_checkpointing: bool = False, offload: bool = False):
    """What check_parallel reads of an Accelerator."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy

    ds = SimpleNamespace(zero_stage=zero_stage) if zero_stage is not None else None
    fsdp = SimpleNamespace(fsdp_version=fsdp_version, activation_checkpointing=activation_checkpointing,
                           cpu_offload=CPUOffloadPolicy() if offload else OffloadPolicy())
    return SimpleNamespace(distributed_type=DistributedType[kind], num_processes=processes,
                           state=SimpleNamespace(deepspeed_plugin=ds, fsdp_plugin=fsdp))


def test_parallel_settings_accepted_and_refused():
    from marginkit.train.engine import TrainConfig
    from marginkit.train.setup import check_parallel

    cfg = TrainConfig(batch_size=8)
    check_parallel(cfg, fake_accelerator("MULTI_GPU"))  # DDP
    check_parallel(cfg, fake_accelerator("FSDP"))  # FSDP2
    with pytest.raises(ValueError, match="FSDP version 1"):
        check_parallel(cfg, fake_accelerator("FSDP", fsdp_version=1))
    with pytest.raises(ValueError, match="model.gradient_checkpointing=true"):
        check_parallel(cfg, fake_accelerator("FSDP", activation_checkpointing=True))
    with pytest.raises(ValueError, match="fsdp_offload_params.*needs a GPU"):  # measured: pin_memory fails on CPU
        check_parallel(cfg, fake_accelerator("FSDP", offload=True))
    with pytest.raises(ValueError, match="torch_compile"):
        check_parallel(TrainConfig(batch_size=8, torch_compile=True), fake_accelerator("FSDP"))
    for stage in (2, 3):
        with pytest.raises(ValueError, match=f"DeepSpeed ZeRO-{stage} is not supported.*fsdp.yaml"):
            check_parallel(cfg, fake_accelerator("DEEPSPEED", zero_stage=stage))


def test_speed_doc_matrices_have_no_cell_accepted_but_not_run():
    """docs/speed.md: every cell of the process-layout matrix and every FSDP setting is tested or refused."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "speed.md").read_text()
    section = text[text.index("## More than one GPU"):text.index("### DeepSpeed")]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| FSDP setting")
            and "|---" not in line and not line.startswith("| | ")]
    assert len(rows) >= 15
    for row in rows:
        for cell in [c.strip() for c in row.strip("|").split("|")][1:]:
            assert cell.startswith(("tested", "refused at setup", "gathered on rank 0", "weights and optimizer")), row
    assert "accepted, not run" not in text


def test_cpu_fsdp_is_enabled_only_when_asked(monkeypatch):
    from types import SimpleNamespace

    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    from marginkit.train.sharding import enable_cpu_fsdp

    monkeypatch.setattr(PartialState, "_shared_state", {})  # enable_cpu_fsdp writes Accelerate's shared state
    acc = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, state=SimpleNamespace(), mixed_precision="bf16")
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    enable_cpu_fsdp(acc)
    assert not hasattr(acc.state, "fsdp_plugin")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    enable_cpu_fsdp(acc)
    assert acc.state.distributed_type == DistributedType.FSDP and acc.state.fsdp_plugin.fsdp_version == 2
    assert PartialState._shared_state["distributed_type"] == DistributedType.FSDP
    assert acc.state.fsdp_plugin.mixed_precision_policy.param_dtype == torch.bfloat16  # the run's precision


def main() -> None:
    from accelerate import PartialState
    from accelerate.state import AcceleratorState
    from torch.distributed.tensor import DTensor
    from transformers import AutoTokenizer
    from transformers.utils import logging

    from _engine_helpers import make_pairs, one_torch_thread, run_config, train, vocab_words
    from marginkit.margins import MarginSpec
    from marginkit.models.ref_cache import ModelReference
    from marginkit.train.engine import Engine, TrainingInterrupted
    from marginkit.train.launch import end_processes

    model_dir, output_dir, n_pairs, forward, task, margin = sys.argv[1:7]
    precision = os.environ.get("MARGINKIT_TEST_PRECISION", "no")  # train.mixed_precision of the run
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    seen: list[bool] = []  # per parameter the optimizer steps: is it a DTensor shard?

    class AdamW(torch.optim.AdamW):
        def step(self, closure=None):
            if not seen:
                seen.extend(isinstance(p, DTensor) for group in self.param_groups for p in group["params"])
            return super().step(closure)

    torch.optim.AdamW = lambda params, **kwargs: AdamW(params, **{**kwargs, "eps": ADAM_EPS})
    reference: list[bool] = []  # per parameter of DPO's in-loop reference: is it a DTensor shard?
    init = ModelReference.__init__

    def recording_init(self, model, chunk_size=None):
        reference.extend(isinstance(p, DTensor) for p in model.parameters())
        init(self, model, chunk_size)

    ModelReference.__init__ = recording_init
    pairs = make_pairs(vocab_words(AutoTokenizer.from_pretrained(model_dir)), int(n_pairs))
    if task == "rm-interrupt":  # SIGTERM to the last process only, after optimizer step 1 of 3 (mid-epoch)
        monitor, last = Engine._monitor, int(os.environ.get("WORLD_SIZE", "1")) - 1

        def hook(self, step_sums):
            if self.step == 1 and int(os.environ.get("RANK", "0")) == last:
                signal.raise_signal(signal.SIGTERM)
            return monitor(self, step_sums)

        Engine._monitor = hook
    with one_torch_thread():
        if task.startswith("rm"):
            cfg = run_config(model_dir, output_dir, batch_size=4, gradient_accumulation_steps=2, padding_side="left",
                             forward=forward, margin=MarginSpec(name=margin), mixed_precision=precision,
                             resume_from="latest" if task == "rm-resume" else None)
            try:  # with eval pairs: the final evaluation runs the sharded model on every process
                train(cfg, pairs, make_pairs(vocab_words(AutoTokenizer.from_pretrained(model_dir)), 6, seed=9))
            except TrainingInterrupted:
                assert task == "rm-interrupt"
        elif task == "precompute":
            import marginkit.train.dpo as dpo_module
            from marginkit.train.dpo import precompute_reference
            from test_speed_ddp import dpo_config

            compute = dpo_module.compute_ref_logps

            def recording_compute(model, *args, **kwargs):
                reference.extend(isinstance(p, DTensor) for p in model.parameters())
                return compute(model, *args, **kwargs)

            dpo_module.compute_ref_logps = recording_compute

            cfg = dpo_config(model_dir, output_dir, forward, "precomputed", Path(output_dir) / "cache")
            precompute_reference(cfg, pairs, console=lambda _: None)
        elif task == "sft":
            from marginkit.config import SFTRunConfig
            from marginkit.configlib import from_dict
            from marginkit.train.sft import train_sft

            train_cfg = {"log_every": 1, "progress_bar": False, "mixed_precision": "no", "lr_scheduler": "constant",
                         "warmup_ratio": 0.0, "learning_rate": 1e-3, "batch_size": 4, "gradient_accumulation_steps": 2,
                         "max_grad_norm": None, "output_dir": str(output_dir)}
            checkpointing = os.environ.get("MARGINKIT_TEST_GRADIENT_CHECKPOINTING") == "1"
            cfg = from_dict(SFTRunConfig, {"model": {"name_or_path": model_dir, "gradient_checkpointing": checkpointing},
                                           "train": train_cfg, "data": {"padding_side": "left"}})
            train_sft(cfg, pairs, console=lambda _: None)
        else:
            from marginkit.train.dpo import train_dpo
            from test_speed_ddp import dpo_config

            cfg = dpo_config(model_dir, output_dir, forward, margin, Path(output_dir).parent / "cache")
            # eval pairs with the reference in the loop: the final evaluation runs both sharded models
            eval_pairs = make_pairs(vocab_words(AutoTokenizer.from_pretrained(model_dir)), 6, seed=9)
            train_dpo(cfg, pairs, eval_pairs if margin == "model" else None, console=lambda _: None)
    state = PartialState()
    found = {"num_processes": state.num_processes, "backend": state.backend,
             "distributed_type": AcceleratorState().distributed_type.name, "sharded_params": sum(seen),
             "full_params": len(seen) - sum(seen), "reference_sharded": sum(reference),
             "reference_full": len(reference) - sum(reference)}
    out = Path(output_dir)  # beside the run folder, not in it
    (out.parent / f"{out.name}.rank-{state.process_index}.json").write_text(json.dumps(found))
    end_processes()  # as the CLI does: no gloo teardown hang at exit


if __name__ == "__main__":
    main()
