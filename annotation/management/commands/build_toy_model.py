from __future__ import annotations

from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from models.cli import build_tiny, summary
from testbed.tiny import SHIPPED, OutOfBand


class Command(BaseCommand):
    help = (
        "The tiny LLaVA base policy of the synthetic world, shipped with the repository "
        f"({SHIPPED}): checks it, copies it to --out, or with --force rebuilds it (tokenizer, "
        "model, SFT, the checkpoint chosen on validation scenes; about 10 minutes)."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--out", type=Path, default=SHIPPED, help="folder (default: the shipped model)")
        parser.add_argument("--force", action="store_true", help="rebuild even if built")
        parser.add_argument("--steps", type=int, help="SFT steps (default: the spec's)")
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args: Any, **options: Any) -> None:

        if options["steps"] is not None and options["steps"] < 1:
            raise CommandError("--steps must be at least 1")
        try:
            manifest = build_tiny(options["out"], force=options["force"], steps=options["steps"], seed=options["seed"])
        except OutOfBand as error:
            raise CommandError(str(error)) from error
        self.stdout.write(summary(options["out"], manifest))
