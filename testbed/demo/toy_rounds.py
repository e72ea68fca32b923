"""A round of synthetic work from the toy world: rendered scenes with known facts, prompts,
and candidate responses with the world's typical hallucinations. It stands in for the
served policy until a round's candidates come from vLLM, and feeds the demo, the browser
tests and bench/annotate.py."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.db import transaction

from annotation.data.images import add_image, add_prompt
from annotation.labeling.rounds import add_candidates, create_round, create_tasks, mark_gold, open_round
from annotation.models import Round, Task
from testbed.toyworld import oracle
from testbed.toyworld.render import png_of_scene
from testbed.toyworld.world import Scene, make_question, sample_scenes, sampled_responses

SYNTHETIC_POLICY = "toyworld-synthetic"


@dataclass(frozen=True)
class SyntheticRound:
    round: Round
    images: int
    prompts: int
    candidates: int
    tasks: int


def oracle_answer(task: Task) -> dict[str, object]:
    """The known answer of a task over toy-world scenes, from the oracle (by position)."""
    scene = Scene.from_facts(task.prompt.image.facts)
    texts = [slot.candidate.text for slot in task.slots.select_related("candidate").order_by("position")]
    counts = [oracle.check(scene, text).hallucinations for text in texts]
    if task.kind == Task.Kind.RANK:
        return {"best_positions": [i for i, n in enumerate(counts) if n == min(counts)]}
    return {"no_hallucination": counts[0] == 0}


def build_synthetic_round(
    *,
    scenes: int,
    seed: int = 0,
    kinds: Sequence[str] = (Task.Kind.RANK, Task.Kind.CORRECT),
    overlap: int = 1,
    candidates: int = 2,
    error_rate: float = 0.5,
    image_size: int = 96,
    gold_rate: float = 0.0,
    open_it: bool = True,
    progress: Callable[[int], None] | None = None,
) -> SyntheticRound:
    """One round over `scenes` new scenes: per scene a description prompt and a question,
    `candidates` responses each, and tasks of each kind in `kinds` (rank tasks over
    `candidates` responses; a correct task per response). A share `gold_rate` of the tasks,
    picked at random, are gold tasks whose answers come from the world's oracle."""
    if scenes < 1 or candidates < 1 or not 0 <= error_rate <= 1 or not 0 <= gold_rate < 1:
        raise ValueError("scenes and candidates must be at least 1, error_rate within [0, 1], gold_rate in [0, 1)")
    if Task.Kind.RANK in kinds and candidates < 2:
        raise ValueError("ranking needs at least 2 candidates per prompt")
    rng = random.Random(seed)
    counts = {"prompts": 0, "candidates": 0}
    with transaction.atomic():
        round_ = create_round(policy_version=SYNTHETIC_POLICY)
        Round.objects.filter(pk=round_.pk).update(task_kinds=list(kinds))
        round_.task_kinds = list(kinds)
        for scene in sample_scenes(seed, scenes, prefix=f"synthetic-{seed}"):
            image = add_image(png_of_scene(scene, image_size), facts=scene.facts(), source=scene.scene_id)
            for kind in ("describe", rng.choice(("count", "exist", "color", "spatial"))):
                question = make_question(rng, scene, kind)
                if question is None:
                    continue
                prompt = add_prompt(image, question.text, meta={"kind": question.kind, "scene": scene.scene_id})
                texts = sampled_responses(rng, scene, question, candidates, error_rate)
                add_candidates(round_, prompt, texts, params={"synthetic_error_rate": error_rate})
                counts["prompts"] += 1
                counts["candidates"] += len(texts)
            if progress is not None:
                progress(1)
        made: list[Task] = []
        for kind in kinds:
            made += create_tasks(round_, kind=kind, overlap=overlap, per_task=candidates)
        tasks = len(made)
        for task in rng.sample(made, round(gold_rate * len(made))):
            mark_gold(task, oracle_answer(task))
        if open_it:
            open_round(round_)
    return SyntheticRound(round_, scenes, counts["prompts"], counts["candidates"], tasks)
