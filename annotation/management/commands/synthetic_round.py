from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm  # type: ignore[import-untyped]

from annotation.models import Task
from testbed.demo.toy_rounds import build_synthetic_round


class Command(BaseCommand):
    help = (
        "Open a round of synthetic annotation work from the toy world: rendered scenes with known "
        "facts, prompts, candidate responses with typical hallucinations, and rank and/or correct tasks."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--scenes", type=int, default=20, help="scenes (2 prompts each; default 20)")
        parser.add_argument("--kinds", default="rank,correct", help="task kinds: rank, correct or both (default)")
        parser.add_argument("--overlap", type=int, default=1, help="annotators per task, k (default 1)")
        parser.add_argument("--candidates", type=int, default=2, help="responses per prompt (default 2)")
        parser.add_argument("--error-rate", type=float, default=0.5, help="share of hallucinated responses")
        parser.add_argument(
            "--gold-rate", type=float, default=0.0, help="share of gold tasks, answered by the world's oracle"
        )
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--draft", action="store_true", help="leave the round as a draft (not handed out)")

    def handle(self, *args: Any, **options: Any) -> None:
        kinds = [kind.strip() for kind in options["kinds"].split(",") if kind.strip()]
        unknown = sorted(set(kinds) - set(Task.Kind.values))
        if unknown or not kinds:
            raise CommandError(f"--kinds: expected rank and/or correct, got {options['kinds']!r}")
        if options["overlap"] < 1:
            raise CommandError("--overlap must be at least 1")
        with tqdm(total=options["scenes"], desc="scenes", unit="scene", disable=options["verbosity"] < 1) as bar:
            try:
                built = build_synthetic_round(
                    scenes=options["scenes"],
                    seed=options["seed"],
                    kinds=kinds,
                    overlap=options["overlap"],
                    candidates=options["candidates"],
                    error_rate=options["error_rate"],
                    gold_rate=options["gold_rate"],
                    open_it=not options["draft"],
                    progress=bar.update,
                )
            except ValueError as error:
                raise CommandError(str(error)) from None
        self.stdout.write(
            f"{built.round} ({built.round.status}): {built.images} images, {built.prompts} prompts, "
            f"{built.candidates} candidates, {built.tasks} tasks"
        )
