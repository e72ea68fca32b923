from __future__ import annotations

import json
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from annotation.loop.deployment import RegisterRefused, register_model


class Command(BaseCommand):
    help = (
        "Register a base model a round can start from: a local checkpoint folder (checked: config.json "
        "with a model_type, and a processor or tokenizer) or a hub id (organisation/name), optionally "
        "with a LoRA adapter folder."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("name", help="the version name (letters, digits, '.', '_', '-')")
        parser.add_argument("--model", required=True, help="a checkpoint folder or a hub id")
        parser.add_argument("--adapter", type=Path, help="a LoRA adapter folder to serve on the model")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            version = register_model(options["name"], options["model"], adapter=options["adapter"])
        except RegisterRefused as error:
            raise CommandError(str(error)) from None
        self.stdout.write(
            json.dumps({"version": version.name, "base_model": version.base_model, "adapter": version.adapter})
        )
