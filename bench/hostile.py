"""What a hostile or unlucky client can make the server spend, replayed against the real
stack (gunicorn gthread on PostgreSQL, Celery workers), each part side by side in one run:

    .venv/bin/python bench/hostile.py [--parts cost,disk,accounts,workers,round_start,claims]
        [--database-url postgres://postgres@127.0.0.1:5432/factloop_bench_hostile]

- cost: server CPU per anonymous `POST /api/auth/token/` whose body is an unterminated JSON
  string of escaped quotes, at 8, 32 and 128 KB, and the ratio 32 KB / 8 KB (the depth check
  was quadratic: 4x the CPU per doubling).
- disk: bytes the server wrote to disk (its processes' write_bytes, TMPDIR on the disk) for
  one anonymous 50 MB multipart upload to the sign-in page with a made-up csrftoken cookie.
- accounts: behind one trusted proxy, an attacker at one address fails the admin's password
  30 times; does the admin then sign in from another address? And one address spraying one
  password over 47 user names: how many tries get a 429?
- workers: two workers on one host (generate and export queues); an export runs on the export
  worker while the generate worker restarts. With names as shipped (`-n QUEUE@%h`) and with
  both under one name (Celery's default celery@host): the export's attempts and history.
- round_start: choosing a new round's prompts among 150,000 (300,000 candidates, 75,000 in
  earlier rounds), the NOT EXISTS query FactLoop runs against the NOT IN it ran before, with
  PostgreSQL's plan of each (the old one is cut off at --statement-timeout).
- claims: one annotator's labels per second over HTTP with none and with 10,000 unfinished
  tasks of frozen rounds older than the open round's (the arms alternate, median of three
  runs each), and the ratio.

Raw rows go to bench/results/hostile.json (bench/results.py). Nothing here is a test; the
tests check each behaviour (tests/webapp/test_request_costs.py, tests/annotation/
test_query_plans.py, tests/annotation/test_job_recovery.py).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# What this bench measures: its result is stale once any of these changes (bench/status.py).
MEASURES = (
    "annotation",
    "webapp",
    "bench/hostile.py",
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import results  # noqa: E402
from bench.annotate import _recreate_database, drive, serve, server_env  # noqa: E402

DEFAULT_DATABASE = "postgres://postgres@127.0.0.1:5432/factloop_bench_hostile"
PARTS = ("cost", "disk", "accounts", "workers", "round_start", "claims")
ADMIN_PASSWORD = "a long admin password 42"


# ---------------------------------------------------------------------------------------
# Helpers: the server's processes, a fresh database, one request


def _children(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = Path(f"/proc/{pid}/task/{task.name}/children")
        if children.exists():
            for child in children.read_text().split():
                found += _children(int(child))
    return found


def _server_pids(port: int) -> list[int]:
    """gunicorn's master (the process bound to 127.0.0.1:`port`) and its workers."""
    masters = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"gunicorn" in command and f"127.0.0.1:{port}".encode() in command:
                masters.append(int(entry.name))
    return sorted({child for pid in masters for child in _children(pid)})


