"""LLaVA-RLHF's and RLHF-V's released layouts, both ways: files their own loaders read, and
their released files read as they are.

Writing (exporters.py calls `llava_rlhf_item` and `rlhf_v_row`):
- `llava-rlhf`: a JSON list like LLaVA-RLHF's human preferences. Its reward-model loader
  (github.com/llava-rlhf/LLaVA-RLHF, RLHF/data_utils/data_utils_rm.py,
  `preprocess_for_reward_modeling`) asserts that `conversations` ends with a `gpt` turn and
  overwrites that turn's value with `output_1` / `output_2`; maps `preference` through
  `{1: 0, 2: 1}`; opens `os.path.join(image_folder, image)`; and looks captions up by the
  `image` string. So the last turn is a gpt turn (the reference answer when one is known,
  else the preferred output), and `image` is the image's original name, when known, under
  the folder's `images/`.
- `rlhf-v`: one parquet file written through `datasets`, in the columns and types of
  openbmb/RLHF-V-Dataset's card: `ds_name` string, `image` image (bytes embedded), `text`
  string (JSON of `question`, `chosen`, `rejected`), `origin_dataset` string, `origin_split`
  string, `idx` int64, `image_path` string.

What neither layout has a field for goes in an extra the authors' loaders never read: the
`factloop` key (a JSON string, so that `datasets.load_dataset("json")`, which LLaVA-RLHF's
loader calls, infers one type for it) in llava-rlhf, and a `factloop` object inside rlhf-v's
`text`. A label imported from a released file keeps the file's own fields (its id,
origin_dataset, origin_split, idx, image_path, unknown keys) in its task's `origin`, and an
export writes them back in place.

What a round trip through each layout keeps and drops, field by field, is tabulated in the
docs/administering.md ("Export formats") and checked by tests/annotation/test_released.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from annotation.rules import limits

LLAVA_RLHF_FILE = "llava_rlhf.json"
RLHF_V_FILE = "rlhf_v.parquet"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")
# openbmb/RLHF-V-Dataset's card (huggingface.co/datasets/openbmb/RLHF-V-Dataset, README
# `dataset_info.features`): the released columns and their types.
RLHF_V_COLUMNS = {
    "ds_name": "string",
    "image": "image",
    "text": "string",
    "origin_dataset": "string",
    "origin_split": "string",
    "idx": "int64",
    "image_path": "string",
}
_LLAVA_FIELDS = ("id", "image", "conversations", "output_1", "output_2", "preference", "hallucination", "factloop")


def rlhf_v_features() -> Any:
    from datasets import Features, Value  # type: ignore[import-untyped]
    from datasets import Image as ImageFeature

    return Features({k: ImageFeature() if t == "image" else Value(t) for k, t in RLHF_V_COLUMNS.items()})


def safe_name(source: str) -> str | None:
    """`source` as a relative image path to write under `images/`, or None when it is not
    one (no image suffix, absolute, or leading outside with `..`)."""
    path = PurePosixPath(source.replace("\\", "/"))
    if not source or path.is_absolute() or ".." in path.parts or path.suffix.lower() not in IMAGE_SUFFIXES:
        return None
    return str(path)


# ---------------------------------------------------------------------------------------
# Writing


def _text(message: list[dict[str, Any]]) -> str:
    return "".join(part["text"] for part in message[0]["content"] if part["type"] == "text")


def _extras(pair: dict[str, Any], *, context: bool) -> dict[str, Any]:
    extra = dict(pair["extra"])
    if not context:
        del extra["context"]
    return extra | {key: pair[key] for key in ("id", "source", "round", "hallucination_tie", "rejected_hallucinates")}


def _native(pair: dict[str, Any], fmt: str) -> dict[str, Any]:
    """The fields a released file of `fmt` had for this pair: a k-way ranking's task keeps
    them per pair, by the two responses' positions in its label."""
    native: dict[str, Any] = (pair["extra"]["origin"] or {}).get(fmt) or {}
    if "pairs" in native:
        texts = pair["extra"].get("ranking", {}).get("texts", [])
        chosen, rejected = _text(pair["chosen"]), _text(pair["rejected"])
        key = f"{texts.index(chosen)}-{texts.index(rejected)}" if chosen in texts and rejected in texts else ""
        native = native["pairs"].get(key, {})
    return native


