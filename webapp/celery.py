"""The Celery app. Three queues, one per kind of work, so a deployment can give each its own
workers: `generate` (candidate responses from the serving model, many short requests),
`train` (one long job at a time, on the machine with the accelerator) and `export`
(dataset files). The worker of the demo consumes all three.

Configuration comes from Django settings (the CELERY_* names in webapp/settings.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_init
from kombu import Exchange, Queue

from webapp.broker import register as register_filesystem_transport

# The one place outside settings.py that touches the environment: it tells Django which
# settings module to load, as manage.py and wsgi.py do.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

QUEUES = ("generate", "train", "export")

# The embedded broker writes each message whole before a worker can see it (webapp/broker.py).
register_filesystem_transport()

app = Celery("factloop")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES]
# A task that names no queue is a mistake: route it where it does least harm (short jobs).
app.conf.task_default_queue = "generate"
app.autodiscover_tasks(["annotation.worker"])


def worker_command(
    python: str,
    queues: tuple[str, ...] = QUEUES,
    *,
    beat_schedule: Path | None = None,
    loglevel: str = "INFO",
    name: str | None = None,
) -> list[str]:
    """The command line of one worker process (the solo pool: one job at a time) consuming
    `queues`. With `beat_schedule`, the worker also runs Celery beat (the job sweeper's
    timer), keeping beat's state in that file: right for a single-worker deployment such
    as the demo; larger ones run `celery -A webapp beat` once, beside the workers.

    Every worker on a host needs a name of its own (`name`, by default its queues, then
    @ and the host): a worker starting up takes back the running jobs recorded under its
    name, as its dead predecessor's (annotation.jobs.lifecycle.sweep)."""
    node = f"{name or '-'.join(queues)}@%h"
    command = [python, "-m", "celery", "-A", "webapp", "worker", "-n", node, "-Q", ",".join(queues), "--pool", "solo"]
    command += ["--without-gossip", "--without-mingle", "--loglevel", loglevel]
    if beat_schedule is not None:
        command += ["--beat", "--schedule", str(beat_schedule)]
    return command


def ensure_broker_folders() -> None:
    """The embedded filesystem broker needs its folders before the first message."""
    from django.conf import settings

    folder = settings.FACTLOOP_BROKER_FOLDER
    if folder is None:
        return
    for key in ("data_folder_in", "data_folder_out", "control_folder"):
        os.makedirs(settings.CELERY_BROKER_TRANSPORT_OPTIONS[key], exist_ok=True)


@worker_init.connect
def _prepare_worker(**_: Any) -> None:
    ensure_broker_folders()
