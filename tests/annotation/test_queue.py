"""The queue's rules, one at a time: who gets which task, how many, for how long."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import IntegrityError
from django.utils import timezone

from annotation.labeling import queue
from annotation.labeling.submissions import submit_judgement
from annotation.models import Assignment, Round, Task
from tests.factories import make_round, make_user

pytestmark = pytest.mark.django_db


def rank(user: User, assignment: Assignment) -> None:
    ids = [slot.candidate_id for slot in assignment.task.slots.all()]
    _, created = submit_judgement(user, assignment.pk, ranking=ids)
    assert created


def backdate(assignment: Assignment, minutes: int = 16) -> None:
    Assignment.objects.filter(pk=assignment.pk).update(expires_at=timezone.now() - timedelta(minutes=minutes))


def test_hands_out_the_oldest_task_of_an_open_round_then_nothing(annotator: User) -> None:
    round_ = make_round(tasks=2)
    first = queue.next_assignment_for(annotator)
    assert first is not None and first.task.round == round_
    assert first.task_id == min(Task.objects.values_list("pk", flat=True))
    rank(annotator, first)
    second = queue.next_assignment_for(annotator)
    assert second is not None and second.task_id != first.task_id
    rank(annotator, second)
    assert queue.next_assignment_for(annotator) is None


def test_a_repeated_request_resumes_the_live_lease_instead_of_taking_another(annotator: User) -> None:
    make_round(tasks=3)
    first = queue.next_assignment_for(annotator)
    again = queue.next_assignment_for(annotator)
    assert first is not None and again is not None and again.pk == first.pk
    assert Assignment.objects.filter(annotator=annotator).count() == 1
    assert Task.objects.get(pk=first.task_id).taken == 1


def test_never_more_than_k_leases_plus_submissions_per_task(annotator: User, second_annotator: User) -> None:
    make_round(tasks=1, overlap=2)
    third = make_user("cy", "annotator")
    a = queue.next_assignment_for(annotator)
    b = queue.next_assignment_for(second_annotator)
    assert a is not None and b is not None and a.task_id == b.task_id
    assert queue.next_assignment_for(third) is None  # two live leases fill k = 2
    rank(annotator, a)
    assert queue.next_assignment_for(third) is None  # one submission + one lease still fill it
    assert Task.objects.get(pk=a.task_id).taken == 2


def test_the_database_refuses_more_than_k_even_if_code_tried() -> None:
    round_ = make_round(tasks=1, overlap=1)
    task = round_.tasks.get()
    with pytest.raises(IntegrityError):
        Task.objects.filter(pk=task.pk).update(taken=2)


def test_never_the_same_task_twice_after_submit_skip_or_expiry(annotator: User) -> None:
    make_round(tasks=3, overlap=3)
    submitted = queue.next_assignment_for(annotator)
    assert submitted is not None
    rank(annotator, submitted)
    skipped = queue.next_assignment_for(annotator)
    assert skipped is not None
    queue.skip(annotator, skipped.pk)
    expired = queue.next_assignment_for(annotator)
    assert expired is not None
    backdate(expired)
    assert queue.next_assignment_for(annotator) is None
    seen = [submitted.task_id, skipped.task_id, expired.task_id]
    assert len(set(seen)) == 3


def test_the_database_refuses_a_second_assignment_of_one_task_to_one_annotator(annotator: User) -> None:
    make_round(tasks=1, overlap=3)
    first = queue.next_assignment_for(annotator)
    assert first is not None
    queue.skip(annotator, first.pk)
    with pytest.raises(IntegrityError):
        Assignment.objects.create(task_id=first.task_id, annotator=annotator, expires_at=timezone.now())


def test_an_expired_lease_returns_the_task_to_the_pool(annotator: User, second_annotator: User) -> None:
    make_round(tasks=1, overlap=1)
    lease = queue.next_assignment_for(annotator)
    assert lease is not None
    assert queue.next_assignment_for(second_annotator) is None
    backdate(lease)
    other = queue.next_assignment_for(second_annotator)
    assert other is not None and other.task_id == lease.task_id
    lease.refresh_from_db()
    assert lease.status == Assignment.Status.EXPIRED and lease.finished_at is not None
    assert Task.objects.get(pk=lease.task_id).taken == 1


def test_lease_length_follows_the_setting(annotator: User, settings: object) -> None:
    settings.FACTLOOP_LEASE_MINUTES = 3  # type: ignore[attr-defined]
    make_round(tasks=1)
    lease = queue.next_assignment_for(annotator)
    assert lease is not None
    assert timedelta(minutes=2, seconds=59) < lease.expires_at - lease.leased_at <= timedelta(minutes=3)


def test_a_skip_frees_the_slot_at_once_and_is_idempotent(annotator: User, second_annotator: User) -> None:
    make_round(tasks=1, overlap=1)
    lease = queue.next_assignment_for(annotator)
    assert lease is not None
    queue.skip(annotator, lease.pk)
    assert queue.skip(annotator, lease.pk).status == Assignment.Status.SKIPPED
    assert Task.objects.get(pk=lease.task_id).taken == 0
    other = queue.next_assignment_for(second_annotator)
    assert other is not None and other.task_id == lease.task_id


def test_a_submitted_assignment_cannot_be_skipped(annotator: User) -> None:
    make_round(tasks=1)
    lease = queue.next_assignment_for(annotator)
    assert lease is not None
    rank(annotator, lease)
    with pytest.raises(queue.Refused):
        queue.skip(annotator, lease.pk)
    assert Task.objects.get(pk=lease.task_id).taken == 1


def test_only_open_rounds_are_handed_out(annotator: User) -> None:
    make_round(tasks=2, open_it=False)
    assert queue.next_assignment_for(annotator) is None
    frozen = make_round(tasks=2)
    Round.objects.filter(pk=frozen.pk).update(status=Round.Status.FROZEN)
    assert queue.next_assignment_for(annotator) is None


def test_a_lease_in_a_round_frozen_under_it_ends_at_the_next_request(annotator: User) -> None:
    frozen = make_round(tasks=1)
    lease = queue.next_assignment_for(annotator)
    assert lease is not None
    Round.objects.filter(pk=frozen.pk).update(status=Round.Status.FROZEN)
    fresh = make_round(tasks=1)
    moved_on = queue.next_assignment_for(annotator)
    assert moved_on is not None and moved_on.task.round == fresh
    lease.refresh_from_db()
    assert lease.status == Assignment.Status.EXPIRED and Task.objects.get(pk=lease.task_id).taken == 0


def test_earlier_rounds_come_first(annotator: User) -> None:
    old = make_round(tasks=1)
    make_round(tasks=1)
    lease = queue.next_assignment_for(annotator)
    assert lease is not None and lease.task.round == old


def test_the_sweep_expires_only_leases_past_their_end(annotator: User, second_annotator: User) -> None:
    make_round(tasks=2)
    stale = queue.next_assignment_for(annotator)
    live = queue.next_assignment_for(second_annotator)
    assert stale is not None and live is not None
    backdate(stale, minutes=1)
    assert queue.expire_leases() == 1
    assert queue.expire_leases() == 0
    live.refresh_from_db()
    assert live.status == Assignment.Status.LEASED
    assert sorted(Task.objects.values_list("taken", flat=True)) == [0, 1]


def test_someone_elses_assignment_looks_missing(annotator: User, second_annotator: User) -> None:
    make_round(tasks=1)
    lease = queue.next_assignment_for(annotator)
    assert lease is not None
    with pytest.raises(Assignment.DoesNotExist):
        queue.skip(second_annotator, lease.pk)
    lease.refresh_from_db()
    assert lease.status == Assignment.Status.LEASED
