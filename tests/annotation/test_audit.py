"""The audit log records who started, opened and froze rounds, exported, changed roles,
retried or cancelled jobs, deployed and rolled back, and admins read it in the admin."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from rest_framework.test import APIClient

from annotation.labeling.rounds import freeze_round
from annotation.models import AuditEvent, Job
from annotation.rules.roles import ANNOTATORS_GROUP
from models.registry import Registry
from tests.factories import make_job, make_round

pytestmark = pytest.mark.django_db


def events(action: str, after: int = 0) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action, pk__gt=after).order_by("at", "id"))


def last_event() -> int:
    """The id of the newest event: what a test's setup (fixtures, factories) recorded is
    left out by asking for events after it."""
    return AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0


def admin_client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_round_changes_and_exports_made_in_the_admin_name_the_admin(
    admin_user: User, django_capture_on_commit_callbacks: Any
) -> None:
    round_ = make_round(tasks=1)
    mark = last_event()
    client = admin_client(admin_user)
    client.post("/admin/annotation/round/", {"action": "freeze", "_selected_action": [round_.pk]})
    with django_capture_on_commit_callbacks(execute=False):
        client.post(
            "/admin/annotation/round/export/",
            {"format": "factloop", "rounds": [round_.number], "aggregate": "none"},
        )
    [frozen] = events("round", mark)
    assert (frozen.actor, frozen.actor_name, frozen.target, frozen.detail) == (
        admin_user,
        "ada",
        str(round_),
        {"change": "frozen"},
    )
    [export] = events("export", mark)
    assert export.actor == admin_user and export.detail["format"] == "factloop" and export.detail["rounds"] == [1]


def test_role_changes_are_recorded_from_the_command_line_and_the_admin(admin_user: User) -> None:
    call_command("create_admin", "root2", password="a long enough password 1", stdout=io.StringIO())
    granted = {(e.target, e.actor_name) for e in events("role")}
    assert ("root2", "command line") in granted
    assert any(e.detail.get("is_superuser") is True for e in events("role") if e.target == "root2")
    annotators, _ = Group.objects.get_or_create(name=ANNOTATORS_GROUP)
    bea = User.objects.create_user("bea2", password="a long enough password 1")
    joined = bea.date_joined
    page = admin_client(admin_user).post(
        f"/admin/auth/user/{bea.pk}/change/",
        {
            "username": "bea2",
            "groups": [annotators.pk],  # is_active left out: the box unticked
            "date_joined_0": joined.strftime("%Y-%m-%d"),
            "date_joined_1": joined.strftime("%H:%M:%S"),
        },
    )
    assert page.status_code == 302, page.content.decode()[-2000:]
    mine = [e for e in events("role") if e.target == "bea2"]
    assert sorted(json.dumps(e.detail, sort_keys=True) for e in mine) == sorted(
        json.dumps(d, sort_keys=True)
        for d in ({"is_active": False}, {"groups": [ANNOTATORS_GROUP], "change": "added to"})
    )
    assert {e.actor_name for e in mine} == {"ada"}


def test_job_retries_and_cancellations_are_recorded(admin_user: User) -> None:
    job = make_job(kind=Job.Kind.EXPORT, queue="export")
    mark = last_event()
    api = APIClient()
    api.force_authenticate(admin_user)
    api.post(f"/api/admin/jobs/{job.pk}/cancel/")
    api.post(f"/api/admin/jobs/{job.pk}/retry/")
    assert [(e.detail["change"], e.actor_name) for e in events("job", mark)] == [
        ("cancelled", "ada"),
        ("retried", "ada"),
    ]


def test_admins_read_the_log_and_nobody_edits_it(admin_user: User, annotator: User) -> None:
    round_ = make_round(tasks=1)
    mark = last_event()
    freeze_round(round_)
    page = admin_client(admin_user).get("/admin/annotation/auditevent/")
    assert page.status_code == 200 and "Round change" in page.content.decode()
    [event] = events("round", mark)
    assert admin_client(admin_user).post(f"/admin/annotation/auditevent/{event.pk}/delete/").status_code == 403
    stranger = Client()
    stranger.force_login(annotator)
    assert stranger.get("/admin/annotation/auditevent/").status_code == 302  # not staff: the admin's sign-in


def test_deploy_refuses_what_cannot_be_served_and_writes_nothing(settings: Any, tmp_path: Path) -> None:
    settings.FACTLOOP_MODEL_DIR = str(tmp_path / "models")
    registry = Registry(settings.FACTLOOP_MODEL_DIR)
    registry.register("judge", base_model="/m", kind="reward")
    mark = last_event()
    for name, fragment in (("nope", "no model version 'nope'"), ("judge", "is a reward model, not a policy")):
        with pytest.raises(CommandError, match=fragment):
            call_command("deploy", name)
    assert last_event() == mark


@pytest.mark.slow
@pytest.mark.serving
def test_deploying_then_going_back_is_a_deploy_then_a_rollback(
    settings: Any, tmp_path: Path, vllm_server: Any, base_policy: Path, adapters: dict[str, Path]
) -> None:
    from models.serving import ServingClient

    settings.FACTLOOP_MODEL_DIR = str(tmp_path / "models")
    settings.FACTLOOP_VLLM_URL = vllm_server.url
    registry = Registry(settings.FACTLOOP_MODEL_DIR)
    registry.register("tiny-base", base_model=str(base_policy), status="serving")
    registry.register("audit-r1", base_model=str(base_policy), adapter_dir=adapters["a"], parent="tiny-base", round=1)
    mark = last_event()
    out = io.StringIO()
    call_command("deploy", "audit-r1", reason="round 1 passed its gate", stdout=out)
    assert '"rollback": false' in out.getvalue()
    with ServingClient(vllm_server.url) as client:
        assert "audit-r1" in client.models()
    assert (registry.status("audit-r1"), registry.status("tiny-base")) == ("serving", "ready")
    call_command("deploy", "tiny-base", reason="round 1 answers worse in the field", stdout=io.StringIO())
    assert (registry.status("audit-r1"), registry.status("tiny-base")) == ("ready", "serving")
    [deploy] = events("deploy", mark)
    [rollback] = events("rollback", mark)
    assert (deploy.target, deploy.detail["previous"], deploy.detail["reason"]) == (
        "audit-r1",
        "tiny-base",
        "round 1 passed its gate",
    )
    assert (rollback.target, rollback.detail["previous"]) == ("tiny-base", "audit-r1")


@pytest.mark.slow
@pytest.mark.serving
def test_the_admin_api_lists_versions_and_rolls_back(
    settings: Any,
    tmp_path: Path,
    vllm_server: Any,
    base_policy: Path,
    adapters: dict[str, Path],
    admin_user: User,
    annotator: User,
) -> None:
    """POST /api/admin/versions/NAME/deploy/ serves a version (its adapter hot-loaded) and,
    naming an earlier one, rolls back: the old version answers again, and the log says who."""
    from models.serving import ServingClient
    from tests.annotation.test_annotation_api import client_for

    settings.FACTLOOP_MODEL_DIR = str(tmp_path / "models")
    settings.FACTLOOP_VLLM_URL = vllm_server.url
    registry = Registry(settings.FACTLOOP_MODEL_DIR)
    registry.register("tiny-base", base_model=str(base_policy), status="serving")
    registry.register("api-r1", base_model=str(base_policy), adapter_dir=adapters["a"], parent="tiny-base", round=1)
    registry.record_evaluation("api-r1", {"metrics": {"chair_i": 0.02}})
    admin, person = client_for(admin_user), client_for(annotator)
    assert person.get("/api/admin/versions/").status_code == 403
    assert person.post("/api/admin/versions/api-r1/deploy/", {}, format="json").status_code == 403
    listed = admin.get("/api/admin/versions/").json()
    assert [(v["name"], v["status"], v["adapter"]) for v in listed] == [
        ("tiny-base", "serving", False),
        ("api-r1", "ready", True),
    ]
    assert listed[1]["metrics"]["chair_i"] == 0.02 and listed[1]["parent"] == "tiny-base"
    missing = admin.post("/api/admin/versions/nope/deploy/", {}, format="json")
    assert missing.status_code == 409 and "nope" in missing.json()["detail"]
    mark = last_event()
    done = admin.post("/api/admin/versions/api-r1/deploy/", {"reason": "passed its gate"}, format="json")
    assert done.status_code == 200 and done.json() == {
        "version": "api-r1",
        "previous": "tiny-base",
        "rollback": False,
        "served_as": "api-r1",
    }
    back = admin.post("/api/admin/versions/tiny-base/deploy/", {"reason": "worse in the field"}, format="json")
    assert back.status_code == 200 and back.json()["rollback"] is True and back.json()["served_as"] == "base"
    assert (registry.status("api-r1"), registry.status("tiny-base")) == ("ready", "serving")
    with ServingClient(vllm_server.url) as client:
        reply = client.chat(model=back.json()["served_as"], prompt="Describe the image.")
    assert reply.texts  # the old version answers again
    [rollback] = events("rollback", mark)
    assert (rollback.target, rollback.actor_name, rollback.detail["reason"]) == (
        "tiny-base",
        admin_user.username,
        "worse in the field",
    )
