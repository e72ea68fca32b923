"""Oracle labels of the synthetic world, written as a `trl` export (the format
annotation/data/exporters.py writes from human labels), for the tests and benchmarks.

The policy answers prompts about training scenes (sampled, like candidates in a round: per
scene a description and, optionally, one question as synthetic rounds ask); the oracle
corrects each response's hallucinated segments as an RLHF-V annotator would
(testbed/toyworld/oracle.py) and the changed segments come from the same diff the server
uses (contract/spans.py, pure Python). A response with nothing wrong gives no pair.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.export import single_turn_row, write_manifest, write_pairs
from contract.spans import changed_spans
from testbed.tiny import generate, image_size_of
from testbed.toyworld import Scene, render, sample_scenes
from testbed.toyworld.oracle import CorrectionStyle, check, correct, prefer
from testbed.toyworld.world import make_question

DESCRIBE = "Describe the image."
TRAIN_SEED = 1234  # the held-out scenes (rlhf.scene_eval) use their own seed and id prefix


@dataclass(frozen=True)
class OraclePair:
    """A preference pair: for a correction, chosen = corrected and rejected = original with
    their changed segments; for a ranking, the better and the worse response, no segments."""

    scene: Scene
    prompt: str
    original: str  # the rejected response
    corrected: str  # the chosen response
    chosen_spans: list[list[int]]
    rejected_spans: list[list[int]]
    source: str = "correction"
    tie: bool = False  # a ranking whose question 1 was a tie (ordered by helpfulness)


Response = tuple[Scene, str, str]  # scene, prompt, response


def oracle_pairs(
    responses: Sequence[Response], *, noise: float = 0.0, seed: int = 0, style: CorrectionStyle = "replace"
) -> list[OraclePair]:
    """Corrections of (scene, prompt, response) triples; those with nothing wrong are dropped."""

    rng = random.Random(seed)
    pairs = []
    for scene, prompt, original in responses:
        pair = correction_pair(scene, prompt, original, correct(scene, original, noise=noise, rng=rng, style=style))
        if pair is not None:
            pairs.append(pair)
    return pairs


def correction_pair(scene: Scene, prompt: str, original: str, fixed: str) -> OraclePair | None:
    """chosen = `fixed`, rejected = `original`, with their changed segments; None when the
    correction changed nothing (or emptied the response)."""
    spans = changed_spans(original, fixed) if fixed and fixed != original else []
    if not spans:
        return None
    return OraclePair(
        scene,
        prompt,
        original,
        fixed,
        [[s.corrected_start, s.corrected_end] for s in spans],
        [[s.original_start, s.original_end] for s in spans],
    )


def oracle_rankings(responses: Sequence[tuple[Scene, str, str, str]], *, seed: int = 0) -> list[OraclePair]:
    """LLaVA-RLHF judgements of two responses (scene, prompt, first, second): fewer
    hallucinations first, then more correct claims; ties on both, or identical texts, give
    no pair."""

    rng = random.Random(seed)
    pairs = []
    for scene, prompt, first, second in responses:
        if first == second:
            continue
        judged = prefer(scene, first, second, rng=rng)
        if judged.tie_on_hallucination and judged.hallucinations[0] == judged.hallucinations[1] == 0:
            continue
        better, worse = (first, second) if judged.preferred == 1 else (second, first)
        pairs.append(
            OraclePair(scene, prompt, worse, better, [], [], source="ranking", tie=judged.tie_on_hallucination)
        )
    return pairs


def oracle_rating(scene: Scene, response: str) -> dict[str, float]:
    """VLFeedback-style aspect ratings (1-5) of one response by the oracle: visual
    faithfulness falls by one per hallucination, helpfulness rises by one per correct claim."""
    report = check(scene, response)
    return {
        "Visual Faithfulness": float(max(1, 5 - report.hallucinations)),
        "Helpfulness": float(min(5, 1 + report.correct_claims)),
    }


def oracle_rated_prompts(responses: Sequence[Response], *, image_size: int) -> list[Any]:
    """Responses grouped by (scene, prompt), each rated by the oracle (`oracle_rating`), as
    rlhf/ratings.py's rated prompts: Silkie's pairs come from them."""
    from rlhf.ratings import RatedPrompt, mean_rating

    grouped: dict[tuple[str, str], list[tuple[Scene, str]]] = {}
    for scene, prompt, text in responses:
        grouped.setdefault((scene.scene_id, prompt), []).append((scene, text))
    rated: list[RatedPrompt] = []
    for (scene_id, prompt), items in grouped.items():
        scene = items[0][0]
        scores = tuple((text, mean_rating(oracle_rating(scene, text)) or 0.0) for _, text in items)
        rated.append(RatedPrompt(f"{scene_id}-{len(rated)}", _png(scene, image_size), prompt, scene.facts(), scores))
    return rated


def sample_responses(
    model: Any,
    processor: Any,
    scenes: Sequence[Scene],
    *,
    per_prompt: int = 1,
    questions: bool = True,
    temperature: float = 1.0,
    seed: int = 0,
) -> list[Response]:
    """The policy's sampled responses (as candidates of a round would be): per scene the
    description prompt and, with `questions`, one question of a random kind (count, exist,
    colour, spatial), `per_prompt` samples each."""

    rng = random.Random(seed)
    prompts: list[tuple[Scene, str]] = []
    for scene in scenes:
        prompts.append((scene, DESCRIBE))
        if questions:
            question = make_question(rng, scene, rng.choice(("count", "exist", "color", "spatial")))
            if question is not None:
                prompts.append((scene, question.text))
    order = [item for item in prompts for _ in range(per_prompt)]
    size = image_size_of(processor)
    images = {scene.scene_id: render(scene, size) for scene in scenes}
    texts = generate(
        model,
        processor,
        [images[scene.scene_id] for scene, _ in order],
        [prompt for _, prompt in order],
        do_sample=True,
        temperature=temperature,
        seed=seed,
    )
    return [(scene, prompt, text) for (scene, prompt), text in zip(order, texts, strict=True)]


def training_scenes(n: int, seed: int = TRAIN_SEED) -> list[Scene]:
    return sample_scenes(seed, n, prefix="train")


def _png(scene: Scene, size: int) -> bytes:
    """The scene rendered at `size` pixels, as PNG bytes."""
    buffer = io.BytesIO()
    render(scene, size).save(buffer, format="PNG")
    return buffer.getvalue()


def write_export(
    pairs: Sequence[OraclePair], out: Path, *, image_size: int, annotator: str = "oracle"
) -> dict[str, int]:
    """The pairs as a `trl` export folder with its manifest; `annotator` says who labelled
    them (an AI labeller's name for its pairs)."""
    out.mkdir(parents=True, exist_ok=False)

    def rows(count: int) -> Iterator[dict[str, Any]]:
        for i, pair in enumerate(pairs[:count]):
            yield single_turn_row(
                pair_id=f"oracle-{i}",
                source=pair.source,
                annotator=annotator,
                image_png=_png(pair.scene, image_size),
                facts=pair.scene.facts(),
                prompt=pair.prompt,
                chosen=pair.corrected,
                rejected=pair.original,
                chosen_spans=pair.chosen_spans,
                rejected_spans=pair.rejected_spans,
                tie=pair.tie,
            )

    digest = hashlib.sha256(
        json.dumps([[p.scene.scene_id, p.original, p.corrected] for p in pairs]).encode()
    ).hexdigest()
    write_pairs(rows, {"count": len(pairs)}, out, digest[:16])
    counts = {"pairs": len(pairs)}
    write_manifest(out, "trl", rounds=[0], filters={"source": annotator}, counts=counts)
    return counts


def hallucination_rate(responses: Sequence[Response]) -> float:
    """Share of responses with at least one hallucination, by the oracle."""
    return sum(check(scene, text).hallucinations > 0 for scene, _, text in responses) / max(1, len(responses))
