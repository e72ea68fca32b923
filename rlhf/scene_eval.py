"""Hallucination of a policy on held-out scenes of the synthetic world.

The model answers "Describe the image." (CHAIR, Object HalBench, MMHal-style grade, length,
AMBER's coverage)
and POPE's yes/no probes (random, popular and adversarial splits); the known scenes score
every answer exactly. The model and processor are any transformers image-text-to-text pair;
torch is imported only when this runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlhf.metrics import (
    PopeSplit,
    SynonymTable,
    build_pope,
    chair,
    coverage,
    mmhal_grade,
    mmhal_summary,
    object_halbench,
    pope_scores,
)
from testbed.tiny import generate, image_size_of
from testbed.toyworld import CLASSES, SYNONYMS, Scene, heldout_scenes, render
from testbed.toyworld.oracle import check
from testbed.toyworld.world import describe

DESCRIBE = "Describe the image."
TOY_TABLE = SynonymTable({cls: SYNONYMS[cls] for cls in CLASSES})
POPE_SPLITS: tuple[PopeSplit, ...] = ("random", "popular", "adversarial")


__all__ = ["DESCRIBE", "POPE_SPLITS", "evaluate_toyworld", "heldout_scenes"]


def evaluate_toyworld(
    model: Any, processor: Any, scenes: Sequence[Scene], *, pope_per_image: int = 1, seed: int = 0
) -> dict[str, Any]:
    size = image_size_of(processor)
    images = {scene.scene_id: render(scene, size) for scene in scenes}
    descriptions = generate(model, processor, [images[s.scene_id] for s in scenes], [DESCRIBE] * len(scenes))
    truths = [scene.classes for scene in scenes]
    chair_result = chair(descriptions, truths, TOY_TABLE)
    grades = []
    for scene, text in zip(scenes, descriptions, strict=True):
        report = check(scene, text)
        attribute_errors = sum(c.hallucinated and c.error_type != "objects" for c in report.claims)
        grades.append(mmhal_grade(report.mentioned, scene.classes, attribute_errors=attribute_errors))
    words = [len(text.split()) for text in descriptions]
    result: dict[str, Any] = {
        "scenes": len(scenes),
        "chair_i": chair_result.chair_i,
        "chair_s": chair_result.chair_s,
        "object_halbench": object_halbench(descriptions, truths, TOY_TABLE),
        "mmhal": mmhal_summary(grades),
        "mean_words": sum(words) / len(words) if words else 0.0,
        "empty_share": sum(w == 0 for w in words) / len(words) if words else 0.0,
        "coverage": coverage(descriptions, truths, TOY_TABLE),
        "truth_words": sum(len(describe(s).split()) for s in scenes) / len(scenes) if scenes else 0.0,
        "pope": {},
        "examples": [{"scene": s.scene_id, "response": t} for s, t in list(zip(scenes, descriptions, strict=True))[:5]],
    }
    for split in POPE_SPLITS:
        questions = build_pope(
            [(s.scene_id, s.classes) for s in scenes],
            CLASSES,
            split,
            per_image=pope_per_image,
            seed=seed,
        )
        answers = generate(model, processor, [images[q.image] for q in questions], [q.text for q in questions])
        result["pope"][split] = pope_scores(
            questions, {q.question_id: a for q, a in zip(questions, answers, strict=True)}
        )
    result["pope_f1"] = sum(result["pope"][s]["f1"] for s in POPE_SPLITS) / len(POPE_SPLITS)
    return result
