"""A real worker killed with SIGKILL in the middle of a job, on each queue: restarted, it
takes the job back and finishes it, with nothing lost, done twice or left half-written.

The worker runs as the demo runs it (webapp.celery.worker_command) on the suite's
PostgreSQL and Redis; the kill comes once the job has reported progress, so it lands mid-way.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.db.models import Count

from annotation.data.exporters import queue_export
from annotation.jobs import lifecycle as jobs
from annotation.loop.generation import queue_generation
from annotation.models import Candidate, Job, Round, TrainingRun
from models.registry import Registry
from tests.factories import make_generation_round
from tests.workers import Worker, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def kill_mid_job(worker: Worker, job: Job, *, group: bool = True, ready: Callable[[], bool] | None = None) -> None:
    def started() -> bool:
        row = Job.objects.get(pk=job.pk)
        return row.status == Job.Status.RUNNING and row.progress_done > 0 and (ready is None or ready())

    wait_until(started, 300, f"job {job.pk} did not report progress", worker.log)
    worker.kill(group=group)
    assert Job.objects.get(pk=job.pk).status == Job.Status.RUNNING  # the dead worker left it so


def finished(worker: Worker, job: Job, timeout: float) -> Job:
    done = lambda: Job.objects.get(pk=job.pk).status in Job.FINISHED  # noqa: E731
    wait_until(done, timeout, f"job {job.pk} did not finish", worker.log)
    row = Job.objects.get(pk=job.pk)
    assert row.status == Job.Status.SUCCEEDED, (row.error, worker.log.read_text()[-3000:])
    assert row.attempts == 2 and [e["event"] for e in row.history] == ["requeued"]
    assert "restarted" in row.history[0]["reason"]
    return row


def test_an_export_killed_mid_way_is_written_whole_after_a_restart(worker: Worker, admin_user: User) -> None:
    from bench.export import insert_judgements
    from tests.factories import make_image

    with connection.cursor() as cursor:
        insert_judgements(cursor, make_image().pk, admin_user.pk, 40_000)
    worker.start()
    job = queue_export(fmt="factloop", rounds=[1])
    exports = Path(worker.env["FACTLOOP_EXPORT_DIR"])
    kill_mid_job(worker, job)
    assert [p.name for p in exports.iterdir() if ".partial-" in p.name]  # the dead writer's staging folder
    worker.start()
    row = finished(worker, job, 300)
    out = Path(row.result["out"])
    assert row.result["ranking"] == 40_000 == sum(1 for _ in (out / "labels.jsonl").open())
    assert [p.name for p in exports.iterdir()] == [out.name]  # no staging folder left


@pytest.mark.serving
def test_a_generation_killed_mid_way_fills_the_round_once_after_a_restart(
    worker: Worker, vllm_server: Any, base_policy: Path
) -> None:
    Registry(worker.env["FACTLOOP_MODEL_DIR"]).register("tiny-base", base_model=str(base_policy))
    worker.env["FACTLOOP_VLLM_URL"] = vllm_server.url
    sampling = {"temperature": 1.0, "max_tokens": 24}
    round_ = make_generation_round("tiny-base", prompts=150, k=2, seed=31, prefix="kill", sampling=sampling)
    worker.start()
    job = queue_generation(round_)
    kill_mid_job(worker, job)
    partial = Candidate.objects.filter(round=round_).count()
    assert 0 < partial < 300
    worker.start()
    finished(worker, job, 600)
    per_prompt = Candidate.objects.filter(round=round_).values("prompt_id").annotate(n=Count("pk"))
    assert sorted({row["n"] for row in per_prompt}) == [2] and len(per_prompt) == 150


@pytest.mark.serving
@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "accelerate-2-processes"])
def test_a_training_job_whose_worker_is_killed_resumes_at_its_step_and_its_trainer_dies_too(
    processes: int, worker: Worker, vllm_server: Any, base_policy: Path, annotator: User, settings: Any
) -> None:
    """Only the worker process is killed (kill -9 PID): its trainer child goes with it
    (rlhf.cli --parent-pid), so the resumed run never races an orphan. Under accelerate
    launch the launcher dies with the worker and every rank with the launcher
    (contract/launch.py), and the resumed run launches again the same way."""
    from annotation.loop.training import Options, begin
    from tests.annotation.test_train_round import TOY_CONFIG, labelled_round

    Registry(worker.env["FACTLOOP_MODEL_DIR"]).register("tiny-base", base_model=str(base_policy))
    worker.env.update(FACTLOOP_VLLM_URL=vllm_server.url, FACTLOOP_EVAL_ITEMS="24")
    settings.FACTLOOP_EVAL_ITEMS = 24
    round_ = labelled_round(annotator, "tiny-base")
    run = begin(
        round_,
        Options(
            method="ddpo",
            config=TOY_CONFIG,
            overrides=["epochs=1"],
            eval_items=24,
            launcher="accelerate" if processes > 1 else "none",
            num_processes=processes,
        ),
        resume=False,
    )
    worker.start()
    job = jobs.enqueue_job(Job.Kind.TRAIN, queue="train", params={"run_id": run.pk})
    log = Path(run.work_dir) / "train.log"

    def training() -> bool:
        steps = TrainingRun.objects.get(pk=run.pk).steps
        running = steps.get("train", {}).get("status") == "running" and log.exists() and "rlhf.cli" in log.read_text()
        # Under accelerate: once the ranks run (each has its own --parent-pid command line).
        return running and _processes().count("-m rlhf.cli --parent-pid") >= processes + (processes > 1)  # + launcher

    kill_mid_job(worker, job, group=False, ready=training)
    trainer = f"--parent-pid {worker.process.pid if worker.process else 0}"
    wait_until(lambda: trainer not in _processes(), 30, "the trainer outlived its worker", worker.log)
    worker.start()
    finished(worker, job, 900)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED and run.version
    assert [v.name for v in Registry(worker.env["FACTLOOP_MODEL_DIR"]) if v.name.startswith("round-")] == [run.version]
    assert Round.objects.filter(number=round_.number + 1).count() == 1


def _processes() -> str:
    return subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout  # whole lines


def test_an_import_shows_progress_while_it_writes_and_a_killed_one_is_retried_whole(
    worker: Worker, admin_user: User
) -> None:
    """The import writes in one transaction; its progress still moves (the heartbeat writes
    it) while nothing is visible yet. Killed there, it rolls back whole and is not resumed
    (a rerun of a committed label import would add a second round): it fails with the
    reason, keeps its upload, and a retry imports every row once."""
    import io
    import json
    import zipfile

    from django.core.files.uploadedfile import SimpleUploadedFile

    from annotation.data import archives
    from annotation.models import Prompt
    from tests.factories import png_bytes

    rows = 1500
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        lines = []
        for n in range(rows):
            archive.writestr(f"images/{n}.png", png_bytes((n % 256, n // 256, 7)))
            lines.append(json.dumps({"image": f"images/{n}.png", "prompt": f"Describe picture {n}."}))
        archive.writestr("prompts.jsonl", "\n".join(lines))
    worker.env["FACTLOOP_JOB_HEARTBEAT_SECONDS"] = "1"
    upload = SimpleUploadedFile("prompts.zip", buffer.getvalue(), content_type="application/zip")
    job = archives.queue_import(upload, "prompts", created_by=admin_user)
    worker.start()
    writing = lambda: rows < Job.objects.get(pk=job.pk).progress_done < 2 * rows  # noqa: E731
    wait_until(writing, 300, "no progress while writing", worker.log)
    assert Prompt.objects.count() == 0  # its transaction is still open
    worker.kill()
    worker.start()  # its start-up sweep takes back what the dead process held
    lost = lambda: Job.objects.get(pk=job.pk).status == Job.Status.FAILED  # noqa: E731
    wait_until(lost, 120, "the lost import was not failed", worker.log)
    assert "retry it from the admin" in Job.objects.get(pk=job.pk).error
    assert Prompt.objects.count() == 0 and len(list(archives.upload_dir().iterdir())) == 1
    jobs.retry(job.pk)
    done = lambda: Job.objects.get(pk=job.pk).status in Job.FINISHED  # noqa: E731
    wait_until(done, 300, "the retried import did not finish", worker.log)
    row = Job.objects.get(pk=job.pk)
    assert row.status == Job.Status.SUCCEEDED, row.error
    assert [e["event"] for e in row.history] == ["failed", "retried"]
    assert row.result["prompts"] == rows == Prompt.objects.count() and (row.progress_done, row.progress_total) == (
        2 * rows,
        2 * rows,
    )
    assert not list(archives.upload_dir().iterdir())
