"""Downloads of exports: a finished export job's folder as one zip archive, streamed.

The archive is written as it is sent (zipfile writes to a stream that cannot seek by
putting each member's sizes after its data), a megabyte of a file at a time, so memory
stays flat whatever the export's size. Text and JSON members are deflated; the `datasets`
files and images are stored as they are (they compress little).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, cast

from django.conf import settings

from annotation.models import Job
from annotation.rules.errors import Refused
from contract.export import MANIFEST

CHUNK = 1 << 20
DEFLATED_SUFFIXES = (".json", ".jsonl", ".csv", ".txt", ".md")


def export_folder(job: Job) -> Path:
    """The folder a finished export job wrote (Refused, with why, for any other job)."""
    if job.kind != Job.Kind.EXPORT:
        raise Refused(f"job {job.pk} is a {job.kind} job; only exports have files to download")
    if job.status != Job.Status.SUCCEEDED:
        raise Refused(f"export job {job.pk} is {job.status}; its files can be downloaded once it has succeeded")
    folder = Path(settings.FACTLOOP_EXPORT_DIR) / f"job-{job.pk}-{job.params.get('format', '')}"
    if not (folder / MANIFEST).is_file():
        raise Refused(f"export job {job.pk}'s files are no longer in {settings.FACTLOOP_EXPORT_DIR}")
    return folder


class _Sink:
    """A write-only stream whose bytes are taken away as they come (zipfile's output)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._written = 0

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


def zip_stream(folder: Path, root: str) -> Iterator[bytes]:
    """The folder's regular files (links are left out) as a zip archive under `root/`, in
    pieces as they are written."""
    sink = _Sink()
    with zipfile.ZipFile(cast(IO[bytes], sink), "w", allowZip64=True) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_symlink() or not path.is_file():
                continue
            info = zipfile.ZipInfo.from_file(path, f"{root}/{path.relative_to(folder).as_posix()}")
            info.compress_type = zipfile.ZIP_DEFLATED if path.suffix in DEFLATED_SUFFIXES else zipfile.ZIP_STORED
            with path.open("rb") as source, archive.open(info, "w", force_zip64=True) as target:
                for block in iter(lambda: source.read(CHUNK), b""):
                    target.write(block)
                    yield sink.take()
        # Closing writes the central directory.
    yield sink.take()
