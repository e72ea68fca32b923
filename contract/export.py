"""The `trl` export: the files that carry labels from the web app to training.

annotation/data/exporters.py writes them from the database, rlhf/toy_pairs.py from the synthetic
world's oracle; rlhf/training_data.py reads them. A `datasets` directory in TRL's conversational
preference format (prompt, chosen, rejected as message lists; images) plus the changed
segments and provenance, with a manifest (schema version, format, the SHA-256 of every
file). `datasets` is imported only when a file is written.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

EXPORT_FORMAT = "trl"
EXPORT_SCHEMA = 1
MANIFEST = "manifest.json"


def pair_features() -> Any:
    """The columns of a `trl` export: TRL's conversational preference format (prompt,
    chosen, rejected as message lists; images) plus the changed segments and provenance."""
    from datasets import Features, Value  # type: ignore[import-untyped]
    from datasets import Image as ImageFeature
    from datasets import Sequence as Seq

    message = {"role": Value("string"), "content": [{"type": Value("string"), "text": Value("string")}]}
    return Features(
        {
            "id": Value("string"),
            "source": Value("string"),
            "round": Value("int32"),
            "annotator": Value("string"),
            "image_sha256": Value("string"),
            # What is known about the image (objects, captions), as JSON text: the reward
            # model's fact augmentation reads it; the policy never sees it.
            "image_facts": Value("string"),
            "prompt": [message],
            "chosen": [message],
            "rejected": [message],
            "images": Seq(ImageFeature()),
            "chosen_spans": Seq(Seq(Value("int32"), length=2)),
            "rejected_spans": Seq(Seq(Value("int32"), length=2)),
            "hallucination_tie": Value("bool"),
        }
    )


def user_turns(turns: Sequence[dict[str, str]]) -> list[dict[str, Any]]:
    """Conversation turns as TRL messages, the image placeholder first in the first turn."""
    prompt = []
    for i, turn in enumerate(turns):
        content: list[dict[str, str | None]] = [{"type": "text", "text": turn["content"]}]
        if i == 0:
            content.insert(0, {"type": "image", "text": None})
        prompt.append({"role": turn["role"], "content": content})
    return prompt


def assistant_turn(text: str) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def single_turn_row(
    *,
    pair_id: str,
    source: str,
    annotator: str,
    image_png: bytes,
    facts: dict[str, Any],
    prompt: str,
    chosen: str,
    rejected: str,
    chosen_spans: Sequence[Sequence[int]] = (),
    rejected_spans: Sequence[Sequence[int]] = (),
    tie: bool = False,
    image_sha256: str | None = None,
) -> dict[str, Any]:
    """One row of a `trl` export for a single-turn prompt about one image (what the oracle
    and a ratings file give). `image_sha256` defaults to the stored image's digest."""
    return {
        "id": pair_id,
        "source": source,
        "round": 0,
        "annotator": annotator,
        "image_sha256": image_sha256 or hashlib.sha256(image_png).hexdigest(),
        "image_facts": json.dumps(facts, sort_keys=True),
        "prompt": user_turns([{"role": "user", "content": prompt}]),
        "chosen": assistant_turn(chosen),
        "rejected": assistant_turn(rejected),
        "images": [{"bytes": image_png, "path": None}],
        "chosen_spans": [list(span) for span in chosen_spans],
        "rejected_spans": [list(span) for span in rejected_spans],
        "hallucination_tie": tie,
    }


def write_pairs(
    rows: Callable[..., Iterator[dict[str, Any]]], gen_kwargs: dict[str, Any], out: Path, fingerprint: str
) -> None:
    """A `datasets` directory from a generator of rows (memory stays flat); the fingerprint,
    derived from the rows by the caller, makes the files reproducible."""
    from datasets import Dataset

    with tempfile.TemporaryDirectory(prefix="factloop-pairs-") as cache:
        dataset = Dataset.from_generator(
            rows, features=pair_features(), cache_dir=cache, gen_kwargs=gen_kwargs, fingerprint=fingerprint
        )
        dataset.save_to_disk(str(out))


def file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under `folder` but the manifest, by relative path."""
    hashes = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            hashes[str(path.relative_to(folder))] = digest.hexdigest()
    return hashes


def write_manifest(folder: Path, fmt: str, **fields: Any) -> None:
    manifest = {"schema_version": EXPORT_SCHEMA, "format": fmt, **fields, "files": file_hashes(folder)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
