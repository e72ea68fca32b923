"""The family matrix (docs/families.md): every trainer, vLLM and the evaluator on a
tiny checkpoint of each image-text-to-text family, with each cell's time, in one run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/families.py [--no-vllm] [--family TYPE ...]

Runs `python -m rlhf.cli families` (rlhf/family_matrix.py) and keeps its rows, with the command,
revision, date and machine, in `bench/results/families.json`; prints the Markdown table the
docs/families.md shows. The vLLM cells need the serving venv (`make serving`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

# What this bench measures: its result is stale once any of these changes (bench/status.py).
MEASURES = (
    "rlhf",
    "models",
    "contract",
    "testbed/family_checkpoints.py",
    "bench/families.py",
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import results  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-vllm", action="store_true", help="skip the vLLM cells")
    parser.add_argument("--family", action="append", default=[], help="only this family (model type; repeatable)")
    parser.add_argument("--json", type=Path, default=results.default_path("families"))
    results.add_arguments(parser)
    args = parser.parse_args()
    results.begin(args)

    from rlhf.cli import main as rlhf_cli

    with tempfile.TemporaryDirectory(prefix="factloop-bench-families-") as work:
        raw = Path(work) / "rows.json"
        argv = ["families", "--work", work, "--out", str(raw), *[x for f in args.family for x in ("--family", f)]]
        status = rlhf_cli(argv + ([] if args.no_vllm else ["--vllm"]))
        payload = json.loads(raw.read_text())
    results.write(args.json, payload)
    return status


if __name__ == "__main__":
    sys.exit(main())
