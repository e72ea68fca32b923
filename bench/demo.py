"""The demo's loop, measured: `manage.py demo --loop --exit` on a fresh embedded default
(SQLite, the embedded broker, a vLLM server it starts), its figures and timings kept.

    .venv/bin/python bench/demo.py [--scenes 80] [--annotators 8] [--eval-items 200]

One round end to end, as `make demo` runs it: candidates from the served tiny base, labels
from simulated annotators over the HTTP API, train_round (DDPO), the evaluation of both
policies on held-out toy scenes, the gate, the deployment decision and the next round's
candidates. Prints the demo's policy table and how long each part took; the JSON keeps
the demo's own summary (`--summary`). On a GPU machine the same command trains and serves
on the GPU (bench/gpu.py runs it so).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# What this bench measures: its result is stale once any of these changes (bench/status.py).
MEASURES = (
    "annotation",
    "contract",
    "models",
    "rlhf",
    "testbed",
    "webapp",
    "bench/demo.py",
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import results  # noqa: E402
from bench.annotate import free_port  # noqa: E402


def run_demo(args: argparse.Namespace, var: Path) -> dict[str, Any]:
    """`manage.py demo --loop --exit --summary` in a fresh var folder; its summary, or
    SystemExit with the demo's output's tail."""
    summary = var / "summary.json"
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env |= {
        "FACTLOOP_VAR_DIR": str(var),
        "FACTLOOP_VLLM_URL": f"http://127.0.0.1:{free_port()}",
        "FACTLOOP_EVAL_ITEMS": str(args.eval_items),
        "DEBUG": "1",  # as `make demo` runs it
    }
    command = [sys.executable, "manage.py", "demo", "--loop", "--exit", "--summary", str(summary)]
    command += ["--port", str(free_port()), "--scenes", str(args.scenes), "--annotators", str(args.annotators)]
    log = var / "demo.log"
    began = time.monotonic()
    with open(log, "wb") as out:
        done = subprocess.run(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=args.timeout)
    if done.returncode != 0 or not summary.is_file():
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"bench/demo.py: the demo exited {done.returncode}; its output ends:\n{tail}")
    found: dict[str, Any] = json.loads(summary.read_text())
    found["command_seconds"] = round(time.monotonic() - began, 1)
    found["output"] = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-12:]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=80, help="toy scenes of round 1, 2 prompts each (the demo's 80)")
    parser.add_argument("--annotators", type=int, default=8, help="simulated annotators (the demo's 8)")
    parser.add_argument("--eval-items", type=int, default=200, help="held-out scenes evaluated (the demo's 200)")
    parser.add_argument("--timeout", type=float, default=3600, help="give up after this many seconds")
    parser.add_argument("--json", type=Path, default=results.default_path("demo"), help="the summary (JSON)")
    results.add_arguments(parser)
    args = parser.parse_args()
    results.begin(args)
    with tempfile.TemporaryDirectory(prefix="factloop-bench-demo-") as scratch:
        found = run_demo(args, Path(scratch))
    print("policy                        CHAIR_i  CHAIR_s  POPE F1  coverage  words")
    for key in ("current", "new"):
        metrics = found["metrics"][key]
        print(
            f"{found['policies'][key]:<28}  {metrics['chair_i']:>7.3f}  {metrics['chair_s']:>7.3f}  "
            f"{metrics['pope_f1']:>7.3f}  {metrics.get('coverage', float('nan')):>8.3f}  {metrics['mean_words']:>5.1f}"
        )
    print(f"gate {found['gate'].get('summary', '')}; deployed: {found['deployed']}")
    parts = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in found["phase_seconds"].items())
    print(f"the loop took {found['seconds']:.0f} s ({parts}); the command {found['command_seconds']:.0f} s")
    results.write(args.json, found, model="testbed/tiny-base")


if __name__ == "__main__":
    main()
