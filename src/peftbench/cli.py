"""Command line: parses flags and calls run / report / list / fetch. No logic of its own.

Usage:
    peftbench run demo
    peftbench run --model random:gpt2 --method lora --task summarization --dataset builtin:spam-subjects \
        --set method.r=16 --set train.max_steps=50
    peftbench run demo --seeds 1,2,3 --set 'train.learning_rate=[1e-4, 3e-4, 1e-3]'
    peftbench report runs/demo
    peftbench list seed
    peftbench fetch smollm2-135m gpt2-tokenizer

Exit codes: 0 success; 1 some experiment failed (its result says why); 2 bad input;
130 / 143 stopped by SIGINT / SIGTERM (the running experiment is recorded as cancelled).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from peftbench import fs
from peftbench.errors import Cancelled, ConfigError, FolderError, SourceError
from peftbench.run import tracking
from peftbench.run.progress import quiet_libraries


class _Parser(argparse.ArgumentParser):
    """Bad flags are bad input like any other: one line on stderr, exit 2 (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"peftbench: error: {message} (see {self.prog} --help)\n")


def _common(sp) -> None:
    """The flags run and list share: a suite, or one experiment, and overrides."""
    sp.add_argument("suite", nargs="?", help="suite: path to YAML, or demo / seed")
    sp.add_argument("--model", help="model spec (single-experiment mode)")
    sp.add_argument("--method", help="method name (single-experiment mode)")
    sp.add_argument("--task", help="task (single-experiment mode)")
    sp.add_argument("--dataset", help="dataset spec (single-experiment mode)")
    sp.add_argument("--id", dest="exp_id", help="experiment id (single-experiment mode)")
    sp.add_argument("--seed", type=int, help="shorthand for --set train.seed=N")
    sp.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override any config field, e.g. train.max_steps=50 (repeatable)",
    )
    sp.add_argument("--only", metavar="GLOB", help="only experiment ids matching this glob")
    sp.add_argument("--out", type=Path, help="output directory (default runs/<suite>)")
    sp.add_argument(
        "--seeds",
        type=_seed_list,
        metavar="N,N,...",
        help="run every experiment once per seed (overrides the suite's seeds)",
    )


def _run_flags(run) -> None:
    _common(run)
    run.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    run.add_argument("--force", action="store_true", help="rerun experiments that already succeeded")
    run.add_argument(
        "--in-process",
        action="store_true",
        help="run experiments in this process instead of one fresh process each (debugging)",
    )
    run.add_argument(
        "--gpus",
        type=int,
        default=1,
        metavar="N",
        help="GPUs per experiment: N > 1 starts it with accelerate's launcher, one process per GPU",
    )
    run.add_argument(
        "--log-with",
        action="append",
        metavar="TRACKER",
        help="experiment trackers: tensorboard, mlflow, wandb, trackio (comma-separated or repeated; "
        "overrides the suite's log_with; offline; pip install 'peftbench[tracking]')",
    )
    run.add_argument(
        "--executor",
        default="serial",
        choices=["serial", "local", "ray"],
        help="serial: one run after another (default) | local: --jobs runs at once on this machine | ray: each run "
        "a Ray task on a cluster (--address; pip install 'peftbench[ray]')",
    )
    run.add_argument("--jobs", type=int, metavar="N", help="runs at once (default: one per GPU; 2 on CPU)")
    run.add_argument("--address", metavar="auto|HOST:PORT", help="the Ray cluster (default: a local Ray started here)")
    run.add_argument(
        "--runs-per-gpu",
        type=int,
        default=1,
        metavar="K",
        help="quality-only suites (measure.enabled: false): K runs share each GPU",
    )
    run.add_argument("--help-config", action="store_true", help="list every config field with its default and exit")
    run.add_argument("-v", "--verbose", action="store_true", help="log details (tracebacks of failures)")


