"""Downloading an export: the finished job's folder as a streamed zip, for admins only."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from annotation.data.exporters import queue_export
from annotation.labeling import queue
from annotation.labeling.submissions import submit_judgement
from annotation.models import Job
from annotation.worker.tasks import export_dataset
from tests.annotation.test_annotation_api import client_for
from tests.factories import make_job, make_round

pytestmark = pytest.mark.django_db


def finished_export(settings: Any, tmp_path: Path, annotator: User, fmt: str = "trl") -> Job:
    settings.FACTLOOP_EXPORT_DIR = tmp_path / "exports"
    make_round(tasks=3)
    while (lease := queue.next_assignment_for(annotator)) is not None:
        ids = [slot.candidate_id for slot in lease.task.slots.all()]
        submit_judgement(annotator, lease.pk, ranking=ids)
    job = queue_export(fmt=fmt, rounds=[1])
    export_dataset.apply(args=(job.pk,))
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    return job


def test_an_admin_downloads_an_export_whole(
    admin_user: User, annotator: User, outsider: User, settings: Any, tmp_path: Path
) -> None:
    job = finished_export(settings, tmp_path, annotator)
    url = f"/api/admin/jobs/{job.pk}/download/"
    for who in (None, annotator, outsider):
        assert client_for(who).get(url).status_code in (401, 403)
    response = client_for(admin_user).get(url)
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"] == f'attachment; filename="factloop-job-{job.pk}-trl.zip"'
    archive = zipfile.ZipFile(io.BytesIO(response.getvalue()))
    folder = Path(job.result["out"])
    expected = {
        f"factloop-job-{job.pk}-trl/{p.relative_to(folder).as_posix()}": p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file()
    }
    assert archive.testzip() is None
    assert {name: archive.read(name) for name in archive.namelist()} == expected
    assert "manifest.json" in {Path(name).name for name in expected}
    # The job's admin page links to it.
    page = client_for(admin_user).get(f"/admin/annotation/job/{job.pk}/change/").content.decode()
    assert f'href="{url}"' in page


def test_only_a_finished_export_with_its_files_can_be_downloaded(
    admin_user: User, annotator: User, settings: Any, tmp_path: Path
) -> None:
    client = client_for(admin_user)
    assert client.get("/api/admin/jobs/999/download/").status_code == 404
    other = make_job(kind=Job.Kind.GENERATE, queue="generate")
    refused = client.get(f"/api/admin/jobs/{other.pk}/download/")
    assert refused.status_code == 409 and "only exports" in refused.json()["detail"]
    queued = make_job(kind=Job.Kind.EXPORT, queue="export", params={"format": "trl", "rounds": [1]})
    refused = client.get(f"/api/admin/jobs/{queued.pk}/download/")
    assert refused.status_code == 409 and "once it has succeeded" in refused.json()["detail"]
    job = finished_export(settings, tmp_path, annotator)
    for path in sorted(Path(job.result["out"]).rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    refused = client.get(f"/api/admin/jobs/{job.pk}/download/")
    assert refused.status_code == 409 and "no longer" in refused.json()["detail"]
