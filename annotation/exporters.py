"""Labels out as files: the seam between the web side and training (ARCHITECTURE.md).

One function per format, each streaming rows from the database in a fixed order, so the same
database state gives byte-identical files; each export folder holds a `manifest.json`
(schema version, format, rounds, counts, SHA-256 of every file) and nothing time-dependent.

- `factloop`: `labels.jsonl`, one row per submitted judgement or correction, with full
  provenance (round, task, assignment, annotator, image, prompt, candidates).
- `trl`: a Hugging Face `datasets` directory in TRL's preference format: `prompt` (the
  conversation, the image first in the first user turn), `chosen`, `rejected` (assistant
  turns), `images`, plus `chosen_spans` / `rejected_spans` (changed segments as character
  offsets in each text, so DDPO can weight the tokens of any tokenizer) and provenance.
  Preference pairs follow METHODS.md section 1: a ranking of k candidates gives its
  k(k-1)/2 ordered pairs (a Q1 tie still gives the Q2, helpfulness, order); a correction
  gives chosen = corrected, rejected = original; "no hallucination" gives no pair.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

from annotation.models import Correction, Judgement, TaskCandidate

SCHEMA_VERSION = 1
FORMATS = ("factloop", "trl")
CHUNK = 2000


_PROVENANCE = {
    "assignment_id": "assignment_id",
    "task": "assignment__task_id",
    "round": "assignment__task__round__number",
    "annotator": "assignment__annotator__username",
    "gold": "assignment__task__is_gold",
    "submitted_at": "assignment__finished_at",
    "image_sha256": "assignment__task__prompt__image__sha256",
    "image_file": "assignment__task__prompt__image__file",
    "image_facts": "assignment__task__prompt__image__facts",
    "prompt_id": "assignment__task__prompt_id",
    "prompt_text": "assignment__task__prompt__text",
    "prompt_context": "assignment__task__prompt__context",
    "prompt_split": "assignment__task__prompt__split",
}
_JUDGEMENT = ("ranking", "hallucination_tie", "hallucinated", "rejected_hallucinates", "rationale", "time_spent_ms")
_CORRECTION = ("candidate_id", "original", "corrected", "no_hallucination", "spans", "time_spent_ms")


def _chunks(
    model: type[Judgement] | type[Correction], rounds: Sequence[int], fields: Sequence[str]
) -> Iterator[list[dict[str, Any]]]:
    """Rows as plain values (no model instances: this is the hot loop of a million-row
    export), in assignment order, CHUNK at a time.

    Each chunk is two queries: the next CHUNK assignment ids by keyset (`> last`, an index
    scan of the one-to-one key, no join), then the rows of those ids with their provenance
    joined in. A single joined query with LIMIT let PostgreSQL hash-join the whole table for
    every chunk (bench/export.py), which made an export quadratic."""
    rows = (
        model.objects.filter(assignment__task__round__number__in=rounds)
        .order_by("assignment_id")
        .values(*_PROVENANCE.values(), *fields)
    )
    last = 0
    while True:
        ids = list(
            model.objects.filter(assignment_id__gt=last)
            .order_by("assignment_id")
            .values_list("assignment_id", flat=True)[:CHUNK]
        )
        if not ids:
            return
        chunk = list(rows.filter(assignment_id__in=ids))
        if chunk:
            yield chunk
        last = ids[-1]


def _candidate_texts(task_ids: set[int]) -> dict[int, dict[int, str]]:
    texts: dict[int, dict[int, str]] = {}
    slots = TaskCandidate.objects.filter(task_id__in=task_ids).values_list("task_id", "candidate_id", "candidate__text")
    for task_id, candidate_id, text in slots:
        texts.setdefault(task_id, {})[candidate_id] = text
    return texts


def _provenance(values: dict[str, Any]) -> dict[str, Any]:
    row = {name: values[path] for name, path in _PROVENANCE.items()}
    submitted = row["submitted_at"]
    return {
        "round": row["round"],
        "task": row["task"],
        "assignment": row["assignment_id"],
        "annotator": row["annotator"],
        "gold": row["gold"],
        "image": {"sha256": row["image_sha256"], "file": row["image_file"], "facts": row["image_facts"]},
        "prompt": {
            "id": row["prompt_id"],
            "text": row["prompt_text"],
            "context": row["prompt_context"],
            "split": row["prompt_split"],
        },
        "submitted_at": submitted.isoformat() if submitted else None,
    }


def factloop_rows(rounds: Sequence[int]) -> Iterator[dict[str, Any]]:
    """Judgements, then corrections, each by assignment id; streamed in chunks."""
    for chunk in _chunks(Judgement, rounds, _JUDGEMENT):
        texts = _candidate_texts({values["assignment__task_id"] for values in chunk})
        for values in chunk:
            shown = texts[values["assignment__task_id"]]
            yield {
                "schema_version": SCHEMA_VERSION,
                "kind": "ranking",
                **_provenance(values),
                "candidates": [{"id": cid, "text": shown[cid]} for cid in values["ranking"]],
                **{name: values[name] for name in _JUDGEMENT},
            }
    for chunk in _chunks(Correction, rounds, _CORRECTION):
        for values in chunk:
            yield {
                "schema_version": SCHEMA_VERSION,
                "kind": "correction",
                **_provenance(values),
                "candidate": values["candidate_id"],
                **{name: values[name] for name in _CORRECTION if name != "candidate_id"},
            }


def preference_pairs(row: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The TRL preference pairs of one factloop row (METHODS.md section 1)."""
    turns = [*row["prompt"]["context"], {"role": "user", "content": row["prompt"]["text"]}]
    prompt = []
    for i, turn in enumerate(turns):
        content = [{"type": "text", "text": turn["content"]}]
        if i == 0:
            content.insert(0, {"type": "image", "text": None})
        prompt.append({"role": turn["role"], "content": content})

    def answer(text: str) -> list[dict[str, Any]]:
        return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]

    base = {
        "prompt": prompt,
        "image_sha256": row["image"]["sha256"],
        "round": row["round"],
        "annotator": row["annotator"],
    }
    if row["kind"] == "ranking":
        texts = {c["id"]: c["text"] for c in row["candidates"]}
        for better, worse in combinations(row["ranking"], 2):
            yield base | {
                "id": f"r{row['assignment']}-{better}-{worse}",
                "source": "ranking",
                "chosen": answer(texts[better]),
                "rejected": answer(texts[worse]),
                "chosen_spans": [],
                "rejected_spans": [],
                "hallucination_tie": row["hallucination_tie"],
            }
    elif not row["no_hallucination"]:
        yield base | {
            "id": f"c{row['assignment']}",
            "source": "correction",
            "chosen": answer(row["corrected"]),
            "rejected": answer(row["original"]),
            "chosen_spans": [[s["corrected_start"], s["corrected_end"]] for s in row["spans"]],
            "rejected_spans": [[s["original_start"], s["original_end"]] for s in row["spans"]],
            "hallucination_tie": False,
        }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest(folder: Path, fmt: str, rounds: Sequence[int], counts: dict[str, int]) -> None:
    files = {
        str(path.relative_to(folder)): _sha256(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != "manifest.json"
    }
    manifest = {"schema_version": SCHEMA_VERSION, "format": fmt, "rounds": sorted(rounds), "counts": counts}
    manifest["files"] = files
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def export_factloop(rounds: Sequence[int], out: Path) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    counts = {"ranking": 0, "correction": 0}
    with open(out / "labels.jsonl", "w", encoding="utf-8") as handle:
        for row in factloop_rows(rounds):
            handle.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
            counts[row["kind"]] += 1
    _manifest(out, "factloop", rounds, counts)
    return counts


def export_trl(rounds: Sequence[int], out: Path) -> dict[str, int]:
    """A `datasets` directory (`datasets.load_from_disk(out)`); built from a generator, so
    memory stays flat, with a fingerprint derived from the rows for reproducible files."""
    from datasets import (  # type: ignore[import-untyped]
        Dataset,
        Features,
        Value,
    )
    from datasets import Image as ImageFeature
    from datasets import Sequence as Seq

    message = {"role": Value("string"), "content": [{"type": Value("string"), "text": Value("string")}]}
    features = Features(
        {
            "id": Value("string"),
            "source": Value("string"),
            "round": Value("int32"),
            "annotator": Value("string"),
            "image_sha256": Value("string"),
            "prompt": [message],
            "chosen": [message],
            "rejected": [message],
            "images": Seq(ImageFeature()),
            "chosen_spans": Seq(Seq(Value("int32"), length=2)),
            "rejected_spans": Seq(Seq(Value("int32"), length=2)),
            "hallucination_tie": Value("bool"),
        }
    )
    digest = hashlib.sha256()
    counts = {"pairs": 0}
    images: dict[str, bytes] = {}

    def image_bytes(row: dict[str, Any]) -> bytes:
        sha = row["image"]["sha256"]
        if sha not in images:
            from django.core.files.storage import default_storage

            with default_storage.open(row["image"]["file"], "rb") as handle:
                images.clear()  # only the last image is kept: memory stays flat
                images[sha] = handle.read()
        return images[sha]

    def rows(rounds: Sequence[int]) -> Iterator[dict[str, Any]]:
        for row in factloop_rows(rounds):
            for pair in preference_pairs(row):
                yield pair | {"images": [{"bytes": image_bytes(row), "path": None}]}

    for pair in (p for row in factloop_rows(rounds) for p in preference_pairs(row)):
        digest.update(json.dumps(pair, sort_keys=True).encode())
        counts["pairs"] += 1
    with tempfile.TemporaryDirectory(prefix="factloop-export-") as cache:
        dataset = Dataset.from_generator(
            rows,
            features=features,
            cache_dir=cache,
            gen_kwargs={"rounds": list(rounds)},
            fingerprint=digest.hexdigest()[:16],
        )
        if out.exists():
            shutil.rmtree(out)
        dataset.save_to_disk(str(out))
    _manifest(out, "trl", rounds, counts)
    return counts


def export(fmt: str, rounds: Sequence[int], out: Path) -> dict[str, int]:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return export_factloop(rounds, out) if fmt == "factloop" else export_trl(rounds, out)
