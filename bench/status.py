"""Which result files in bench/results/ no longer describe the code (`make bench-status`).

Each bench declares the source paths it measures (`MEASURES`, read from its file without
importing it). A result file is listed when:
- it was written from a dirty tree (its revision ends in `+changes`), or names no revision
  this repository has;
- a commit after its revision changed one of its bench's paths (the newest is named).

    .venv/bin/python bench/status.py [--results DIR]

Exit 0 when nothing is listed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


@dataclass(frozen=True)
class Verdict:
    result: str  # the result file, relative to the repository
    revision: str
    problem: str | None  # None: current


def measures(script: Path) -> tuple[str, ...]:
    """A bench's MEASURES tuple, read from its source."""
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "MEASURES" for t in node.targets):
            value = ast.literal_eval(node.value)
            return tuple(str(path) for path in value)
    raise ValueError(f"{script.name} declares no MEASURES")


def _git(*args: str, repo: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=60)


def staleness(revision: str, paths: tuple[str, ...], *, repo: Path = REPO) -> str | None:
    """Why a result made at `revision` does not describe `paths` as they are at HEAD, or None."""
    if not revision or revision == "unknown":
        return "no revision recorded"
    if revision.endswith("+changes"):
        return "written from a working tree with uncommitted changes"
    if _git("cat-file", "-e", f"{revision}^{{commit}}", repo=repo).returncode != 0:
        return f"revision {revision[:12]} is not in this repository"
    newer = _git("log", "-1", "--format=%h %cs %s", f"{revision}..HEAD", "--", *paths, repo=repo).stdout.strip()
    if not newer:
        return None
    return f"changed since by {newer[:80]}{'...' if len(newer) > 80 else ''}"


def check(results: Path, *, repo: Path = REPO) -> list[Verdict]:
    verdicts = []
    for path in sorted(results.glob("*.json")):
        try:
            record = json.loads(path.read_text())
            script = repo / str(record["command"]).split()[0]
        except (OSError, ValueError, KeyError, IndexError):
            verdicts.append(Verdict(path.name, "", "not a result file (no command)"))
            continue
        revision = str(record.get("revision", ""))
        try:
            problem = staleness(revision, measures(script), repo=repo)
        except (OSError, ValueError) as error:
            problem = f"its bench cannot be read: {error}"
        verdicts.append(Verdict(path.name, revision, problem))
    return verdicts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=BENCH / "results", help="the result files' folder")
    args = parser.parse_args()
    stale = [v for v in check(args.results) if v.problem]
    for verdict in stale:
        print(f"{verdict.result}: {verdict.problem} (measured at {verdict.revision[:12] or '-'})")
    if not stale:
        print("every result file describes the code it measures")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
