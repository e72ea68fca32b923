"""A held-out set on disk: what the web app exports from its database and the evaluator
(rlhf/hallucination.py) reads. Any dataset fits: COCO, the user's own, the synthetic world.

Layout of a folder:

    manifest.json   {"format": "factloop-heldout", "schema": 1, "dataset": NAME,
                     "vocabulary": NAME, "items": N, "images": M,
                     "digest": SHA-256 of items.jsonl}
    items.jsonl     one item a line (below), in a fixed order
    images/         the images, named by the SHA-256 of their bytes
    vocabulary.json only for a vocabulary of the user's own: {"name": NAME, "classes":
                    [[CLASS, [SYNONYM, ...]], ...]}, the classes in their order; for one
                    imported from AMBER also "associations": {CLASS: [WORD, ...]} and
                    "safe_words": [WORD, ...] (AMBER's relation.json and safe_words.txt,
                    what its scorer reads: rlhf/amber.py)

An item: `id` (the prompt's id), `image` (a path under the folder), `prompt`, `context`
(earlier turns), `kind` ("describe": scored by CHAIR and Object HalBench, and its image
probed by POPE; "question": scored by accuracy against `answer`), `answer` ("" when none),
`objects` (the object classes known to be in the image, in the vocabulary's canonical
names), `captions` (reference captions; CHAIR reads their objects as present too) and
`absent` (classes known not to be in the image that a model is likely to name anyway:
AMBER's "hallu" annotation; written only when there are some, so a set without them keeps
its digest).

`vocabulary` names the object vocabulary the objects are spelled in: "coco" and
"toyworld" are built into the evaluator (rlhf/vocabularies.py); any other is defined by the
folder's vocabulary.json. `dataset` names the set ("" in folders written before names).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final, Literal

FORMAT: Final = "factloop-heldout"
SCHEMA: Final = 1
MANIFEST: Final = "manifest.json"
ITEMS: Final = "items.jsonl"
VOCABULARY_FILE: Final = "vocabulary.json"
BUILT_IN_VOCABULARIES: Final = ("coco", "toyworld")
KINDS: Final = ("describe", "question")
Kind = Literal["describe", "question"]
EVALUATION_FILE: Final = "evaluation.json"

# COCO's 80 object classes, in its category order (instances_*.json `categories`): the
# names a "coco" vocabulary spells objects in (rlhf/coco.py reads text into them).
COCO_CLASSES: Final = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip


class HeldoutError(ValueError):
    """A held-out folder that cannot be read as one; the message says why."""


@dataclass(frozen=True)
class Item:
    id: str
    image: str
    prompt: str
    kind: Kind = "describe"
    answer: str = ""
    objects: tuple[str, ...] = ()
    captions: tuple[str, ...] = ()
    context: tuple[dict[str, str], ...] = ()
    absent: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("absent")
        listed = {"objects": list(self.objects), "captions": list(self.captions), "context": list(self.context)}
        return {**data, **listed, **({"absent": list(self.absent)} if self.absent else {})}


Classes = tuple[tuple[str, tuple[str, ...]], ...]  # a vocabulary's classes in order, each with its synonyms


@dataclass(frozen=True)
class Associations:
    """How AMBER (Wang et al., 2023, arXiv:2311.07397; its data/relation.json and
    data/safe_words.txt) reads a vocabulary: the words associated with each object (a word
    associated with an object in the image is no hallucination, and names that object for
    "Cover"), and the words never counted as hallucinated."""

    words: dict[str, tuple[str, ...]]
    safe_words: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "associations": {key: list(value) for key, value in self.words.items()},
            "safe_words": list(self.safe_words),
        }


def parse_associations(associations: Any, safe_words: Any) -> Associations:
    """AMBER's associations ({WORD: [WORD, ...]}) and safe words ([WORD, ...]) from JSON;
    HeldoutError when either is not that shape or a word is empty."""
    if not isinstance(associations, dict) or not associations:
        raise HeldoutError('associations are {"WORD": ["WORD", ...], ...}, at least one')
    if not isinstance(safe_words, list):
        raise HeldoutError('safe words are ["WORD", ...]')
    words: dict[str, tuple[str, ...]] = {}
    for key, value in associations.items():
        if not isinstance(value, list) or not all(isinstance(word, str) and word.strip() for word in value):
            raise HeldoutError(f"association {str(key)[:60]!r}: a list of non-empty words")
        if not str(key).strip():
            raise HeldoutError("an association's word is empty")
        words[str(key)] = tuple(value)
    if not all(isinstance(word, str) and word.strip() for word in safe_words):
        raise HeldoutError("a safe word is empty or not text")
    return Associations(words, tuple(safe_words))


def parse_vocabulary(data: Any) -> Classes:
    """A vocabulary's classes from JSON: an object {CLASS: [SYNONYM, ...]} (in its order) or
    a list of CLASS or [CLASS, [SYNONYM, ...]]. Refused (HeldoutError) when empty, when a
    name is not text, or when one surface form (case aside) names two classes."""
    if isinstance(data, dict):
        rows = list(data.items())
    elif isinstance(data, list):
        rows = [(row, []) if isinstance(row, str) else tuple(row) if isinstance(row, list) else (row,) for row in data]
    else:
        raise HeldoutError('a vocabulary is {"CLASS": ["SYNONYM", ...], ...} or a list of classes')
    classes, forms = [], dict[str, str]()
    for row in rows:
        if len(row) != 2 or not isinstance(row[0], str) or not isinstance(row[1], list):
            raise HeldoutError(f"not a class with its synonyms: {str(row)[:100]}")
        name, synonyms = row[0].strip(), row[1]
        if not name or any(not isinstance(s, str) or not s.strip() for s in synonyms):
            raise HeldoutError(f"class {name!r}: a class and each synonym must be non-empty text")
        for form in (name, *synonyms):
            form = " ".join(form.lower().split())
            if forms.setdefault(form, name) != name:
                raise HeldoutError(f"{form!r} names both {forms[form]!r} and {name!r}")
        classes.append((name, tuple(s.strip() for s in synonyms)))
    if not classes:
        raise HeldoutError("a vocabulary needs at least one class")
    return tuple(classes)


@dataclass(frozen=True)
class Heldout:
    folder: Path
    vocabulary: str
    items: tuple[Item, ...]
    digest: str
    dataset: str = ""
    classes: Classes | None = None  # a user vocabulary's classes (None: a built-in vocabulary)
    associations: Associations | None = None  # AMBER's reading of the vocabulary, when it has one

    def image_bytes(self, item: Item) -> bytes:
        return (self.folder / item.image).read_bytes()

    def limited(self, limit: int | None) -> Heldout:
        """The first `limit` items (all with None)."""
        if limit is None or limit >= len(self.items):
            return self
        return replace(self, items=self.items[:limit], digest=f"{self.digest}:{limit}")


def write_heldout(
    folder: Path,
    vocabulary: str,
    items: Iterable[tuple[Item, bytes]],
    *,
    dataset: str = "",
    classes: Classes | None = None,
    associations: Associations | None = None,
) -> dict[str, Any]:
    """Write `items` (each with its image's bytes) into `folder`, which must be empty or new;
    returns the manifest. Images are stored once per content. A vocabulary that is not
    built in needs its `classes` (and may have AMBER's `associations`)."""
    folder = Path(folder)
    if (classes is None) != (vocabulary in BUILT_IN_VOCABULARIES):
        raise HeldoutError(f"vocabulary {vocabulary!r}: classes are given for a vocabulary not built in, and only then")
    if associations is not None and classes is None:
        raise HeldoutError(f"vocabulary {vocabulary!r}: associations belong to a vocabulary of the user's own")
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines, images = [], set()
    for item, data in items:
        if item.kind not in KINDS:
            raise HeldoutError(f"item {item.id}: kind must be one of {', '.join(KINDS)}")
        path = folder / item.image
        if item.image not in images:
            path.write_bytes(data)
            images.add(item.image)
        lines.append(json.dumps(item.as_json(), sort_keys=True))
    text = "".join(line + "\n" for line in lines)
    (folder / ITEMS).write_text(text, encoding="utf-8")
    if classes is not None:
        table = {"name": vocabulary, "classes": [[name, list(synonyms)] for name, synonyms in classes]}
        table |= associations.as_json() if associations is not None else {}
        (folder / VOCABULARY_FILE).write_text(json.dumps(table, indent=1) + "\n")
    manifest = {
        "format": FORMAT,
        "schema": SCHEMA,
        "dataset": dataset,
        "vocabulary": vocabulary,
        "items": len(lines),
        "images": len(images),
        "digest": hashlib.sha256(text.encode()).hexdigest(),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def image_name(data: bytes, suffix: str) -> str:
    return f"images/{hashlib.sha256(data).hexdigest()}.{suffix.lstrip('.')}"


def read_heldout(folder: Path) -> Heldout:
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        text = (folder / ITEMS).read_text(encoding="utf-8")
    except (OSError, ValueError) as error:
        raise HeldoutError(f"{folder} is not a held-out folder: {error}") from None
    if manifest.get("format") != FORMAT or manifest.get("schema") != SCHEMA:
        raise HeldoutError(f"{folder}: not a {FORMAT} schema {SCHEMA} manifest")
    if hashlib.sha256(text.encode()).hexdigest() != manifest.get("digest"):
        raise HeldoutError(f"{folder}: {ITEMS} does not match its manifest's digest")
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            row = json.loads(line)
            item = Item(
                id=str(row["id"]),
                image=str(row["image"]),
                prompt=str(row["prompt"]),
                kind=row.get("kind", "describe"),
                answer=str(row.get("answer") or ""),
                objects=tuple(str(o) for o in row.get("objects") or ()),
                captions=tuple(str(c) for c in row.get("captions") or ()),
                context=tuple(row.get("context") or ()),
                absent=tuple(str(o) for o in row.get("absent") or ()),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise HeldoutError(f"{folder / ITEMS}:{number}: not an item ({error})") from None
        if item.kind not in KINDS:
            raise HeldoutError(f"{folder / ITEMS}:{number}: kind must be one of {', '.join(KINDS)}")
        resolved = (folder / item.image).resolve()
        if not resolved.is_relative_to(folder.resolve()) or not resolved.is_file():
            raise HeldoutError(f"{folder / ITEMS}:{number}: no image {item.image} in the folder")
        items.append(item)
    if not items:
        raise HeldoutError(f"{folder}: no items")
    vocabulary, classes, associations = str(manifest["vocabulary"]), None, None
    if vocabulary not in BUILT_IN_VOCABULARIES:
        try:
            table = json.loads((folder / VOCABULARY_FILE).read_text())
        except (OSError, ValueError) as error:
            raise HeldoutError(f"{folder}: vocabulary {vocabulary!r} is not built in and {error}") from None
        table = table if isinstance(table, dict) else {}
        classes = parse_vocabulary(table.get("classes"))
        if "associations" in table:
            associations = parse_associations(table["associations"], table.get("safe_words", []))
    dataset = str(manifest.get("dataset") or "")
    return Heldout(folder, vocabulary, tuple(items), str(manifest["digest"]), dataset, classes, associations)


@dataclass(frozen=True)
class Evaluation:
    """One policy's answers to a held-out set, scored (rlhf.cli evaluate writes it).

    `metrics` holds the point estimates under contract.methods' keys (and more),
    `intervals` a bootstrap interval for each, `records` the per-item figures a paired
    comparison resamples (contract.comparison.compare)."""

    policy: str
    heldout_digest: str
    vocabulary: str
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    records: dict[str, Any] = field(repr=False)
    examples: list[dict[str, str]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    dataset: str = ""  # the held-out dataset's name
    items: int = 0  # how many of its items were scored

    def write(self, path: Path) -> None:
        """Written whole: a temporary file renamed."""
        partial = Path(path).with_suffix(".partial")
        partial.write_text(json.dumps(asdict(self), indent=1) + "\n")
        partial.replace(path)

    @classmethod
    def read(cls, path: Path) -> Evaluation:
        data = json.loads(Path(path).read_text())
        data["intervals"] = {k: (float(v[0]), float(v[1])) for k, v in data.get("intervals", {}).items()}
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})  # a registry copy adds recorded_at
