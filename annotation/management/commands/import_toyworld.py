from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from annotation.data.benchmark_sets import import_toyworld
from annotation.management.commands._imports import run_import
from annotation.models import Prompt


class Command(BaseCommand):
    help = (
        "Import the synthetic world's held-out scenes (the ones its in-process evaluator renders) as description "
        "prompts with their objects as facts, in the 'toyworld' vocabulary, so `evaluate` and `train_round` score "
        "the toy world like any other dataset."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--scenes", type=int, default=200, help="how many held-out scenes (default 200)")
        parser.add_argument("--split", default=Prompt.Split.HELDOUT, choices=Prompt.Split.values)
        parser.add_argument("--image-size", type=int, default=96, help="rendered image side in pixels (default 96)")
        parser.add_argument("--questions", action="store_true", help="also a question with a known answer per scene")
        parser.add_argument(
            "--dataset", default="toyworld", help="the held-out dataset to import into (default toyworld)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["scenes"] < 1 or options["image_size"] < 16:
            raise CommandError("--scenes must be at least 1 and --image-size at least 16")
        run_import(
            self,
            lambda: import_toyworld(
                options["scenes"],
                split=options["split"],
                image_size=options["image_size"],
                questions=options["questions"],
                dataset=options["dataset"],
            ),
        )
