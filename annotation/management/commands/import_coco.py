from __future__ import annotations

from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand

from annotation.data.benchmark_sets import DESCRIBE_PROMPT, import_coco
from annotation.management.commands._imports import run_import
from annotation.models import Prompt
from contract.protocols import OBJECT_HALBENCH_PROMPTS


class Command(BaseCommand):
    help = (
        "Import COCO-format annotations as prompts with object facts: one description prompt per image of the "
        "instances file, its facts the COCO classes of its objects and, with --captions, its reference captions "
        "(what CHAIR, Object HalBench and POPE are scored from; `evaluate --protocol` runs the published ones). "
        "Every row is checked first; all or nothing unless --skip-bad."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--instances", type=Path, required=True, help="instances_*.json (images, objects)")
        parser.add_argument("--captions", type=Path, help="captions_*.json (reference captions)")
        parser.add_argument("--images", type=Path, required=True, help="the folder holding the images' files")
        parser.add_argument("--split", default=Prompt.Split.HELDOUT, choices=Prompt.Split.values)
        asked = parser.add_mutually_exclusive_group()
        asked.add_argument("--prompt", default=DESCRIBE_PROMPT, help=f"the prompt text (default {DESCRIBE_PROMPT!r})")
        asked.add_argument(
            "--questions",
            type=Path,
            help="JSON Lines of {image_id, question}, e.g. RLHF-V's eval/data/obj_halbench_300_with_image.jsonl: "
            "only those images, each with its question (Object HalBench as published)",
        )
        asked.add_argument(
            "--object-halbench",
            action="store_true",
            help="the images get Object HalBench's 8 description prompts (RLHF-V) in turn; with --limit 300 for "
            "its size",
        )
        parser.add_argument("--limit", type=int, help="only the first N images of the instances file")
        parser.add_argument("--skip-bad", action="store_true", help="import the good rows, report the bad ones")
        parser.add_argument("--dataset", default="coco", help="the held-out dataset to import into (default coco)")

    def handle(self, *args: Any, **options: Any) -> None:
        run_import(
            self,
            lambda: import_coco(
                options["instances"],
                options["captions"],
                options["images"],
                split=options["split"],
                prompt=options["prompt"],
                limit=options["limit"],
                skip_bad=options["skip_bad"],
                dataset=options["dataset"],
                questions=options["questions"],
                prompts=OBJECT_HALBENCH_PROMPTS if options["object_halbench"] else (),
            ),
        )
