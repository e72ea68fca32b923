"""Data in.

Prompts (`import_prompts`): an images folder plus a JSONL or CSV manifest, one prompt per
row, or a Hugging Face `datasets` directory (`save_to_disk`) with an image column
(`image`, or `images` holding one image) and a `prompt` column (text, or a conversation
whose last user turn is the prompt). Row fields: `image` (a path inside the images folder),
`prompt` (the text), and optional `split` (`train` or `heldout`), `facts` (an object:
known objects as `classes`, `captions`, the `vocabulary` they are named in; in CSV a JSON
string), `context` (earlier turns, a list of {"role", "content"}; in CSV a JSON string),
`meta` (an object: `kind` "describe" or "question", and a question's known `answer`; the
evaluator reads them, annotation/loop/evaluation.py).

Held-out rows join one named dataset (the import's `dataset`, "heldout" when it names
none; annotation/rules/datasets.py), created by the import when new, in the import's `vocabulary`,
else the one its rows' facts name, else "coco". Each held-out row's classes must be in
that vocabulary, and a prompt already in another dataset is a bad row.

Every row is checked before anything is written: missing fields, a path outside the folder,
a missing file, an unreadable or truncated image, a decompression bomb, an unsupported
format, a bad split or context, and duplicates (the same image and prompt twice in the
manifest, or already imported). The report names each bad row and why. Without
`skip_bad`, one bad row stops the import and nothing is written; with it, the good rows
are imported and the bad ones reported.

Labels (`import_labels`): LLaVA-RLHF's preference JSON and RLHF-V's released parquet (or
a JSON list of its fields), as released or as exporters.py writes them (annotation/data/released.py
reads each row). Each file becomes one frozen round: its images and prompts (reused when
already there), the candidates of each label, and the label as a submitted judgement or
correction by the given annotator; what the file's extras carry (k-way rankings, ties, the
split, error types, the released ids) is restored. Checked the same way: every bad row is
named, all or nothing unless `skip_bad`.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from annotation.data import released
from annotation.data.images import add_image, add_prompt, atomic_with_files, inspect_image
from annotation.labeling.rounds import create_imported_round
from annotation.labeling.submissions import record_imported_label
from annotation.models import Correction, Dataset, Image, Prompt
from annotation.rules import limits
from annotation.rules.accounts import ensure_label_account
from annotation.rules.datasets import DEFAULT_DATASET, class_names, dataset_for_import, facts_problem
from annotation.rules.errors import Refused


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
    already: int = 0  # rows imported before, with the same facts: nothing to do (a re-run adds what is new)
    dataset: str = ""  # the held-out dataset its held-out rows joined ("" when it had none)


class ImportFailed(Exception):
    def __init__(self, report: ImportReport) -> None:
        super().__init__(f"{len(report.problems)} bad row(s); nothing was imported")
        self.report = report


@dataclass(frozen=True)
class _Good:
    row: int
    load: Callable[[], bytes]  # called again when imported: one image is in memory at a time
    sha256: str
    prompt: str
    split: str
    facts: dict[str, Any]
    context: list[dict[str, str]]
    source: str
    meta: dict[str, Any] = field(default_factory=dict)


def is_hf_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file())


def _hf_dataset(path: Path) -> Any:
    from datasets import Dataset, DatasetDict, load_from_disk  # type: ignore[import-untyped]
    from datasets import Image as ImageFeature

    try:
        dataset = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(f"{path}: not a readable datasets directory: {error}") from None
    if isinstance(dataset, DatasetDict):
        if len(dataset) != 1:
            raise ValueError(f"{path} holds the splits {', '.join(dataset)}; import one split's directory")
        dataset = next(iter(dataset.values()))
    assert isinstance(dataset, Dataset)
    column = "image" if "image" in dataset.column_names else "images"
    if column not in dataset.column_names or "prompt" not in dataset.column_names:
        raise ValueError(f"{path}: a prompts dataset needs an `image` (or `images`) and a `prompt` column")
    # Undecoded: the bytes are checked and stored as they are.
    feature = dataset.features[column]
    if isinstance(feature, ImageFeature):
        dataset = dataset.cast_column(column, ImageFeature(decode=False))
    elif isinstance(getattr(feature, "feature", None), ImageFeature) or (
        isinstance(feature, list) and isinstance(feature[0], ImageFeature)
    ):
        from datasets import Sequence as Seq

        dataset = dataset.cast_column(column, Seq(ImageFeature(decode=False)))
    return dataset, column


def _hf_image(value: Any, folder: Path) -> bytes | str:
    """The bytes of one undecoded image value, or why there are none. A path must lie
    inside the dataset's folder: a dataset cannot make the server read its other files."""
    if isinstance(value, list):
        if len(value) != 1:
            return f"expected one image, found {len(value)}"
        value = value[0]
    if not isinstance(value, dict):
        return "no image"
    if value.get("bytes"):
        data = bytes(value["bytes"])
        limit = settings.FACTLOOP_MAX_IMAGE_BYTES
        return data if len(data) <= limit else f"image is {len(data)} bytes; the limit is {limit}"
    if isinstance(value.get("path"), str) and value["path"]:
        path = _image_in(folder, value["path"], "dataset")
        return path if isinstance(path, str) else _read_image(path)
    return "no image"


