"""The annotator REST API: what each person can do, what a bad request gets, and that a
refused request writes nothing."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotation.models import Assignment, Correction, Judgement, Round, Task
from annotation.web.serializers import max_corrected_chars
from tests.factories import PASSWORD, make_round

pytestmark = pytest.mark.django_db

ORIGINAL = "A large red ball is at the top left. A small blue moon is in the center."


def client_for(user: User | None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_login(user)
    return client


def post(client: APIClient, url: str, body: Any = None) -> Any:
    return client.post(url, body if body is not None else {}, format="json")


def lease(client: APIClient) -> dict[str, Any]:
    response = post(client, "/api/assignments/next/")
    assert response.status_code == 200, response.content
    return dict(response.json())


def nothing_written(assignment_id: int) -> None:
    assignment = Assignment.objects.get(pk=assignment_id)
    assert assignment.status == Assignment.Status.LEASED
    assert not Judgement.objects.filter(assignment=assignment).exists()
    assert not Correction.objects.filter(assignment=assignment).exists()
    assert not Assignment.objects.filter(task=assignment.task, status=Assignment.Status.SUBMITTED).exists()


# -- who may ---------------------------------------------------------------------------


def test_an_outsider_and_a_stranger_get_no_work(outsider: User) -> None:
    make_round(tasks=1)
    assert post(client_for(outsider), "/api/assignments/next/").status_code == 403
    assert post(client_for(None), "/api/assignments/next/").status_code in (401, 403)
    assert not Assignment.objects.exists()


def test_an_admin_may_annotate_too(admin_user: User) -> None:
    make_round(tasks=1)
    assert lease(client_for(admin_user))["kind"] == "rank"


def test_token_auth_works_for_scripts(annotator: User) -> None:
    make_round(tasks=1)
    client = APIClient()
    token = client.post("/api/auth/token/", {"username": "ann", "password": PASSWORD}, format="json").json()["token"]
    assert Token.objects.get(key=token).user == annotator
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert lease(client)["status"] == "leased"


# -- next ------------------------------------------------------------------------------


def test_next_shows_the_task_without_its_gold_answer_and_204_when_done(annotator: User) -> None:
    round_ = make_round(tasks=1)
    Task.objects.filter(round=round_).update(is_gold=True, gold_answer={"ranking": "secret"})
    client = client_for(annotator)
    data = lease(client)
    assert set(data) == {
        "id",
        "kind",
        "status",
        "round",
        "leased_at",
        "expires_at",
        "prompt",
        "image",
        "candidates",
        "suggested_order",
    }
    assert [c["label"] for c in data["candidates"]] == ["A", "B"]
    # No AI labeller: no machine suggestions.
    assert data["suggested_order"] is None and all(c["suggestions"] == [] for c in data["candidates"])
    assert "secret" not in json.dumps(data)
    assert client.get(data["image"]["url"]).status_code == 200
    ids = [c["id"] for c in data["candidates"]]
    assert post(client, f"/api/assignments/{data['id']}/judgement/", {"ranking": ids}).status_code == 201
    assert post(client, "/api/assignments/next/").status_code == 204


def test_next_and_submit_use_a_fixed_number_of_queries(annotator: User, django_assert_max_num_queries: Any) -> None:
    make_round(tasks=5, per_task=4)
    client = client_for(annotator)
    # With a session: 3 queries to know the user and role (1 with a token); next: the claim
    # (savepoint, SELECT ... FOR UPDATE SKIP LOCKED, UPDATE, INSERT, release) and the payload;
    # submit: the conditional UPDATE, the task's candidates, the INSERT. The sweep of expired
    # leases (at most every queue.SWEEP_EVERY per process) is one more query now and then; it
    # is held off here so that the count does not hang on how long the tests before took.
    from django.utils import timezone

    from annotation.labeling import queue as work_queue

    for _ in range(3):
        work_queue._last_sweep["at"] = timezone.now()
        with django_assert_max_num_queries(9):
            data = lease(client)
        with django_assert_max_num_queries(8):
            ranking = [c["id"] for c in data["candidates"]]
            assert post(client, f"/api/assignments/{data['id']}/judgement/", {"ranking": ranking}).status_code == 201


# -- judgements ------------------------------------------------------------------------


def test_a_judgement_is_stored_once_and_a_retry_returns_it(annotator: User) -> None:
    make_round(tasks=2)
    client = client_for(annotator)
    data = lease(client)
    a, b = (c["id"] for c in data["candidates"])
    body = {"ranking": [b, a], "hallucination_tie": True, "hallucinated": [a, b], "rationale": "both add a kite"}
    first = post(client, f"/api/assignments/{data['id']}/judgement/", body | {"time_spent_ms": 4200})
    assert first.status_code == 201
    stored = first.json()
    assert (stored["preferred"], stored["rejected"], stored["rejected_hallucinates"]) == (b, a, True)
    assert stored["hallucination_tie"] is True and stored["time_spent_ms"] == 4200
    assert stored["tiers"] == [[b, a]]  # a tie of the two: one hallucination group
    retry = post(client, f"/api/assignments/{data['id']}/judgement/", body | {"time_spent_ms": 9999})
    assert retry.status_code == 200 and retry.json() == stored
    assert Judgement.objects.count() == 1
    assert Assignment.objects.filter(status=Assignment.Status.SUBMITTED).count() == 1


def test_a_submission_can_carry_the_next_assignment(annotator: User) -> None:
    """?next=1: the answer holds the next lease (one round trip a label); a retry of the
    submission returns the stored result and the same live lease; none left gives null."""
    make_round(tasks=2)
    make_round(tasks=1, kind=Task.Kind.CORRECT, texts=[ORIGINAL])
    client = client_for(annotator)
    first = lease(client)
    ranking = [c["id"] for c in first["candidates"]]
    answer = post(client, f"/api/assignments/{first['id']}/judgement/?next=1", {"ranking": ranking})
    assert answer.status_code == 201
    upcoming = answer.json()["next"]
    assert upcoming["id"] != first["id"] and upcoming["kind"] == "rank" and len(upcoming["candidates"]) == 2
    assert Assignment.objects.get(pk=upcoming["id"]).status == Assignment.Status.LEASED
    again = post(client, f"/api/assignments/{first['id']}/judgement/?next=1", {"ranking": ranking})
    assert again.status_code == 200 and again.json()["next"]["id"] == upcoming["id"]  # the same live lease
    assert "next" not in post(client, f"/api/assignments/{first['id']}/judgement/", {"ranking": ranking}).json()
    # A skip carries the next one too; the last submission carries null.
    skipped = post(client, f"/api/assignments/{upcoming['id']}/skip/?next=1")
    assert skipped.status_code == 200 and skipped.json()["status"] == "skipped"
    correction = skipped.json()["next"]
    assert correction["kind"] == "correct"
    done = post(client, f"/api/assignments/{correction['id']}/correction/?next=1", {"corrected": ORIGINAL + " Yes."})
    assert done.status_code == 201 and done.json()["next"] is None
    assert Assignment.objects.filter(annotator=annotator, status=Assignment.Status.LEASED).count() == 0


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({}, 400, "ranking"),
        ({"ranking": "A"}, 400, "ranking"),
        ({"ranking": [1]}, 400, "ranking"),
        ({"ranking": "SAME_TWICE"}, 400, "twice"),
        ({"ranking": "UNKNOWN"}, 400, "exactly this task's candidates"),
        ({"ranking": "OK", "hallucinated": [10**9]}, 400, "not part of this task"),
        ({"ranking": "OK", "rationale": "x" * 5001}, 400, "rationale"),
        ({"ranking": "OK", "time_spent_ms": -1}, 400, "time_spent_ms"),
        ({"ranking": "OK", "hallucination_tie": "perhaps"}, 400, "hallucination_tie"),
        ({"ranking": "OK", "tiers": "AGAINST"}, 400, "group with fewer hallucinations first"),
        ({"ranking": "OK", "tiers": "MISSING"}, 400, "each ranked candidate exactly once"),
        ({"ranking": "OK", "tiers": [[]]}, 400, "tiers"),
    ],
)
def test_a_bad_judgement_gets_a_clear_400_and_writes_nothing(
    annotator: User, body: dict[str, Any], status: int, message: str
) -> None:
    make_round(tasks=1)
    client = client_for(annotator)
    data = lease(client)
    ids = [c["id"] for c in data["candidates"]]
    placeholders = {"SAME_TWICE": [ids[0], ids[0]], "UNKNOWN": [ids[0], 10**9], "OK": ids}
    if isinstance(body.get("ranking"), str) and body["ranking"] in placeholders:
        body = body | {"ranking": placeholders[body["ranking"]]}
    tiers = {"AGAINST": [[ids[1]], [ids[0]]], "MISSING": [[ids[0]]]}
    if isinstance(body.get("tiers"), str):
        body = body | {"tiers": tiers[body["tiers"]]}
    response = post(client, f"/api/assignments/{data['id']}/judgement/", body)
    assert response.status_code == status
    assert message in json.dumps(response.json())
    nothing_written(data["id"])


def test_a_correction_sent_to_a_ranking_task_is_refused(annotator: User) -> None:
    make_round(tasks=1)
    client = client_for(annotator)
    data = lease(client)
    response = post(client, f"/api/assignments/{data['id']}/correction/", {"corrected": "text"})
    assert response.status_code == 409 and "rank task" in response.json()["detail"]
    nothing_written(data["id"])


def test_someone_elses_assignment_is_404_and_untouched(annotator: User, second_annotator: User) -> None:
    make_round(tasks=2)
    data = lease(client_for(annotator))
    intruder = client_for(second_annotator)
    ids = [c["id"] for c in data["candidates"]]
    for action, body in [("judgement", {"ranking": ids}), ("skip", {}), ("diff", {"corrected": "x"})]:
        response = post(intruder, f"/api/assignments/{data['id']}/{action}/", body)
        assert response.status_code == 404, action
    assert intruder.get(f"/api/assignments/{data['id']}/").status_code == 404
    nothing_written(data["id"])


def test_an_expired_lease_cannot_be_submitted(annotator: User) -> None:
    make_round(tasks=1)
    client = client_for(annotator)
    data = lease(client)
    Assignment.objects.filter(pk=data["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    ids = [c["id"] for c in data["candidates"]]
    response = post(client, f"/api/assignments/{data['id']}/judgement/", {"ranking": ids})
    assert response.status_code == 409 and "expired" in response.json()["detail"]
    nothing_written(data["id"])


def test_a_frozen_round_takes_no_more_labels(annotator: User) -> None:
    round_ = make_round(tasks=1)
    client = client_for(annotator)
    data = lease(client)
    Round.objects.filter(pk=round_.pk).update(status=Round.Status.FROZEN)
    ids = [c["id"] for c in data["candidates"]]
    response = post(client, f"/api/assignments/{data['id']}/judgement/", {"ranking": ids})
    assert response.status_code == 409 and "frozen" in response.json()["detail"]
    nothing_written(data["id"])


def test_an_oversized_body_gets_413_and_writes_nothing(annotator: User, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096
    make_round(tasks=1)
    client = client_for(annotator)
    data = lease(client)
    ids = [c["id"] for c in data["candidates"]]
    body = json.dumps({"ranking": ids, "rationale": "x" * 10_000})
    response = client.post(f"/api/assignments/{data['id']}/judgement/", body, content_type="application/json")
    assert response.status_code == 413 and "limit" in response.json()["detail"]
    nothing_written(data["id"])


def test_malformed_json_gets_400(annotator: User) -> None:
    make_round(tasks=1)
    client = client_for(annotator)
    data = lease(client)
    response = client.post(f"/api/assignments/{data['id']}/judgement/", "{not json", content_type="application/json")
    assert response.status_code == 400
    nothing_written(data["id"])


def test_skip_then_next_gives_another_task(annotator: User) -> None:
    make_round(tasks=2)
    client = client_for(annotator)
    first = lease(client)
    skipped = post(client, f"/api/assignments/{first['id']}/skip/")
    assert skipped.status_code == 200 and skipped.json() == {"id": first["id"], "status": "skipped"}
    assert lease(client)["id"] != first["id"]


# -- corrections -----------------------------------------------------------------------


@pytest.fixture
def correction_lease(annotator: User) -> tuple[APIClient, dict[str, Any]]:
    make_round(tasks=1, kind=Task.Kind.CORRECT, texts=[ORIGINAL])
    client = client_for(annotator)
    data = lease(client)
    assert data["kind"] == "correct" and data["candidates"][0]["text"] == ORIGINAL
    return client, data


def test_the_server_computes_the_spans_and_ignores_any_sent(correction_lease: tuple[APIClient, dict[str, Any]]) -> None:
    client, data = correction_lease
    corrected = "A large red box is at the top left. A small blue moon is in the center."
    forged = [{"original_start": 0, "original_end": 70, "corrected_start": 0, "corrected_end": 70}]
    preview = post(client, f"/api/assignments/{data['id']}/diff/", {"corrected": corrected}).json()["spans"]
    assert [(s["original_text"], s["corrected_text"]) for s in preview] == [("ball", "box")]
    response = post(
        client,
        f"/api/assignments/{data['id']}/correction/",
        {"corrected": corrected, "spans": forged, "span_categories": ["objects"], "time_spent_ms": 1500},
    )
    assert response.status_code == 201, response.content
    stored = Correction.objects.get()
    assert (stored.original, stored.corrected, stored.no_hallucination) == (ORIGINAL, corrected, False)
    assert stored.spans == [dict(preview[0], category="objects")]
    assert ORIGINAL[stored.spans[0]["original_start"] : stored.spans[0]["original_end"]] == "ball"
    retry = post(client, f"/api/assignments/{data['id']}/correction/", {"corrected": "something else"})
    assert retry.status_code == 200 and retry.json()["corrected"] == corrected
    assert Correction.objects.count() == 1


def test_the_longest_candidate_can_be_corrected(annotator: User, settings: Any) -> None:
    """A candidate at FACTLOOP_MAX_RESPONSE_CHARS (what generation cuts to), its one wrong
    word replaced: the submit goes through, whatever the body's size."""
    longest = (ORIGINAL + " ") * (settings.FACTLOOP_MAX_RESPONSE_CHARS // (len(ORIGINAL) + 1))
    make_round(tasks=1, kind=Task.Kind.CORRECT, texts=[longest])
    client = client_for(annotator)
    data = lease(client)
    corrected = longest.replace("red", "blue", 1)
    response = post(client, f"/api/assignments/{data['id']}/correction/", {"corrected": corrected})
    assert response.status_code == 201, response.content
    assert [s["corrected_text"] for s in response.json()["spans"]] == ["blue"]


def test_no_hallucination_stores_no_change(correction_lease: tuple[APIClient, dict[str, Any]]) -> None:
    client, data = correction_lease
    response = post(client, f"/api/assignments/{data['id']}/correction/", {"no_hallucination": True})
    assert response.status_code == 201
    assert response.json()["spans"] == [] and response.json()["corrected"] == ORIGINAL


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "corrected"),
        ({"corrected": ""}, "empty"),
        ({"corrected": "   \n "}, "empty"),
        ({"corrected": ORIGINAL}, "no word was changed"),
        ({"corrected": ORIGINAL.replace(" in", "  in")}, "no word was changed"),
        ({"corrected": ORIGINAL.replace("red", "blue"), "no_hallucination": True}, "left unchanged"),
        ({"corrected": ORIGINAL.replace("red", "blue"), "span_categories": ["colours"]}, "span_categories"),
        ({"corrected": ORIGINAL.replace("red", "blue"), "span_categories": ["objects", None]}, "2 categories for 1"),
        ({"corrected": "x" * (max_corrected_chars() + 1)}, "corrected"),
    ],
)
def test_a_bad_correction_gets_a_clear_400_and_writes_nothing(
    correction_lease: tuple[APIClient, dict[str, Any]], body: dict[str, Any], message: str
) -> None:
    client, data = correction_lease
    response = post(client, f"/api/assignments/{data['id']}/correction/", body)
    assert response.status_code == 400
    assert message in json.dumps(response.json())
    nothing_written(data["id"])


def test_the_schema_documents_the_annotation_api(annotator: User) -> None:
    schema = client_for(annotator).get("/api/schema/", HTTP_ACCEPT="application/json").json()
    for path in ("next/", "{assignment_id}/judgement/", "{assignment_id}/correction/", "{assignment_id}/skip/"):
        assert f"/api/assignments/{path}" in schema["paths"]
    judgement = schema["components"]["schemas"]["JudgementInput"]["properties"]
    assert {"ranking", "hallucination_tie", "hallucinated", "rationale", "time_spent_ms"} <= set(judgement)
