from __future__ import annotations

import json
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from annotation.rules.datasets import register_vocabulary, vocabulary_names
from annotation.rules.errors import Refused


class Command(BaseCommand):
    help = (
        "Register an object vocabulary of your own (classes and their synonyms) for held-out datasets whose "
        'objects COCO\'s 80 classes do not name. FILE is JSON: {"CLASS": ["SYNONYM", ...], ...} in the order POPE '
        "samples from, or a list of class names. CHAIR, Object HalBench, POPE and coverage then read answers "
        "through it; imports check held-out facts against it (import_prompts --vocabulary NAME)."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("name", nargs="?", help="the vocabulary's name (letters, digits, '-', '_')")
        parser.add_argument("file", nargs="?", type=Path, help="the JSON file of classes and synonyms")
        parser.add_argument("--replace", action="store_true", help="replace a vocabulary no dataset uses yet")
        parser.add_argument("--list", action="store_true", help="list the vocabularies there are, and stop")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["list"]:
            self.stdout.write("\n".join(vocabulary_names()))
            return
        if not options["name"] or not options["file"]:
            raise CommandError("name a vocabulary and its JSON file (or --list)")
        try:
            data = json.loads(options["file"].read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise CommandError(f"cannot read {options['file']}: {error}") from None
        try:
            vocabulary = register_vocabulary(options["name"], data, replace=options["replace"])
        except Refused as error:
            raise CommandError(error.message) from None
        self.stdout.write(f"registered vocabulary {vocabulary.name}: {len(vocabulary.classes)} classes")
