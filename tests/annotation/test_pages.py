"""The annotator pages and the admin's views of the workflow, without a browser."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from rest_framework import serializers

from annotation.labeling import queue
from annotation.models import Assignment, Task
from annotation.rules import selectors
from annotation.web.serializers import AssignmentOutput
from tests.factories import machine_feedback, make_round

pytestmark = pytest.mark.django_db


def client_for(user: User | None, **kwargs: Any) -> Client:
    client = Client(**kwargs)
    if user is not None:
        client.force_login(user)
    return client


def test_annotate_sends_a_stranger_to_log_in_and_refuses_an_outsider(outsider: User) -> None:
    make_round(tasks=1)
    assert "/accounts/login/" in client_for(None).get("/annotate/")["Location"]
    assert client_for(outsider).get("/annotate/").status_code == 403
    assert not Assignment.objects.exists()


def test_annotate_leases_on_post_then_shows_the_task_and_says_when_nothing_is_left(annotator: User) -> None:
    make_round(tasks=1, kind=Task.Kind.CORRECT, texts=["A red ball <b>is</b> here."])
    client = client_for(annotator)
    response = client.post("/annotate/")
    assignment = Assignment.objects.get()
    assert response["Location"] == f"/annotate/{assignment.pk}/"
    page = client.get(response["Location"]).content.decode()
    assert "A red ball &lt;b&gt;is&lt;/b&gt; here." in page and "<b>is</b>" not in page.split("assignment-data")[0]
    assert 'name="csrfmiddlewaretoken"' in page
    assert client.get("/annotate/")["Location"] == f"/annotate/{assignment.pk}/"  # a GET resumes the live lease
    queue.skip(annotator, assignment.pk)
    assert "No task needs you right now" in client.post("/annotate/").content.decode()


def test_a_get_never_leases_a_task(annotator: User) -> None:
    """A prefetch or a crawler following the link takes no work: GET shows a button that
    POSTs."""
    make_round(tasks=1)
    page = client_for(annotator).get("/annotate/")
    assert page.status_code == 200 and 'data-testid="start"' in page.content.decode()
    assert not Assignment.objects.exists()
    assert client_for(annotator).put("/annotate/").status_code == 405


def test_a_page_of_someone_elses_assignment_is_404(annotator: User, second_annotator: User) -> None:
    make_round(tasks=1)
    lease = queue.next_assignment_for(annotator)
    assert lease is not None
    assert client_for(second_annotator).get(f"/annotate/{lease.pk}/").status_code == 404


def test_an_expired_or_finished_assignment_page_sends_back_to_the_queue(annotator: User) -> None:
    make_round(tasks=2)
    lease = queue.next_assignment_for(annotator)
    assert lease is not None
    Assignment.objects.filter(pk=lease.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = client_for(annotator).get(f"/annotate/{lease.pk}/")
    assert response.status_code == 302 and response["Location"] == "/annotate/"


def test_images_are_for_signed_in_annotators_only(annotator: User, outsider: User) -> None:
    round_ = make_round(tasks=1)
    image = round_.tasks.get().prompt.image
    url = f"/images/{image.sha256}"
    response = client_for(annotator).get(url)
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert b"".join(response.streaming_content) == image.file.open("rb").read()  # type: ignore[attr-defined]
    assert client_for(outsider).get(url).status_code == 403
    assert "/accounts/login/" in client_for(None).get(url)["Location"]
    assert client_for(annotator).get("/images/" + "0" * 64).status_code == 404


def test_the_api_needs_the_csrf_token_with_a_session(annotator: User) -> None:
    make_round(tasks=1)
    client = client_for(annotator, enforce_csrf_checks=True)
    response = client.post("/api/assignments/next/", "{}", content_type="application/json")
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]
    assert not Assignment.objects.exists()


def _keys(serializer: serializers.Serializer) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, field in serializer.fields.items():
        child = getattr(field, "child", field)
        out[name] = _keys(child) if isinstance(child, serializers.Serializer) else None
    return out


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return _shape(value[0])
    return None


def test_the_payload_has_exactly_the_documented_shape(annotator: User) -> None:
    round_ = make_round(tasks=1)
    prompt = round_.tasks.get().prompt
    prompt.context = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    prompt.save()
    for candidate in round_.candidates.all():  # machine suggestions too (an AI labeller's feedback)
        candidate.ai_feedback = machine_feedback(candidate.text)
        candidate.save()
    lease = queue.next_assignment_for(annotator)
    assert lease is not None
    payload = selectors.work_payload(lease)
    assert _shape(payload) == _keys(AssignmentOutput())
    assert payload["suggested_order"] is not None and all(c["suggestions"] for c in payload["candidates"])


def test_the_admin_shows_round_progress(admin_user: User, annotator: User, django_assert_max_num_queries: Any) -> None:
    make_round(tasks=3, overlap=2)
    lease = queue.next_assignment_for(annotator)
    assert lease is not None
    client = client_for(admin_user)
    with django_assert_max_num_queries(12):
        page = client.get("/admin/annotation/round/").content.decode()
    assert '<progress max="6" value="0">' in page
    for model in ("image", "prompt", "task", "assignment", "judgement", "correction"):
        assert client.get(f"/admin/annotation/{model}/").status_code == 200, model
