"""A held-out set on disk: what the web app exports from its database and the evaluator
(rlhf/heldout.py) reads. Any dataset fits: COCO, the user's own, the synthetic world.

Layout of a folder:

    manifest.json   {"format": "factloop-heldout", "schema": 1, "vocabulary": NAME,
                     "items": N, "images": M, "digest": SHA-256 of items.jsonl}
    items.jsonl     one item a line (below), in a fixed order
    images/         the images, named by the SHA-256 of their bytes

An item: `id` (the prompt's id), `image` (a path under the folder), `prompt`, `context`
(earlier turns), `kind` ("describe": scored by CHAIR and Object HalBench, and its image
probed by POPE; "question": scored by accuracy against `answer`), `answer` ("" when none),
`objects` (the object classes known to be in the image, in the vocabulary's canonical
names) and `captions` (reference captions; CHAIR reads their objects as present too).

`vocabulary` names the object vocabulary the objects are spelled in (rlhf/vocabularies.py:
"coco", "toyworld").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Literal

FORMAT: Final = "factloop-heldout"
SCHEMA: Final = 1
MANIFEST: Final = "manifest.json"
ITEMS: Final = "items.jsonl"
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

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {**data, "objects": list(self.objects), "captions": list(self.captions), "context": list(self.context)}


@dataclass(frozen=True)
class Heldout:
    folder: Path
    vocabulary: str
    items: tuple[Item, ...]
    digest: str

    def image_bytes(self, item: Item) -> bytes:
        return (self.folder / item.image).read_bytes()

    def limited(self, limit: int | None) -> Heldout:
        """The first `limit` items (all with None)."""
        if limit is None or limit >= len(self.items):
            return self
        return Heldout(self.folder, self.vocabulary, self.items[:limit], f"{self.digest}:{limit}")


def write_heldout(folder: Path, vocabulary: str, items: Iterable[tuple[Item, bytes]]) -> dict[str, Any]:
    """Write `items` (each with its image's bytes) into `folder`, which must be empty or new;
    returns the manifest. Images are stored once per content."""
    folder = Path(folder)
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
    manifest = {
        "format": FORMAT,
        "schema": SCHEMA,
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
    return Heldout(folder, str(manifest["vocabulary"]), tuple(items), str(manifest["digest"]))


@dataclass(frozen=True)
class Evaluation:
    """One policy's answers to a held-out set, scored (rlhf.cli evaluate writes it).

    `metrics` holds the point estimates under contract.methods' keys (and more),
    `intervals` a bootstrap interval for each, `records` the per-item figures a paired
    comparison resamples (rlhf.heldout.compare)."""

    policy: str
    heldout_digest: str
    vocabulary: str
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    records: dict[str, Any] = field(repr=False)
    examples: list[dict[str, str]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

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