def _parser() -> argparse.ArgumentParser:
    from peftbench import __version__

    p = _Parser(prog="peftbench", description="Which fine-tuning method is best for your model and task?")
    p.add_argument("--version", action="version", version=f"peftbench {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    _run_flags(sub.add_parser("run", help="run a suite (YAML path or built-in name) or one experiment"))
    rep = sub.add_parser("report", help="rebuild report.md/report.html/summary.csv/verdict.json/plots from results")
    rep.add_argument("dir", type=Path)

    cmp_ = sub.add_parser("compare", help="two studies or more side by side: paired runs, differences with intervals")
    cmp_.add_argument("dirs", nargs="+", type=Path, help="the studies' output folders (the first is the reference)")
    cmp_.add_argument("--out", type=Path, help="also write the comparison here (.md, and .json beside it)")

    imp = sub.add_parser("import-peft", help="a folder of peft method-comparison experiments -> a peftbench suite")
    imp.add_argument("dir", type=Path, help="peft's method_comparison/<benchmark> folder, or its experiments/")
    imp.add_argument("--out", type=Path, help="write the suite here (default: print it)")
    imp.add_argument("--model", help="model spec for every experiment (default: hf:<model_id> of their parameters)")
    imp.add_argument("--dataset", help="dataset spec (default: hf:meta-math/MetaMathQA, answers scored by ROUGE)")
    imp.add_argument("--task", help="the dataset's task (with --dataset)")
    exp = sub.add_parser(
        "export-peft", help="a study's results in peft's result layout (run_info/train_info/meta_info)"
    )
    exp.add_argument("dir", type=Path, help="the study's output folder")
    exp.add_argument("--out", type=Path, help="where the JSON files go (default: DIR/peft-results)")

    ls = sub.add_parser("list", help="the plan: run ids and whether each is done, todo or stale")
    _common(ls)
    ls.add_argument(
        "--methods", action="store_true", help="every method name x architecture (GPT-2, Llama, T5): works, or why not"
    )

    fetch = sub.add_parser("fetch", help="fill the cache with offline sources")
    fetch.add_argument("names", nargs="*", help="source names (default: all)")
    fetch.add_argument("--force", action="store_true", help="convert again even if cached")
    return p


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct integers, e.g. 1,2,3")
    return seeds


def _load(args):
    from peftbench.run import plan

    overrides = list(args.set)
    seeds = getattr(args, "seeds", None)
    if getattr(args, "seed", None) is not None:
        overrides.append(f"train.seed={args.seed}")
    single = [getattr(args, k, None) for k in ("model", "method", "task", "dataset")]
    if any(single):
        if getattr(args, "suite", None):
            raise ConfigError("give either a suite or --model/--method/--task/--dataset, not both")
        missing = [f"--{k}" for k, v in zip(("model", "method", "task", "dataset"), single) if not v]
        if missing:
            raise ConfigError(f"single-experiment mode needs {', '.join(missing)}")
        return plan.single_experiment(
            model=args.model,
            method=args.method,
            task=args.task,
            dataset=args.dataset,
            overrides=overrides,
            exp_id=getattr(args, "exp_id", None),
            seeds=seeds,
        )
    if not getattr(args, "suite", None):
        raise ConfigError("name a suite (demo, seed, or a YAML path) or give --model/--method/--task/--dataset")
    return plan.load_suite(args.suite, overrides=overrides, seeds=seeds)


def cmd_run(args) -> int:
    from peftbench.run import executors, plan, runner, spread
    from peftbench.spec import config

    if args.help_config:
        print(config.help_text())
        return 0
    if not args.in_process and args.gpus == 1 and os.environ.get("WORLD_SIZE", "1") == "1":
        from peftbench.run import forked

        forked.warm_up()  # the runs' server imports while this process plans
    suite = _load(args)
    runner.resolve_device(args.device)
    if args.gpus < 1:
        raise ConfigError(f"--gpus: must be >= 1, got {args.gpus}")
    if args.gpus > 1:
        runner.check_gpus(args.gpus, device=args.device)
    out = args.out or Path("runs") / suite.name
    chosen = runner.select(plan.plan_runs(suite), args.only)
    options = executors.Options(args.executor, jobs=args.jobs, address=args.address, runs_per_gpu=args.runs_per_gpu)
    executors.check(options, runs=chosen, device=args.device, gpus=args.gpus)
    if options.parallel and args.in_process:
        raise ConfigError(f"--executor {args.executor}: not with --in-process (each run needs a process of its own)")
    plan.check_out_dir(out)
    log_with = tracking.parse(args.log_with) or suite.log_with
    problems = tracking.check(log_with)
    if problems:
        raise ConfigError("; ".join(problems))
    return runner.run_suite(
        suite,
        out_dir=out,
        device=args.device,
        force=args.force,
        only=args.only,
        in_process=args.in_process,
        gpus=args.gpus,
        tracking={"log_with": log_with, "project": suite.name} if log_with else None,
        executor=spread.Spread(options) if options.parallel else None,
    )


METHOD_ARCHS = {
    "gpt2 (causal, Conv1D)": "random:gpt2",
    "llama (causal)": "random:smollm2-135m",
    "t5 (seq2seq)": "random:t5-small",
}


def method_table() -> str:
    """The support table as markdown: each method applied to each architecture on the meta device."""
    from peftbench.catalog import methods

    rows = methods.support_table(METHOD_ARCHS)
    lines = ["| method | " + " | ".join(METHOD_ARCHS) + " | what it is |", "|---" * (len(METHOD_ARCHS) + 2) + "|"]
    for r in rows:
        cells = ["works" if r[a] == "works" else "no: " + r[a].replace("|", "/")[:110] for a in METHOD_ARCHS]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + f" | {r['description']} |")
    return "\n".join(lines)


