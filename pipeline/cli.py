"""`python -m pipeline <stage> --config RECIPE.yaml [--key value ...]` and `python -m pipeline data CARD`."""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.configs import PipelineError, load_configs, parse_overrides

TRAINING_STAGES = ("base", "sft")


def _run_training_stage(stage: str, config: str, overrides: list[str]) -> None:
    configs, recipe = load_configs(stage, config, parse_overrides(overrides))
    if stage == "base":
        from pipeline.stages import base as module
    else:
        from pipeline.stages import sft as module
    module.run(*configs, recipe=recipe)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", allow_abbrev=False, description=__doc__)
    stages = parser.add_subparsers(dest="stage", required=True)
    for stage in TRAINING_STAGES:
        sub = stages.add_parser(stage, allow_abbrev=False, help=f"run the {stage} stage from a recipe")
        sub.add_argument("--config", required=True, help="recipe YAML; any recipe key can follow as --key value")
    data = stages.add_parser("data", allow_abbrev=False, help="load a data card and report what it gives")
    data.add_argument("card", help="path of the data card (data_cards/<name>.md)")
    data.add_argument("--data_files", help="local files in the card's format, instead of the card's source")
    data.add_argument("--split", default="train")
    data.add_argument("--max_rows", type=int)
    data.add_argument("--output_dir", help="also write the canonical rows to OUTPUT_DIR/<split>.jsonl")
    summary = stages.add_parser("summary", allow_abbrev=False, help="print a table of the finished stages of a run")
    summary.add_argument("run_dir", nargs="?", default="outputs/demo")
    args, rest = parser.parse_known_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if args.stage in ("data", "summary") and rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        if args.stage == "data":
            from pipeline.stages import data as data_stage

            data_stage.run(args.card, args.split, args.data_files, args.max_rows, args.output_dir)
        elif args.stage == "summary":
            from pipeline.stages import summary

            summary.run(args.run_dir)
        else:
            _run_training_stage(args.stage, args.config, rest)
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