def llava_rlhf_item(pair: dict[str, Any], image: str) -> dict[str, Any]:
    """One pair as a LLaVA-RLHF preference entry; `image` is its name under `images/`."""
    extra = pair["extra"]
    native = _native(pair, "llava-rlhf")
    chosen, rejected = _text(pair["chosen"]), _text(pair["rejected"])
    turns = [*extra["context"], {"role": "user", "content": _text(pair["prompt"][-1:])}]
    conversations = [
        {
            "from": "human" if t["role"] == "user" else "gpt",
            "value": f"<image>\n{t['content']}" if not i else t["content"],
        }
        for i, t in enumerate(turns)
    ]
    reference = extra["meta"].get("reference")
    conversations.append({"from": "gpt", "value": reference if isinstance(reference, str) else chosen})
    outputs = [chosen, rejected] if pair["chosen_first"] else [rejected, chosen]
    return {
        **native.get("fields", {}),
        "id": native.get("id", pair["id"]),
        "image": image,
        "conversations": conversations,
        "output_1": {"from": "llava", "value": outputs[0]},
        "output_2": {"from": "llava", "value": outputs[1]},
        "preference": 1 if pair["chosen_first"] else 2,
        "hallucination": pair["rejected_hallucinates"],
        "factloop": json.dumps(_extras(pair, context=False), sort_keys=True, ensure_ascii=False),
    }


def rlhf_v_row(pair: dict[str, Any], image: bytes, name: str, idx: int) -> dict[str, Any]:
    """One pair as a row of RLHF-V's released parquet; `idx` is its number in the file."""
    extra = pair["extra"]
    native = _native(pair, "rlhf-v")
    text = {
        "question": _text(pair["prompt"][-1:]),
        "chosen": _text(pair["chosen"]),
        "rejected": _text(pair["rejected"]),
        "factloop": _extras(pair, context=True),
    }
    return {
        "ds_name": native.get("ds_name", "factloop"),
        "image": {"bytes": image, "path": name},
        "text": json.dumps(text, sort_keys=True, ensure_ascii=False),
        "origin_dataset": native.get("origin_dataset", "factloop"),
        "origin_split": native.get("origin_split", extra["split"]),
        "idx": native.get("idx", idx),
        "image_path": native.get("image_path", name),
    }


# ---------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class Picture:
    """A checked image of a row: its digest, and how to read its bytes again when stored
    (one image in memory at a time)."""

    sha256: str
    load: Callable[[], bytes]
    name: str


@dataclass
class Label:
    """One label read from a released file, as the database will hold it."""

    row: int
    image: Picture
    prompt: str
    context: list[dict[str, str]]
    kind: str  # "rank" or "correct"
    texts: list[str]  # rank: as shown; correct: [original, corrected]
    ranking: list[int] = field(default_factory=list)  # indices into texts, best first
    tiers: list[list[int]] = field(default_factory=list)
    hallucinated: list[int] = field(default_factory=list)
    categories: list[str | None] | None = None
    split: str = "train"
    meta: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, Any] = field(default_factory=dict)
    group: str | None = None
    pair: tuple[str, str] = ("", "")  # (better, worse) texts of the row's own pair
    native: str = ""  # the key of the row's own released fields in `origin`

    def pair_key(self) -> str:
        return f"{self.texts.index(self.pair[0])}-{self.texts.index(self.pair[1])}"


class BadRow(ValueError):
    """A row that cannot be imported; the message says why."""


def _strip_image_token(text: str) -> str:
    return text.replace("<image>\n", "").replace("\n<image>", "").replace("<image>", "").strip()


def _output(value: Any, name: str) -> str:
    if isinstance(value, dict):
        value = value.get("value")
    if not isinstance(value, str) or not value.strip():
        raise BadRow(f"{name} must hold a response")
    return value


