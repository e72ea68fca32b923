"""Uploaded archives imported in the background: the admin's upload form and
POST /api/admin/imports/ check the zip's directory and spool it (`queue_import`); a worker on
the `export` queue unpacks it and imports it (`run_import`, the `import_archive` job) with
progress. The web request never unpacks or reads a row.

The spool folder, FACTLOOP_EXPORT_DIR/uploads, is shared by the web app and the export
workers like the exports themselves. An archive stays there until its job ends: it is
removed when the import succeeds or fails on its content, and kept when the worker died or
an admin cancelled the job, so a retry finds it; the job sweep removes what no queued or
running import names after a day.
"""

from __future__ import annotations

import logging
import lzma
import tempfile
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from annotation.data.importers import LABEL_FORMATS, import_labels, import_prompts, is_hf_dataset
from annotation.data.released import IMAGE_SUFFIXES
from annotation.jobs.lifecycle import enqueue_job
from annotation.models import AuditEvent, Job
from annotation.rules import audit
from models.staging import ABANDONED_AFTER_SECONDS

log = logging.getLogger(__name__)

# What an archive can hold: prompts (a manifest with its images, or a datasets directory),
# or labels in one of the released layouts.
KINDS = ("prompts", *LABEL_FORMATS)
# Members read whole into memory (each bounded by FACTLOOP_MAX_MANIFEST_BYTES); datasets'
# arrow and parquet files are memory-mapped, and images have their own cap.
TEXT_SUFFIXES = (".json", ".jsonl", ".csv")
# An uploaded archive may hold at most this many members (FACTLOOP_MAX_IMPORT_BYTES bounds its bytes).
MAX_UNPACKED_FILES = 200_000
SUPPORTED_COMPRESSION = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
# An upload no queued or running import names is removed after this long (the job sweep).
STALE_UPLOAD_SECONDS = ABANDONED_AFTER_SECONDS


def upload_dir() -> Path:
    return Path(settings.FACTLOOP_EXPORT_DIR) / "uploads"


def _checked_members(zipped: zipfile.ZipFile, into: Path) -> list[zipfile.ZipInfo]:
    """The archive's members, once its directory shows nothing to refuse: too many members
    or bytes, a path leaving `into`, a link, encryption, an unknown compression."""
    members = zipped.infolist()
    if len(members) > MAX_UNPACKED_FILES:
        raise ValidationError(f"the archive holds more than {MAX_UNPACKED_FILES} files")
    total_limit = settings.FACTLOOP_MAX_IMPORT_BYTES
    if sum(m.file_size for m in members) > total_limit:
        raise ValidationError(f"the archive unpacks to more than {total_limit} bytes")
    root = into.resolve()
    for member in members:
        name = member.filename
        if "\x00" in name or not (into / name).resolve().is_relative_to(root):
            raise ValidationError(f"{name!r} would be written outside the import folder")
        if (member.external_attr >> 16) & 0o170000 == 0o120000:
            raise ValidationError(f"{name!r} is a symbolic link")
        if member.flag_bits & 0x1:
            raise ValidationError(f"{name!r} is encrypted; upload an archive without a password")
        if member.compress_type not in SUPPORTED_COMPRESSION:
            raise ValidationError(f"{name!r} uses an unsupported compression (method {member.compress_type})")
    return members


