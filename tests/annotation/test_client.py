"""factloop.client against a live server: an admin drives rounds, exports, versions and the
quality report from a script; everyone else is refused; bad input is a 4xx with a reason and
writes nothing."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from annotation.data.images import add_prompt
from annotation.labeling import queue
from annotation.labeling.submissions import submit_judgement
from annotation.models import Job, Round
from annotation.web.authentication import issue_token
from annotation.worker.tasks import export_dataset
from factloop import Client, FactLoopError
from models.registry import Registry
from tests.conftest import PYTHON, REPO, clean_env
from tests.factories import PASSWORD, make_image, make_round

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def loop(live_server: Any, admin_user: User) -> Any:
    with Client(live_server.url, username=admin_user.username, password=PASSWORD) as client:
        yield client


def test_an_admin_drives_rounds_exports_and_versions(
    loop: Client, live_server: Any, annotator: User, settings: Any, tmp_path: Path
) -> None:
    settings.FACTLOOP_MODEL_DIR = str(tmp_path / "models")
    settings.FACTLOOP_EXPORT_DIR = str(tmp_path / "exports")
    Registry(settings.FACTLOOP_MODEL_DIR).register("base", base_model="base")
    labelled = make_round(tasks=2)
    while (lease := queue.next_assignment_for(annotator)) is not None:
        submit_judgement(annotator, lease.pk, ranking=[s.candidate_id for s in lease.task.slots.all()])
    [listed] = loop.rounds()
    assert (listed["number"], listed["status"], listed["labels"], listed["capacity"]) == (1, "open", 2, 2)

    image = make_image()
    for n in range(3):
        add_prompt(image, f"Describe it ({n}).")
    started = loop.start_round(policy_version="base", task_kinds=["correct"], limit=2)
    assert started["round"]["number"] == 2 and started["round"]["prompts"] == 2
    assert started["round"]["status"] == "draft" and started["job"]["kind"] == "generate_candidates"
    assert loop.round(2)["policy_version"] == "base"

    frozen = loop.freeze_round(labelled.number)
    assert frozen["status"] == "frozen"
    with pytest.raises(FactLoopError) as refused:
        loop.freeze_round(labelled.number)
    assert refused.value.status == 409 and "already frozen" in refused.value.message

    job = loop.export("trl", [labelled.number])
    assert job["kind"] == "export_dataset" and job["status"] == "queued"
    export_dataset.apply(args=(job["id"],))  # what the export worker does
    assert loop.job(job["id"])["status"] == "succeeded"
    saved = loop.download(job["id"], tmp_path / "export.zip")
    names = zipfile.ZipFile(io.BytesIO(saved.read_bytes())).namelist()
    assert f"factloop-job-{job['id']}-trl/manifest.json" in names

    quality = loop.quality(labelled.number)
    assert quality["labels"] == 2 and quality["annotators"][0]["annotator"] == annotator.username
    assert [v["name"] for v in loop.versions()] == ["base"]


def test_bad_input_is_refused_with_a_reason_and_writes_nothing(loop: Client, settings: Any, tmp_path: Path) -> None:
    settings.FACTLOOP_MODEL_DIR = str(tmp_path / "models")
    settings.FACTLOOP_EXPORT_DIR = str(tmp_path / "exports")
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"policy_version": "base", "task_kinds": ["dance"]}, 400, "task_kinds"),
        ({"policy_version": "base", "task_kinds": ["correct"]}, 400, "at least one prompt"),
        (
            {"policy_version": "base", "task_kinds": ["correct"], "selection": "disagreement", "human_prompts": 2},
            400,
            "",
        ),
    ]
    for body, code, fragment in cases:
        with pytest.raises(FactLoopError) as refused:
            loop.start_round(**body)
        assert refused.value.status == code and fragment in refused.value.message
    with pytest.raises(FactLoopError) as refused:
        loop.export("trl", [9])
    assert refused.value.status == 400 and "no round 9" in refused.value.message
    with pytest.raises(FactLoopError) as refused:
        loop.train(9)
    assert refused.value.status == 404
    not_zip = tmp_path / "prompts.zip"
    not_zip.write_text("plain text")
    with pytest.raises(FactLoopError) as refused:
        loop.import_archive(not_zip)
    assert refused.value.status == 400 and "not a zip archive" in refused.value.message
    assert not Round.objects.exists() and not Job.objects.exists()


def test_only_admins_may_use_it(live_server: Any, annotator: User, outsider: User) -> None:
    for user in (annotator, outsider):
        with Client(live_server.url, token=issue_token(user).key) as client:
            for call in (client.rounds, client.versions, lambda: client.export("trl", [1]), lambda: client.train(1)):
                with pytest.raises(FactLoopError) as refused:
                    call()
                assert refused.value.status == 403
    with pytest.raises(FactLoopError) as refused:
        Client(live_server.url, username=annotator.username, password="wrong")
    assert refused.value.status in (400, 401)


def test_the_command_line(live_server: Any, admin_user: User) -> None:
    make_round(tasks=1)
    token = issue_token(admin_user).key
    command = [PYTHON, "-m", "factloop", "--url", live_server.url, "--token", token]
    done = subprocess.run([*command, "rounds"], cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [r["number"] for r in json.loads(done.stdout)] == [1]
    refused = subprocess.run(
        [*command, "freeze", "7"], cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 1 and "HTTP 404" in refused.stderr
    missing = subprocess.run(
        [*command, "import", "no-such.zip"], cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 2 and "no file no-such.zip" in missing.stderr and not Job.objects.exists()


@pytest.mark.django_db(transaction=False)
def test_the_client_installs_alone(tmp_path: Path) -> None:
    """`pip install <checkout>` puts the factloop package (and only it) where a notebook imports it."""
    source = tmp_path / "checkout"
    source.mkdir()
    shutil.copy(REPO / "pyproject.toml", source)
    shutil.copytree(REPO / "factloop", source / "factloop", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "site"
    pip = [PYTHON, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "--target", str(target), "."]
    done = subprocess.run(pip, cwd=source, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info")) == ["factloop"]
    probe = "import factloop, sys; print(factloop.__file__); print('django' in sys.modules)"
    shown = subprocess.run(
        [PYTHON, "-c", probe], cwd=tmp_path, env=clean_env(PYTHONPATH=str(target)), capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == [str(target / "factloop" / "__init__.py"), "False"]
