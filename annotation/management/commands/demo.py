"""`python manage.py demo`: FactLoop on one machine, with nothing to set up.

Migrates the database, makes an admin and an annotator login, opens a synthetic round of
annotation work on a fresh database, starts a real Celery worker
process and the web app (gunicorn), waits until both answer, prints the URL and the logins,
and keeps running until Ctrl-C, when it stops both children.
"""

from __future__ import annotations

import ctypes
import json
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from argparse import ArgumentParser
from pathlib import Path
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from annotation.models import Round
from annotation.services import ensure_user
from annotation.synthetic import build_synthetic_round
from webapp.celery import QUEUES

DEMO_LOGINS = (("admin", "admin"), ("annotator", "annotator"))
DEMO_SCENES = 20


def _die_with_parent() -> None:
    """Children get SIGTERM if the launcher dies without cleaning up (Linux prctl)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:
        pass


class Command(BaseCommand):
    help = "Run FactLoop locally: database, logins, a Celery worker and the web app, until Ctrl-C."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="Address to serve on (default 127.0.0.1).")
        parser.add_argument("--port", type=int, default=8000, help="Port to serve on (default 8000).")
        parser.add_argument("--web-workers", type=int, default=2, help="gunicorn worker processes (default 2).")
        parser.add_argument(
            "--startup-timeout",
            type=float,
            default=90.0,
            help="Seconds to wait for the web app and worker (default 90).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not 0 < options["port"] < 65536:
            raise CommandError("--port must be between 1 and 65535")
        if options["web_workers"] < 1:
            raise CommandError("--web-workers must be at least 1")
        var_dir = Path(settings.VAR_DIR)
        log_dir = var_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)

        self.stdout.write("Migrating the database...")
        call_command("migrate", interactive=False, verbosity=0)
        if not settings.DEBUG:
            call_command("collectstatic", interactive=False, verbosity=0)
        logins = self._ensure_logins(var_dir / "demo-logins.json")
        self._ensure_work()

        self.children: list[subprocess.Popen[bytes]] = []
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            self._start(
                "worker",
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "webapp",
                    "worker",
                    "-Q",
                    ",".join(QUEUES),
                    "--pool",
                    "solo",
                    "--without-gossip",
                    "--without-mingle",
                    "--loglevel",
                    "INFO",
                ],
                log_dir / "worker.log",
            )
            bind = f"{options['host']}:{options['port']}"
            self._start(
                "web",
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "webapp.wsgi",
                    "--bind",
                    bind,
                    "--workers",
                    str(options["web_workers"]),
                    "--access-logfile",
                    str(log_dir / "web-access.log"),
                ],
                log_dir / "web.log",
            )
            host = "localhost" if options["host"] in ("127.0.0.1", "0.0.0.0") else options["host"]
            url = f"http://{host}:{options['port']}/"
            self._wait_for_web(f"http://{bind}/healthz", options["startup_timeout"], log_dir / "web.log")
            call_command("check_worker", timeout=options["startup_timeout"], stdout=self.stdout)

            self.stdout.write("")
            self.stdout.write(self.style.SUCCESS(f"FactLoop is running at {url}"))
            for role, (username, password) in logins.items():
                self.stdout.write(f"  {role:<10} {username} / {password}")
            self.stdout.write(f"  logs in {log_dir}")
            self.stdout.write("Press Ctrl-C to stop.")
            self.stdout.flush()
            self._supervise()
        finally:
            self._stop_children()

    # -- steps -------------------------------------------------------------------------

    def _ensure_work(self) -> None:
        """Until a served policy writes candidates, the demo's annotators get a synthetic
        round of the toy world (once: a restart keeps the database and its labels)."""
        if Round.objects.exists():
            return
        built = build_synthetic_round(scenes=DEMO_SCENES, overlap=2)
        self.stdout.write(f"Opened {built.round}: {built.tasks} synthetic tasks on {built.images} toy-world images.")

    def _ensure_logins(self, path: Path) -> dict[str, tuple[str, str]]:
        """Demo passwords are made once, kept in var/ (mode 0600) and printed at each start."""
        if path.exists():
            stored = json.loads(path.read_text())
        else:
            stored = {role: [username, secrets.token_urlsafe(9)] for role, username in DEMO_LOGINS}
            path.touch(mode=0o600)
            path.write_text(json.dumps(stored, indent=2))
        for role, (username, password) in stored.items():
            ensure_user(username, role=role, password=password)
        return {role: (username, password) for role, (username, password) in stored.items()}

    def _start(self, name: str, argv: list[str], log_path: Path) -> None:
        log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed with the launcher
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        child.name = name  # type: ignore[attr-defined]
        self.children.append(child)
        self.stdout.write(f"Started {name} (pid {child.pid}), log: {log_path}")

    def _wait_for_web(self, url: str, timeout: float, log_path: Path) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_children_alive()
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.3)
        raise CommandError(f"the web app did not answer {url} within {timeout:.0f} s; see {log_path}")

    def _check_children_alive(self) -> None:
        for child in self.children:
            code = child.poll()
            if code is not None:
                raise CommandError(f"the {child.name} process exited with code {code}; see its log in var/logs")  # type: ignore[attr-defined]

    def _supervise(self) -> None:
        while True:
            self._check_children_alive()
            time.sleep(0.5)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    def _stop_children(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in self.children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if self.children:
            self.stdout.write("Stopped the web app and the worker.")
            self.stdout.flush()
