"""Pairs from ratings, as Silkie built them from VLFeedback (arXiv:2312.10665, section 3;
docs/methods.md 2d): every response to a prompt is rated on several aspects (VLFeedback's
helpfulness, visual faithfulness and ethical considerations, 1-5 each); any two responses to
the same prompt whose mean ratings differ form a pair, the higher-rated one chosen; ties are
dropped. The pairs train with plain DPO (no changed segments).

A ratings file is JSON Lines, one prompt a line, in VLFeedback's shape:

    {"id": "...", "image": "images/1.png", "prompt": "Describe the image.",
     "facts": {...optional, as an image's facts},
     "completions": [{"response": "...", "annotations": {"Helpfulness": {"Rating": "4"},
                                                         "Visual Faithfulness": 3}}, ...]}

`image` is a path relative to the file's folder; an aspect's rating is a number or
{"Rating": number}; "N/A" ratings are left out of the mean. `python -m rlhf.cli pairs
--ratings FILE --out DIR` writes the pairs as a `trl` export whose `source` is "rating".
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.export import single_turn_row, write_manifest, write_pairs

RATING_SOURCE = "rating"


class RatingsError(ValueError):
    """A ratings file that cannot be read; the message names the line and the problem."""


@dataclass(frozen=True)
class RatedPrompt:
    key: str
    image: bytes  # the encoded image file
    prompt: str
    facts: dict[str, Any]
    responses: tuple[tuple[str, float], ...]  # (text, mean rating)


def mean_rating(annotations: dict[str, Any]) -> float | None:
    """The mean of a completion's aspect ratings (numbers or {"Rating": number}); None when
    none is a number."""
    values = []
    for value in annotations.values():
        raw: Any = value.get("Rating") if isinstance(value, dict) else value
        try:
            values.append(float(raw))
        except (TypeError, ValueError):
            continue  # "N/A" and the like
    return sum(values) / len(values) if values else None


def rating_pairs(responses: Sequence[tuple[str, float]]) -> list[tuple[str, str]]:
    """(chosen, rejected) for every two responses with unequal mean ratings; ties and
    identical texts dropped."""
    pairs = []
    for (a, ra), (b, rb) in itertools.combinations(responses, 2):
        if ra != rb and a != b:
            pairs.append((a, b) if ra > rb else (b, a))
    return pairs


def read_ratings(path: Path) -> list[RatedPrompt]:
    """The rated prompts of a ratings file (see the module docstring)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise RatingsError(f"cannot read {path}: {error}") from None
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            image_path = path.parent / record["image"]
            completions = record["completions"]
            prompt = record["prompt"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise RatingsError(f"{path}:{number}: expected id, image, prompt and completions ({error})") from None
        if not image_path.is_file():
            raise RatingsError(f"{path}:{number}: no image {image_path}")
        rated = []
        for completion in completions:
            rating = mean_rating(completion.get("annotations") or {})
            if rating is not None and str(completion.get("response", "")).strip():
                rated.append((str(completion["response"]), rating))
        prompts.append(
            RatedPrompt(
                str(record.get("id", number)),
                image_path.read_bytes(),
                str(prompt),
                record.get("facts") or {},
                tuple(rated),
            )
        )
    return prompts


def write_rating_export(prompts: Sequence[RatedPrompt], out: Path) -> dict[str, int]:
    """The pairs of rated prompts as a `trl` export folder with its manifest."""
    from PIL import Image

    rows_made = [(p, chosen, rejected) for p in prompts for chosen, rejected in rating_pairs(p.responses)]
    if not rows_made:
        raise RatingsError("no two responses to a prompt have different mean ratings: no pair")
    out.mkdir(parents=True, exist_ok=False)
    pngs: dict[str, bytes] = {}  # each prompt's image, encoded once for all its pairs

    def png(prompt: RatedPrompt) -> bytes:
        if prompt.key not in pngs:
            buffer = io.BytesIO()
            Image.open(io.BytesIO(prompt.image)).convert("RGB").save(buffer, format="PNG")
            pngs[prompt.key] = buffer.getvalue()
        return pngs[prompt.key]

    def rows(count: int) -> Iterator[dict[str, Any]]:
        for i, (prompt, chosen, rejected) in enumerate(rows_made[:count]):
            yield single_turn_row(
                pair_id=f"rating-{prompt.key}-{i}",
                source=RATING_SOURCE,
                annotator="ratings",
                image_png=png(prompt),
                image_sha256=hashlib.sha256(prompt.image).hexdigest(),
                facts=prompt.facts,
                prompt=prompt.prompt,
                chosen=chosen,
                rejected=rejected,
            )

    digest = hashlib.sha256(json.dumps([[p.key, c, r] for p, c, r in rows_made]).encode()).hexdigest()
    write_pairs(rows, {"count": len(rows_made)}, out, digest[:16])
    counts = {"pairs": len(rows_made), "prompts": len(prompts)}
    write_manifest(out, "trl", rounds=[0], filters={"source": RATING_SOURCE}, counts=counts)
    return counts
