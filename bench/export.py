"""Export throughput and memory: rows per second and peak memory at growing row counts.

    .venv/bin/python bench/export.py [--rows 100000,1000000] [--database-url postgres://...]

For each count N, a fresh PostgreSQL database gets N synthetic submitted judgements (one
round, N ranking tasks of two candidates, written with INSERT ... SELECT generate_series),
then the `factloop` export runs in this process. Printed per N: rows, seconds, rows per
second, the peak resident memory the export added over the loaded app, and the output size, and the
ratios against the smallest N: rows/s should stay about level and peak memory flat, since the
export streams keyset-paginated chunks.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# What this bench measures: its result is stale once any of these changes (bench/status.py).
MEASURES = (
    "annotation/data",
    "contract/export.py",
    "bench/export.py",
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import results as bench_results  # noqa: E402
from bench.annotate import SECRET, _recreate_database  # noqa: E402

DEFAULT_DATABASE = "postgres://postgres@127.0.0.1:5432/factloop_bench_export"

FILL = """
INSERT INTO annotation_prompt (image_id, text, context, split, meta, created_at)
SELECT %(image)s, 'Describe the image. (' || g || ')', '[]', 'train', '{}', now() FROM generate_series(1, %(n)s) g;
INSERT INTO annotation_round (number, status, policy_version, candidates_per_prompt, sampling, task_kinds, overlap,
  gold_rate, open_when_ready, ai_labeller, selection, identical_rankings, task_report, created_at)
VALUES (1, 'open', 'bench', 2, '{}', '["rank"]', 1, 0, false, '', 'all', 'convert', '{}', now());
INSERT INTO annotation_task (round_id, prompt_id, kind, overlap, taken, is_gold, gold_answer, origin, created_at,
  in_open_round)
SELECT r.id, p.id, 'rank', 1, 1, false, '{}', '{}', now(), true FROM annotation_round r, annotation_prompt p;
INSERT INTO annotation_candidate (round_id, prompt_id, index, text, model_version, params, created_at)
SELECT t.round_id, t.prompt_id, i, 'Candidate ' || i || ': a small red ball is at the top.', 'bench', '{}', now()
FROM annotation_task t, generate_series(0, 1) i;
INSERT INTO annotation_taskcandidate (task_id, candidate_id, position)
SELECT t.id, c.id, c.index FROM annotation_task t
JOIN annotation_candidate c ON c.prompt_id = t.prompt_id AND c.round_id = t.round_id;
-- Statistics before the joins below: on a fresh database the planner takes the tables for
-- empty and nests index scans quadratically (minutes at 40,000 tasks).
ANALYZE;
"""

FILL_FAST = """
INSERT INTO annotation_assignment (task_id, annotator_id, status, leased_at, expires_at, finished_at)
SELECT id, %(user)s, 'submitted', now(), now(), now() FROM annotation_task;
INSERT INTO annotation_judgement (assignment_id, ranking, preferred_id, rejected_id, hallucination_tie, tiers,
  hallucinated, rejected_hallucinates, rationale, time_spent_ms, created_at)
SELECT a.id, jsonb_build_array(c0.id, c1.id), c0.id, c1.id, false,
  jsonb_build_array(jsonb_build_array(c0.id), jsonb_build_array(c1.id)), jsonb_build_array(c1.id), true, '', 1000, now()
FROM annotation_assignment a
JOIN annotation_taskcandidate s0 ON s0.task_id = a.task_id AND s0.position = 0
JOIN annotation_taskcandidate s1 ON s1.task_id = a.task_id AND s1.position = 1
JOIN annotation_candidate c0 ON c0.id = s0.candidate_id
JOIN annotation_candidate c1 ON c1.id = s1.candidate_id;
ANALYZE;
"""


def fill(n: int) -> None:
    """In a fresh interpreter on the run's database: migrate, then N judgements."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "webapp.settings"
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection

    from annotation.data.images import add_image
    from tests.factories import png_bytes

    call_command("migrate", verbosity=0)
    image = add_image(png_bytes())
    user = User.objects.create(username="bench")
    with connection.cursor() as cursor:
        insert_judgements(cursor, image.pk, user.pk, n)


def insert_judgements(cursor: Any, image_id: int, user_id: int, n: int) -> None:
    """Round 1 with N ranking tasks of two candidates, each judged by the user (PostgreSQL;
    the tests use it for an export big enough to kill mid-way)."""
    cursor.execute(FILL, {"image": image_id, "n": n})
    cursor.execute(FILL_FAST, {"user": user_id})


def export_once(out: Path) -> tuple[int, float, int]:
    os.environ["DJANGO_SETTINGS_MODULE"] = "webapp.settings"
    import django

    django.setup()
    from annotation.data.exporters import export

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    began = time.perf_counter()
    counts = export("factloop", [1], out)
    seconds = time.perf_counter() - began
    # Peak resident memory the export added over the loaded app (Linux reports KiB).
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    return counts["ranking"], seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="100000,1000000")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE)
    parser.add_argument("--json", type=Path, default=bench_results.default_path("export"), help="raw rows (JSON)")
    bench_results.add_arguments(parser)
    args = parser.parse_args()
    bench_results.begin(args)
    results = []
    for n in (int(x) for x in args.rows.split(",")):
        var = Path(tempfile.mkdtemp(prefix="factloop-bench-export-"))
        env = dict(os.environ)
        env.update(
            DATABASE_URL=args.database_url,
            DEBUG="0",
            SECRET_KEY=SECRET,
            ALLOWED_HOSTS="localhost",
            FACTLOOP_VAR_DIR=str(var),
            LOG_LEVEL="WARNING",
        )
        _recreate_database(args.database_url)
        began = time.perf_counter()
        subprocess.run([sys.executable, __file__, "_fill", str(n)], env=env, check=True)
        print(f"{n} judgements written in {time.perf_counter() - began:.0f} s", file=sys.stderr)
        out = subprocess.run(
            [sys.executable, __file__, "_export", str(var / "export")],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        rows, seconds, peak = int(out[0]), float(out[1]), int(out[2])
        size = (var / "export" / "labels.jsonl").stat().st_size
        results.append((n, rows, seconds, peak, size))
    base = results[0]
    print("rows       seconds  rows/s   +RSS MiB  output MiB  rows/s ratio  +RSS ratio")
    for _, rows, seconds, peak, size in results:
        print(
            f"{rows:>9} {seconds:>9.1f} {rows / seconds:>8.0f} {peak / 2**20:>9.1f} {size / 2**20:>11.1f}"
            f" {(rows / seconds) / (base[1] / base[2]):>13.2f} {peak / base[3]:>11.2f}"
        )
    keys = ("requested", "rows", "seconds", "peak_rss_bytes", "output_bytes")
    bench_results.write(args.json, {"rows": [dict(zip(keys, row, strict=True)) for row in results]})


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_fill":
        fill(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_export":
        rows, seconds, peak = export_once(Path(sys.argv[2]))
        print(rows, seconds, peak)
    else:
        main()
