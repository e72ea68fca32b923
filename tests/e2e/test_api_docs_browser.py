"""The API's readable docs in a real browser: Swagger UI and Redoc render the schema for a
signed-in admin, with their files served by FactLoop itself (no CDN) under its
Content-Security-Policy; anyone else is refused."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from tests.e2e.test_login_browser import log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_swagger_ui_and_redoc_render_the_schema_for_an_admin(
    page: Any, live_server: Any, admin_user: User, annotator: User
) -> None:
    base = live_server.url
    outside: list[str] = []  # answers from anywhere but FactLoop (a CDN's files)
    page.on("response", lambda response: outside.append(response.url) if not response.url.startswith(base) else None)
    log_in(page, base, admin_user.username)
    page.wait_for_url(lambda url: "/accounts/login/" not in url)

    page.goto(f"{base}/api/docs/")
    expect(page.locator(".swagger-ui .title").first).to_contain_text("FactLoop API", timeout=20_000)
    expect(page.get_by_text("/api/admin/versions/{name}/deploy/").first).to_be_visible()

    page.goto(f"{base}/api/redoc/")
    expect(page.get_by_text("FactLoop API").first).to_be_visible(timeout=20_000)
    expect(page.get_by_text("/api/admin/versions/").first).to_be_attached()
    # Their scripts and styles came from FactLoop; Redoc's links to web fonts and its logo
    # are blocked by the Content-Security-Policy before they leave.
    assert [url for url in outside if not url.startswith(("data:", "blob:"))] == []


def test_the_docs_are_for_admins_only(client: Any, annotator: User) -> None:
    assert client.get("/api/docs/").status_code in (401, 403)
    client.force_login(annotator)
    assert client.get("/api/docs/").status_code == 403
    assert client.get("/api/redoc/").status_code == 403
