"""A bad day, as tests: PostgreSQL restarted under 32 submitting annotators, vLLM killed in
the middle of a generation job, and the disk filling up during an export. Each ends with
nothing lost, nothing done twice and nothing half-written."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, connections
from django.db.models import Count

from bench.annotate import audit, drive, losses, prepare, serve
from tests.conftest import clean_env, fresh_postgres_database

pytestmark = pytest.mark.slow


def restart_postgresql() -> None:
    """What an operator's `pg_ctlcluster ... restart` does: every connection dropped."""
    clusters = sorted(os.listdir("/etc/postgresql"), key=float) if Path("/etc/postgresql").is_dir() else []
    if not clusters or shutil.which("pg_ctlcluster") is None:
        pytest.skip("PostgreSQL is not a local Debian cluster here (pg_ctlcluster)")
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", clusters[-1], "main", "restart", "-m", "fast"]
    if os.geteuid() != 0:
        command = ["sudo", "-n", *command]
    subprocess.run(command, check=True, capture_output=True, timeout=120)


@pytest.fixture
def fresh_postgres() -> Iterator[str]:
    with fresh_postgres_database("factloop_faults") as url:
        yield url


def test_postgresql_restarted_under_32_annotators_loses_and_doubles_nothing(
    fresh_postgres: str, tmp_path: Path
) -> None:
    """The clients retry what failed (a repeated submission returns the stored result);
    after the restart every acknowledged label is stored exactly once."""
    env = clean_env()
    tokens = prepare(fresh_postgres, tmp_path, annotators=32, scenes=120, overlap=2, base_env=env)
    restarted = threading.Event()

    def restart_soon() -> None:
        time.sleep(3)
        restart_postgresql()
        restarted.set()

    try:
        with serve(fresh_postgres, tmp_path, workers=2, threads=16, base_env=env) as (host, port):
            thread = threading.Thread(target=restart_soon, daemon=True)
            thread.start()
            result = drive(host, port, tokens, 60, think_ms=40, retries=40)
            thread.join(timeout=120)
    finally:
        connections.close_all()  # this process's own connections died with the restart
    assert restarted.is_set(), "the restart came after the load had ended"
    audited = audit(fresh_postgres, tmp_path, base_env=env)
    assert result.errors == []
    assert sum(log.retries for log in result.logs) > 0  # the clients did feel it
    assert losses(result, audited) == {"lost": 0, "duplicated": 0, "acknowledged_twice": 0, "unacknowledged_stored": 0}
    assert audited["tasks_over_k"] == 0 and audited["counters_off"] == 0
    assert audited["submitted_assignments"] == len(result.acknowledged)


@pytest.mark.django_db(transaction=True)
def test_a_full_disk_during_an_export_fails_it_cleanly(tmp_path: Path, settings: Any, admin_user: Any) -> None:
    """A 1 MiB tmpfs as the export folder: the export job fails with the reason, and no
    folder, whole or partial, is left."""
    from annotation.data.exporters import queue_export
    from annotation.models import Job
    from annotation.worker.tasks import export_dataset
    from bench.export import insert_judgements
    from tests.factories import make_image

    if connection.vendor != "postgresql":
        pytest.skip("the export fixture writes PostgreSQL SQL")
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        settings.FACTLOOP_EXPORT_DIR = str(small)
        with connection.cursor() as cursor:
            insert_judgements(cursor, make_image().pk, admin_user.pk, 20_000)  # ~15 MB of JSONL
        job = queue_export(fmt="factloop", rounds=[1])
        export_dataset.apply(args=(job.pk,))
        job.refresh_from_db()
        assert job.status == Job.Status.FAILED and "No space left on device" in job.error
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=False)


PROMPTS = 240


@pytest.mark.serving
@pytest.mark.django_db(transaction=True)
def test_vllm_killed_mid_generation_then_restarted_fills_the_round_once(
    tmp_path: Path, worker: Any, base_policy: Path
) -> None:
    """The job's requests fail while the server is down; the job ends with those prompts
    marked failed. Queued again after vLLM is back, generation fills exactly the missing
    candidates."""
    from django.conf import settings as live

    from annotation.loop.generation import queue_generation
    from annotation.models import Candidate, Job
    from models.registry import Registry
    from models.server import ServerConfig, VLLMServer
    from tests.conftest import free_port
    from tests.factories import make_generation_round
    from tests.workers import wait_until

    config = ServerConfig(
        model=str(base_policy),
        python=str(live.FACTLOOP_SERVING_PYTHON),
        port=free_port(),
        log_path=tmp_path / "vllm.log",
    )
    server = VLLMServer(config)
    server.start()
    try:
        server.wait_healthy(timeout=300)
        Registry(worker.env["FACTLOOP_MODEL_DIR"]).register("tiny-base", base_model=str(base_policy))
        worker.env["FACTLOOP_VLLM_URL"] = server.url
        # Enough work that the kill lands mid-job: on a fast run, 80 prompts were all
        # generated between the first progress report and the kill.
        round_ = make_generation_round(
            "tiny-base", prompts=PROMPTS, k=2, seed=41, prefix="fault", sampling={"max_tokens": 24}
        )
        worker.start()
        job = queue_generation(round_)
        wait_until(lambda: Job.objects.get(pk=job.pk).progress_done > 0, 300, "no progress", worker.log)
        server.kill()  # the whole server at once: its API process, engine and worker
        server.stop()
        wait_until(lambda: Job.objects.get(pk=job.pk).status in Job.FINISHED, 600, "job unfinished", worker.log)
        first = Job.objects.get(pk=job.pk)
        assert first.status == Job.Status.SUCCEEDED and first.result["failed"] > 0, first.result
        server = VLLMServer(config)
        server.start()
        server.wait_healthy(timeout=300)
        # The admin's "generate missing": a new job for the same round fills what failed.
        again = queue_generation(round_)
        wait_until(lambda: Job.objects.get(pk=again.pk).status in Job.FINISHED, 600, "refill unfinished", worker.log)
        refill = Job.objects.get(pk=again.pk)
        assert refill.status == Job.Status.SUCCEEDED and refill.result["failed"] == 0, refill.result
        per_prompt = Candidate.objects.filter(round=round_).values("prompt_id").annotate(n=Count("pk"))
        assert len(per_prompt) == PROMPTS and {row["n"] for row in per_prompt} == {2}
    finally:
        server.stop()
