"""Synthetic rejected responses: preference pairs made without an annotator, mixed with the
human pairs at a set ratio (docs/methods.md 2d: POVID, BPO, STIC).

Each synthetic pair keeps a human pair's image, prompt and chosen (the good, often corrected,
answer) and gets a new rejected response:

- `inject`: errors put into the chosen answer, as POVID (arXiv:2402.11411, section 3.1: object
  co-occurrence, counts, attributes) and BPO's error injection (arXiv:2403.08730, section 3.2)
  do with an LLM; here by rule, so it runs with no extra model: one or two object mentions
  (read with the dataset's object vocabulary, rlhf/vocabularies.py) become objects the image's
  facts do not hold, chosen by how often they appear in the data's images (the likeliest
  hallucinations, as POPE's popular split), and a count or a colour word may change too. The
  changed segments come from the same diff as an annotator's correction (contract/spans.py),
  so DDPO weights them.
- `noised_image`: the policy's greedy answer to the prompt given the image with Gaussian
  noise mixed in (POVID's diffusion-noise distortion, section 3.2; BPO's image-weakened
  prompting; STIC's corrupted image, arXiv:2405.19716 section 3.1). Single-turn prompts only.

The pairs are written as a `trl` export (contract/export.py) whose `source` is "synthetic"
and whose `annotator` names the generator, so a run's data says which pairs no person made.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from contract.export import assistant_turn, write_manifest, write_pairs
from contract.spans import changed_spans
from rlhf.metrics import plural
from rlhf.training_data import message_text

SYNTHETIC_SOURCE = "synthetic"
NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "grey", "gray")
_NUMBER = re.compile(rf"\b({'|'.join(NUMBERS)}|\d+)\b", re.IGNORECASE)
_COLOUR = re.compile(rf"\b({'|'.join(COLOURS)})\b", re.IGNORECASE)


def image_classes(facts: dict[str, Any], known: set[str]) -> set[str]:
    """The object classes an image's facts hold (`classes`, else the objects' `cls`/`name`),
    among the vocabulary's."""
    found = set(facts.get("classes") or [])
    for obj in facts.get("objects") or []:
        found.add(str(obj.get("cls") or obj.get("name") or "") if isinstance(obj, dict) else str(obj))
    return found & known


def _same_case(new: str, old: str) -> str:
    return new[:1].upper() + new[1:] if old[:1].isupper() else new


def inject(text: str, present: set[str], reader: Any, popularity: Sequence[str], rng: random.Random) -> str | None:
    """`text` with hallucinations put in (see the module docstring), or None when it names no
    object the vocabulary reads and no count or colour to change."""
    absent = [cls for cls in popularity if cls not in present]
    fixes: list[tuple[int, int, str]] = []
    mentions = [m for m in reader.mentions(text) if m.cls in present]
    if absent:
        for mention in rng.sample(mentions, min(len(mentions), rng.choice((1, 2)))):
            # The likeliest hallucinations first: a popular absent class, at random among the top few.
            new = rng.choice(absent[:3])
            plural_surface = mention.surface.lower() != mention.cls and mention.surface.lower().endswith("s")
            fixes.append(
                (mention.start, mention.end, _same_case(plural(new) if plural_surface else new, mention.surface))
            )
    for pattern, words in ((_NUMBER, NUMBERS[1:6]), (_COLOUR, COLOURS[:8])):
        matches = [m for m in pattern.finditer(text) if not any(s < m.end() and m.start() < e for s, e, _ in fixes)]
        if matches and (not fixes or rng.random() < 0.5):
            match = rng.choice(matches)
            options = [w for w in words if w != match.group(0).lower()]
            fixes.append((match.start(), match.end(), _same_case(rng.choice(options), match.group(0))))
    if not fixes:
        return None
    out = text
    for start, end, new in sorted(fixes, reverse=True):
        out = out[:start] + new + out[end:]
    return out if out != text else None


