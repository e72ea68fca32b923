"""The published benchmark tables, generated from the raw results in bench/results/.

A page marks each generated table with a pair of comments,

    <!-- bench:NAME -->
    ...
    <!-- /bench:NAME -->

and this command replaces what lies between them with TABLES[NAME] rendered from its JSON
file (the file's name, command and revision are printed under the table, so every figure
names the run that measured it). `--check` changes nothing and exits 1 naming every block
that differs from what the results give (tests/test_bench_results.py runs it).

    .venv/bin/python bench/tables.py [--check]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
PAGES = ("README.md", "docs/*.md", "bench/README.md")
BLOCK = re.compile(r"(<!-- bench:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /bench:(?P=name) -->)", re.DOTALL)


def _load(name: str) -> dict[str, Any]:
    return dict(json.loads((RESULTS / name).read_text()))


def _source(name: str, record: dict[str, Any]) -> str:
    return f"Raw rows: `bench/results/{name}`, from `{record['command']}` at revision `{record['revision'][:12]}`."


def _pm(row: dict[str, Any], key: str, digits: int = 3) -> str:
    value = f"{row[key]:.{digits}f}"
    return value + (f" ± {row[key + '_sd']:.{digits}f}" if f"{key}_sd" in row else "")


def _change(value: float, base: float) -> str:
    return f"{(value - base) / base:+.1%}" if base else "-"


def alignment_styles() -> str:
    """bench/alignment.py's correction rows, deleting against replacing (alignment-replace.json)."""
    name = "alignment-replace.json"
    record = _load(name)
    rows = record["rows"]
    base = rows[0]
    lines = [
        "| method | corrections | labels | seeds | CHAIR_i (vs base) | CHAIR_s | POPE F1 | words (vs base) "
        "| coverage |",
        "| --- | --- | ---: | ---: | --- | --- | ---: | --- | --- |",
        f"| base | - | 0 | - | {base['chair_i']:.3f} | {base['chair_s']:.3f} | {base['pope_f1']:.3f} | "
        f"{base['mean_words']:.1f} | {base['coverage']:.3f} |",
    ]
    for row in rows[1:]:
        method = row["method"].removesuffix("+replace")
        lines.append(
            f"| {method} | {'replace' if method != row['method'] else 'delete'} | {row['labels']} | "
            f"{len(row['seeds'])} | {_pm(row, 'chair_i')} ({_change(row['chair_i'], base['chair_i'])}) | "
            f"{_pm(row, 'chair_s')} | {row['pope_f1']:.3f} | {_pm(row, 'mean_words', 1)} "
            f"({_change(row['mean_words'], base['mean_words'])}) | {_pm(row, 'coverage')} |"
        )
    return "\n".join(lines) + "\n\n" + _source(name, record) + "\n"


def label_efficiency_styles() -> str:
    """bench/label_efficiency.py's human arms in both correction styles (label_efficiency-styles.json)."""
    name = "label_efficiency-styles.json"
    record = _load(name)
    base = record["base"]
    lines = [
        "| arm | corrections | round | human labels | pairs | CHAIR_i | vs base | POPE F1 | words | coverage |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for label, rows in record["arms"].items():
        arm, _, style = label.partition(":")
        for row in rows:
            lines.append(
                f"| `{arm}` | {style or '-'} | {row['round']} | {row['human_labels']:.0f} | {row['pairs']:.0f} | "
                f"{_pm(row, 'chair_i')} | {_change(row['chair_i'], base['chair_i'])} | {row['pope_f1']:.3f} | "
                f"{row['mean_words']:.1f} | {_pm(row, 'coverage')} |"
            )
    summary = record["summary"]
    best = summary.get("best_human_arm")
    tail = [
        "",
        f"The base: CHAIR_i {base['chair_i']:.3f}, POPE F1 {base['pope_f1']:.3f}, {base['mean_words']:.1f} words, "
        f"coverage {base['coverage']:.3f}. Seeds {record['settings']['seeds']} (mean ± standard deviation).",
    ]
    if best:
        tail.append(
            f"Best human arm after {record['settings']['rounds']} rounds: `{best['name']}`, CHAIR_i "
            f"{best['chair_i_drop']:.1%} below the base, coverage {best['coverage']:.3f}."
        )
    return "\n".join(lines + tail) + "\n\n" + _source(name, record) + "\n"


def label_efficiency() -> str:
    """bench/label_efficiency.py's five arms, deleting corrections (label_efficiency.json, which
    predates coverage's name: its `object_recall` is the same measure)."""
    name = "label_efficiency.json"
    record = _load(name)
    base = record["base"]
    cover = "coverage" if "coverage" in base else "object_recall"
    lines = [
        "| arm | round | human labels (total) | pairs | CHAIR_i | vs base | POPE F1 | words | coverage "
        "| annotator minutes (total) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for arm, rows in record["arms"].items():
        for row in rows:
            lines.append(
                f"| `{arm}` | {row['round']} | {row['human_labels']:.0f} | {row['pairs']:.0f} | "
                f"{_pm(row, 'chair_i')} | {_change(row['chair_i'], base['chair_i'])} | {row['pope_f1']:.3f} | "
                f"{row['mean_words']:.1f} | {row[cover]:.3f} | {row['annotator_minutes']:.0f} |"
            )
    summary = record["summary"]
    reached = [
        f"- `{arm}`: {found['labels_to_target']} (round {found['round']})"
        if found["labels_to_target"] is not None
        else f"- `{arm}`: not reached"
        for arm, found in summary.items()
        if arm in record["arms"]
    ]
    best = summary["best_arm"]
    tail = [
        "",
        f"Human labels each arm had used when its CHAIR_i first reached arm `random`'s final "
        f"{summary['target_chair_i']:.3f}:",
        *reached,
        "",
        f"Best arm: `{best['name']}`, CHAIR_i {best['chair_i_drop']:.0%} below the base after "
        f"{record['settings']['rounds']} rounds.",
    ]
    return "\n".join(lines + tail) + "\n\n" + _source(name, record) + "\n"


TABLES: dict[str, Callable[[], str]] = {
    "label-efficiency": label_efficiency,
    "alignment-styles": alignment_styles,
    "label-efficiency-styles": label_efficiency_styles,
}


def pages(repo: Path = REPO) -> list[Path]:
    return [path for pattern in PAGES for path in sorted(repo.glob(pattern))]


def render(text: str, *, where: str = "") -> tuple[str, list[str]]:
    """`text` with every marked block regenerated, and the names of the blocks that changed."""
    changed: list[str] = []

    def one(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in TABLES:
            raise ValueError(f"{where}: no generated table named {name!r}; known: {', '.join(TABLES)}")
        body = TABLES[name]()
        if body != match["body"]:
            changed.append(name)
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(one, text), changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table differs")
    args = parser.parse_args()
    stale = []
    for page in pages():
        text = page.read_text()
        new, changed = render(text, where=str(page.relative_to(REPO)))
        stale += [f"{page.relative_to(REPO)}: {name}" for name in changed]
        if changed and not args.check:
            page.write_text(new)
    for item in stale:
        print(f"{'differs' if args.check else 'regenerated'}: {item}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
