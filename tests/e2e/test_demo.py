"""`make demo`'s launcher on the embedded default: SQLite, the filesystem broker, a real
worker and gunicorn. No PostgreSQL or Redis setting reaches it."""

from __future__ import annotations

import http.cookiejar
import re
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO, clean_env, free_port

pytestmark = pytest.mark.slow


def read_until(process: subprocess.Popen[str], marker: str, timeout: float) -> list[str]:
    lines: list[str] = []
    done = threading.Event()

    def reader() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("Press Ctrl-C"):
                break
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    done.wait(timeout)
    assert any(marker in line for line in lines), "\n".join(lines)
    return lines


def start_demo(var_dir: Path) -> tuple[subprocess.Popen[str], int]:
    """`manage.py demo` on the embedded default, with its state under `var_dir`."""
    port = free_port()
    process = subprocess.Popen(
        [PYTHON, "manage.py", "demo", "--port", str(port), "--web-workers", "1"],
        cwd=REPO,
        env=clean_env(DEBUG="1", FACTLOOP_VAR_DIR=str(var_dir)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return process, port


def test_demo_serves_the_login_page_and_stops_cleanly(tmp_path: Path) -> None:
    var_dir = tmp_path / "var"
    process, port = start_demo(var_dir)
    try:
        lines = read_until(process, f"FactLoop is running at http://localhost:{port}/", timeout=120)
        output = "\n".join(lines)
        assert output.count("database=sqlite broker=filesystem") == 3
        logins = dict(re.findall(r"^\s+(?:admin|annotator)\s+(\S+) / (\S+)$", output, flags=re.M))
        assert set(logins) == {"admin", "annotator"}
        assert (var_dir / "factloop.sqlite3").exists()
        assert (var_dir / "demo-logins.json").stat().st_mode & 0o077 == 0

        base = f"http://127.0.0.1:{port}"
        jar = http.cookiejar.CookieJar()
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        with browser.open(f"{base}/accounts/login/") as page:
            html = page.read().decode()
        assert "<h1>Log in</h1>" in html
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
        assert token is not None
        form = urllib.parse.urlencode(
            {"username": "annotator", "password": logins["annotator"], "csrfmiddlewaretoken": token.group(1)}
        ).encode()
        request = urllib.request.Request(f"{base}/accounts/login/", data=form, headers={"Referer": f"{base}/"})
        with browser.open(request) as home:
            assert home.url == f"{base}/"
            landing = home.read().decode()
            assert "You are an <strong>annotator</strong>" in landing
        # The demo opened a synthetic round: the annotator gets a task at once (a POST).
        assert "Opened Round 1: " in output
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', landing)
        assert token is not None
        start = urllib.request.Request(
            f"{base}/annotate/",
            data=urllib.parse.urlencode({"csrfmiddlewaretoken": token.group(1)}).encode(),
            headers={"Referer": f"{base}/"},
        )
        with browser.open(start) as work:
            assert re.fullmatch(rf"{base}/annotate/\d+/", work.url)
            assert "Response A" in work.read().decode()
    finally:
        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=60)[0]
    assert process.returncode == 0, rest
    assert "Stopped the web app and the worker." in rest
    # Nothing is left listening.
    time.sleep(0.5)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_demo_logins_are_stable_across_restarts(tmp_path: Path) -> None:
    """The second start reuses the database and prints the same passwords."""
    var_dir = tmp_path / "var"
    outputs = []
    for _ in range(2):
        process, _port = start_demo(var_dir)
        try:
            outputs.append("\n".join(read_until(process, "FactLoop is running", timeout=120)))
        finally:
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=60)
        assert process.returncode == 0
    first, second = (re.findall(r"^\s+(admin|annotator)\s+(\S+ / \S+)$", out, flags=re.M) for out in outputs)
    assert first == second and len(first) == 2


@pytest.mark.django_db
def test_exit_and_summary_go_with_the_loop() -> None:
    from django.core.management import call_command
    from django.core.management.base import CommandError

    for option in ({"exit": True}, {"summary": "/tmp/summary.json"}):
        with pytest.raises(CommandError, match="--exit and --summary go with --loop"):
            call_command("demo", **option)