def _cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def _written(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
        total += int(io["write_bytes"]) - int(io["cancelled_write_bytes"])
    return total


def _request(port: int, method: str, path: str, body: bytes = b"", headers: Mapping[str, str] | None = None) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        connection.request(method, path, body=body, headers=dict(headers or {}))
        response = connection.getresponse()
        response.read()
        return int(response.status)
    except (BrokenPipeError, ConnectionResetError):
        return -1  # the server answered and closed before the body was all sent
    finally:
        connection.close()


def _raw_post(port: int, path: str, headers: Mapping[str, str], body: bytes) -> int:
    """POST over a plain socket, reading the answer even when the server answers before the
    body is all sent (and stops reading it)."""
    import socket

    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(head.encode())
        try:
            for start in range(0, len(body), 1 << 20):
                sock.sendall(body[start : start + (1 << 20)])
        except OSError:
            pass  # refused and closed: the answer is already waiting
        answer = b""
        while b"\r\n" not in answer and (chunk := sock.recv(4096)):
            answer += chunk
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else -1


def _django(database_url: str, var_dir: Path, code: str, **extra: str) -> Any:
    """Run `code` (which prints one JSON line last) with Django set up on the run's database."""
    env = server_env(database_url, var_dir) | extra
    script = (
        f"import sys; sys.path.insert(0, {str(REPO)!r})\nfrom bench.annotate import _setup_django\n_setup_django()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script + code], cwd=REPO, env=env, capture_output=True, text=True, timeout=3600
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-4000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fresh(database_url: str, var_dir: Path, extra_code: str = "print('{}')", **extra: str) -> Any:
    _recreate_database(database_url)
    setup = (
        "from django.core.management import call_command\ncall_command('migrate', verbosity=0)\n"
        "from django.contrib.auth.models import User\n"
        f"User.objects.create_superuser('ada', 'ada@example.org', {ADMIN_PASSWORD!r})\n"
    )
    return _django(database_url, var_dir, setup + extra_code, **extra)


# ---------------------------------------------------------------------------------------
# The parts


def part_cost(database_url: str, var_dir: Path, repeats: int) -> dict[str, Any]:
    _fresh(database_url, var_dir)
    rows: dict[str, Any] = {"throttles": "raised out of the way: every body reaches the parser"}
    os.environ.update(FACTLOOP_THROTTLE_ANONYMOUS="1000000/minute", FACTLOOP_THROTTLE_EXPENSIVE="1000000/minute")
    try:
        cpu = _cost(database_url, var_dir, repeats)
    finally:
        for name in ("FACTLOOP_THROTTLE_ANONYMOUS", "FACTLOOP_THROTTLE_EXPENSIVE"):
            os.environ.pop(name, None)
    rows.update(cpu)
    rows["ratio_32KB_to_8KB"] = rows["32KB"]["cpu_ms_per_request"] / max(rows["8KB"]["cpu_ms_per_request"], 1e-9)
    return rows


def _cost(database_url: str, var_dir: Path, repeats: int) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    with serve(database_url, var_dir, workers=1, threads=1) as (_, port):
        pids = _server_pids(port)
        for kb in (8, 32, 128):
            body = b'"' + b'\\"' * (kb * 512)
            statuses = []
            before = _cpu_seconds(pids)
            for _ in range(repeats):
                statuses.append(_request(port, "POST", "/api/auth/token/", body, {"Content-Type": "application/json"}))
            spent = _cpu_seconds(pids) - before
            rows[f"{kb}KB"] = {"cpu_ms_per_request": 1000 * spent / repeats, "statuses": sorted(set(statuses))}
    return rows


def part_disk(database_url: str, var_dir: Path, megabytes: int) -> dict[str, Any]:
    _fresh(database_url, var_dir)
    tmp = var_dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    boundary = "hostileboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body = head + b"\0" * (megabytes * 1024 * 1024) + f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", "Cookie": "csrftoken=" + "a" * 32}
    os.environ["TMPDIR"] = str(tmp)  # serve() passes os.environ on: Django's spool goes to this disk
    try:
        with serve(database_url, var_dir, workers=1, threads=2) as (_, port):
            pids = _server_pids(port)

            def written_by(payload: bytes) -> tuple[int, int]:
                os.sync()
                before = _written(pids)
                status = _raw_post(port, "/accounts/login/", headers, payload)
                os.sync()
                return status, _written(pids) - before

            # A 1 KB form refused the same way: what the request's log line and the like cost.
            small_status, baseline = written_by(head + b"\0" * 1024 + f"\r\n--{boundary}--\r\n".encode())
            status, written = written_by(body)
    finally:
        os.environ.pop("TMPDIR", None)
    return {
        "upload_mb": megabytes,
        "status": status,
        "bytes_written": written,
        "bytes_written_for_a_1KB_refusal": baseline,
        "small_status": small_status,
        "bytes_of_the_upload_written": max(0, written - baseline),
    }


def part_accounts(database_url: str, var_dir: Path) -> dict[str, Any]:
    _fresh(
        database_url,
        var_dir,
        "from django.contrib.auth.models import User\n"
        "User.objects.bulk_create(User(username=f'user{i}') for i in range(47))\nprint('{}')",
    )
    os.environ.update(FACTLOOP_TRUSTED_PROXIES="1", FACTLOOP_THROTTLE_EXPENSIVE="1000/minute")
    try:
        with serve(database_url, var_dir, workers=1, threads=4) as (_, port):

            def sign_in(username: str, password: str, address: str) -> int:
                body = json.dumps({"username": username, "password": password}).encode()
                headers = {"Content-Type": "application/json", "X-Forwarded-For": address}
                return _request(port, "POST", "/api/auth/token/", body, headers)

            attack = [sign_in("ada", f"guess {i}", "203.0.113.66") for i in range(30)]
            owner = sign_in("ada", ADMIN_PASSWORD, "198.51.100.10")
            attacker_right_password = sign_in("ada", ADMIN_PASSWORD, "203.0.113.66")
            spray = [sign_in(f"user{i}", "Summer2026!", "203.0.113.99") for i in range(47)]
    finally:
        for name in ("FACTLOOP_TRUSTED_PROXIES", "FACTLOOP_THROTTLE_EXPENSIVE"):
            os.environ.pop(name, None)
    return {
        "attacker_429s": attack.count(429),
        "attacker_with_the_right_password": attacker_right_password,
        "owner_from_another_address": owner,
        "spray_tries": len(spray),
        "spray_429s": spray.count(429),
        "spray_first_429_at_try": spray.index(429) + 1 if 429 in spray else None,
    }


def part_workers(database_url: str, var_dir: Path, judgements: int) -> dict[str, Any]:
    from webapp.celery import worker_command

    rows = {}
    for naming in ("shipped", "shared"):
        _fresh(
            database_url,
            var_dir,
            "from django.db import connection\nfrom django.contrib.auth.models import User\n"
            "from annotation.data.images import add_image\nfrom bench.export import insert_judgements\n"
            "from tests.factories import png_bytes\n"
            f"cur = connection.cursor(); insert_judgements(cur, add_image(png_bytes()).pk, "
            f"User.objects.get(username='ada').pk, {judgements}); print('{{}}')",
        )
        # A fresh export folder and broker: an earlier run's files and messages name rows of
        # a database recreated since.
        for stale in (var_dir / f"exports-{naming}", var_dir / "broker"):
            shutil.rmtree(stale, ignore_errors=True)
        env = server_env(database_url, var_dir) | {"FACTLOOP_EXPORT_DIR": str(var_dir / f"exports-{naming}")}
        names = (
            {"generate": "generate", "export": "export"}
            if naming == "shipped"
            else {"generate": "celery", "export": "celery"}
        )

        def start(queue: str, names: dict[str, str] = names, env: dict[str, str] = env) -> subprocess.Popen[bytes]:
            command = [*worker_command(sys.executable, (queue,), name=names[queue]), "--without-heartbeat"]
            log = open(var_dir / f"worker-{queue}.log", "ab")  # noqa: SIM115 - the process owns it
            return subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

        export_worker, generate_worker = start("export"), start("generate")
        try:
            job = _django(
                database_url,
                var_dir,
                "from annotation.data.exporters import queue_export\n"
                "print(queue_export(fmt='factloop', rounds=[1]).pk)",
                FACTLOOP_EXPORT_DIR=env["FACTLOOP_EXPORT_DIR"],
            )
            status = _job_status(database_url, var_dir, job)
            deadline = time.monotonic() + 120
            while status["status"] != "running" and time.monotonic() < deadline:
                time.sleep(0.1)
                status = _job_status(database_url, var_dir, job)
            generate_worker.terminate()
            generate_worker.wait(60)
            generate_worker = start("generate")  # its start-up sweep runs now
            time.sleep(5)
            deadline = time.monotonic() + 600
            while status["status"] not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
                time.sleep(0.5)
                status = _job_status(database_url, var_dir, job)
        finally:
            for process in (export_worker, generate_worker):
                process.terminate()
                process.wait(60)
        rows[naming] = {"worker_names": names, "export": status}
    return rows


def _job_status(database_url: str, var_dir: Path, job_id: int) -> dict[str, Any]:
    code = (
        "import json\nfrom annotation.models import Job\n"
        f"j = Job.objects.get(pk={job_id})\n"
        "print(json.dumps({'status': j.status, 'attempts': j.attempts, 'history': [e['event'] for e in j.history],"
        " 'error': j.error[:200]}))"
    )
    result: dict[str, Any] = _django(database_url, var_dir, code)
    return result


ROUND_START = """
import json, time
from django.db import connection
from annotation.rules import selectors
from annotation.models import Candidate, Prompt, Round, RoundPrompt
from annotation.data.images import add_image
from tests.factories import png_bytes
N = {prompts}
image = add_image(png_bytes())
Round.objects.create(number=1, status="frozen", policy_version="old")
with connection.cursor() as cursor:
    cursor.execute("SET statement_timeout = %s", [{timeout} * 1000])
    cursor.execute(
        "INSERT INTO annotation_prompt (image_id, text, context, split, meta, created_at) "
        "SELECT %s, 'p' || g, '[]', 'train', '{{}}', now() FROM generate_series(1, %s) g",
        [image.pk, N],
    )
    cursor.execute(
        "INSERT INTO annotation_roundprompt (round_id, prompt_id, status, error, attempts, updated_at) "
        "SELECT (SELECT id FROM annotation_round), id, 'done', '', 0, now() FROM annotation_prompt WHERE id % 2 = 0"
    )
    cursor.execute(
        "INSERT INTO annotation_candidate (round_id, prompt_id, index, text, model_version, params, created_at) "
        "SELECT (SELECT id FROM annotation_round), p.id, i, 'c', 'old', '{{}}', now() "
        "FROM annotation_prompt p, generate_series(0, 1) i"
    )
    cursor.execute("DELETE FROM annotation_candidate WHERE prompt_id % 4 = 1")
    cursor.execute("ANALYZE")
rows = {{}}
new = selectors.prompts_query("train", only_new=True)
old = Prompt.objects.filter(split="train").order_by("pk").exclude(
    pk__in=RoundPrompt.objects.values("prompt_id")).exclude(pk__in=Candidate.objects.values("prompt_id"))
# PostgreSQL hashes NOT IN's subquery only while it fits in work_mem (4 MB by default); a
# larger subquery (more history, or a smaller work_mem) makes it a subplan run per prompt.
for work_mem in ("4MB", "256kB"):
    for name, query in (("not_exists", new), ("not_in", old)):
        sql, params = query.query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute(f"SET work_mem = '{{work_mem}}'")
            cursor.execute("EXPLAIN " + sql, params)
            plan = "\\n".join(row[0] for row in cursor.fetchall())
            began = time.perf_counter()
            try:
                cursor.execute("SELECT count(*) FROM (" + sql + ") q", params)
                count, seconds = cursor.fetchone()[0], time.perf_counter() - began
            except Exception:
                count, seconds = None, None
            rows[f"{{name}}_work_mem_{{work_mem}}"] = {{
                "seconds": seconds, "prompts_found": count, "timed_out_after": None if seconds else {timeout},
                "anti_join": "Anti Join" in plan, "subplan": "SubPlan" in plan,
                "hashed_subplan": "hashed SubPlan" in plan,
            }}
began = time.perf_counter()
chosen = selectors.prompts_for_a_round("train", only_new=True, limit=1000)
rows["not_exists_first_1000_seconds"] = time.perf_counter() - began
print(json.dumps(rows))
"""


def part_round_start(database_url: str, var_dir: Path, prompts: int, timeout: int) -> dict[str, Any]:
    _fresh(database_url, var_dir)
    rows: dict[str, Any] = _django(database_url, var_dir, ROUND_START.format(prompts=prompts, timeout=timeout))
    rows["prompts"] = prompts
    return rows


CLAIMS_PREPARE = """
import json
from django.contrib.auth.models import Group, User
from django.db import connection
from rest_framework.authtoken.models import Token
from testbed.demo.toy_rounds import build_synthetic_round
from annotation.rules.roles import ANNOTATORS_GROUP
from annotation.labeling.rounds import add_candidates, create_round, freeze_round
from annotation.data.images import add_prompt
from annotation.models import Task
from tests.factories import make_image
leftovers = {leftovers}
if leftovers:
    old = create_round(policy_version="old")
    prompt = add_prompt(make_image((9, 9, 9)), "Describe the image (old).")
    add_candidates(old, prompt, ["a", "b"])
    Task.objects.bulk_create(Task(round=old, prompt=prompt, kind=Task.Kind.RANK) for _ in range(leftovers))
    freeze_round(old)
build_synthetic_round(scenes={scenes}, overlap=1, seed=7)
with connection.cursor() as cursor:
    cursor.execute("ANALYZE")
user = User.objects.create(username="bench000")
Group.objects.get(name=ANNOTATORS_GROUP).user_set.add(user)
print(json.dumps({{"tokens": [Token.objects.create(user=user).key]}}))
"""


def part_claims(database_url: str, var_dir: Path, leftovers: int, cycles: int, repeats: int) -> dict[str, Any]:
    """The two arms alternate `repeats` times (a run lasts half a minute, and the machine's
    other work drifts over minutes); each arm's figure is its median run."""
    runs: dict[int, list[float]] = {0: [], leftovers: []}
    for _ in range(repeats):
        for count in runs:
            prepared = _fresh(database_url, var_dir, CLAIMS_PREPARE.format(leftovers=count, scenes=cycles // 6 + 20))
            with serve(database_url, var_dir, workers=1, threads=4) as (host, port):
                drive(host, port, prepared["tokens"], 20)  # warm up: connections, caches
                result = drive(host, port, prepared["tokens"], cycles)
            runs[count].append(len(result.acknowledged) / result.seconds)
    rows: dict[str, Any] = {
        f"leftovers_{count}": {"labels_per_second_runs": rates, "labels_per_second": statistics.median(rates)}
        for count, rates in runs.items()
    }
    rows["ratio"] = rows[f"leftovers_{leftovers}"]["labels_per_second"] / rows["leftovers_0"]["labels_per_second"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE, help="dropped and re-created for each part")
    parser.add_argument("--repeats", type=int, default=300, help="adversarial requests per body size (cost)")
    parser.add_argument("--upload-mb", type=int, default=50, help="the anonymous upload's size (disk)")
    parser.add_argument("--judgements", type=int, default=150_000, help="rows of the export that runs (workers)")
    parser.add_argument("--prompts", type=int, default=150_000, help="prompts in the database (round_start)")
    parser.add_argument("--statement-timeout", type=int, default=120, help="seconds before a query is cut off")
    parser.add_argument("--leftovers", type=int, default=10_000, help="unfinished tasks of frozen rounds (claims)")
    parser.add_argument("--cycles", type=int, default=600, help="labels the annotator gives per run (claims)")
    parser.add_argument("--claim-runs", type=int, default=3, help="runs of each arm, alternating (claims)")
    parser.add_argument("--var-dir", type=Path, default=REPO / "var" / "bench-hostile")
    parser.add_argument("--json", type=Path, default=results.default_path("hostile"))
    results.add_arguments(parser)
    args = parser.parse_args()
    results.begin(args)
    parts = args.parts.split(",")
    if unknown := set(parts) - set(PARTS):
        parser.error(f"unknown parts {', '.join(sorted(unknown))}")
    args.var_dir.mkdir(parents=True, exist_ok=True)
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "cost": lambda: part_cost(args.database_url, args.var_dir, args.repeats),
        "disk": lambda: part_disk(args.database_url, args.var_dir, args.upload_mb),
        "accounts": lambda: part_accounts(args.database_url, args.var_dir),
        "workers": lambda: part_workers(args.database_url, args.var_dir, args.judgements),
        "round_start": lambda: part_round_start(args.database_url, args.var_dir, args.prompts, args.statement_timeout),
        "claims": lambda: part_claims(args.database_url, args.var_dir, args.leftovers, args.cycles, args.claim_runs),
    }
    measured: dict[str, Any] = {}
    for part in parts:
        began = time.perf_counter()
        measured[part] = runners[part]()
        print(f"{part} ({time.perf_counter() - began:.0f} s): {json.dumps(measured[part])}", file=sys.stderr)
    results.write(args.json, {"parts": measured})
    _print(measured)


def _print(measured: dict[str, Any]) -> None:
    if "cost" in measured:
        cost = measured["cost"]
        sizes = ", ".join(f"{k} {v['cpu_ms_per_request']:.2f} ms" for k, v in cost.items() if isinstance(v, dict))
        print(f"cost: server CPU per adversarial request {sizes}; 32 KB / 8 KB = {cost['ratio_32KB_to_8KB']:.2f}")
    if "disk" in measured:
        disk = measured["disk"]
        print(
            f"disk: anonymous {disk['upload_mb']} MB upload: {disk['status']}, {disk['bytes_written']} bytes written "
            f"({disk['bytes_written_for_a_1KB_refusal']} for a 1 KB refusal: the log line)"
        )
    if "accounts" in measured:
        a = measured["accounts"]
        print(
            f"accounts: attacker got {a['attacker_429s']}/30 429s; owner from another address: "
            f"{a['owner_from_another_address']}; spraying: {a['spray_429s']}/{a['spray_tries']} tries got 429 "
            f"(first at try {a['spray_first_429_at_try']})"
        )
    if "workers" in measured:
        for naming, row in measured["workers"].items():
            e = row["export"]
            print(
                f"workers ({naming} names): the export {e['status']}, attempts {e['attempts']}, history {e['history']}"
            )
    if "round_start" in measured:
        r = measured["round_start"]
        for name in sorted(k for k in r if isinstance(r[k], dict)):
            row = r[name]
            took = (
                f"{row['seconds']:.2f} s" if row["seconds"] is not None else f"> {row['timed_out_after']} s (cut off)"
            )
            print(f"round_start at {r['prompts']} prompts, {name}: {took}, anti-join {row['anti_join']}")
        print(f"round_start: the first 1,000 new prompts in {r['not_exists_first_1000_seconds']:.2f} s")
    if "claims" in measured:
        c = measured["claims"]
        print(f"claims: labels/s with leftovers / without = {c['ratio']:.3f}")


if __name__ == "__main__":
    main()
