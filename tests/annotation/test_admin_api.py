"""The admin REST API: who may call each endpoint, and imports as background jobs (upload,
then a job with progress; bad input refused at upload with nothing kept)."""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import transaction
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from annotation.data import archives
from annotation.jobs import lifecycle as jobs
from annotation.models import AuditEvent, Job, Prompt, Round
from annotation.worker.tasks import import_archive
from tests.factories import make_job, png_bytes, zip_of

pytestmark = pytest.mark.django_db


def _routes(patterns: list[Any], prefix: str = "") -> list[tuple[str, Any]]:
    found = []
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            found += _routes(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern):
            found.append((route, pattern.callback))
    return found


def admin_endpoints() -> list[tuple[str, str]]:
    """(method, path) of every admin API endpoint, read from the URL configuration, so a new
    one cannot be left out of the matrix; path parameters get values that name nothing."""
    endpoints = []
    for route, view in _routes(get_resolver().url_patterns):
        if not route.startswith("api/admin/"):
            continue
        path = "/" + route.replace("<int:job_id>", "999").replace("<int:number>", "999")
        path = path.replace("<int:run_id>", "999").replace("<str:name>", "no-such-version")
        assert "<" not in path, f"fill in the parameter of {route}"
        for method in ("get", "post"):
            if hasattr(view.view_class, method):
                endpoints.append((method, path))
    return endpoints


ENDPOINTS = admin_endpoints()


def test_the_matrix_covers_the_admin_api() -> None:
    paths = {path for _, path in ENDPOINTS}
    for expected in ("/api/admin/imports/", "/api/admin/rounds/", "/api/admin/exports/", "/api/admin/versions/"):
        assert expected in paths
    assert len(ENDPOINTS) >= 18


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_authorisation_matrix(method: str, path: str, annotator: User, outsider: User, admin_user: User) -> None:
    """Anonymous: 401/403; an annotator or a user without a role: 403 with the reason; an
    admin: past the door (a 2xx, or a 4xx about the request itself that writes nothing)."""

    def call(user: User | None) -> Any:
        api = APIClient()
        if user is not None:
            api.force_authenticate(user)
        return api.post(path, {}, format="json") if method == "post" else api.get(path)

    assert call(None).status_code in (401, 403)
    for user in (annotator, outsider):
        refused = call(user)
        assert refused.status_code == 403 and "admins only" in refused.json()["detail"]
    answered = call(admin_user)
    assert answered.status_code not in (401, 403, 500), answered.content
    if answered.status_code >= 400:  # refused: it says why and wrote nothing
        assert answered.json()
        assert not Job.objects.exists() and not Round.objects.exists() and not Prompt.objects.exists()


@pytest.fixture
def admin_api(admin_user: User, settings: Any, tmp_path: Path) -> APIClient:
    settings.FACTLOOP_EXPORT_DIR = tmp_path / "exports"
    api = APIClient()
    api.force_login(admin_user)  # a session: the body's cap is decided from it before DRF runs
    return api


def uploads() -> list[str]:
    folder = archives.upload_dir()
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def prompts_zip(rows: int = 3, bad: int = 0) -> io.BytesIO:
    lines = [json.dumps({"image": "a.png", "prompt": f"Describe it ({n})."}) for n in range(rows)]
    lines += [json.dumps({"image": "gone.png", "prompt": f"x{n}"}) for n in range(bad)]
    return zip_of({"set/prompts.jsonl": "\n".join(lines).encode(), "set/a.png": png_bytes()})


def test_an_upload_is_imported_by_a_job_with_progress(admin_api: APIClient) -> None:
    answer = admin_api.post("/api/admin/imports/", {"kind": "prompts", "archive": prompts_zip(3)}, format="multipart")
    assert answer.status_code == 201, answer.content
    job = Job.objects.get(pk=answer.json()["id"])
    assert (job.kind, job.queue, job.status) == (Job.Kind.IMPORT, "export", Job.Status.QUEUED)
    assert not Prompt.objects.exists() and uploads() == [job.params["archive"]]
    event = AuditEvent.objects.get(action=AuditEvent.Action.IMPORT)
    assert (event.target, event.actor_name, event.detail["kind"]) == (f"job {job.pk}", "ada", "prompts")
    import_archive.apply(args=(job.pk,))
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert (job.result["rows"], job.result["prompts"], job.result["images"], job.result["skipped"]) == (3, 3, 1, 0)
    assert (job.progress_done, job.progress_total) == (6, 6)
    assert Prompt.objects.count() == 3 and uploads() == []  # the upload is gone once imported


def test_bad_rows_fail_the_job_naming_them_and_skip_bad_imports_the_rest(admin_api: APIClient) -> None:
    answer = admin_api.post("/api/admin/imports/", {"kind": "prompts", "archive": prompts_zip(2, bad=2)})
    job = Job.objects.get(pk=answer.json()["id"])
    import_archive.apply(args=(job.pk,))
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and "2 bad row(s); nothing was imported" in job.error
    assert "row 3: missing file" in job.error and "row 4: missing file" in job.error
    assert not Prompt.objects.exists() and uploads() == []
    answer = admin_api.post(
        "/api/admin/imports/", {"kind": "prompts", "archive": prompts_zip(2, bad=2), "skip_bad": True}
    )
    job = Job.objects.get(pk=answer.json()["id"])
    import_archive.apply(args=(job.pk,))
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED and (job.result["prompts"], job.result["skipped"]) == (2, 2)
    assert job.result["problems"] == ["row 3: missing file 'gone.png'", "row 4: missing file 'gone.png'"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"kind": "prompts"}, "archive"),
        ({"kind": "dance", "archive": "zip"}, "kind"),
        ({"kind": "prompts", "archive": "text"}, "not a zip archive"),
        ({"kind": "prompts", "archive": "escape"}, "outside the import folder"),
        ({"kind": "prompts", "archive": "link"}, "symbolic link"),
    ],
)
def test_bad_uploads_get_a_400_and_nothing_is_kept(admin_api: APIClient, body: dict[str, Any], fragment: str) -> None:
    files = {
        "zip": prompts_zip(1),
        "text": io.BytesIO(b"plain text"),
        "escape": zip_of({"../../escape.jsonl": b"{}"}),
        "link": _zip_with_link(),
    }
    if "archive" in body:
        body = {**body, "archive": files[body["archive"]]}
        body["archive"].name = "upload.zip"
    answer = admin_api.post("/api/admin/imports/", body, format="multipart")
    assert answer.status_code == 400 and fragment in json.dumps(answer.json())
    assert not Job.objects.exists() and uploads() == []


