"""Where a benchmark's raw output goes: `bench/results/NAME.json`, with what produced it
(command line, git revision, date, machine, and for a model folder its spec hash), so that
every README figure can be checked against the run that measured it."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def default_path(name: str) -> Path:
    return RESULTS / f"{name}.json"


def model_spec_hash(model: str) -> str | None:
    """The spec hash a tiny-model folder records (None for any other model)."""
    from testbed.tiny import MANIFEST

    try:
        return str(json.loads((Path(model) / MANIFEST).read_text())["spec_hash"])
    except (OSError, ValueError, KeyError):
        return None


def _revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=RESULTS.parent, capture_output=True, text=True, check=True, timeout=10
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=RESULTS.parent, capture_output=True, text=True)
        return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write(path: Path, payload: dict[str, Any], *, model: str | None = None) -> None:
    """Write the payload with its provenance, whole (a temporary file renamed into place)."""
    record: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "revision": _revision(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
    }
    if model is not None:
        record["model"] = model
        record["model_spec_hash"] = model_spec_hash(model)
    record.update(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".partial")
    staging.write_text(json.dumps(record, indent=2, default=float) + "\n")
    staging.replace(path)
    print(f"raw results: {path}", file=sys.stderr)
