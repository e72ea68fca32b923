from __future__ import annotations

from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from annotation.data.importers import LABEL_FORMATS, ImportFailed, import_labels


class Command(BaseCommand):
    help = (
        "Import labelled preference data as released: LLaVA-RLHF's JSON (`llava-rlhf`: output_1, output_2, "
        "preference) or RLHF-V's parquet with embedded images (`rlhf-v`: ds_name, image, text, origin_dataset, "
        "origin_split, idx, image_path; a JSON list of the same fields also works), or FactLoop's exports of "
        "either, as a new frozen round. All or nothing unless --skip-bad; every bad entry is reported with "
        "the reason."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("file", type=Path, help="the JSON file (a list of entries) or RLHF-V's .parquet")
        parser.add_argument("--format", choices=LABEL_FORMATS, required=True)
        parser.add_argument(
            "--images",
            type=Path,
            help="the folder image paths are relative to (default: the file's, then its images/)",
        )
        parser.add_argument("--annotator", default="imported", help="the user the labels are recorded under")
        parser.add_argument("--skip-bad", action="store_true", help="import the good entries, report the bad ones")

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["file"]
        if not path.is_file():
            raise CommandError(f"no file at {path}")
        try:
            report, number = import_labels(
                path,
                options["format"],
                images=options["images"],
                annotator=options["annotator"],
                skip_bad=options["skip_bad"],
            )
        except ValidationError as error:
            raise CommandError("; ".join(error.messages)) from None
        except ValueError as error:
            raise CommandError(str(error)) from None
        except ImportFailed as failed:
            for problem in failed.report.problems:
                self.stderr.write(str(problem))
            raise CommandError(f"{failed}; --skip-bad imports the good entries") from None
        for problem in report.problems:
            self.stderr.write(f"skipped {problem}")
        where = f" as round {number}" if number is not None else ""
        self.stdout.write(
            f"imported {report.rows - len(report.problems)} labels{where} ({report.prompts} new prompts, "
            f"{report.images} images)" + (f"; skipped {len(report.problems)}" if report.problems else "")
        )
