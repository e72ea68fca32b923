"""The hostile user's tries: password guessing is throttled on every sign-in path, tokens
expire and die with the password, accounts are not reactivated by accident, odd input
never makes a 500, and every answer carries a Content-Security-Policy."""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotation.models import Round, Task
from tests.factories import PASSWORD, make_round

pytestmark = pytest.mark.django_db


@pytest.fixture
def strict_throttle(settings: Any) -> None:
    settings.AXES_FAILURE_LIMIT = 3


def form_login(client: Client, path: str, password: str, username: str = "ann", **extra: Any) -> Any:
    page = client.get(path)
    token = page.cookies["csrftoken"].value
    return client.post(path, {"username": username, "password": password, "csrfmiddlewaretoken": token}, **extra)


@pytest.mark.parametrize(("path", "username"), [("/accounts/login/", "ann"), ("/admin/login/", "ada")])
def test_sign_in_pages_lock_a_user_name_after_repeated_failures(
    strict_throttle: None, annotator: User, admin_user: User, path: str, username: str
) -> None:
    client = Client(enforce_csrf_checks=True)
    for _ in range(2):
        assert form_login(client, path, "wrong", username).status_code == 200  # the form again, with the error
    locked = form_login(client, path, "wrong", username)
    assert locked.status_code == 429 and "Too many failed sign-ins" in locked.content.decode()
    assert form_login(client, path, PASSWORD, username).status_code == 429  # locked: even the right password
    # The lock is on the name from that address: the same name from another address signs in.
    other = form_login(Client(enforce_csrf_checks=True), path, PASSWORD, username, REMOTE_ADDR="10.0.0.9")
    assert other.status_code == 302


def test_the_token_endpoint_is_throttled_too(strict_throttle: None, annotator: User) -> None:
    api = APIClient()
    for _ in range(2):
        assert api.post("/api/auth/token/", {"username": "ann", "password": "x"}, format="json").status_code == 400
    locked = api.post("/api/auth/token/", {"username": "ann", "password": "x"}, format="json")
    assert locked.status_code == 429 and "Too many failed sign-ins" in locked.json()["detail"]
    right = api.post("/api/auth/token/", {"username": "ann", "password": PASSWORD}, format="json")
    assert right.status_code == 429 and not Token.objects.exists()


def test_tokens_expire_and_a_new_sign_in_issues_a_new_one(annotator: User, settings: Any) -> None:
    settings.FACTLOOP_TOKEN_HOURS = 24
    issued = APIClient().post("/api/auth/token/", {"username": "ann", "password": PASSWORD}, format="json").json()
    assert set(issued) == {"token", "expires_at"}
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {issued['token']}")
    assert api.get("/api/me/").status_code == 200
    Token.objects.filter(key=issued["token"]).update(created=timezone.now() - timedelta(hours=25))
    expired = api.get("/api/me/")
    assert expired.status_code in (401, 403) and "expired" in expired.json()["detail"]
    again = APIClient().post("/api/auth/token/", {"username": "ann", "password": PASSWORD}, format="json").json()
    assert again["token"] != issued["token"] and Token.objects.filter(user=annotator).count() == 1


def test_a_password_change_or_deactivation_ends_every_token(annotator: User) -> None:
    Token.objects.create(user=annotator)
    annotator.first_name = "Ann"
    annotator.save()
    assert Token.objects.filter(user=annotator).exists()  # other changes keep it
    annotator.set_password("another long password 42")
    annotator.save()
    assert not Token.objects.filter(user=annotator).exists()
    Token.objects.create(user=annotator)
    annotator.is_active = False
    annotator.save()
    assert not Token.objects.filter(user=annotator).exists()


def test_no_command_reactivates_an_account_silently(annotator: User, tmp_path: Any) -> None:
    annotator.is_active = False
    annotator.save()
    with pytest.raises(CommandError, match="'ann' is deactivated"):
        call_command("create_annotator", "ann", stdout=io.StringIO())
    annotator.refresh_from_db()
    assert not annotator.is_active
    (tmp_path / "labels.json").write_text("[]")
    with pytest.raises(CommandError, match="'ann' is deactivated"):
        call_command("import_labels", str(tmp_path / "labels.json"), format="rlhf-v", annotator="ann")
    call_command("create_annotator", "ann", reactivate=True, stdout=io.StringIO())
    annotator.refresh_from_db()
    assert annotator.is_active


def test_every_answer_carries_a_content_security_policy(annotator: User) -> None:
    client = Client()
    for path in ("/accounts/login/", "/healthz", "/api/me/"):
        policy = client.get(path).headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy


def test_healthz_tells_strangers_only_up_or_down(admin_user: User) -> None:
    assert Client().get("/healthz").json() == {"status": "ok"}
    staff = Client()
    staff.force_login(admin_user)
    assert set(staff.get("/healthz").json()) == {"status", "database"}


def test_the_schema_needs_a_login(annotator: User) -> None:
    assert APIClient().get("/api/schema/").status_code in (401, 403)
    api = APIClient()
    api.force_authenticate(annotator)
    schema = api.get("/api/schema/")
    assert schema.status_code == 200 and b"/api/auth/token/" in schema.content


@pytest.mark.parametrize("path", ["/api/auth/token/", "/api/assignments/1/judgement/", "/api/admin/jobs/healthcheck/"])
def test_json_nested_too_deep_is_a_400_not_a_500(annotator: User, admin_user: User, path: str) -> None:
    api = APIClient()
    if path != "/api/auth/token/":
        api.force_authenticate(admin_user if "admin" in path else annotator)
    body = "[" * 30_000 + "]" * 30_000  # under the anonymous body cap (64 KiB)
    response = api.post(path, body, content_type="application/json")
    assert response.status_code == 400 and "nested deeper than 64 levels" in response.json()["detail"]


def test_nul_in_a_url_is_a_400(admin_user: User) -> None:
    client = Client()
    client.force_login(admin_user)
    assert client.get("/images/%00").status_code == 400
    assert client.get("/admin/annotation/job/", {"status": "\x00"}).status_code == 400
    assert client.get("/images/not-a-digest").status_code == 404


def test_admin_forms_refuse_odd_numbers_without_a_500(admin_user: User) -> None:
    round_ = make_round(tasks=1)
    client = Client()
    client.force_login(admin_user)
    for task in ("²", "9" * 5000, "-1", ""):
        response = client.post(f"/admin/annotation/round/{round_.number}/adjudicate/", {"task": task, "answer": "0"})
        assert response.status_code == 302, task
    page = client.post(
        "/admin/annotation/round/start/",
        {
            "policy_version": "base",
            "task_kinds": ["rank"],
            "candidates_per_prompt": 2,
            "overlap": 1,
            "gold_rate": 0,
            "split": "train",
            "limit": "9" * 30,
            "temperature": 0.7,
            "max_tokens": 64,
        },
    )
    assert page.status_code == 200 and "less than or equal to 10000000" in page.content.decode()
    assert Round.objects.count() == 1 and Task.objects.filter(adjudicated_at__isnull=False).count() == 0


def test_the_admin_links_images_to_the_signed_in_image_view(admin_user: User) -> None:
    image = make_round(tasks=1).tasks.get().prompt.image
    client = Client()
    client.force_login(admin_user)
    page = client.get(f"/admin/annotation/image/{image.pk}/change/").content.decode()
    assert f'href="/images/{image.sha256}"' in page and "/media/" not in page
    assert client.get(f"/images/{image.sha256}").status_code == 200
