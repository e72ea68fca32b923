"""Logging in and out in a real browser, and what each role can reach."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User

from tests.factories import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def log_in(page: Any, base: str, username: str, password: str = PASSWORD) -> None:
    page.goto(f"{base}/")
    assert "/accounts/login/" in page.url
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")


def test_annotator_logs_in_is_kept_out_of_admin_and_logs_out(page: Any, live_server: Any, annotator: User) -> None:
    base = live_server.url
    log_in(page, base, "ann")
    page.wait_for_url(f"{base}/")
    assert page.text_content("[data-testid=who]").split() == ["ann", "annotator"]
    assert page.get_by_role("link", name="Admin", exact=True).count() == 0

    page.goto(f"{base}/admin/annotation/job/")
    # Django's admin sends a non-staff user to its own login form, with a refusal message.
    assert "/admin/login/" in page.url
    assert "not authorized to access this page" in page.content()

    page.goto(f"{base}/")
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/accounts/login/")
    page.goto(f"{base}/")
    assert "/accounts/login/" in page.url


def test_wrong_password_is_refused(page: Any, live_server: Any, annotator: User) -> None:
    log_in(page, live_server.url, "ann", "not-the-password")
    assert page.get_by_role("alert").text_content().startswith("Your username and password didn't match")
    assert "/accounts/login/" in page.url


def test_admin_reaches_the_jobs_admin(page: Any, live_server: Any, admin_user: User) -> None:
    base = live_server.url
    log_in(page, base, "ada")
    page.wait_for_url(f"{base}/")
    assert page.text_content("[data-testid=who]").split() == ["ada", "admin"]
    page.get_by_role("link", name="Admin", exact=True).click()
    page.wait_for_url(f"{base}/admin/")
    page.goto(f"{base}/admin/annotation/job/")
    assert page.locator("#content h1").text_content() == "Select job to view"