def cmd_list(args) -> int:
    from peftbench import results
    from peftbench.run import plan, runner, search

    if args.methods:
        print(method_table())
        return 0
    suite = _load(args)
    out = args.out or Path("runs") / suite.name
    runs = runner.select(plan.plan_runs(suite), args.only)
    studies = search.replay(runs, out)  # a search's trials, as far as its results go
    for run in runs:
        note = ""
        if run.trial is not None:
            study, done = studies[run.experiment_id]
            if run.trial <= done and run.trial < study.setting["trials"]:
                run = study.concrete(run)  # told trials, and the next one: asked again from the results
                note = f" [{search.describe_params(run)}]"
            else:
                note = f" [search trial: asked after trial {run.trial - 1}]"
        state = results.describe(out, run.run_id, run.config_hash) if run.config_hash else "todo"
        exp = run.exp
        print(
            f"{state:10s} {run.run_id}  ({exp.model.spec} | {exp.data.task} {exp.data.spec} | {exp.method.name}){note}"
        )
    return 0


def cmd_report(args) -> int:
    from peftbench.report import build_report
    from peftbench.results import load_results

    if not fs.is_dir(args.dir):
        raise ConfigError(f"report: {args.dir} is not a directory")
    if not load_results(args.dir):
        raise ConfigError(f"report: {args.dir} holds no peftbench results (results/*.json)")
    try:
        paths = build_report(args.dir)
    except OSError as e:
        problem = fs.write_problem(e, args.dir)
        if problem is None:
            raise
        raise ConfigError(f"report: {problem}") from None
    print(f"report: {paths['md']} (and {paths['html'].name}, {paths['csv'].name}, {paths['verdict'].name}, plots/)")
    return 0


def cmd_fetch(args) -> int:
    from peftbench.catalog import sources

    names = args.names or list(sources.SOURCES)
    unknown = [n for n in names if n not in sources.SOURCES]
    if unknown:
        raise ConfigError(f"fetch: unknown source {', '.join(unknown)} (known: {', '.join(sources.SOURCES)})")
    for name in names:
        path = sources.ensure(name, force=args.force)
        print(f"{name}: {path}")
    return 0


def cmd_compare(args) -> int:
    import json

    from peftbench.report.compare import compare_dirs
    from peftbench.results import write_text_atomic

    text, data = compare_dirs(args.dirs)
    print(text, end="")
    if args.out:
        write_text_atomic(args.out.with_suffix(".md"), text)
        write_text_atomic(args.out.with_suffix(".json"), json.dumps(data, indent=1, default=str) + "\n")
    return 0


def cmd_import_peft(args) -> int:
    import yaml

    from peftbench.report.peftformat import import_peft
    from peftbench.results import write_text_atomic

    if args.task and not args.dataset:
        raise ConfigError("import-peft: --task goes with --dataset")
    data = {"spec": args.dataset, "task": args.task or ""} if args.dataset else None
    suite, notes = import_peft(args.dir, model=args.model, data=data)
    for line in notes:
        print(f"peftbench: note: {line}", file=sys.stderr)
    text = yaml.safe_dump(suite, sort_keys=False, width=120)
    if args.out:
        write_text_atomic(args.out, text)
        print(f"{len(suite['experiments'])} experiments -> {args.out}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


def cmd_export_peft(args) -> int:
    from peftbench.report.peftformat import export_peft

    written = export_peft(args.dir, args.out or args.dir / "peft-results")
    for path in written:
        print(path)
    return 0


COMMANDS = {"run": cmd_run, "list": cmd_list, "report": cmd_report, "fetch": cmd_fetch, "compare": cmd_compare}
COMMANDS |= {"import-peft": cmd_import_peft, "export-peft": cmd_export_peft}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("peftbench").setLevel(logging.DEBUG if getattr(args, "verbose", False) else logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # "Writing model shards" bars on every save
    quiet_libraries()
    try:
        return COMMANDS[args.command](args)
    except ConfigError as e:
        print(f"peftbench: error: {e}", file=sys.stderr)
        return 2
    except SourceError as e:
        print(f"peftbench: error: {e}", file=sys.stderr)
        return 2
    except FolderError as e:
        print(f"peftbench: error: {e}", file=sys.stderr)
        return e.code
    except Cancelled as c:
        print("peftbench: interrupted", file=sys.stderr)
        return 128 + c.signum
    except KeyboardInterrupt:
        print("peftbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `peftbench list demo | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
