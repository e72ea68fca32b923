from __future__ import annotations

from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from annotation.data.benchmark_sets import import_amber
from annotation.management.commands._imports import run_import


class Command(BaseCommand):
    help = (
        "Import AMBER's generative task (Wang et al., 2023; the files of its repository, junyangwang0410/AMBER) as "
        "held-out description prompts: each image with its query, its facts the objects AMBER annotates as present "
        "and as likely hallucinations, in a vocabulary of AMBER's annotated objects registered with its associations "
        "and safe words (what `evaluate --protocol amber` scores by). Every row is checked first; all or nothing "
        "unless --skip-bad."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--amber", type=Path, help="AMBER's checkout: the four data files below under data/")
        parser.add_argument("--annotations", type=Path, help="data/annotations.json")
        parser.add_argument("--queries", type=Path, help="data/query/query_generative.json")
        parser.add_argument("--relation", type=Path, help="data/relation.json (the associations)")
        parser.add_argument("--safe-words", type=Path, help="data/safe_words.txt")
        parser.add_argument("--images", type=Path, required=True, help="the folder holding AMBER's images")
        parser.add_argument("--limit", type=int, help="only the first N queries")
        parser.add_argument("--skip-bad", action="store_true", help="import the good rows, report the bad ones")
        parser.add_argument("--dataset", default="amber", help="the held-out dataset to import into (default amber)")
        parser.add_argument("--vocabulary", default="amber", help="the vocabulary to register (default amber)")

    def handle(self, *args: Any, **options: Any) -> None:
        data = options["amber"] / "data" if options["amber"] else None
        files = {
            "annotations": "annotations.json",
            "queries": "query/query_generative.json",
            "relation": "relation.json",
            "safe_words": "safe_words.txt",
        }
        given = {key: options[key] or (data / name if data else None) for key, name in files.items()}
        if missing := [key.replace("_", "-") for key, path in given.items() if path is None]:
            raise CommandError(f"give --amber (AMBER's checkout) or --{', --'.join(missing)}")
        paths: dict[str, Path] = {key: path for key, path in given.items() if path is not None}
        run_import(
            self,
            lambda: import_amber(
                paths["annotations"],
                paths["queries"],
                paths["relation"],
                paths["safe_words"],
                options["images"],
                limit=options["limit"],
                skip_bad=options["skip_bad"],
                dataset=options["dataset"],
                vocabulary=options["vocabulary"],
            ),
        )
