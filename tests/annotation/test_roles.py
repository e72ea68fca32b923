"""Who reaches what: anonymous people are sent to log in, annotators stay out of the admin
pages and the admin API, admins reach both."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.factories import PASSWORD

ADMIN_PAGES = ["/admin/", "/admin/annotation/job/", "/admin/auth/user/"]
ADMIN_API = ["/api/admin/jobs/"]


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_anonymous_is_sent_to_login() -> None:
    client = Client()
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/")
    for page in ADMIN_PAGES:
        response = client.get(page)
        assert response.status_code == 302
        assert "/admin/login/" in response["Location"]
    assert APIClient().get("/api/admin/jobs/").status_code in (401, 403)
    assert APIClient().get("/api/me/").status_code in (401, 403)


def test_annotator_cannot_reach_admin_pages_or_admin_api(annotator: User) -> None:
    client = logged_in(annotator)
    assert client.get("/").status_code == 200
    for page in ADMIN_PAGES:
        response = client.get(page)
        # Django's admin sends non-staff users to its own login page.
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/")
    api = APIClient()
    api.force_authenticate(annotator)
    for endpoint in ADMIN_API:
        refused = api.get(endpoint)
        assert refused.status_code == 403
        assert refused.json()["detail"] == "This endpoint is for FactLoop admins only."
    assert api.post("/api/admin/jobs/healthcheck/", {"queue": "generate"}, format="json").status_code == 403


def test_admin_reaches_admin_pages_and_api(admin_user: User) -> None:
    client = logged_in(admin_user)
    for page in ADMIN_PAGES:
        assert client.get(page).status_code == 200
    api = APIClient()
    api.force_authenticate(admin_user)
    assert api.get("/api/admin/jobs/").status_code == 200


def test_outsider_without_a_role_is_neither(outsider: User) -> None:
    client = logged_in(outsider)
    page = client.get("/")
    assert page.status_code == 200
    assert b"no FactLoop role" in page.content
    assert client.get("/admin/").status_code == 302
    api = APIClient()
    api.force_authenticate(outsider)
    assert api.get("/api/me/").json() == {"username": "otto", "role": "none"}
    assert api.get("/api/admin/jobs/").status_code == 403


def test_me_reports_the_role(annotator: User, admin_user: User) -> None:
    api = APIClient()
    api.force_authenticate(annotator)
    assert api.get("/api/me/").json() == {"username": "ann", "role": "annotator"}
    api.force_authenticate(admin_user)
    assert api.get("/api/me/").json() == {"username": "ada", "role": "admin"}


def test_token_auth(annotator: User) -> None:
    response = APIClient().post("/api/auth/token/", {"username": "ann", "password": PASSWORD}, format="json")
    assert response.status_code == 200
    token = response.json()["token"]
    assert Token.objects.get(user=annotator).key == token
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert api.get("/api/me/").json()["role"] == "annotator"
    assert api.get("/api/admin/jobs/").status_code == 403
    bad = APIClient().post("/api/auth/token/", {"username": "ann", "password": "wrong"}, format="json")
    assert bad.status_code == 400


def test_inactive_annotator_is_refused(annotator: User) -> None:
    annotator.is_active = False
    annotator.save()
    client = Client()
    # Through the sign-in form: Client.login() passes no request, which django-axes requires.
    response = client.post("/accounts/login/", {"username": "ann", "password": PASSWORD})
    assert response.status_code == 200 and "_auth_user_id" not in client.session
    assert client.get("/").status_code == 302


def test_login_and_logout_pages(annotator: User) -> None:
    client = Client(enforce_csrf_checks=True)
    page = client.get("/accounts/login/")
    assert page.status_code == 200
    assert b'name="csrfmiddlewaretoken"' in page.content
    token = page.cookies["csrftoken"].value
    wrong = client.post("/accounts/login/", {"username": "ann", "password": "nope", "csrfmiddlewaretoken": token})
    assert wrong.status_code == 200
    assert b"didn't match" in wrong.content
    right = client.post("/accounts/login/", {"username": "ann", "password": PASSWORD, "csrfmiddlewaretoken": token})
    assert right.status_code == 302
    assert right["Location"] == "/"
    token = client.cookies["csrftoken"].value
    assert client.post("/accounts/logout/", {"csrfmiddlewaretoken": token}).status_code == 302
    assert client.get("/").status_code == 302


def test_schema_is_served(annotator: User) -> None:
    response = logged_in(annotator).get("/api/schema/")
    assert response.status_code == 200
    assert b"/api/admin/jobs/" in response.content


@pytest.mark.django_db
def test_healthz() -> None:
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