def _zip_with_link() -> io.BytesIO:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        link = zipfile.ZipInfo("prompts.jsonl")
        link.external_attr = (0o120777 << 16) | 0
        archive.writestr(link, "/etc/passwd")
    buffer.seek(0)
    return buffer


def test_an_upload_over_the_limit_is_refused(admin_api: APIClient, settings: Any) -> None:
    settings.FACTLOOP_MAX_IMPORT_BYTES = 1024**2
    # A small upload that unpacks past the limit: its directory says so.
    packed = zip_of({"prompts.jsonl": b"0" * (2 * 1024**2)}, compression=zipfile.ZIP_DEFLATED)
    answer = admin_api.post("/api/admin/imports/", {"kind": "prompts", "archive": packed})
    assert answer.status_code == 400 and "unpacks to more than 1048576 bytes" in answer.json()["detail"]
    # An upload larger than the limit itself: refused from its length, before it is read.
    big = zip_of({"prompts.jsonl": os.urandom(3 * 1024**2)})
    answer = admin_api.post("/api/admin/imports/", {"kind": "prompts", "archive": big})
    assert answer.status_code == 413 and "the limit for this request is 2097152" in answer.json()["detail"]
    assert not Job.objects.exists() and uploads() == []


def test_a_retried_import_finds_its_upload_unless_it_ended_for_good(admin_api: APIClient) -> None:
    answer = admin_api.post("/api/admin/imports/", {"kind": "prompts", "archive": prompts_zip(1)})
    job_id = answer.json()["id"]
    jobs.cancel(job_id)  # cancelled before a worker took it: the upload stays for a retry
    assert len(uploads()) == 1
    jobs.retry(job_id)
    import_archive.apply(args=(job_id,))
    assert Job.objects.get(pk=job_id).status == Job.Status.SUCCEEDED and uploads() == []
    # A job whose upload is gone fails with the reason.
    job = make_job(kind=Job.Kind.IMPORT, queue="export", params={"archive": "gone.zip", "kind": "prompts"})
    import_archive.apply(args=(job.pk,))
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and "is gone; upload it again" in job.error


def test_the_sweep_removes_stale_uploads_no_live_import_names(admin_api: APIClient) -> None:
    folder = archives.upload_dir()
    folder.mkdir(parents=True)
    live = make_job(kind=Job.Kind.IMPORT, queue="export", params={"archive": "live.zip", "kind": "prompts"})
    old = time.time() - archives.STALE_UPLOAD_SECONDS - 60
    for name in ("live.zip", "orphan.zip", ".half.zip.part", "fresh.zip"):
        (folder / name).write_bytes(b"x")
        if name != "fresh.zip":
            os.utime(folder / name, (old, old))
    assert sorted(archives.remove_stale_uploads()) == [".half.zip.part", "orphan.zip"]
    assert uploads() == ["fresh.zip", "live.zip"]
    jobs.cancel(live.pk)  # no longer queued: its upload goes too, once old
    assert archives.remove_stale_uploads() == ["live.zip"]


def test_progress_inside_the_work_s_transaction_is_left_to_the_heartbeat(admin_user: User) -> None:
    """An UPDATE of the job row from inside the import's transaction would lock the row until
    commit; the reporter hands the numbers to the heartbeat thread instead."""
    job = make_job(kind=Job.Kind.IMPORT, queue="export")
    claim = Job.claim(job.pk, "w")
    assert claim is not None
    heartbeat = jobs.Heartbeat(job.pk, claim, every=3600)
    report = jobs.reporter(job.pk, claim, heartbeat)
    report(1, 10)  # outside: written now (and the beats write the same)
    assert Job.objects.get(pk=job.pk).progress_done == 1 and heartbeat.pending == (1, 10)
    with transaction.atomic():
        report(5, 10)
    assert heartbeat.pending == (5, 10) and Job.objects.get(pk=job.pk).progress_done == 1
    assert Job.beat(job.pk, claim, progress=heartbeat.pending)
    assert (Job.objects.get(pk=job.pk).progress_done, Job.objects.get(pk=job.pk).progress_total) == (5, 10)
    heartbeat.lost.set()
    with pytest.raises(jobs.JobLost), transaction.atomic():
        report(6, 10)


def test_numbers_too_large_for_the_database_are_a_400(admin_api: APIClient) -> None:
    assert admin_api.get("/api/admin/jobs/?limit=99999999999999999999").status_code == 200  # capped at 1,000
    assert admin_api.get("/api/admin/jobs/?offset=99999999999999999999").status_code == 400
    answer = admin_api.post("/api/admin/rounds/", {"policy": "tiny-base", "limit": 2**70}, format="json")
    assert answer.status_code == 400 and "limit" in answer.json()
