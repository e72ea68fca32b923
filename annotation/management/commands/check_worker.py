from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from annotation.jobs import lifecycle as jobs
from annotation.models import Job
from annotation.rules import selectors
from webapp.celery import QUEUES


class Command(BaseCommand):
    help = (
        "Queue a health check on each Celery queue and wait for a worker to run it. "
        "Exits 0 when every queue answered, 1 otherwise."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--queues", default=",".join(QUEUES), help=f"Comma-separated queues to probe (default: {','.join(QUEUES)})."
        )
        parser.add_argument("--timeout", type=float, default=60.0, help="Seconds to wait for the worker (default 60).")

    def handle(self, *args: Any, **options: Any) -> None:
        queues = [name.strip() for name in options["queues"].split(",") if name.strip()]
        unknown = sorted(set(queues) - set(QUEUES))
        if unknown or not queues:
            named = ", ".join(unknown) or "(none given)"
            raise CommandError(f"--queues: unknown queue(s) {named}; expected some of {', '.join(QUEUES)}")
        if options["timeout"] <= 0:
            raise CommandError("--timeout must be positive")

        queued = [jobs.enqueue_job(Job.Kind.HEALTHCHECK, queue=queue) for queue in queues]
        self.stdout.write(
            f"Queued {len(queued)} health check(s); waiting up to {options['timeout']:.0f} s for a worker..."
        )
        rows = selectors.wait_for_jobs([job.pk for job in queued], timeout=options["timeout"])
        for row in rows:
            # A late worker must not run a check nobody waits for any more: fail it now,
            # and the worker's claim on it will find it no longer queued.
            if row.status == Job.Status.QUEUED and Job.fail(
                row.pk, f"no worker answered within {options['timeout']:.0f} s"
            ):
                row.refresh_from_db()
        failed = 0
        for row in rows:
            if row.status == Job.Status.SUCCEEDED:
                self.stdout.write(
                    f"  {row.queue:<9} ok      worker={row.result.get('worker')} database={row.result.get('database')} "
                    f"broker={row.result.get('broker')} ({row.duration_seconds or 0:.2f} s)"
                )
            else:
                failed += 1
                self.stdout.write(f"  {row.queue:<9} {row.status:<7} {row.error}")
        if failed:
            raise CommandError(
                f"{failed} of {len(rows)} queue(s) did not answer: is a worker running with -Q {','.join(queues)}?",
                returncode=1,
            )
        self.stdout.write(self.style.SUCCESS("Every queue answered."))
