"""Folders written whole or not at all: built in a sibling staging folder, then renamed
into place (a rename within one file system is atomic).

A staging folder's name says which process wrote it (`.NAME.partial-HOST-PID-TOKEN`), so a
folder left by a process that died (SIGKILL, a lost machine) can be told from one still
being written, and removed: `remove_dead` does it for one parent folder, and every
`staged` write does it first for its own parent.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# What a process on another host left (its pid cannot be asked after) counts as abandoned
# once untouched this long: staging folders here, spooled uploads in annotation.data.archives.
ABANDONED_AFTER_SECONDS = 24 * 3600

_PATTERN = re.compile(r"^\.(?P<name>.+)\.partial-(?P<host>[^/]+)-(?P<pid>\d+)-[0-9a-f]{8}$")


def _host() -> str:
    # Dashes would make the name ambiguous to parse; the host name only has to match itself.
    return socket.gethostname().replace("-", "_")


def staging_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial-{_host()}-{os.getpid()}-{secrets.token_hex(4)}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _untouched_for(folder: Path, seconds: float) -> bool:
    """Nothing in `folder` (itself included) was modified in the last `seconds`."""
    cutoff = time.time() - seconds
    for root, dirs, files in os.walk(folder):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            try:
                if os.lstat(name).st_mtime >= cutoff:
                    return False
            except FileNotFoundError:
                continue
    return True


def remove_dead(parent: Path, name_prefix: str = "", *, other_hosts_after: float | None = None) -> list[Path]:
    """Remove the staging folders under `parent` whose writer (a process of this host) is
    gone; returns them. A folder written by another host (a pod on a shared volume) cannot
    be asked about its writer: with `other_hosts_after`, it is removed once nothing in it
    has changed for that many seconds, else left alone."""
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for entry in parent.iterdir():
        match = _PATTERN.match(entry.name)
        if not match or not match["name"].startswith(name_prefix):
            continue
        if match["host"] != _host():
            dead = other_hosts_after is not None and _untouched_for(entry, other_hosts_after)
        else:
            dead = int(match["pid"]) != os.getpid() and not _alive(int(match["pid"]))
        if dead:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


@contextmanager
def staged(out: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside `out`; on a clean exit it becomes `out` (an
    existing `out` is replaced only with `replace`), on an exception it is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead(out.parent)
    if out.exists() and not replace:
        raise FileExistsError(f"{out} exists")
    staging = staging_path(out)
    staging.mkdir()
    try:
        yield staging
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
