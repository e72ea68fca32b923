"""Annotation throughput: N simulated annotators labelling over HTTP, in two styles.

    .venv/bin/python bench/annotate.py [--annotators 1,8,32] [--cycles 200] [--styles two,one]
        [--database-url postgres://postgres@127.0.0.1:5432/factloop_bench] [--workers 3 --threads 8]

For each N and style, a fresh database gets a synthetic round (rank and correct tasks,
overlap k) and N annotators with API tokens; gunicorn serves the app; N client threads
(keep-alive HTTP connections, token auth) each label until `--cycles` submissions or no work
is left. Style `two`: POST /api/assignments/next/, then submit a ranking or a correction (two
round trips a label). Style `one`: each submission asks for the next assignment in its answer
(`?next=1`), as the annotator pages do (one round trip a label). The load generator runs on
the same machine as the server and the database.

Printed per N and style: labels per second, the ratio to the first run and of style one to
style two, p50/p95/p99 latency per label (all its requests), p99 of next and submit, and an
audit of the database: submissions the clients saw acknowledged but the database lacks
(lost), results stored twice for one task and annotator (duplicated), and tasks with more
than k leases plus submissions.

The test suite drives the same harness (tests/annotation/test_queue_concurrency.py) on
PostgreSQL and SQLite and asserts the audit, never the timings.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# What this bench measures: its result is stale once any of these changes (bench/status.py).
MEASURES = (
    "annotation",
    "webapp",
    "bench/annotate.py",
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import results  # noqa: E402

SECRET = "factloop-bench-secret-key-not-for-production-use"
# Persistent connections and server-side binding: what docs/deploy.md ("Production on one machine") recommends.
DEFAULT_DATABASE = "postgres://postgres@127.0.0.1:5432/factloop_bench?conn_max_age=600&server_side_binding=true"


def server_env(database_url: str, var_dir: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every process of a run: production settings on `database_url`."""
    env = dict(base if base is not None else os.environ)
    env.update(
        DATABASE_URL=database_url,
        DEBUG="0",
        SECRET_KEY=SECRET,
        ALLOWED_HOSTS="127.0.0.1,localhost",
        SECURE_COOKIES="0",
        LOG_LEVEL="WARNING",
        FACTLOOP_VAR_DIR=str(var_dir),
        CELERY_BROKER_URL=f"filesystem:///{var_dir / 'broker'}",
        OMP_NUM_THREADS="1",
    )
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


# ---------------------------------------------------------------------------------------
# Database set-up and audit, each in a fresh interpreter with the run's environment


def prepare(
    database_url: str, var_dir: Path, *, annotators: int, scenes: int, overlap: int, base_env: Mapping[str, str] | None
) -> list[str]:
    """(Re)create the database, migrate, open a synthetic round; the annotators' tokens."""
    command = [sys.executable, str(Path(__file__).resolve()), "_prepare", "--annotators", str(annotators)]
    command += ["--scenes", str(scenes), "--overlap", str(overlap)]
    out = subprocess.run(
        command, env=server_env(database_url, var_dir, base_env), capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"prepare failed:\n{out.stdout}\n{out.stderr}")
    tokens: list[str] = json.loads(out.stdout.strip().splitlines()[-1])["tokens"]
    return tokens


def audit(database_url: str, var_dir: Path, base_env: Mapping[str, str] | None = None) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "_audit"],
        env=server_env(database_url, var_dir, base_env),
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"audit failed:\n{out.stdout}\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _recreate_database(url: str) -> None:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme.startswith("sqlite"):
        path = Path(url.split(":///", 1)[1])
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    import psycopg

    name = parsed.path.lstrip("/")
    admin = urllib.parse.urlunsplit(parsed._replace(path="/postgres", query=""))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def _setup_django() -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "webapp.settings"
    import django

    django.setup()


def _prepare_main(args: argparse.Namespace) -> None:
    _recreate_database(os.environ["DATABASE_URL"])
    _setup_django()
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command
    from rest_framework.authtoken.models import Token

    from annotation.rules.roles import ANNOTATORS_GROUP
    from testbed.demo.toy_rounds import build_synthetic_round

    call_command("migrate", verbosity=0)
    build_synthetic_round(scenes=args.scenes, overlap=args.overlap, seed=7)
    group = Group.objects.get(name=ANNOTATORS_GROUP)
    users = User.objects.bulk_create(User(username=f"bench{i:03d}") for i in range(args.annotators))
    group.user_set.add(*users)
    tokens = Token.objects.bulk_create(Token(user=user, key=Token.generate_key()) for user in users)
    print(json.dumps({"tokens": [token.key for token in tokens]}))


