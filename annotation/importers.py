"""Data in.

Prompts (`import_prompts`): an images folder plus a JSONL or CSV manifest, one prompt per
row, or a Hugging Face `datasets` directory (`save_to_disk`) with an image column
(`image`, or `images` holding one image) and a `prompt` column (text, or a conversation
whose last user turn is the prompt). Row fields: `image` (a path inside the images folder),
`prompt` (the text), and optional `split` (`train` or `heldout`), `facts` (an object:
known objects as `classes`, `captions`, the `vocabulary` they are named in; in CSV a JSON
string), `context` (earlier turns, a list of {"role", "content"}; in CSV a JSON string),
`meta` (an object: `kind` "describe" or "question", and a question's known `answer`; the
evaluator reads them, annotation/evaluation.py).

Every row is checked before anything is written: missing fields, a path outside the folder,
a missing file, an unreadable or truncated image, a decompression bomb, an unsupported
format, a bad split or context, and duplicates (the same image and prompt twice in the
manifest, or already imported). The report names each bad row and why. Without
`skip_bad`, one bad row stops the import and nothing is written; with it, the good rows
are imported and the bad ones reported.

Labels (`import_labels`): the `llava-rlhf` and `rlhf-v` JSON layouts that exporters.py
writes (and those projects released). Each file becomes one frozen round: its images and
prompts (reused when already there), two candidates per entry, and the entry's label as a
submitted judgement (llava-rlhf) or correction (rlhf-v) by the given annotator. Checked the
same way, all or nothing unless `skip_bad`.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from annotation import limits, services
from annotation.models import Prompt, Task
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
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = limits.loads(line)
            except ValueError as error:  # json.JSONDecodeError or limits.TooDeep
                yield number, f"not valid JSON: {error}"
                continue
            yield number, value if isinstance(value, dict) else "not a JSON object"


def _field_limit() -> int:
    """The longest CSV field worth reading: the largest text limit (as JSON, escapes and all)."""
    texts = (settings.FACTLOOP_MAX_PROMPT_CHARS, settings.FACTLOOP_MAX_CONTEXT_CHARS, settings.FACTLOOP_MAX_FACTS_CHARS)
    return 8 * max(texts)


def _read_csv(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    csv.field_size_limit(_field_limit())
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
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


def import_prompts(manifest: Path, images: Path | None = None, *, skip_bad: bool = False) -> ImportReport:
    """Import the manifest's rows (a JSONL/CSV file with `images`, its images folder, or a
    datasets directory); raises ImportFailed (nothing written) on a bad row unless `skip_bad`."""
    if not is_hf_dataset(manifest) and (images is None or not images.is_dir()):
        raise ValueError(f"{images} is not a folder" if images else "a JSONL or CSV manifest needs its images folder")
    return import_rows(read_manifest(manifest), images, skip_bad=skip_bad)


def import_rows(
    rows: Iterable[tuple[int, dict[str, Any] | str]], images: Path | None, *, skip_bad: bool = False
) -> ImportReport:
    """Import prompt rows (import_prompts' fields; a string is a row already found bad),
    every row checked first; raises ImportFailed (nothing written) on a bad row unless
    `skip_bad`."""
    report = ImportReport()
    good: list[_Good] = []
    seen: dict[tuple[str, str], int] = {}
    existing = set(Prompt.objects.values_list("image__sha256", "text"))
    for number, row in rows:
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
    with services.atomic_with_files():
        for item in good:
            data = item.load()
            if not isinstance(data, bytes) or hashlib.sha256(data).hexdigest() != item.sha256:
                raise ImportFailed(
                    ImportReport(report.rows, problems=[Problem(item.row, "the image file changed during the import")])
                )
            image = add_image(data, facts=item.facts, source=item.source)
            images_before.add(image.pk)
            add_prompt(image, item.prompt, split=item.split, context=item.context, meta=item.meta)
            report.prompts += 1
    report.images = len(images_before)
    return report


# ---------------------------------------------------------------------------------------
# Labels: the llava-rlhf and rlhf-v layouts

LABEL_FORMATS = ("llava-rlhf", "rlhf-v")


@dataclass(frozen=True)
class _Entry:
    row: int
    path: Path
    sha256: str
    prompt: str
    context: list[dict[str, str]]
    first: str  # llava-rlhf: output_1; rlhf-v: rejected (the original)
    second: str  # llava-rlhf: output_2; rlhf-v: chosen (the correction)
    preference: int  # llava-rlhf: 1 or 2; rlhf-v: 2 (the correction)
    hallucination: bool


def _strip_image_token(text: str) -> str:
    return text.replace("<image>\n", "").replace("\n<image>", "").replace("<image>", "").strip()


def _output(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("value")
    return value if isinstance(value, str) and value.strip() else None


def _llava_rlhf_entry(item: dict[str, Any]) -> tuple[str, str, list[dict[str, str]], str, str, int, bool] | str:
    image = item.get("image")
    if not isinstance(image, str) or not image:
        return "missing field 'image'"
    turns = item.get("conversations")
    if not isinstance(turns, list) or not all(
        isinstance(t, dict) and t.get("from") in ("human", "gpt") and isinstance(t.get("value"), str) for t in turns
    ):
        return 'conversations must be a list of {"from": "human"|"gpt", "value": "..."}'
    last_human = max((i for i, t in enumerate(turns) if t["from"] == "human"), default=None)
    if last_human is None:
        return "conversations hold no human turn"
    # Turns after the last human turn (a reference answer, if any) are not part of the prompt.
    context = [
        {"role": "user" if t["from"] == "human" else "assistant", "content": _strip_image_token(t["value"])}
        for t in turns[:last_human]
    ]
    prompt = _strip_image_token(turns[last_human]["value"])
    first, second = _output(item.get("output_1")), _output(item.get("output_2"))
    if first is None or second is None:
        return "output_1 and output_2 must both hold a response"
    if first == second:
        return "output_1 and output_2 are the same text"
    preference = item.get("preference")
    if preference not in (1, 2) or isinstance(preference, bool):
        return f"preference must be 1 or 2, got {preference!r}"
    hallucination = item.get("hallucination", False)
    if hallucination not in (0, 1, True, False):
        return f"hallucination must be a boolean, got {hallucination!r}"
    return image, prompt, context, first, second, int(preference), bool(hallucination)


def _rlhf_v_entry(item: dict[str, Any]) -> tuple[str, str, list[dict[str, str]], str, str, int, bool] | str:
    image = item.get("image_path") or item.get("image")
    if not isinstance(image, str) or not image:
        return "missing field 'image_path'"
    text = item.get("text")
    if isinstance(text, str):
        try:
            text = limits.loads(text)
        except ValueError as error:
            return f"text is not valid JSON: {error}"
    if not isinstance(text, dict):
        return 'text must be {"question", "chosen", "rejected"}'
    fields = [text.get(key) for key in ("question", "chosen", "rejected")]
    if not all(isinstance(f, str) and f.strip() for f in fields):
        return "text needs a question, a chosen and a rejected response"
    question, chosen, rejected = (str(f) for f in fields)
    if chosen == rejected:
        return "chosen and rejected are the same text (no correction)"
    return image, _strip_image_token(question), [], rejected, chosen, 2, True


def _check_entry(number: int, item: Any, parse: Callable[[dict[str, Any]], Any], folder: Path) -> _Entry | str:
    parsed = parse(item) if isinstance(item, dict) else "not a JSON object"
    if isinstance(parsed, str):
        return parsed
    name, prompt, context, first, second, preference, hallucination = parsed
    problems = limits.prompt_problems(prompt, context)
    problems += [p for key, text in (("first", first), ("second", second)) if (p := limits.response_problem(key, text))]
    if problems:
        return "; ".join(problems)
    found = _image_in(folder, name)
    if isinstance(found, str):
        return found
    data = _read_image(found)
    if isinstance(data, str):
        return data
    try:
        inspect_image(data, name)
    except ValidationError as error:
        return " ".join(error.messages)
    sha = hashlib.sha256(data).hexdigest()
    return _Entry(number, found, sha, prompt, context, first, second, preference, hallucination)


def import_labels(
    path: Path, fmt: str, *, images: Path | None = None, annotator: str = "imported", skip_bad: bool = False
) -> tuple[ImportReport, int | None]:
    """Import a llava-rlhf or rlhf-v JSON file (a list of entries) as one frozen round;
    image paths are relative to `images` (default: the file's folder). Returns the report
    and the new round's number (None when nothing was imported)."""

    if fmt not in LABEL_FORMATS:
        raise ValueError(f"unknown label format {fmt!r}; expected one of {', '.join(LABEL_FORMATS)}")
    if get_user_model().objects.filter(username=annotator, is_active=False).exists():
        raise ValidationError(f"user {annotator!r} is deactivated; reactivate it explicitly (--reactivate)")
    folder = images or path.parent
    try:
        items = limits.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{path}: not a readable JSON file: {error}") from None
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of entries")
    parse = _llava_rlhf_entry if fmt == "llava-rlhf" else _rlhf_v_entry
    report = ImportReport()
    good: list[_Entry] = []
    for number, item in enumerate(items, start=1):
        report.rows += 1
        entry = _check_entry(number, item, parse, folder)
        if isinstance(entry, str):
            report.problems.append(Problem(number, entry))
        else:
            good.append(entry)
    if report.problems and not skip_bad:
        raise ImportFailed(report)
    if not good:
        return report, None
    kind = Task.Kind.RANK if fmt == "llava-rlhf" else Task.Kind.CORRECT
    user = services.ensure_label_account(annotator)
    seen_images: set[int] = set()
    with services.atomic_with_files():
        round_ = services.create_imported_round(f"import:{fmt}:{path.name}", kind)
        for entry in good:
            data = entry.path.read_bytes()
            if hashlib.sha256(data).hexdigest() != entry.sha256:
                raise ImportFailed(
                    ImportReport(report.rows, problems=[Problem(entry.row, "the image file changed during the import")])
                )
            image = services.add_image(data, source=str(entry.path.name))
            seen_images.add(image.pk)
            prompt = Prompt.objects.filter(image=image, text=entry.prompt, context=entry.context).first()
            if prompt is None:
                prompt = services.add_prompt(image, entry.prompt, context=entry.context)
                report.prompts += 1
            services.record_imported_label(
                round_,
                prompt,
                (entry.first, entry.second),
                annotator=user,
                preference=entry.preference if kind == Task.Kind.RANK else None,
                hallucination=entry.hallucination,
                row=entry.row,
            )
    report.images = len(seen_images)
    return report, round_.number