def _object(value: Any, name: str, shape: str = "a JSON object") -> dict[str, Any]:
    """A field that holds a JSON object, itself or as JSON text (depth-limited parsing)."""
    if isinstance(value, str):
        try:
            value = limits.loads(value)
        except ValueError as error:
            raise BadRow(f"{name} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise BadRow(f"{name} must be {shape}")
    return value


def _factloop(value: Any) -> dict[str, Any]:
    """A row's `factloop` extras (absent in the authors' own files)."""
    return {} if value is None else _object(value, "factloop")


def _apply_extras(label: Label, extras: dict[str, Any], better: str, worse: str) -> Label:
    """Fill what the extras carry, checking it against the row's own fields."""
    if not extras:
        return label
    split = extras.get("split", "train")
    if split not in ("train", "heldout"):
        raise BadRow(f"unknown split {split!r} (train or heldout)")
    for key in ("meta", "facts"):
        if not isinstance(extras.get(key, {}), dict):
            raise BadRow(f"factloop.{key} must be an object")
    label.split, label.meta, label.facts = split, dict(extras.get("meta") or {}), dict(extras.get("facts") or {})
    label.origin = {
        **label.origin,
        **({"factloop": {k: extras[k] for k in ("id", "round", "task", "annotator") if k in extras}}),
    }
    if isinstance(extras.get("origin"), dict):
        label.origin = {**extras["origin"], **label.origin}
    if extras.get("source") == "correction":
        categories = extras.get("categories")
        if categories is not None and not isinstance(categories, list):
            raise BadRow("factloop.categories must be a list")
        label.kind, label.texts, label.categories = "correct", [worse, better], categories
        label.ranking, label.tiers, label.hallucinated = [], [], []
        return label
    ranking = extras.get("ranking")
    if ranking is not None:
        _check_ranking_label(ranking, better, worse)
        label.texts = list(ranking["texts"])
        label.ranking, label.tiers = list(ranking["ranking"]), [list(t) for t in ranking["tiers"]]
        label.hallucinated, label.group = list(ranking["hallucinated"]), str(ranking["group"])
    else:
        if extras.get("hallucination_tie") is True:
            label.tiers = [sorted(label.ranking)]
        if extras.get("rejected_hallucinates") is True:
            label.hallucinated = [label.texts.index(worse)]
    return label


def _check_ranking_label(ranking: Any, better: str, worse: str) -> None:
    if not isinstance(ranking, dict) or not {"group", "texts", "ranking", "tiers", "hallucinated"} <= set(ranking):
        raise BadRow("factloop.ranking must hold group, texts, ranking, tiers and hallucinated")
    texts, order = ranking["texts"], ranking["ranking"]
    k = len(texts) if isinstance(texts, list) else 0
    if k < 2 or not all(isinstance(t, str) and t.strip() for t in texts) or len(set(texts)) != k:
        raise BadRow("factloop.ranking.texts must be two or more different responses")
    if not isinstance(order, list) or sorted(order) != list(range(k)):
        raise BadRow("factloop.ranking.ranking must order every response once")
    tiers = ranking["tiers"]
    flat = (
        [i for tier in tiers for i in tier]
        if isinstance(tiers, list) and all(isinstance(t, list) for t in tiers)
        else []
    )
    if sorted(flat) != list(range(k)) or any(not t for t in tiers):
        raise BadRow("factloop.ranking.tiers must group every response once")
    tier = {i: n for n, group in enumerate(tiers) for i in group}
    if [tier[i] for i in order] != sorted(tier[i] for i in order):
        raise BadRow("factloop.ranking.ranking runs against its own hallucination groups")
    if not isinstance(ranking["hallucinated"], list) or not set(ranking["hallucinated"]) <= set(range(k)):
        raise BadRow("factloop.ranking.hallucinated must list responses by position")
    if better not in texts or worse not in texts or order.index(texts.index(better)) > order.index(texts.index(worse)):
        raise BadRow("the row's preference disagrees with its ranking in factloop.ranking")


def llava_rlhf_label(number: int, item: Any, picture: Callable[[str], Picture]) -> Label:
    """One entry of a LLaVA-RLHF preference file; `picture(name)` checks the image the entry
    names (raising BadRow)."""
    if not isinstance(item, dict):
        raise BadRow("not a JSON object")
    image = item.get("image")
    if not isinstance(image, str) or not image:
        raise BadRow("missing field 'image'")
    turns = item.get("conversations")
    if not isinstance(turns, list) or not all(
        isinstance(t, dict) and t.get("from") in ("human", "gpt") and isinstance(t.get("value"), str) for t in turns
    ):
        raise BadRow('conversations must be a list of {"from": "human"|"gpt", "value": "..."}')
    last_human = max((i for i, t in enumerate(turns) if t["from"] == "human"), default=None)
    if last_human is None:
        raise BadRow("conversations hold no human turn")
    first, second = _output(item.get("output_1"), "output_1"), _output(item.get("output_2"), "output_2")
    if first == second:
        raise BadRow("output_1 and output_2 are the same text")
    preference = item.get("preference")
    if preference not in (1, 2) or isinstance(preference, bool):
        raise BadRow(f"preference must be 1 or 2, got {preference!r}")
    hallucination = item.get("hallucination", False)
    if hallucination not in (0, 1, True, False):
        raise BadRow(f"hallucination must be a boolean, got {hallucination!r}")
    extras = _factloop(item.get("factloop"))
    better, worse = (first, second) if preference == 1 else (second, first)
    # The turn after the last human one is the reference answer (LLaVA's own), which the
    # loader replaces with each output in turn.
    after = turns[last_human + 1 :]
    meta = {"reference": after[0]["value"]} if after and after[0]["value"].strip() else {}
    native = {"id": item["id"]} if "id" in item else {}
    fields = {k: v for k, v in item.items() if k not in _LLAVA_FIELDS}
    label = Label(
        row=number,
        image=picture(image),
        prompt=_strip_image_token(turns[last_human]["value"]),
        context=[
            {"role": "user" if t["from"] == "human" else "assistant", "content": _strip_image_token(t["value"])}
            for t in turns[:last_human]
        ],
        kind="rank",
        texts=[first, second],
        ranking=[0, 1] if preference == 1 else [1, 0],
        tiers=[[0], [1]] if preference == 1 else [[1], [0]],
        hallucinated=[1 if preference == 1 else 0] if hallucination else [],
        meta=meta,
        origin={"llava-rlhf": native | ({"fields": fields} if fields else {})},
        pair=(better, worse),
        native="llava-rlhf",
    )
    return _apply_extras(label, extras, better, worse)


def rlhf_v_label(number: int, item: Any, picture: Callable[[dict[str, Any]], Picture]) -> Label:
    """One row of RLHF-V's released data (its parquet, or a JSON list of the same fields
    with `image_path` naming a file); `picture(row)` checks the row's image (raising BadRow)."""
    if not isinstance(item, dict):
        raise BadRow("not a JSON object")
    text = _object(item.get("text"), "text", 'a JSON object of "question", "chosen" and "rejected"')
    fields = [text.get(key) for key in ("question", "chosen", "rejected")]
    if not all(isinstance(f, str) and f.strip() for f in fields):
        raise BadRow("text needs a question, a chosen and a rejected response")
    question, chosen, rejected = (str(f) for f in fields)
    if chosen == rejected:
        raise BadRow("chosen and rejected are the same text")
    idx = item.get("idx")
    if idx is not None and (not isinstance(idx, int) or isinstance(idx, bool)):
        raise BadRow(f"idx must be an integer, got {idx!r}")
    image = picture(item)
    extras = _factloop(text.get("factloop"))
    native = {k: item[k] for k in ("ds_name", "origin_dataset", "origin_split", "idx", "image_path") if k in item}
    label = Label(
        row=number,
        image=image,
        prompt=_strip_image_token(question),
        context=[],
        kind="correct",
        texts=[rejected, chosen],
        origin={"rlhf-v": native},
        pair=(chosen, rejected),
        native="rlhf-v",
    )
    if extras.get("source") == "ranking":
        label.kind, label.texts, label.ranking, label.tiers = "rank", [chosen, rejected], [0, 1], [[0], [1]]
    label = _apply_extras(label, extras, chosen, rejected)
    context = extras.get("context", [])
    if not isinstance(context, list) or any(
        not isinstance(t, dict) or set(t) != {"role", "content"} or t["role"] not in ("user", "assistant")
        for t in context
    ):
        raise BadRow('factloop.context must be a list of {"role": "user"|"assistant", "content": "..."}')
    label.context = context
    return label


def merge_groups(labels: list[Label]) -> tuple[list[Label], list[tuple[int, str]]]:
    """One label per k-way ranking (its pairs carry the same label), keeping each pair's own
    released fields by its responses' positions, and the rows whose label disagrees with the
    first row of their group."""
    merged: list[Label] = []
    first: dict[str, Label] = {}
    problems = []
    for label in labels:
        if label.group is None:
            merged.append(label)
            continue
        own = label.origin.get(label.native, {})
        seen = first.get(label.group)
        if seen is None:
            first[label.group] = label
            label.origin = {**label.origin, label.native: {"pairs": {label.pair_key(): own}}}
            merged.append(label)
        elif (seen.texts, seen.ranking, seen.tiers, seen.hallucinated, seen.prompt, seen.image.sha256) != (
            label.texts,
            label.ranking,
            label.tiers,
            label.hallucinated,
            label.prompt,
            label.image.sha256,
        ):
            problems.append((label.row, f"its ranking label differs from row {seen.row}'s, in the same group"))
        else:
            seen.origin[seen.native]["pairs"][label.pair_key()] = own
    return merged, problems


def read_parquet(path: Path, cache: Path) -> Any:
    """A parquet file as a `datasets.Dataset` (memory-mapped from an Arrow copy in `cache`),
    its image column left undecoded (bytes and path); ValueError for a file that is not
    parquet or lacks RLHF-V's `image` or `text` column."""
    from datasets import Dataset
    from datasets import Image as ImageFeature
    from datasets.exceptions import DatasetGenerationError  # type: ignore[import-untyped]
    from pyarrow import ArrowException  # type: ignore[import-untyped]

    try:
        dataset = Dataset.from_parquet(str(path), cache_dir=str(cache))
    except (OSError, ValueError, ArrowException, DatasetGenerationError) as error:
        raise ValueError(f"{path}: not a readable parquet file: {error}") from None
    missing = [column for column in ("image", "text") if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{path}: missing column {', '.join(map(repr, missing))}; RLHF-V's released columns are "
            + ", ".join(RLHF_V_COLUMNS)
        )
    if isinstance(dataset.features["image"], ImageFeature):
        dataset = dataset.cast_column("image", ImageFeature(decode=False))
    return dataset