def check_archive(archive: IO[bytes] | Path) -> None:
    """Refuse (ValidationError) an upload whose zip directory shows a problem; unpacks nothing."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            _checked_members(zipped, Path(tempfile.gettempdir()) / "factloop-import-check")
    except zipfile.BadZipFile as error:
        raise ValidationError(f"not a zip archive: {error}") from None
    except (OSError, EOFError) as error:
        raise ValidationError(f"the archive cannot be read: {error}") from None


def unpack(archive: IO[bytes] | Path, into: Path) -> None:
    """Extract a zip member by member, streamed, refusing what `_checked_members` refuses,
    an image over FACTLOOP_MAX_IMAGE_BYTES, a manifest or label file over
    FACTLOOP_MAX_MANIFEST_BYTES, and more than FACTLOOP_MAX_IMPORT_BYTES in all.
    Sizes are counted as the bytes come out (the headers can lie), so neither disk nor
    memory goes past the limits."""
    total_limit, image_limit = settings.FACTLOOP_MAX_IMPORT_BYTES, settings.FACTLOOP_MAX_IMAGE_BYTES
    written = 0
    try:
        with zipfile.ZipFile(archive) as zipped:
            for member in _checked_members(zipped, into):
                target = into / member.filename
                if member.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                suffix = target.suffix.lower()
                limit = (
                    image_limit
                    if suffix in IMAGE_SUFFIXES
                    else settings.FACTLOOP_MAX_MANIFEST_BYTES
                    if suffix in TEXT_SUFFIXES
                    else total_limit
                )
                target.parent.mkdir(parents=True, exist_ok=True)
                size = 0
                with zipped.open(member) as source, open(target, "wb") as out:
                    while chunk := source.read(1 << 20):
                        size += len(chunk)
                        written += len(chunk)
                        if size > limit:
                            raise ValidationError(f"{member.filename!r} unpacks to more than {limit} bytes")
                        if written > total_limit:
                            raise ValidationError(f"the archive unpacks to more than {total_limit} bytes")
                        out.write(chunk)
    except zipfile.BadZipFile as error:
        raise ValidationError(f"not a zip archive: {error}") from None
    except (NotImplementedError, RuntimeError, EOFError, zlib.error, lzma.LZMAError, OSError) as error:
        raise ValidationError(f"a member of the archive cannot be unpacked: {error}") from None


def find_source(folder: Path, kind: str) -> Path:
    """The manifest, JSON file or datasets directory inside an unpacked upload."""
    candidates: list[Path] = []
    if kind == "prompts":
        candidates = [p for p in sorted(folder.rglob("*")) if p.is_dir() and is_hf_dataset(p)]
        candidates += sorted(
            p for p in folder.rglob("*") if p.suffix.lower() in (".jsonl", ".csv") and "__MACOSX" not in p.parts
        )
    else:
        # An export folder holds manifest.json next to its data file; RLHF-V's is parquet.
        suffixes = (".json", ".parquet") if kind == "rlhf-v" else (".json",)
        candidates = sorted(
            p
            for p in folder.rglob("*")
            if p.suffix.lower() in suffixes and "__MACOSX" not in p.parts and p.name != "manifest.json"
        )
    if is_hf_dataset(folder):
        return folder
    if len(candidates) != 1:
        what = {"prompts": "manifest (.jsonl/.csv) or datasets directory", "rlhf-v": ".parquet or .json file"}.get(
            kind, ".json file"
        )
        found = ", ".join(str(p.relative_to(folder)) for p in candidates) or "none"
        raise ValidationError(f"the archive must hold exactly one {what}; found: {found}")
    return candidates[0]


# ---------------------------------------------------------------------------------------
# Upload, then a job


def queue_import(upload: Any, kind: str, *, skip_bad: bool = False, dataset: str = "", created_by: Any = None) -> Job:
    """Check an uploaded zip (a Django UploadedFile), spool it and queue its import on the
    `export` queue. Refused (ValidationError, nothing kept) when the kind is unknown, the
    upload is over FACTLOOP_MAX_IMPORT_BYTES, or its directory shows a problem."""
    if kind not in KINDS:
        raise ValidationError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    limit = settings.FACTLOOP_MAX_IMPORT_BYTES
    if upload.size > limit:
        raise ValidationError(f"the archive is over {limit} bytes (FACTLOOP_MAX_IMPORT_BYTES)")
    upload.seek(0)
    check_archive(upload)
    folder = upload_dir()
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{uuid.uuid4().hex}.zip"
    partial = folder / f".{name}.part"
    try:
        upload.seek(0)
        with open(partial, "wb") as out:
            for chunk in upload.chunks():
                out.write(chunk)
        partial.rename(folder / name)  # whole or not at all
        username = getattr(created_by, "username", "") or "admin"
        params = {
            "archive": name,
            "filename": str(getattr(upload, "name", "") or "upload.zip")[:255],
            "kind": kind,
            "skip_bad": bool(skip_bad),
            "dataset": dataset,
            "annotator": f"import-{username}"[:150],
        }
        with transaction.atomic():
            job = enqueue_job(Job.Kind.IMPORT, queue="export", params=params, created_by=created_by)
            audit.record(AuditEvent.Action.IMPORT, f"job {job.pk}", by=created_by, **params)
        return job
    except BaseException:
        partial.unlink(missing_ok=True)
        (folder / name).unlink(missing_ok=True)
        raise


def run_import(params: dict[str, Any], progress: Callable[[int, int], None]) -> dict[str, Any]:
    """Unpack a spooled upload and import it (the job's body). Raises ValidationError,
    ValueError or importers.ImportFailed on its content; the caller discards the archive."""
    archive = upload_dir() / Path(params["archive"]).name
    if not archive.is_file():
        raise ValidationError(f"the uploaded archive {params.get('filename', '')!r} is gone; upload it again")
    kind = params["kind"]
    with tempfile.TemporaryDirectory(prefix="factloop-import-") as tmp:
        folder = Path(tmp)
        unpack(archive, folder)
        source = find_source(folder, kind)
        number: int | None = None
        if kind == "prompts":
            images = None if source.is_dir() else source.parent
            report = import_prompts(
                source,
                images,
                skip_bad=bool(params["skip_bad"]),
                progress=progress,
                dataset=str(params.get("dataset") or ""),
            )
        else:
            report, number = import_labels(
                source, kind, annotator=params["annotator"], skip_bad=bool(params["skip_bad"]), progress=progress
            )
    return {
        "kind": kind,
        "rows": report.rows,
        "prompts": report.prompts,
        "images": report.images,
        "already": report.already,
        "dataset": report.dataset,
        "round": number,
        "skipped": len(report.problems),
        "problems": [str(p) for p in report.problems[:100]],
    }


def discard(params: dict[str, Any]) -> None:
    """The job's archive, removed (its import has ended for good)."""
    (upload_dir() / Path(str(params.get("archive", ""))).name).unlink(missing_ok=True)


def remove_stale_uploads(now: float | None = None) -> list[str]:
    """Remove uploads older than STALE_UPLOAD_SECONDS that no queued or running import
    names (the job sweep calls it); returns their names."""
    folder = upload_dir()
    if not folder.is_dir():
        return []
    cutoff = (now if now is not None else time.time()) - STALE_UPLOAD_SECONDS
    with transaction.atomic():
        live = {
            str(params.get("archive"))
            for params in Job.objects.filter(
                kind=Job.Kind.IMPORT, status__in=[Job.Status.QUEUED, Job.Status.RUNNING]
            ).values_list("params", flat=True)
        }
    removed = []
    for path in folder.iterdir():
        name = path.name.removeprefix(".").removesuffix(".part")
        if path.is_file() and name not in live and path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)
            removed.append(path.name)
    if removed:
        log.info("removed %d stale uploads: %s", len(removed), ", ".join(removed))
    return removed