def _audit_main() -> None:
    _setup_django()
    from django.db.models import Count, F, Q

    from annotation.models import Assignment, Correction, Judgement, Task

    live = Q(assignments__status__in=[Assignment.Status.LEASED, Assignment.Status.SUBMITTED])
    tasks = Task.objects.annotate(holding=Count("assignments", filter=live))
    over_k = tasks.filter(holding__gt=F("overlap")).count()
    counters_off = tasks.exclude(taken=F("holding")).count()
    pairs = Assignment.objects.values("task_id", "annotator_id").annotate(n=Count("id")).filter(n__gt=1).count()
    stored = list(Judgement.objects.values_list("assignment_id", flat=True))
    stored += list(Correction.objects.values_list("assignment_id", flat=True))
    submitted = Assignment.objects.filter(status=Assignment.Status.SUBMITTED).count()
    slots = sum(Task.objects.values_list("overlap", flat=True))
    print(
        json.dumps(
            {
                "stored": sorted(stored),
                "submitted_assignments": submitted,
                "slots": slots,
                "tasks_over_k": over_k,
                "counters_off": counters_off,
                "task_annotator_repeats": pairs,
            }
        )
    )


# ---------------------------------------------------------------------------------------
# The server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(
    database_url: str, var_dir: Path, *, workers: int, threads: int, base_env: Mapping[str, str] | None = None
) -> Iterator[tuple[str, int]]:
    """gunicorn (gthread workers) on a free port; yields (host, port)."""
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "webapp.wsgi:application", "--bind", f"127.0.0.1:{port}"]
    command += ["--workers", str(workers), "--threads", str(threads), "--worker-class", "gthread"]
    command += ["--log-level", "warning", "--backlog", "256"]
    log = open(var_dir / "gunicorn.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        command, cwd=REPO, env=server_env(database_url, var_dir, base_env), stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/healthz")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not start: {(var_dir / 'gunicorn.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield "127.0.0.1", port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


# ---------------------------------------------------------------------------------------
# The annotators


@dataclass
class ClientLog:
    next_ms: list[float] = field(default_factory=list)
    submit_ms: list[float] = field(default_factory=list)
    label_ms: list[float] = field(default_factory=list)  # the requests one label took, end to end
    acknowledged: list[int] = field(default_factory=list)  # assignment ids whose submission got 200/201
    # What each task shown was, as the client can tell: its kind and candidate ids.
    seen_tasks: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    retries: int = 0  # requests sent again after a server error or a lost connection
    # (monotonic time, step, milliseconds) of every timed request: per-minute figures of a soak.
    timeline: list[tuple[float, str, float]] = field(default_factory=list)


@dataclass
class LoadResult:
    annotators: int
    seconds: float
    logs: list[ClientLog]

    @property
    def acknowledged(self) -> list[int]:
        return [a for log in self.logs for a in log.acknowledged]

    @property
    def errors(self) -> list[str]:
        return [e for log in self.logs for e in log.errors]

    def latencies(self, step: str) -> list[float]:
        return sorted(ms for log in self.logs for ms in getattr(log, f"{step}_ms"))


@dataclass(frozen=True)
class Load:
    """How each simulated annotator behaves."""

    cycles: int
    think_ms: float = 0
    skip_rate: float = 0
    # Requests sent again after a 5xx or a lost connection (0: the first failure is an
    # error). Safe: a repeated `next` returns the live lease, a repeated submission the
    # stored result.
    retries: int = 0
    # Stop starting new cycles after this many seconds (None: after `cycles`).
    duration: float | None = None
    # "two": POST next, then submit (two round trips a label); "one": the submission asks
    # for the next assignment in its answer (?next=1), one round trip a label.
    style: str = "two"


TRANSIENT = (OSError, http.client.HTTPException)


def _carried(result: Any, status: int, query: str) -> Any:
    """The next assignment an answer carried (one-round-trip style): the work, None to ask
    for it (two-round-trip style, or an answer without it), or False when none is left."""
    if not query or status not in (200, 201) or not isinstance(result, dict) or "next" not in result:
        return None
    return result["next"] if result["next"] is not None else False


def _annotator(host: str, port: int, token: str, load: Load, log: ClientLog, start: threading.Barrier) -> None:
    rng = random.Random(token)
    connection = http.client.HTTPConnection(host, port, timeout=60)
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}

    def post(path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        nonlocal connection
        for attempt in range(load.retries + 1):
            try:
                connection.request("POST", path, body=json.dumps(body or {}), headers=headers)
                response = connection.getresponse()
                raw = response.read()
                if response.status < 500 or attempt == load.retries:
                    return response.status, (json.loads(raw) if raw else None)
            except TRANSIENT:
                if attempt == load.retries:
                    raise
                connection.close()
                connection = http.client.HTTPConnection(host, port, timeout=60)
            log.retries += 1
            time.sleep(min(2.0, 0.05 * 2**attempt))
        raise AssertionError("unreachable")

    # Warm-up, untimed: the connection, and the server threads' database connections.
    for _ in range(3):
        connection.request("GET", "/api/me/", headers=headers)
        connection.getresponse().read()
    start.wait()
    deadline = None if load.duration is None else time.monotonic() + load.duration
    work: Any = None  # the next assignment, when the last answer carried it
    for cycle in range(load.cycles):
        if deadline is not None and time.monotonic() >= deadline:
            break
        # The last label asks for no next one: a lease nobody will use would hold its slot.
        query = "?next=1" if load.style == "one" and cycle < load.cycles - 1 else ""
        if load.think_ms:
            time.sleep(rng.uniform(0.5, 1.5) * load.think_ms / 1000)
        label_began = began = time.perf_counter()
        if work is None:
            try:
                status, work = post("/api/assignments/next/")
            except TRANSIENT as error:
                log.errors.append(f"next: {error!r}")
                break
            log.next_ms.append((time.perf_counter() - began) * 1000)
            log.timeline.append((time.monotonic(), "next", log.next_ms[-1]))
            if status == 204:
                break
            if status != 200:
                log.errors.append(f"next: {status} {work}")
                break
        log.seen_tasks.append((work["kind"], tuple(sorted(c["id"] for c in work["candidates"]))))
        if load.skip_rate and rng.random() < load.skip_rate:
            status, result = post(f"/api/assignments/{work['id']}/skip/{query}")
            if status == 200:
                log.skipped.append(work["id"])
            else:
                log.errors.append(f"skip: {status} {result}")
            work = _carried(result, status, query)
            if work is False:
                break
            continue
        if work["kind"] == "rank":
            action, body = "judgement", {"ranking": [c["id"] for c in reversed(work["candidates"])]}
        else:
            action, body = "correction", {"corrected": work["candidates"][0]["text"] + " Nothing else is there."}
        began = time.perf_counter()
        try:
            status, result = post(f"/api/assignments/{work['id']}/{action}/{query}", body | {"time_spent_ms": 1000})
        except TRANSIENT as error:
            log.errors.append(f"{action}: {error!r}")
            break
        now = time.perf_counter()
        log.submit_ms.append((now - began) * 1000)
        log.label_ms.append((now - label_began) * 1000)
        log.timeline.append((time.monotonic(), "submit", log.submit_ms[-1]))
        if status in (200, 201):
            log.acknowledged.append(work["id"])
        else:
            log.errors.append(f"{action}: {status} {result}")
        work = _carried(result, status, query)
        if work is False:
            break
    connection.close()


def drive(
    host: str,
    port: int,
    tokens: list[str],
    cycles: int,
    think_ms: float = 0,
    skip_rate: float = 0,
    *,
    retries: int = 0,
    duration: float | None = None,
    style: str = "two",
) -> LoadResult:
    """One thread per annotator, all starting together; each does up to `cycles` cycles
    (or until `duration` seconds), pausing about `think_ms` before each (0: back to back,
    the most load N annotators can make), skipping instead of submitting at `skip_rate`,
    and retrying a failed request up to `retries` times; `style` is Load's."""
    load = Load(cycles, think_ms, skip_rate, retries, duration, style)
    logs = [ClientLog() for _ in tokens]
    start = threading.Barrier(len(tokens) + 1)
    threads = [
        threading.Thread(target=_annotator, args=(host, port, token, load, log, start), daemon=True)
        for token, log in zip(tokens, logs, strict=True)
    ]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return LoadResult(len(tokens), time.perf_counter() - began, logs)


def losses(result: LoadResult, audited: Mapping[str, Any]) -> dict[str, int]:
    """What the database lost or doubled compared with what the clients were told."""
    acknowledged = result.acknowledged
    stored = audited["stored"]
    return {
        "lost": len(set(acknowledged) - set(stored)),
        "duplicated": (len(stored) - len(set(stored))) + audited["task_annotator_repeats"],
        "acknowledged_twice": len(acknowledged) - len(set(acknowledged)),
        "unacknowledged_stored": len(set(stored) - set(acknowledged)),
    }


def percentile(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotators", default="1,8,32", help="comma-separated annotator counts")
    parser.add_argument("--cycles", type=int, default=200, help="labels per annotator")
    parser.add_argument("--overlap", type=int, default=3, help="annotators per task (k)")
    parser.add_argument(
        "--think-ms", type=float, default=0, help="pause of each annotator before each cycle (default 0: back to back)"
    )
    parser.add_argument(
        "--styles",
        default="two,one",
        help="two: next, then submit; one: the submission's answer carries the next assignment (?next=1)",
    )
    parser.add_argument("--database-url", default=DEFAULT_DATABASE, help="dropped and re-created for each run")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=16, help="threads per gunicorn worker")
    parser.add_argument("--var-dir", type=Path, default=REPO / "var" / "bench-annotate")
    parser.add_argument("--json", type=Path, default=results.default_path("annotate"), help="raw rows (JSON)")
    results.add_arguments(parser)
    args = parser.parse_args()
    results.begin(args)
    counts = [int(n) for n in args.annotators.split(",")]
    styles = args.styles.split(",")
    if not set(styles) <= {"one", "two"}:
        parser.error("--styles takes one and two")
    args.var_dir.mkdir(parents=True, exist_ok=True)

    rows = []
    for n in counts:
        for style in styles:
            # Enough work that nobody runs dry: each scene gives 6 tasks (2 rank, 4 correct).
            scenes = max(10, (n * args.cycles) // (6 * args.overlap) * 12 // 10 + 5)
            tokens = prepare(
                args.database_url, args.var_dir, annotators=n, scenes=scenes, overlap=args.overlap, base_env=None
            )
            with serve(args.database_url, args.var_dir, workers=args.workers, threads=args.threads) as (host, port):
                result = drive(host, port, tokens, args.cycles, args.think_ms, style=style)
            audited = audit(args.database_url, args.var_dir)
            lost = losses(result, audited)
            annotations = len(result.acknowledged)
            rows.append((n, style, annotations, annotations / result.seconds, result, audited, lost))
            print(f"{n} annotators, {style}: {annotations} labels in {result.seconds:.1f} s", file=sys.stderr)

    rate_of = {(n, style): rate for n, style, _, rate, *_ in rows}
    base_rate = rows[0][3]
    print(
        f"gunicorn {args.workers} workers x {args.threads} threads, k={args.overlap}, think {args.think_ms:g} ms, "
        f"{args.database_url}"
    )
    print("annot. style labels/s  x1  one/two   label p50/p95/p99 ms     next p99  submit p99   lost dup over-k errors")
    raw = []
    for n, style, annotations, rate, result, audited, lost in rows:
        label, nxt, sub = result.latencies("label"), result.latencies("next"), result.latencies("submit")
        two = rate_of.get((n, "two"))
        versus = rate / two if two and style == "one" else None
        print(
            f"{n:>6} {style:>5} {rate:>8.1f} {rate / base_rate:>4.1f} {f'{versus:.2f}' if versus else '':>7}   "
            f"{percentile(label, 0.5):>6.1f} {percentile(label, 0.95):>6.1f} {percentile(label, 0.99):>6.1f}    "
            f"{percentile(nxt, 0.99):>8.1f} {percentile(sub, 0.99):>10.1f}   "
            f"{lost['lost']:>4} {lost['duplicated']:>3} {audited['tasks_over_k']:>6} {len(result.errors):>6}"
        )
        raw.append(
            {
                "annotators": n,
                "style": style,
                "annotations": annotations,
                "per_second": rate,
                "ratio_to_one": rate / base_rate,
                "one_over_two": versus,
                "label_ms": {q: percentile(label, q / 100) for q in (50, 95, 99)},
                "next_ms": {q: percentile(nxt, q / 100) for q in (50, 95, 99)},
                "submit_ms": {q: percentile(sub, q / 100) for q in (50, 95, 99)},
                **lost,
                "tasks_over_k": audited["tasks_over_k"],
                "errors": len(result.errors),
            }
        )
    for *_, result, _, _ in rows:
        for error in result.errors[:5]:
            print("error:", error)
    settings = {
        "workers": args.workers,
        "threads": args.threads,
        "overlap": args.overlap,
        "think_ms": args.think_ms,
        "styles": styles,
    }
    results.write(args.json, {"settings": settings, "rows": raw})


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_prepare":
        sub = argparse.ArgumentParser()
        sub.add_argument("_prepare")
        sub.add_argument("--annotators", type=int, required=True)
        sub.add_argument("--scenes", type=int, required=True)
        sub.add_argument("--overlap", type=int, required=True)
        _prepare_main(sub.parse_args())
    elif len(sys.argv) > 1 and sys.argv[1] == "_audit":
        _audit_main()
    else:
        main()
