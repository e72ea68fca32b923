from __future__ import annotations

import json
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm  # type: ignore[import-untyped]

from annotation.data.exporters import AGGREGATIONS, FORMATS, Selection, check_format, count_labels, export
from annotation.models import Round


class Command(BaseCommand):
    help = (
        "Export the labels of rounds as files for training, with a manifest.json: `factloop` (JSONL, one row per "
        "label with provenance), `trl` (a Hugging Face datasets directory in TRL's preference format), "
        "`llava-rlhf` or `rlhf-v` (JSON laid out like those projects' released data, with an images folder)."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--format", choices=FORMATS, required=True)
        parser.add_argument("--round", type=int, action="append", required=True, help="round number (repeatable)")
        parser.add_argument("--out", type=Path, required=True, help="the folder to write (must not exist)")
        parser.add_argument(
            "--aggregate",
            choices=AGGREGATIONS,
            default="none",
            help="pair formats: merge each task's labels by majority vote (default: every label)",
        )
        parser.add_argument(
            "--min-gold-accuracy",
            type=float,
            default=None,
            metavar="X",
            help="keep only the labels of annotators whose gold accuracy is at least X (0-1)",
        )
        parser.add_argument(
            "--include-gold", action="store_true", help="pair formats: keep the gold (quality-control) tasks' labels"
        )
        parser.add_argument(
            "--ai-pairs",
            action="store_true",
            help="trl: add the AI labeller's pairs of the rounds' candidates (source ai; score gap >= 1)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        rounds = sorted(set(options["round"]))
        known = set(Round.objects.filter(number__in=rounds).values_list("number", flat=True))
        missing = [number for number in rounds if number not in known]
        if missing:
            raise CommandError(f"no round {', '.join(map(str, missing))}")
        out: Path = options["out"]
        if out.exists():
            raise CommandError(f"{out} exists; exports never overwrite (choose a new folder)")
        try:
            selection = Selection(
                tuple(rounds),
                aggregate=options["aggregate"],
                min_gold_accuracy=options["min_gold_accuracy"],
                include_gold=options["include_gold"],
                ai_pairs=options["ai_pairs"],
            )
            check_format(options["format"], selection)
        except ValueError as error:
            raise CommandError(str(error)) from None
        with tqdm(total=count_labels(selection), unit="label", desc="export", disable=None) as bar:
            counts = export(options["format"], selection, out, progress=bar.update)
        self.stdout.write(json.dumps({"out": str(out), "format": options["format"], "rounds": rounds, **counts}))
