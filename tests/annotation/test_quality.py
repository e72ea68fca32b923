"""Quality control: agreement coefficients against published worked examples, gold tasks,
flags, adjudication, freezing, and rounds that make their own tasks."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.utils import timezone

from annotation.data.images import add_prompt
from annotation.labeling import quality, queue
from annotation.labeling.rounds import add_candidates, adjudicate, create_tasks, freeze_round, mark_gold, open_round
from annotation.labeling.submissions import submit_judgement
from annotation.loop.generation import make_round_tasks, start_round
from annotation.models import Round, Task
from tests.annotation.test_jobs import CaptureCallbacks
from tests.factories import make_round, make_user

# ---------------------------------------------------------------------------------------
# Pure statistics


def test_krippendorff_alpha_matches_the_published_nominal_example() -> None:
    # K. Krippendorff, "Computing Krippendorff's Alpha-Reliability" (2011), section C: four
    # observers, twelve units, missing values; nominal alpha = 0.743.
    observers = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
        [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
    ]
    units = [[row[u] for row in observers if row[u] is not None] for u in range(12)]
    alpha = quality.krippendorff_alpha(units)
    assert alpha is not None and round(alpha, 3) == 0.743


def test_krippendorff_alpha_by_hand_and_its_edge_cases() -> None:
    # Two units, two coders: (a, a) and (a, b). o_aa = 2, o_ab = o_ba = 1, n_a = 3, n_b = 1,
    # n = 4: alpha = 1 - 3 * 2 / (3 * 1 + 1 * 3) = 0.
    assert quality.krippendorff_alpha([["a", "a"], ["a", "b"]]) == pytest.approx(0.0)
    assert quality.krippendorff_alpha([["a", "a"], ["b", "b"]]) == pytest.approx(1.0)
    assert quality.krippendorff_alpha([["a", "a"], ["a", "a"]]) is None  # no variation: undefined
    assert quality.krippendorff_alpha([["a"], ["b"]]) is None  # nothing pairable


def test_cohen_kappa_matches_a_hand_computation() -> None:
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15. p_o = 0.7; rater 1 says yes 25/50,
    # rater 2 30/50: p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5; kappa = (0.7 - 0.5) / 0.5 = 0.4.
    pairs = [("y", "y")] * 20 + [("y", "n")] * 5 + [("n", "y")] * 10 + [("n", "n")] * 15
    assert quality.cohen_kappa(pairs) == pytest.approx(0.4)
    assert quality.cohen_kappa([("y", "y"), ("y", "y")]) is None
    assert quality.cohen_kappa([]) is None


def _label(task: int, who: str, value: object, *, gold: bool = False, answer: object = None, ms: int = 1000):  # type: ignore[no-untyped-def]
    start = timezone.now()
    return quality.Label(
        task,
        who,
        Task.Kind.RANK,
        value,
        gold,
        answer or {},  # type: ignore[arg-type]
        ms,
        start,
        start + timedelta(seconds=ms / 1000),
    )


def test_annotator_stats_and_flags() -> None:
    labels = []
    # 5 gold tasks whose answer is A (position 0): alice and carol right on all, bob on 1 of 5.
    for task in range(5):
        labels.append(_label(task, "alice", 0, gold=True, answer={"best_positions": [0]}, ms=2000))
        labels.append(_label(task, "carol", 0, gold=True, answer={"best_positions": [0]}))
        labels.append(_label(task, "bob", 0 if task == 0 else 1, gold=True, answer={"best_positions": [0]}))
    found = quality.annotator_stats(labels, min_gold_accuracy=0.8, min_agreement=0.5, min_items=5)
    stats = {s.annotator: s for s in found}
    assert stats["alice"].gold_accuracy == 1.0 and not stats["alice"].flagged
    # alice agrees with carol 5 times out of 5 and with bob once: 6 / 10.
    assert stats["alice"].peer_agreement == pytest.approx(0.6)
    assert stats["bob"].gold_accuracy == pytest.approx(0.2)
    assert stats["bob"].peer_agreement == pytest.approx(0.2)
    assert len(stats["bob"].flags) == 2 and "gold accuracy 20% < 80%" in stats["bob"].flags
    assert stats["alice"].median_seconds == 2.0
    # Too few labels: nobody is flagged on the strength of them.
    few = quality.annotator_stats(labels[:4], min_gold_accuracy=0.8, min_agreement=0.5, min_items=5)
    assert not any(s.flagged for s in few)


# ---------------------------------------------------------------------------------------
# In the database


def _rank_all(annotator: User, *, pick: int) -> None:
    while (lease := queue.next_assignment_for(annotator)) is not None:
        ids = [slot.candidate_id for slot in lease.task.slots.all()]
        order = [ids[pick], ids[1 - pick]]
        submit_judgement(annotator, lease.pk, ranking=order, time_spent_ms=1500)


@pytest.mark.django_db
def test_round_quality_reads_labels_and_finds_disagreements(annotator: User, second_annotator: User) -> None:
    round_ = make_round(tasks=4, overlap=2)
    for task in round_.tasks.order_by("pk")[:2]:
        mark_gold(task, {"best_positions": [0]})
    _rank_all(annotator, pick=0)
    _rank_all(second_annotator, pick=1)
    report = quality.round_quality([round_.number])
    assert report.labels == 8
    assert report.alpha["rank"] is not None and report.alpha["rank"] < 0  # they always disagree
    assert report.disagreements == sorted(round_.tasks.values_list("pk", flat=True))
    [(kind, a, b, shared, kappa)] = report.kappa
    assert (kind, a, b, shared, kappa) == ("rank", "ann", "bea", 4, 0.0)  # p_o = p_e = 0
    stats = {s.annotator: s for s in report.annotators}
    assert stats["ann"].gold_accuracy == 1.0 and stats["bea"].gold_accuracy == 0.0
    assert stats["ann"].peer_agreement == 0.0
    assert quality.passing_annotators([round_.number], min_gold_accuracy=0.8) == {"ann"}


@pytest.mark.django_db
def test_gold_answers_are_validated_and_adjudication_feeds_later_rounds(
    annotator: User, second_annotator: User
) -> None:
    admin = make_user("boss", "admin")
    first = make_round(tasks=4, overlap=2)
    task = first.tasks.order_by("pk").first()
    assert task is not None
    bad_answers: list[object] = [{"best_positions": [5]}, {"best_positions": []}, {"no_hallucination": True}, ["x"]]
    for bad in bad_answers:
        with pytest.raises(ValidationError):
            adjudicate(task, bad, by=admin)  # type: ignore[arg-type]
    task.refresh_from_db()
    assert task.gold_answer == {} and task.adjudicated_at is None
    for t in first.tasks.order_by("pk"):
        adjudicate(t, {"best_positions": [1]}, by=admin)
    freeze_round(first)
    assert Round.objects.get(pk=first.pk).status == Round.Status.FROZEN
    with pytest.raises(ValidationError, match="already frozen"):
        freeze_round(first)

    # A later round with a 1/3 gold rate over 6 regular tasks gets 3 gold copies, spread out.
    second = make_round(tasks=0, open_it=False)
    image = first.tasks.first().prompt.image  # type: ignore[union-attr]
    for n in range(6):
        prompt = add_prompt(image, f"Second round prompt {n}.")
        add_candidates(second, prompt, [f"one {n}.", f"two {n}."])
    tasks = create_tasks(second, kind=Task.Kind.RANK, overlap=2, gold_rate=1 / 3)
    assert len(tasks) == 9
    flags = [t.is_gold for t in tasks]
    assert sum(flags) == 3 and flags != [False] * 6 + [True] * 3  # mixed in, not appended
    gold = [t for t in tasks if t.is_gold]
    assert all(t.gold_answer == {"best_positions": [1]} and t.slots.count() == 2 for t in gold)
    # The gold copies' candidates are not turned into regular tasks by a second call.
    assert create_tasks(second, kind=Task.Kind.RANK, overlap=2) == []

    # Annotators see gold tasks as ordinary ones; choosing B on them is right.
    open_round(second)
    _rank_all(annotator, pick=1)
    stats = {s.annotator: s for s in quality.round_quality([second.number]).annotators}
    assert stats["ann"].gold_labels == 3 and stats["ann"].gold_accuracy == 1.0


@pytest.mark.django_db
def test_a_started_round_makes_its_tasks_and_opens_when_its_candidates_are_in(
    django_capture_on_commit_callbacks: CaptureCallbacks,
) -> None:
    from annotation.models import RoundPrompt

    image = make_round(tasks=1).tasks.get().prompt.image
    prompts = [add_prompt(image, f"Prompt {n}.") for n in range(3)]
    with pytest.raises(ValidationError, match="task kinds"):
        start_round(policy_version="base", prompts=prompts, task_kinds=["vote"])
    with pytest.raises(ValidationError, match="gold rate"):
        start_round(policy_version="base", prompts=prompts, task_kinds=["rank"], gold_rate=1.0)
    with django_capture_on_commit_callbacks(execute=False):
        round_, job = start_round(
            policy_version="base",
            prompts=prompts,
            task_kinds=["rank", "correct"],
            candidates_per_prompt=2,
            overlap=3,
        )
    assert round_.status == Round.Status.DRAFT and job.params == {"round_id": round_.pk}
    assert RoundPrompt.objects.filter(round=round_).count() == 3
    # What generation does once every prompt has its candidates:
    for prompt in prompts:
        add_candidates(round_, prompt, ["a.", "b."])
    RoundPrompt.objects.filter(round=round_).update(status=RoundPrompt.Status.DONE)
    assert make_round_tasks(round_) == 3 + 6
    round_.refresh_from_db()
    assert round_.status == Round.Status.OPEN
    assert set(round_.tasks.values_list("overlap", flat=True)) == {3}
    assert make_round_tasks(round_) == 0  # again: nothing new