def noised(image: Any, share: float, rng: random.Random) -> Any:
    """The image with Gaussian noise mixed in: sqrt(1 - s) x + sqrt(s) e, x and e in [-1, 1]
    scale (one step of a diffusion forward process)."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    noise = np.random.default_rng(rng.getrandbits(32)).standard_normal(pixels.shape).astype(np.float32)
    mixed = np.sqrt(1 - share) * pixels + np.sqrt(share) * noise
    return Image.fromarray(((mixed.clip(-1, 1) + 1) * 127.5).astype(np.uint8))


def synthesize(
    pairs: Any,
    *,
    kind: str,
    ratio: float,
    seed: int = 0,
    vocabulary: str = "coco",
    noise: float = 0.6,
    model: Any = None,
    processor: Any = None,
) -> list[dict[str, Any]]:
    """Synthetic pairs (rows of a `trl` export) made from `pairs` (a `datasets` table of human
    pairs): about `ratio` per human pair, each from a different human pair while they last."""
    from rlhf.vocabularies import vocabulary as load_vocabulary

    rng = random.Random(seed)
    wanted = round(ratio * len(pairs))
    order = [i for _ in range(int(ratio) + 1) for i in rng.sample(range(len(pairs)), len(pairs))]
    rows: list[dict[str, Any]] = []
    if kind == "inject":
        table = load_vocabulary(vocabulary)
        known = set(table.order)
        facts = [json.loads(f or "{}") for f in pairs["image_facts"]]
        counts = Counter(cls for f in facts for cls in image_classes(f, known))
        popularity = sorted(table.order, key=lambda cls: (-counts[cls], table.order.index(cls)))
    elif kind != "noised_image":
        raise ValueError(f"unknown synthetic kind {kind!r}")
    elif model is None or processor is None:
        raise ValueError("noised_image needs the policy (model and processor)")
    candidates: list[tuple[int, str]] = []
    for index in order:
        if len(candidates) >= (wanted if kind == "inject" else 2 * wanted):
            break
        row = pairs[index]
        if kind == "inject":
            made = inject(
                message_text(row["chosen"]), image_classes(facts[index], known), table.reader, popularity, rng
            )
            if made is not None:
                candidates.append((index, made))
        elif len(row["prompt"]) == 1:  # single-turn: the policy answers it anew
            candidates.append((index, ""))
    if kind == "noised_image" and candidates:
        from testbed.tiny import generate

        images = [noised(pairs[i]["images"][0], noise, rng) for i, _ in candidates]
        answers = generate(model, processor, images, [message_text(pairs[i]["prompt"]) for i, _ in candidates])
        candidates = [(i, answer) for (i, _), answer in zip(candidates, answers, strict=True)]
    for index, rejected in candidates:
        row = pairs[index]
        chosen = message_text(row["chosen"])
        spans = changed_spans(rejected, chosen) if rejected.strip() else []
        if not spans or len(rows) >= wanted:
            continue
        rows.append(
            {
                **{k: row[k] for k in ("round", "image_sha256", "image_facts", "prompt", "images")},
                "id": f"synthetic-{kind}-{len(rows)}-{row['id']}",
                "source": SYNTHETIC_SOURCE,
                "annotator": f"synthetic:{kind}",
                "chosen": assistant_turn(chosen),
                "rejected": assistant_turn(rejected),
                "chosen_spans": [[s.corrected_start, s.corrected_end] for s in spans],
                "rejected_spans": [[s.original_start, s.original_end] for s in spans],
                "hallucination_tie": False,
            }
        )
    return rows


def write_synthetic(rows: Sequence[dict[str, Any]], out: Path, *, kind: str, made_from: int) -> None:
    """The synthetic pairs as a `trl` export folder with its manifest (`out` must not exist)."""
    import hashlib

    out.mkdir(parents=True, exist_ok=False)

    def generate(count: int) -> Any:
        yield from rows[:count]

    digest = hashlib.sha256(json.dumps([[r["id"], message_text(r["rejected"])] for r in rows]).encode()).hexdigest()
    write_pairs(generate, {"count": len(rows)}, out, digest[:16])
    write_manifest(
        out,
        "trl",
        rounds=sorted({int(r["round"]) for r in rows}),
        filters={"source": SYNTHETIC_SOURCE, "kind": kind, "from_pairs": made_from},
        counts={"pairs": len(rows)},
    )
