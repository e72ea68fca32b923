"""Images, prompts, rounds, candidates and tasks, and the synthetic round command."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError

from annotation.data.images import add_image, add_prompt
from annotation.labeling.rounds import add_candidates, create_round, create_tasks, open_round
from annotation.models import Candidate, Image, Prompt, Round, Task, TaskCandidate
from testbed.toyworld import oracle
from testbed.toyworld.world import Scene
from tests.factories import make_image, png_bytes

pytestmark = pytest.mark.django_db


def test_an_image_is_stored_once_per_content_under_its_hash() -> None:
    first = add_image(png_bytes((1, 2, 3)), facts={"objects": []}, source="a.png")
    again = add_image(png_bytes((1, 2, 3)), source="b.png")
    other = add_image(png_bytes((3, 2, 1)))
    assert again.pk == first.pk and other.pk != first.pk
    assert first.file.name == f"images/{first.sha256[:2]}/{first.sha256}.png"
    assert Path(first.file.path).read_bytes() == png_bytes((1, 2, 3))
    assert (first.width, first.height) == (8, 8)


@pytest.mark.parametrize("data", [b"", b"not an image at all", png_bytes()[:40]])
def test_bytes_that_are_not_an_image_are_refused(data: bytes) -> None:
    with pytest.raises(ValidationError, match="image"):
        add_image(data)
    assert not Image.objects.exists()


def test_an_unsupported_format_is_refused() -> None:
    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.new("RGB", (4, 4)).save(buffer, format="BMP")
    with pytest.raises(ValidationError, match="unsupported image format BMP"):
        add_image(buffer.getvalue())


def test_prompts_check_their_split_and_context() -> None:
    image = make_image()
    prompt = add_prompt(image, "What is it?", split="heldout", context=[{"role": "user", "content": "hi"}])
    assert prompt.split == Prompt.Split.HELDOUT
    with pytest.raises(ValidationError, match="split"):
        add_prompt(image, "What is it?", split="test")
    with pytest.raises(ValidationError, match="context turn"):
        add_prompt(image, "What is it?", context=[{"role": "system", "content": "x"}])
    with pytest.raises(ValidationError, match="text"):
        add_prompt(image, "  ")


def test_rounds_are_numbered_in_order_and_open_once() -> None:
    first, second = create_round(), create_round()
    assert (first.number, second.number) == (1, 2)
    open_round(first)
    assert Round.objects.get(pk=first.pk).status == Round.Status.OPEN
    with pytest.raises(ValidationError, match="only a draft round"):
        open_round(first)


def test_tasks_cover_each_candidate_once_per_kind_and_can_be_topped_up() -> None:
    round_ = create_round()
    prompt = add_prompt(make_image(), "Describe.")
    add_candidates(round_, prompt, ["a", "b", "c"])
    ranks = create_tasks(round_, kind="rank", overlap=2, per_task=2)
    corrects = create_tasks(round_, kind="correct")
    assert len(ranks) == 1 and len(corrects) == 3  # the third candidate waits for a partner
    assert create_tasks(round_, kind="correct") == []
    add_candidates(round_, prompt, ["d"])
    assert [c.index for c in Candidate.objects.filter(prompt=prompt)] == [0, 1, 2, 3]
    assert len(create_tasks(round_, kind="rank", per_task=2)) == 1
    slots = TaskCandidate.objects.filter(task__kind="rank").order_by("task_id", "position")
    assert [slot.candidate.text for slot in slots] == ["a", "b", "c", "d"]
    with pytest.raises(ValidationError, match="at least 2"):
        create_tasks(round_, kind="rank", per_task=1)


def test_synthetic_round_makes_work_whose_hallucinations_the_oracle_finds() -> None:
    call_command("synthetic_round", scenes=6, overlap=2, seed=3, verbosity=0)
    round_ = Round.objects.get()
    assert round_.status == Round.Status.OPEN
    assert Image.objects.count() == 6
    assert set(Task.objects.values_list("kind", flat=True)) == {"rank", "correct"}
    assert set(Task.objects.values_list("overlap", flat=True)) == {2}
    hallucinated = 0
    for candidate in Candidate.objects.select_related("prompt__image"):
        scene = Scene.from_facts(candidate.prompt.image.facts)
        hallucinated += oracle.check(scene, candidate.text).hallucinations > 0
    assert 0 < hallucinated < Candidate.objects.count()


def test_synthetic_gold_tasks_carry_the_oracles_answer() -> None:
    call_command("synthetic_round", scenes=10, gold_rate=0.5, seed=4, verbosity=0)
    tasks = list(Task.objects.prefetch_related("slots__candidate").select_related("prompt__image"))
    gold = [task for task in tasks if task.is_gold]
    assert len(gold) == round(0.5 * len(tasks))
    for task in gold:
        scene = Scene.from_facts(task.prompt.image.facts)
        counts = [oracle.check(scene, slot.candidate.text).hallucinations for slot in task.slots.all()]
        if task.kind == Task.Kind.RANK:
            assert task.gold_answer == {"best_positions": [i for i, n in enumerate(counts) if n == min(counts)]}
        else:
            assert task.gold_answer == {"no_hallucination": counts[0] == 0}
    assert {task.gold_answer.get("no_hallucination") for task in gold if task.kind == "correct"} == {True, False}


def test_synthetic_round_refuses_bad_options() -> None:
    with pytest.raises(CommandError, match="--kinds"):
        call_command("synthetic_round", kinds="rank,vote", verbosity=0)
    with pytest.raises(CommandError, match="ranking needs at least 2"):
        call_command("synthetic_round", candidates=1, verbosity=0)
    assert not Round.objects.exists()
