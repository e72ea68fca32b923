"""Prompts in: an images folder plus a JSONL or CSV manifest, one prompt per row.

Row fields: `image` (a path inside the images folder), `prompt` (the text), and optional
`split` (`train` or `heldout`), `facts` (an object: known objects, captions; in CSV a JSON
string), `context` (earlier turns, a list of {"role", "content"}; in CSV a JSON string).

Every row is checked before anything is written: missing fields, a path outside the folder,
a missing file, an unreadable or truncated image, a decompression bomb, an unsupported
format, a bad split or context, and duplicates (the same image and prompt twice in the
manifest, or already imported). The report names each bad row and why. Without
`skip_bad`, one bad row stops the import and nothing is written; with it, the good rows
are imported and the bad ones reported.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from annotation.models import Prompt
from annotation.services import add_image, add_prompt, inspect_image


@dataclass(frozen=True)
class Problem:
    row: int  # 1-based data row (a CSV's header is row 0)
    reason: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.reason}"


@dataclass
class ImportReport:
    rows: int = 0
    prompts: int = 0
    images: int = 0
    problems: list[Problem] = field(default_factory=list)


class ImportFailed(Exception):
    def __init__(self, report: ImportReport) -> None:
        super().__init__(f"{len(report.problems)} bad row(s); nothing was imported")
        self.report = report


@dataclass(frozen=True)
class _Good:
    row: int
    path: Path  # read again when imported: only one image is in memory at a time
    sha256: str
    prompt: str
    split: str
    facts: dict[str, Any]
    context: list[dict[str, str]]
    source: str


def read_manifest(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(row number, fields) per row, or (row number, reason) for a row that is not readable."""
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            for number, record in enumerate(csv.DictReader(handle), start=1):
                row: dict[str, Any] = {k: v for k, v in record.items() if k is not None and v not in (None, "")}
                for key in ("facts", "context"):
                    if key in row:
                        try:
                            row[key] = json.loads(row[key])
                        except json.JSONDecodeError as error:
                            yield number, f"{key} is not valid JSON: {error}"
                            break
                else:
                    yield number, row
        return
    if path.suffix.lower() != ".jsonl":
        raise ValueError(f"{path}: a manifest is a .jsonl or a .csv file")
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                yield number, f"not valid JSON: {error}"
                continue
            yield number, value if isinstance(value, dict) else "not a JSON object"


def _check(number: int, row: dict[str, Any], folder: Path) -> _Good | str:
    for key in ("image", "prompt"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            return f"missing field {key!r}"
    path = (folder / row["image"]).resolve()
    if not path.is_relative_to(folder.resolve()):
        return f"image {row['image']!r} is outside the images folder"
    if not path.is_file():
        return f"missing file {row['image']!r}"
    split = row.get("split", Prompt.Split.TRAIN)
    if split not in Prompt.Split.values:
        return f"unknown split {split!r} (train or heldout)"
    facts = row.get("facts", {})
    if not isinstance(facts, dict):
        return "facts must be an object"
    context = row.get("context", [])
    if not isinstance(context, list) or any(
        not isinstance(t, dict) or set(t) != {"role", "content"} or t["role"] not in ("user", "assistant")
        for t in context
    ):
        return 'context must be a list of {"role": "user"|"assistant", "content": "..."}'
    data = path.read_bytes()
    try:
        inspect_image(data, row["image"])
    except ValidationError as error:
        return " ".join(error.messages)
    return _Good(number, path, hashlib.sha256(data).hexdigest(), row["prompt"], split, facts, context, row["image"])


def import_prompts(manifest: Path, images: Path, *, skip_bad: bool = False) -> ImportReport:
    """Import the manifest's rows; raises ImportFailed (nothing written) on a bad row unless
    `skip_bad`."""
    if not images.is_dir():
        raise ValueError(f"{images} is not a folder")
    report = ImportReport()
    good: list[_Good] = []
    seen: dict[tuple[str, str], int] = {}
    existing = set(Prompt.objects.values_list("image__sha256", "text"))
    for number, row in read_manifest(manifest):
        report.rows += 1
        checked = row if isinstance(row, str) else _check(number, row, images)
        if isinstance(checked, str):
            report.problems.append(Problem(number, checked))
            continue
        key = (checked.sha256, checked.prompt)
        if key in seen:
            report.problems.append(Problem(number, f"duplicate of row {seen[key]} (same image and prompt)"))
            continue
        if key in existing:
            report.problems.append(Problem(number, "already imported (same image and prompt)"))
            continue
        seen[key] = number
        good.append(checked)
    if report.problems and not skip_bad:
        raise ImportFailed(report)
    images_before: set[int] = set()
    with transaction.atomic():
        for item in good:
            data = item.path.read_bytes()
            if hashlib.sha256(data).hexdigest() != item.sha256:
                raise ImportFailed(
                    ImportReport(report.rows, problems=[Problem(item.row, "the image file changed during the import")])
                )
            image = add_image(data, facts=item.facts, source=item.source)
            images_before.add(image.pk)
            add_prompt(image, item.prompt, split=item.split, context=item.context)
            report.prompts += 1
    report.images = len(images_before)
    return report
