"""Schemathesis over the API's own OpenAPI schema, against a live server with real data:
no input it generates (examples, boundary values, random and malformed bodies) may make a
5xx, and every documented answer matches its schema. A bounded run: a fixed seed and a
cap on examples per operation. Each role fuzzes the operations it may call: an admin the
admin API, an annotator the rest (test_admin_api's authorisation matrix holds every admin
endpoint shut to annotators)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from annotation.web.authentication import issue_token
from tests.conftest import PYTHON, REPO
from tests.factories import make_round

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SCHEMATHESIS = str(Path(PYTHON).parent / "schemathesis")
# CI time: the whole suite must stay under 30 minutes. The admin API (rounds, training,
# exports, versions) nearly doubled the operations, so each gets fewer examples than the 25
# it had.
EXAMPLES_PER_OPERATION = 15


@pytest.mark.parametrize(
    ("role", "operations"),
    [("admin", "--include-path-regex"), ("annotator", "--exclude-path-regex")],
    ids=["admin", "annotator"],
)
def test_no_generated_request_makes_a_server_error(
    live_server: Any, admin_user: User, annotator: User, tmp_path: Path, role: str, operations: str
) -> None:
    make_round(tasks=4)
    token = issue_token(admin_user if role == "admin" else annotator).key
    report = tmp_path / "report.json"
    result = subprocess.run(
        [
            SCHEMATHESIS,
            "run",
            f"{live_server.url}/api/schema/",
            "--url",
            live_server.url,
            "--header",
            f"Authorization: Token {token}",
            operations,
            # The annotator fuzzes everything but the admin API, and not signing out: the
            # fuzz's own token would die with it (tests/webapp/test_request_costs.py tests it).
            "^/api/admin/" if role == "admin" else "^/api/(admin/|auth/logout/)",
            "--checks",
            "not_a_server_error,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            str(EXAMPLES_PER_OPERATION),
            "--seed",
            "20261129",
            "--generation-database",
            "none",
            "--report",
            "json",
            "--report-json-path",
            str(report),
            "--no-color",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "passed" in output
    if report.exists():  # the run's own summary, kept for the closing figures
        summary = json.loads(report.read_text())
        assert summary
