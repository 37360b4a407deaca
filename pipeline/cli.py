"""`python -m pipeline <stage> --config RECIPE.yaml [--key value ...]`, and the commands that take no recipe
(every one a row of `pipeline.registry`)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import time

from pipeline import chain as chains
from pipeline import locks, report
from pipeline.errors import PipelineError, is_disk_full
from pipeline.registry import COMMANDS, Command


def _run_recipe_stage(stage: Command, config: str, overrides: list[str]) -> None:
    from pipeline import distributed  # torch, TRL: only when a stage runs
    from pipeline.configs import load_configs, require_trackers

    distributed.start_ranks()
    configs, recipe = load_configs(stage, config, overrides)
    if distributed.use_recipe_precision(configs):
        configs, recipe = load_configs(stage, config, overrides)
    require_trackers(recipe)
    stage.call(*configs, recipe=recipe)
    distributed.end_ranks()


class Terminated(KeyboardInterrupt):
    """SIGTERM, what a cluster scheduler sends before it kills a job: stopped like Ctrl-C."""


def _terminate(signum: int, _frame: object) -> None:
    raise Terminated()


def _where_it_stopped() -> str:
    """Where each folder this process was writing stands: the checkpoint a rerun resumes from, or none."""
    from pipeline import outputs

    places = []
    for folder in locks.held():
        work = outputs.partial_dir(folder)
        found = outputs.last_checkpoint(work) if work.is_dir() else None
        places.append(f"{work} keeps checkpoint-{found[0]}" if found else f"{folder} had no checkpoint yet")
    if not places:
        return "nothing was being written"
    return "; ".join(places) + ": the same command resumes from there"


def _keys_help(stage: Command) -> str:
    """--help of a recipe stage: every key it takes, from its config classes, with its default and help."""
    lines = [
        f"usage: python -m pipeline {stage.name} --config RECIPE [--key value ...]",
        "",
        f"{stage.summary}. A recipe is a YAML mapping of these keys; --key value overrides one.",
    ]
    for cls in stage.config_classes():
        lines += ["", f"{cls.__name__}:"]
        for f in dataclasses.fields(cls):
            if not f.init or f.name.startswith("_"):
                continue
            text = " ".join(str(f.metadata.get("help", "")).split())
            lines.append(f"  --{f.name} ({_default(f)}){': ' + text if text else ''}")
    return "\n".join(lines)


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return f"default {field.default!r}"
    return "required" if field.default_factory is dataclasses.MISSING else "default: computed"


def demo(chain: str, force: bool, until: str | None, needs: str | None) -> None:
    """Run a chain (every step, or those `until` or `needs` asks for), then write its report when whole."""
    started = time.monotonic()
    if until is not None and needs is not None:
        raise PipelineError("demo takes --until or --needs, not both")
    if needs is not None:  # the steps of whichever chain makes what the recipe reads
        steps = chains.chain_for(needs).steps
        chains.print_summary(chains.run(chains.needs(needs, steps), main, force), time.monotonic() - started)
        return
    steps = chains.load(chain).steps
    if until is not None:
        chains.print_summary(chains.run(chains.needed_for(steps, until), main, force), time.monotonic() - started)
        return
    rows = chains.run([step for step in steps if step.in_whole_chain], main, force)
    path = report.write(chain)
    chains.print_summary(rows, time.monotonic() - started)
    print(f"report: {path}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", allow_abbrev=False, description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        if command.is_stage:
            # --help lists the stage's recipe keys (_keys_help); any key can follow --config as --key value
            sub = commands.add_parser(command.name, allow_abbrev=False, add_help=False, help=command.summary)
            sub.add_argument("--config", help="the recipe YAML")
            continue
        sub = commands.add_parser(command.name, allow_abbrev=False, help=command.summary)
        for argument in command.arguments:
            sub.add_argument(*argument.flags, **argument.options)
    return parser


def _repeated_option(argv: list[str]) -> str | None:
    """The first `--option` given twice (argparse would keep its last value without a word), if any."""
    seen = set()
    for token in argv:
        name = token.split("=", 1)[0]
        if name.startswith("--") and name in seen:
            return name
        seen.add(name)
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    repeated = _repeated_option(argv)
    if repeated is not None:
        print(f"error: {repeated} is given twice, and only one would count: give it once", file=sys.stderr)
        return 2
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    command = COMMANDS[args.command]
    if not command.is_stage and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if command.is_stage and {"-h", "--help"} & set(rest):
        print(_keys_help(command))
        return 0
    if command.is_stage and args.config is None:
        parser.error(f"the {command.name} stage needs --config RECIPE (see python -m pipeline {command.name} --help)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        if getattr(args, "max_rows", None) is not None and args.max_rows < 1:
            raise PipelineError(f"--max_rows must be at least 1, got {args.max_rows}")
        if command.is_stage:
            _run_recipe_stage(command, args.config, rest)
        else:
            result = command.call(**{k: v for k, v in vars(args).items() if k != "command"})
            if command.prints:
                print(f"{command.prints}: {result}")
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        how = "terminated (SIGTERM)" if isinstance(interrupt, Terminated) else "interrupted"
        print(f"\nerror: {how}: {_where_it_stopped()}", file=sys.stderr)  # below a progress bar's line
        return 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)
    except Exception as error:
        if not is_disk_full(error):
            raise
        folders = ", ".join(map(str, locks.held())) or "the output folder"
        print(
            f"error: no space left on the device while writing {folders}: free some space and run the same "
            "command again (a stage resumes from its last checkpoint)",
            file=sys.stderr,
        )
        return 2
    finally:
        locks.release_all()
        signal.signal(signal.SIGTERM, previous)
    return 0
