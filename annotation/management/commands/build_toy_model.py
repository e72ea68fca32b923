from __future__ import annotations

import json
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = (
        "Build the tiny LLaVA base policy of the synthetic world (tokenizer, model, SFT) under "
        "FACTLOOP_MODEL_DIR/tiny-base, or reuse it when it is already built with the same spec."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--out", type=Path, help="folder (default: FACTLOOP_MODEL_DIR/tiny-base)")
        parser.add_argument("--force", action="store_true", help="rebuild even if built")
        parser.add_argument("--steps", type=int, help="SFT steps (default: the spec's)")
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args: Any, **options: Any) -> None:
        from models.cli import build_tiny

        if options["steps"] is not None and options["steps"] < 1:
            raise CommandError("--steps must be at least 1")
        out = options["out"] or Path(settings.FACTLOOP_MODEL_DIR) / "tiny-base"
        manifest = build_tiny(out, force=options["force"], steps=options["steps"], seed=options["seed"])
        summary = {k: manifest[k] for k in ("parameters", "final_loss", "build_seconds")}
        self.stdout.write(json.dumps({"model": str(out), **summary}))
