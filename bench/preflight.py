"""The preflight's time and verdict on each family's tiny checkpoint: how long a round's
steps take to refuse or pass on one batch (docs/families.md, "The preflight").

    OMP_NUM_THREADS=1 .venv/bin/python bench/preflight.py [--family TYPE ...] [--method M ...]

For every family of testbed/family_checkpoints.py and every method asked (default: ddpo and
ppo), it runs `python -m rlhf.cli preflight` as a separate process (as train_round does),
timing the whole command (interpreter start and imports included) and keeping each step's
status, time, library and detail, in `bench/results/preflight.json`. It prints a table of
the verdicts and times; `--table FILE.json` prints a kept result as docs/families.md's table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# What this bench measures: its result is stale once any of these changes (bench/status.py).
MEASURES = (
    "rlhf",
    "models",
    "contract",
    "testbed/family_checkpoints.py",
    "bench/preflight.py",
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import results  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", action="append", default=[], help="only this family (model type; repeatable)")
    parser.add_argument("--method", action="append", default=[], help="methods to check (default: ddpo and ppo)")
    parser.add_argument("--json", type=Path, default=results.default_path("preflight"))
    parser.add_argument("--table", type=Path, help="print this kept result as a Markdown table, and run nothing")
    results.add_arguments(parser)
    args = parser.parse_args()
    results.begin(args)
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return 0

    from rlhf.family_matrix import write_pairs
    from testbed.family_checkpoints import FAMILIES, build

    methods = args.method or ["ddpo", "ppo"]
    families = [f for f in FAMILIES if not args.family or f.model_type in args.family]
    rows = []
    with tempfile.TemporaryDirectory(prefix="factloop-bench-preflight-") as work:
        pairs = write_pairs(Path(work) / "pairs")
        for family in families:
            checkpoint = build(family.model_type, Path(work) / family.model_type)
            for method in methods:
                out = Path(work) / f"{family.model_type}-{method}.json"
                command = [sys.executable, "-m", "rlhf.cli", "preflight", "--model", str(checkpoint)]
                command += ["--method", method, "--data", str(pairs), "--out", str(out)]
                began = time.perf_counter()
                done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
                seconds = time.perf_counter() - began
                if not out.is_file():
                    print(done.stderr[-2000:], file=sys.stderr)
                    return 1
                report = json.loads(out.read_text())
                # The report's own "seconds" are its steps'; "command_seconds" the whole process.
                rows.append(
                    {"family": family.name, "model_type": family.model_type, **report, "command_seconds": seconds}
                )
                failed = next((s for s in report["steps"] if s["status"] in ("refused", "failed")), None)
                verdict = "passed" if failed is None else f"{failed['name']} {failed['status']}"
                print(f"{family.name:<16} {method:<5} {verdict:<20} {seconds:6.1f} s", flush=True)
    results.write(args.json, {"methods": methods, "rows": rows})
    return 0


def table(payload: dict) -> str:
    """A row per family, a column per method: the verdict (the step that did not pass), the
    whole command's time and the time in its steps."""
    methods = payload["methods"]
    cells: dict[str, dict[str, str]] = {}
    for row in payload["rows"]:
        failed = next((s for s in row["steps"] if s["status"] in ("refused", "failed")), None)
        verdict = "passed" if failed is None else f"{failed['name']} step {failed['status']}"
        timing = f"{row['command_seconds']:.1f} s ({row['seconds']:.1f} s in its steps)"
        cells.setdefault(row["family"], {})[row["method"]] = f"{verdict}: {timing}"
    lines = ["| family | " + " | ".join(m.upper() for m in methods) + " |", "| --- |" + " --- |" * len(methods)]
    lines += [f"| {family} | " + " | ".join(row.get(m, "-") for m in methods) + " |" for family, row in cells.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
