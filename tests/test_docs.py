"""The manual holds together: the README stays a five-minute read, every link in it and in
docs/ reaches a file and a heading that exist, and no file sends the reader outside the
repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.conftest import REPO

LINK = re.compile(r"\[[^\]]+\]\(([^)\s]+)\)")


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped,
    spaces as hyphens."""
    found = set()
    for line in path.read_text().splitlines():
        if match := re.match(r"^#{1,6} (.+)$", line):
            found.add(re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-"))
    return found


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+://|^mailto:", target):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            broken.append(f"{page.name}: {target} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{page.name}: {target} (no such heading)")
    return broken


def test_the_readme_is_a_short_read() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) <= 250


def test_every_link_of_the_manual_reaches_a_file_and_heading() -> None:
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "bench" / "README.md"]
    assert len(pages) > 10
    assert [problem for page in pages for problem in broken_links(page)] == []


def test_the_link_check_finds_a_broken_link(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## A heading\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-heading) [gone](missing.md) [wrong](other.md#nothing) [web](https://x.org/a)\n")
    assert broken_links(page) == ["page.md: missing.md (no such file)", "page.md: other.md#nothing (no such heading)"]


def test_no_file_points_outside_the_repository() -> None:
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    # The notes FactLoop was built from, which users never get (spelt in pieces, so that this
    # file does not name them).
    outside = re.compile(
        "|".join(re.escape(a + b) for a, b in (("../", "shared"), ("STACK-", "FACTS"), ("METHODS", ".md")))
    )
    found = []
    for name in listed.splitlines():
        path = REPO / name
        if (
            path.suffix in {".py", ".md", ".txt", ".yaml", ".yml", ".toml", ".js", ".html", ".sh", ".cfg"}
            and path.exists()
        ):
            found += [f"{name}:{n}" for n, line in enumerate(path.read_text().splitlines(), 1) if outside.search(line)]
    assert found == []
