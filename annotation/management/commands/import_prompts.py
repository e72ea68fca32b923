from __future__ import annotations

from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from annotation.data.importers import import_prompts, is_hf_dataset
from annotation.management.commands._imports import run_import


class Command(BaseCommand):
    help = (
        "Import prompts from an images folder and a JSONL or CSV manifest (image, prompt, and optional split, "
        "facts, context, meta), or from a Hugging Face datasets directory (image and prompt columns). All or nothing "
        "unless --skip-bad; bad rows are reported with the reason."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "manifest", type=Path, help="a .jsonl or .csv file, one prompt per row, or a datasets directory"
        )
        parser.add_argument(
            "--images", type=Path, help="the folder the manifest's image paths are relative to (JSONL/CSV)"
        )
        parser.add_argument("--skip-bad", action="store_true", help="import the good rows, report the bad ones")
        parser.add_argument(
            "--dataset", default="", help="the held-out dataset the held-out rows join (default heldout; made if new)"
        )
        parser.add_argument(
            "--vocabulary",
            default="",
            help="a new dataset's object vocabulary: coco, toyworld or a registered one (default: the rows' facts', "
            "else coco); every held-out row's classes are checked against it",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        manifest: Path = options["manifest"]
        if not manifest.is_file() and not is_hf_dataset(manifest):
            raise CommandError(f"no manifest or datasets directory at {manifest}")
        run_import(
            self,
            lambda: import_prompts(
                manifest,
                options["images"],
                skip_bad=options["skip_bad"],
                dataset=options["dataset"],
                vocabulary=options["vocabulary"],
            ),
        )
