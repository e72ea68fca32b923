"""A soak: many annotators for a long while on PostgreSQL, with think times, then an audit.

    .venv/bin/python bench/soak.py [--annotators 64] [--minutes 10] [--think-ms 1000]

The same harness as bench/annotate.py (gunicorn on PostgreSQL, one thread per annotator,
next-then-submit over HTTP with token auth), run for `--minutes` with each annotator pausing
about `--think-ms` (uniform between half and one and a half times it) before each task, and
retrying a request that fails with a 5xx or a lost connection (up to `--retries` times).

Printed: annotations and errors; p50/p95/p99 of each step over the whole run; per minute,
annotations and p99, with the ratios of the last full minute to the first (does it hold
up?); and the audit: submissions the clients saw acknowledged but the database lacks
(lost), results stored twice (duplicated), tasks with more than k leases. The raw figures go
to bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

# What this bench measures: its result is stale once any of these changes (bench/status.py).
MEASURES = (
    "annotation",
    "webapp",
    "bench/soak.py",
    "bench/annotate.py",
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import results  # noqa: E402
from bench.annotate import DEFAULT_DATABASE, audit, drive, losses, percentile, prepare, serve  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotators", type=int, default=64)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--think-ms", type=float, default=1000.0, help="mean pause before each task")
    parser.add_argument("--overlap", type=int, default=3, help="annotators per task (k)")
    parser.add_argument("--retries", type=int, default=5)
    parser.add_argument("--database-url", default=DEFAULT_DATABASE, help="dropped and re-created")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--var-dir", type=Path, default=REPO / "var" / "bench-soak")
    parser.add_argument("--json", type=Path, default=results.default_path("soak"), help="raw figures (JSON)")
    results.add_arguments(parser)
    args = parser.parse_args()
    results.begin(args)
    args.var_dir.mkdir(parents=True, exist_ok=True)

    seconds = args.minutes * 60
    # Work for everyone for the whole run: an annotator finishes at most one task per think
    # time; each scene gives 6 tasks (2 rank, 4 correct) of k slots.
    cycles = int(seconds / (args.think_ms / 1000) * 1.5) + 10
    scenes = args.annotators * cycles // (6 * args.overlap) + 10
    print(f"preparing {scenes} scenes for {args.annotators} annotators...", file=sys.stderr)
    tokens = prepare(
        args.database_url, args.var_dir, annotators=args.annotators, scenes=scenes, overlap=args.overlap, base_env=None
    )
    with serve(args.database_url, args.var_dir, workers=args.workers, threads=args.threads) as (host, port):
        result = drive(host, port, tokens, cycles, args.think_ms, retries=args.retries, duration=seconds)
    audited = audit(args.database_url, args.var_dir)
    lost = losses(result, audited)

    start = min((t for log in result.logs for t, _, _ in log.timeline), default=0.0)
    minutes: dict[int, dict[str, list[float]]] = defaultdict(lambda: {"next": [], "submit": []})
    for log in result.logs:
        for at, step, ms in log.timeline:
            minutes[int((at - start) // 60)][step].append(ms)
    full = [m for m in sorted(minutes) if (m + 1) * 60 <= result.seconds]
    per_minute = [
        {
            "minute": m + 1,
            "annotations": len(minutes[m]["submit"]),
            "submit_p99_ms": percentile(sorted(minutes[m]["submit"]), 0.99),
            "next_p99_ms": percentile(sorted(minutes[m]["next"]), 0.99),
        }
        for m in full
    ]
    nxt, sub = result.latencies("next"), result.latencies("submit")
    summary = {
        "annotators": args.annotators,
        "seconds": result.seconds,
        "think_ms": args.think_ms,
        "annotations": len(result.acknowledged),
        "per_second": len(result.acknowledged) / result.seconds,
        "errors": len(result.errors),
        "retries": sum(log.retries for log in result.logs),
        "next_ms": {q: percentile(nxt, q / 100) for q in (50, 95, 99)},
        "submit_ms": {q: percentile(sub, q / 100) for q in (50, 95, 99)},
        **lost,
        "tasks_over_k": audited["tasks_over_k"],
        "per_minute": per_minute,
    }
    if len(per_minute) >= 2:
        summary["last_over_first_annotations"] = per_minute[-1]["annotations"] / max(1, per_minute[0]["annotations"])
        summary["last_over_first_submit_p99"] = per_minute[-1]["submit_p99_ms"] / per_minute[0]["submit_p99_ms"]

    print(
        f"{args.annotators} annotators, {result.seconds:.0f} s, think ~{args.think_ms:g} ms, "
        f"gunicorn {args.workers}x{args.threads}, {args.database_url}"
    )
    print(
        f"annotations {summary['annotations']} ({summary['per_second']:.1f}/s), errors {summary['errors']}, "
        f"retries {summary['retries']}"
    )
    for step, values in (("next", nxt), ("submit", sub)):
        print(
            f"{step:<7} p50 {percentile(values, 0.5):6.1f} ms  p95 {percentile(values, 0.95):6.1f} ms  "
            f"p99 {percentile(values, 0.99):6.1f} ms"
        )
    print("minute  annotations  submit p99 ms  next p99 ms")
    for row in per_minute:
        print(f"{row['minute']:>6} {row['annotations']:>12} {row['submit_p99_ms']:>14.1f} {row['next_p99_ms']:>12.1f}")
    if "last_over_first_annotations" in summary:
        print(
            f"last/first minute: annotations {summary['last_over_first_annotations']:.2f}, "
            f"submit p99 {summary['last_over_first_submit_p99']:.2f}"
        )
    print(
        f"audit: lost {lost['lost']}, duplicated {lost['duplicated']}, acknowledged twice "
        f"{lost['acknowledged_twice']}, stored unacknowledged {lost['unacknowledged_stored']}, "
        f"tasks over k {audited['tasks_over_k']}"
    )
    for error in result.errors[:10]:
        print("error:", error)
    results.write(args.json, summary)


if __name__ == "__main__":
    main()
