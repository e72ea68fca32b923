"""No task with two identical answers: generation draws again a candidate that repeats another
of its prompt's (whitespace and case aside), and a ranking task still without two distinct
candidates becomes a correction task of its prompt, or is left out, as the round chose; the
dashboard and the quality report count both."""

from __future__ import annotations

import pytest

from annotation.administration.dashboard import candidate_repeats
from annotation.data.images import add_prompt
from annotation.labeling.rounds import add_candidates, create_round, create_tasks, distinct_key
from annotation.loop.generation import repeats
from annotation.models import Round, Task
from tests.factories import make_image


def test_repeats_are_found_whitespace_and_case_aside() -> None:
    assert distinct_key("  A red  ball.\n") == distinct_key("a RED ball.")
    assert repeats(["A red ball."], ["a red ball.", "A blue box.", "A blue  box."]) == [0, 2]
    assert repeats([], ["Yes.", "No."]) == []


def _round_with(texts_per_prompt: list[list[str]], *, identical_rankings: str = "convert") -> Round:
    round_ = create_round(policy_version="test-policy")
    Round.objects.filter(pk=round_.pk).update(identical_rankings=identical_rankings, task_kinds=["rank"])
    round_.refresh_from_db()
    image = make_image()
    for number, texts in enumerate(texts_per_prompt):
        add_candidates(round_, add_prompt(image, f"Describe the image ({number})."), texts)
    return round_


@pytest.mark.django_db
@pytest.mark.parametrize("choice", ["convert", "drop"])
def test_a_ranking_of_identical_candidates_is_made_a_correction_or_left_out(choice: str) -> None:
    round_ = _round_with(
        [["A red ball.", "A blue box."], ["A red ball.", "a red  BALL."], ["Yes.", "Yes."]], identical_rankings=choice
    )
    made = create_tasks(round_, kind=Task.Kind.RANK, per_task=2)
    ranks = Task.objects.filter(round=round_, kind=Task.Kind.RANK)
    assert ranks.count() == 1  # only the prompt with two different answers
    assert {task.pk for task in made} == set(Task.objects.filter(round=round_).values_list("pk", flat=True))
    assert {c.text for c in ranks.get().candidates.all()} == {"A red ball.", "A blue box."}
    corrections = Task.objects.filter(round=round_, kind=Task.Kind.CORRECT)
    counts = candidate_repeats(Round.objects.get(pk=round_.pk))
    if choice == "convert":
        assert corrections.count() == 2 and all(t.candidates.count() == 1 for t in corrections)
        assert (counts["rankings_converted"], counts["rankings_dropped"]) == (2, 0)
    else:
        assert not corrections.exists()
        assert (counts["rankings_converted"], counts["rankings_dropped"]) == (0, 2)
    assert (counts["prompts"], counts["repeated"], counts["percent"]) == (3, 2, "67%")
    # Made again (more candidates arrived, say): nothing new, nothing counted twice.
    assert create_tasks(round_, kind=Task.Kind.RANK, per_task=2) == []
    assert candidate_repeats(Round.objects.get(pk=round_.pk)) == counts
    assert Task.objects.filter(round=round_).count() == 1 + (2 if choice == "convert" else 0)