def _read_image(path: Path) -> bytes | str:
    """The file's bytes, or why not: its size is checked before it is read, so a huge file
    costs no memory."""
    limit = settings.FACTLOOP_MAX_IMAGE_BYTES
    size = path.stat().st_size
    if size > limit:
        return f"image {path.name!r} is {size} bytes; the limit is {limit}"
    return path.read_bytes()


def _last_user_text(prompt: Any) -> tuple[str, list[dict[str, str]]] | str:
    """(prompt text, earlier turns) from a conversational prompt."""

    def text(turn: dict[str, Any]) -> str:
        content = turn.get("content")
        if isinstance(content, str):
            return content
        return "".join(p.get("text") or "" for p in content or [] if p.get("type") == "text")

    if not prompt or prompt[-1].get("role") != "user":
        return "a conversational prompt must end with a user turn"
    turns = [{"role": turn.get("role"), "content": text(turn)} for turn in prompt]
    return turns[-1]["content"], turns[:-1]


def read_hf_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    dataset, column = _hf_dataset(path)
    for number in range(len(dataset)):
        record = dataset[number]
        data = _hf_image(record[column], path)
        if isinstance(data, str):
            yield number + 1, data
            continue
        row: dict[str, Any] = {k: v for k, v in record.items() if k != column and v is not None}
        if isinstance(row.get("prompt"), list):
            parsed = _last_user_text(row["prompt"])
            if isinstance(parsed, str):
                yield number + 1, parsed
                continue
            row["prompt"], row["context"] = parsed
        if isinstance(row.get("facts"), str):
            try:
                row["facts"] = limits.loads(row["facts"])
            except ValueError as error:  # json.JSONDecodeError or limits.TooDeep
                yield number + 1, f"facts is not valid JSON: {error}"
                continue
        row["image"] = f"{path.name}[{number}]"
        # Loaded again at import time, not kept: memory stays flat.
        row["_load"] = lambda number=number: _hf_image(dataset[number][column], path)
        row["_bytes"] = data
        yield number + 1, row


def count_rows(path: Path) -> int:
    """How many rows `read_manifest` yields (a datasets directory says; a file is read once,
    its images untouched)."""
    if is_hf_dataset(path):
        return len(_hf_dataset(path)[0])
    return sum(1 for _ in read_manifest(path))


