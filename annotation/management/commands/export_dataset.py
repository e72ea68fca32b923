from __future__ import annotations

import json
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from annotation.exporters import FORMATS, export
from annotation.models import Round


class Command(BaseCommand):
    help = (
        "Export the labels of rounds as files for training: `factloop` (JSONL with provenance) or `trl` "
        "(a Hugging Face datasets directory in TRL's preference format), with a manifest.json."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--format", choices=FORMATS, required=True)
        parser.add_argument("--round", type=int, action="append", required=True, help="round number (repeatable)")
        parser.add_argument("--out", type=Path, required=True, help="the folder to write (must not exist)")

    def handle(self, *args: Any, **options: Any) -> None:
        rounds = sorted(set(options["round"]))
        known = set(Round.objects.filter(number__in=rounds).values_list("number", flat=True))
        missing = [number for number in rounds if number not in known]
        if missing:
            raise CommandError(f"no round {', '.join(map(str, missing))}")
        out: Path = options["out"]
        if out.exists():
            raise CommandError(f"{out} exists; exports never overwrite (choose a new folder)")
        counts = export(options["format"], rounds, out)
        self.stdout.write(json.dumps({"out": str(out), "format": options["format"], "rounds": rounds, **counts}))