class Progress:
    """An import's progress in two passes over its rows, each row counting once when it is
    checked and once when it is written (a bad row has nothing to write): `report(done,
    total)` is called about a hundred times, and last with done == total."""

    def __init__(self, report: Callable[[int, int], None] | None, rows: int) -> None:
        self.report, self.total, self.done = report, 2 * rows, 0

    def step(self, n: int = 1) -> None:
        self.done = min(self.done + n, self.total)
        if self.report is not None and (self.done == self.total or self.done % max(1, self.total // 100) == 0):
            self.report(self.done, self.total)

    def finish(self) -> None:
        if self.report is not None:
            self.report(self.total, self.total)


def read_manifest(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(row number, fields) per row, or (row number, reason) for a row that is not readable."""
    if is_hf_dataset(path):
        yield from read_hf_rows(path)
        return
    if path.suffix.lower() == ".csv":
        yield from _read_csv(path)
        return
    if path.suffix.lower() != ".jsonl":
        raise ValueError(f"{path}: a manifest is a .jsonl or a .csv file")
    limit = _line_limit()
    with open(path, encoding="utf-8", errors="replace") as handle:
        number = 0
        # Read a line at most `limit` characters at a time: a line with no end must not be
        # held whole (a few hundred bytes of zip unpack to gigabytes of one line).
        while line := handle.readline(limit + 1):
            number += 1
            if len(line) > limit and not line.endswith("\n"):
                while (rest := handle.readline(1 << 20)) and not rest.endswith("\n"):
                    pass
                yield number, f"the line is longer than {limit} characters"
                continue
            if not line.strip():
                continue
            try:
                value = limits.loads(line)
            except ValueError as error:  # json.JSONDecodeError or limits.TooDeep
                yield number, f"not valid JSON: {error}"
                continue
            yield number, value if isinstance(value, dict) else "not a JSON object"


def _texts() -> tuple[int, int, int]:
    return settings.FACTLOOP_MAX_PROMPT_CHARS, settings.FACTLOOP_MAX_CONTEXT_CHARS, settings.FACTLOOP_MAX_FACTS_CHARS


def _field_limit() -> int:
    """The longest CSV field worth reading: the largest text limit (as JSON, escapes and all)."""
    return 8 * max(_texts())


def _line_limit() -> int:
    """The longest JSONL line worth reading: a row's texts together (as JSON, escapes and all),
    with room for its other fields."""
    return 8 * sum(_texts()) + 4096


def _read_csv(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    csv.field_size_limit(_field_limit())
    # utf-8-sig: a spreadsheet's byte-order mark would otherwise prefix the first column's name.
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
        records = csv.DictReader(handle)
        number = 0
        while True:
            number += 1
            try:
                record = next(records)
            except StopIteration:
                return
            except csv.Error as error:  # a field over the limit: this row only (the reader goes on)
                yield number, f"not a readable CSV row: {error}"
                continue
            row: dict[str, Any] = {k: v for k, v in record.items() if k is not None and v not in (None, "")}
            for key in ("facts", "context", "meta"):
                if key in row:
                    try:
                        row[key] = limits.loads(row[key])
                    except ValueError as error:
                        yield number, f"{key} is not valid JSON: {error}"
                        break
            else:
                yield number, row


def _image_in(folder: Path, name: str, what: str = "images") -> Path | str:
    """The file `name` names inside `folder`, or why not. A name that leads outside (an
    absolute path, `..`, a link pointing out) is refused without looking at what is
    there, so the answer tells nothing about the server's other files."""
    if "\x00" in name:
        return "image path contains a NUL character"
    if Path(name).is_absolute():
        return f"image path {name!r} is outside the {what} folder"
    root = folder.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        return f"image path {name!r} is outside the {what} folder"
    if not path.is_file():
        return f"missing file {name!r}"
    return path


def _check(number: int, row: dict[str, Any], folder: Path | None) -> _Good | str:
    for key in ("image", "prompt"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            return f"missing field {key!r}"
    if problems := limits.prompt_problems(row["prompt"], row.get("context"), row.get("facts")):
        return "; ".join(problems)
    if "_bytes" in row:
        data, load = row["_bytes"], row["_load"]
    else:
        assert folder is not None
        path = _image_in(folder, row["image"])
        if isinstance(path, str):
            return path
        read = _read_image(path)
        if isinstance(read, str):
            return read
        data, load = read, path.read_bytes
    split = row.get("split", Prompt.Split.TRAIN)
    if split not in Prompt.Split.values:
        return f"unknown split {split!r} (train or heldout)"
    facts = row.get("facts", {})
    if not isinstance(facts, dict):
        return "facts must be an object"
    meta = row.get("meta", {})
    if not isinstance(meta, dict):
        return "meta must be an object"
    if meta.get("kind", "describe") not in ("describe", "question"):
        return "meta.kind must be describe or question"
    context = row.get("context", [])
    if not isinstance(context, list) or any(
        not isinstance(t, dict) or set(t) != {"role", "content"} or t["role"] not in ("user", "assistant")
        for t in context
    ):
        return 'context must be a list of {"role": "user"|"assistant", "content": "..."}'
    try:
        inspect_image(data, row["image"])
    except ValidationError as error:
        return " ".join(error.messages)
    sha256 = hashlib.sha256(data).hexdigest()
    return _Good(number, load, sha256, row["prompt"], split, facts, context, row.get("source") or row["image"], meta)


def _stored_facts(hashes: set[str]) -> dict[str, dict[str, Any]]:
    """The facts of the images already stored among `hashes` (asked a thousand at a time)."""
    ordered, found = sorted(hashes), dict[str, dict[str, Any]]()
    for start in range(0, len(ordered), 1000):
        found.update(Image.objects.filter(sha256__in=ordered[start : start + 1000]).values_list("sha256", "facts"))
    return found


def _new_rows(good: list[_Good], existing: Mapping[tuple[str, str], int | None], report: ImportReport) -> list[_Good]:
    """The rows with something to import. A row imported before (same image and prompt) is
    counted in `report.already`, so that running an import again adds only what is new. A
    row whose image is stored with other facts is a bad row: an image's facts score every
    evaluation made on it, so an import never changes them, and never keeps the old ones
    silently while saying "imported" either. A row without facts takes the stored ones."""
    stored = _stored_facts({item.sha256 for item in good})
    new = []
    for item in good:
        facts = stored.get(item.sha256)
        if facts is not None and item.facts and item.facts != facts:
            shown = json.dumps(facts, ensure_ascii=False)
            shown = shown if len(shown) <= 200 else shown[:200] + "..."
            report.problems.append(
                Problem(
                    item.row, f"the image is already imported with other facts ({shown}); an import never changes them"
                )
            )
        elif (item.sha256, item.prompt) in existing:
            report.already += 1
        else:
            new.append(item)
    return new


def import_prompts(
    manifest: Path,
    images: Path | None = None,
    *,
    skip_bad: bool = False,
    progress: Callable[[int, int], None] | None = None,
    dataset: str = "",
    vocabulary: str = "",
) -> ImportReport:
    """Import the manifest's rows (a JSONL/CSV file with `images`, its images folder, or a
    datasets directory); raises ImportFailed (nothing written) on a bad row unless `skip_bad`.
    `progress(done, total)` follows both passes (Progress). Held-out rows join `dataset`
    (in `vocabulary`; the module's docstring)."""
    if not is_hf_dataset(manifest) and (images is None or not images.is_dir()):
        raise ValueError(f"{images} is not a folder" if images else "a JSONL or CSV manifest needs its images folder")
    counted = Progress(progress, count_rows(manifest)) if progress is not None else None
    rows = read_manifest(manifest)
    return import_rows(rows, images, skip_bad=skip_bad, progress=counted, dataset=dataset, vocabulary=vocabulary)


def import_rows(
    rows: Iterable[tuple[int, dict[str, Any] | str]],
    images: Path | None,
    *,
    skip_bad: bool = False,
    progress: Progress | None = None,
    dataset: str = "",
    vocabulary: str = "",
) -> ImportReport:
    """Import prompt rows (import_prompts' fields; a string is a row already found bad),
    every row checked first; raises ImportFailed (nothing written) on a bad row unless
    `skip_bad`, ValueError when the dataset cannot take held-out rows. Held-out rows join
    `dataset` (in `vocabulary`; the module's docstring)."""
    step = progress.step if progress is not None else (lambda n=1: None)
    report = ImportReport()
    good: list[_Good] = []
    seen: dict[tuple[str, str], int] = {}
    existing = {(sha, text): pk for sha, text, pk in Prompt.objects.values_list("image__sha256", "text", "dataset_id")}
    target: HeldoutTarget | None = None
    for number, row in rows:
        report.rows += 1
        step()
        checked = row if isinstance(row, str) else _check(number, row, images)
        if isinstance(checked, str):
            report.problems.append(Problem(number, checked))
            continue
        if checked.split == Prompt.Split.HELDOUT:
            if target is None:  # the first held-out row decides a new dataset's vocabulary
                target = HeldoutTarget(dataset or DEFAULT_DATASET, vocabulary, checked.facts.get("vocabulary"))
            if problem := target.problem(checked, existing):
                report.problems.append(Problem(number, problem))
                continue
        key = (checked.sha256, checked.prompt)
        if key in seen:
            report.problems.append(Problem(number, f"duplicate of row {seen[key]} (same image and prompt)"))
            continue
        seen[key] = number
        good.append(checked)
    good = _new_rows(good, existing, report)
    if report.problems and not skip_bad:
        raise ImportFailed(report)
    step(report.rows - len(good))  # the bad rows: nothing to write
    images_before: set[int] = set()
    with atomic_with_files():
        if target is not None:
            report.dataset = target.dataset.name
            if target.new and any(item.split == Prompt.Split.HELDOUT for item in good):
                target.create()
        for item in good:
            data = item.load()
            if not isinstance(data, bytes) or hashlib.sha256(data).hexdigest() != item.sha256:
                raise ImportFailed(
                    ImportReport(report.rows, problems=[Problem(item.row, "the image file changed during the import")])
                )
            image = add_image(data, facts=item.facts, source=item.source)
            images_before.add(image.pk)
            held = target.dataset if target is not None and item.split == Prompt.Split.HELDOUT else None
            add_prompt(image, item.prompt, split=item.split, context=item.context, meta=item.meta, dataset=held)
            report.prompts += 1
            step()
    report.images = len(images_before)
    if progress is not None:
        progress.finish()
    return report


class HeldoutTarget:
    """The dataset an import's held-out rows join, and the check of each row against it."""

    def __init__(self, name: str, vocabulary: str, rows_name: Any) -> None:
        try:
            self.dataset, self.new = dataset_for_import(name, vocabulary or None, rows_name=rows_name)
            self.names = class_names(self.dataset.vocabulary)
        except Refused as error:
            raise ValueError(error.message) from None

    def create(self) -> None:
        """Make the new dataset, or take the one a concurrent import made under its name
        (ValueError when that one is in another vocabulary)."""
        made, _ = Dataset.objects.get_or_create(
            name=self.dataset.name, defaults={"vocabulary": self.dataset.vocabulary}
        )
        if made.vocabulary != self.dataset.vocabulary:
            raise ValueError(
                f"dataset {made.name!r} names its objects in {made.vocabulary!r}, not {self.dataset.vocabulary!r}"
            )
        self.dataset = made

    def problem(self, row: _Good, existing: Mapping[tuple[str, str], int | None]) -> str | None:
        key = (row.sha256, row.prompt)
        if key in existing and (self.new or existing[key] != self.dataset.pk):
            there = existing[key]
            other = Dataset.objects.filter(pk=there).values_list("name", flat=True).first() if there else None
            where = (
                f"held-out dataset {other!r}" if other else "no held-out dataset (a training prompt, or from labels)"
            )
            return f"the prompt is already imported in {where}, not {self.dataset.name!r}"
        return facts_problem(row.facts, self.dataset.vocabulary, self.names)


# ---------------------------------------------------------------------------------------
# Labels: the llava-rlhf and rlhf-v layouts (annotation/data/released.py reads each row)

LABEL_FORMATS = ("llava-rlhf", "rlhf-v")


def _picture(data: bytes | str, name: str, load: Callable[[], bytes]) -> released.Picture:
    """A checked image (raises released.BadRow with the reason)."""
    if isinstance(data, str):
        raise released.BadRow(data)
    try:
        inspect_image(data, name)
    except ValidationError as error:
        raise released.BadRow(" ".join(error.messages)) from None
    return released.Picture(hashlib.sha256(data).hexdigest(), load, name)


def _file_picture(folders: list[Path]) -> Callable[[str], released.Picture]:
    """Images named by path: in the first folder that has the file (the export's `images/`
    is tried after the given folder, so an export imports as it is)."""

    def picture(name: str) -> released.Picture:
        found: Path | str = f"missing file {name!r}"
        for folder in folders:
            found = _image_in(folder, name)
            if not isinstance(found, str) or "outside" in found:
                break
        if isinstance(found, str):
            raise released.BadRow(found)
        path = found
        return _picture(_read_image(path), name, path.read_bytes)

    return picture


def _rlhf_v_picture(folders: list[Path], dataset: Any) -> Callable[[dict[str, Any]], released.Picture]:
    """A row's embedded image (parquet), or the file its `image_path` names (a JSON list)."""
    by_path = _file_picture(folders)

    def picture(row: dict[str, Any]) -> released.Picture:
        name = row.get("image_path") or ""
        value = row.get("image")
        if isinstance(value, dict) and value.get("bytes"):
            data = bytes(value["bytes"])
            limit = settings.FACTLOOP_MAX_IMAGE_BYTES
            checked = data if len(data) <= limit else f"image is {len(data)} bytes; the limit is {limit}"
            number = row["_index"]
            name = name or value.get("path") or ""
            return _picture(checked, name or "image", lambda: bytes(dataset[number]["image"]["bytes"]))
        if dataset is not None:
            raise released.BadRow("the image column holds no image bytes")
        if not isinstance(name, str) or not name:
            raise released.BadRow("missing field 'image_path'")
        return by_path(name)

    return picture


def _label_rows(path: Path, fmt: str, folders: list[Path], cache: Path) -> tuple[int, Iterator[tuple[int, Any, Any]]]:
    """How many rows the file holds, and (row number, row, picture checker) for each."""
    if fmt == "rlhf-v" and path.suffix == ".parquet":
        dataset = released.read_parquet(path, cache)
        picture = _rlhf_v_picture(folders, dataset)
        return len(dataset), ((n + 1, dataset[n] | {"_index": n}, picture) for n in range(len(dataset)))
    try:
        items = limits.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{path}: not a readable JSON file: {error}") from None
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of entries")
    checker = _file_picture(folders) if fmt == "llava-rlhf" else _rlhf_v_picture(folders, None)
    return len(items), ((number, item, checker) for number, item in enumerate(items, start=1))


def _label_problems(label: released.Label) -> list[str]:
    problems = limits.prompt_problems(label.prompt, label.context, label.facts)
    names = (
        ["original", "corrected"] if label.kind == "correct" else [f"response {i + 1}" for i in range(len(label.texts))]
    )
    problems += [p for name, text in zip(names, label.texts, strict=True) if (p := limits.response_problem(name, text))]
    categories = set(label.categories or []) - {None, *Correction.Category.values}
    if categories:
        problems.append(f"unknown error type(s) {', '.join(sorted(map(repr, categories)))}")
    return problems


def import_labels(
    path: Path,
    fmt: str,
    *,
    images: Path | None = None,
    annotator: str = "imported",
    skip_bad: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[ImportReport, int | None]:
    """Import a llava-rlhf JSON file or RLHF-V's released data (its parquet, or a JSON list
    of the same fields) as one frozen round; image paths are relative to `images` (default:
    the file's folder, then its `images/`). Returns the report and the new round's number
    (None when nothing was imported). `progress(done, total)` follows both passes (Progress)."""
    import tempfile

    if fmt not in LABEL_FORMATS:
        raise ValueError(f"unknown label format {fmt!r}; expected one of {', '.join(LABEL_FORMATS)}")
    if get_user_model().objects.filter(username=annotator, is_active=False).exists():
        raise ValidationError(f"user {annotator!r} is deactivated; reactivate it explicitly (--reactivate)")
    folders = [images] if images is not None else [path.parent, path.parent / "images"]
    parse = released.llava_rlhf_label if fmt == "llava-rlhf" else released.rlhf_v_label
    report = ImportReport()
    with tempfile.TemporaryDirectory(prefix="factloop-import-") as cache:
        good: list[released.Label] = []
        count, rows = _label_rows(path, fmt, folders, Path(cache))
        counted = Progress(progress, count)
        for number, item, picture in rows:
            report.rows += 1
            counted.step()
            try:
                label = parse(number, item, picture)
            except released.BadRow as error:
                report.problems.append(Problem(number, str(error)))
                continue
            if problems := _label_problems(label):
                report.problems.append(Problem(number, "; ".join(problems)))
            else:
                good.append(label)
        good, disagreeing = released.merge_groups(good)
        report.problems += [Problem(row, reason) for row, reason in disagreeing]
        report.problems.sort(key=lambda problem: problem.row)
        if report.problems and not skip_bad:
            raise ImportFailed(report)
        if not good:
            counted.finish()
            return report, None
        counted.step(report.rows - len(good))  # the bad rows: nothing to write
        number = _store_labels(path, fmt, good, annotator, report, counted)
        counted.finish()
        return report, number


def _store_labels(
    path: Path, fmt: str, labels: list[released.Label], annotator: str, report: ImportReport, progress: Progress
) -> int:
    user = ensure_label_account(annotator)
    seen_images: set[int] = set()
    kinds = sorted({label.kind for label in labels})
    with atomic_with_files():
        round_ = create_imported_round(f"import:{fmt}:{path.name}", kinds, max(len(x.texts) for x in labels))
        for label in labels:
            data = label.image.load()
            if hashlib.sha256(data).hexdigest() != label.image.sha256:
                raise ImportFailed(
                    ImportReport(report.rows, problems=[Problem(label.row, "the image file changed during the import")])
                )
            image = add_image(data, source=label.image.name, facts=label.facts)
            seen_images.add(image.pk)
            prompt = Prompt.objects.filter(image=image, text=label.prompt, context=label.context).first()
            if prompt is None:
                prompt = add_prompt(image, label.prompt, split=label.split, context=label.context, meta=label.meta)
                report.prompts += 1
            record_imported_label(round_, prompt, label, annotator=user)
            progress.step()
    report.images = len(seen_images)
    return round_.number
