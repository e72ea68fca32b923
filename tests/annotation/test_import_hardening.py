"""Imports from hostile or broken files: every path stays inside its folder or archive and
reveals nothing about the server's files, archives are unpacked with byte caps, every bad
row is named (skip-bad skips exactly those), and a refused import leaves no file behind."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from annotation.data.archives import unpack
from annotation.data.importers import ImportFailed, import_labels, import_prompts
from annotation.models import Image, Job, Prompt
from annotation.worker.tasks import import_archive
from tests.factories import png_bytes, zip_of

pytestmark = pytest.mark.django_db


def jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes((10, 20, 30)))
    (folder / "b.png").write_bytes(png_bytes((30, 20, 10)))
    (tmp_path / "outside.png").write_bytes(png_bytes((1, 1, 1)))
    (folder / "link.png").symlink_to(tmp_path / "outside.png")
    return folder


def stored_files(settings: Any) -> list[Path]:
    return [p for p in Path(settings.MEDIA_ROOT).rglob("*") if p.is_file()]


def dataset_with_paths(folder: Path, paths: list[str]) -> Path:
    """A datasets directory whose image column holds bare paths. `save_to_disk` would embed
    the files it can read, so its Arrow file is written again by hand, as a hostile upload
    can be."""
    import pyarrow as pa  # type: ignore[import-untyped]
    from datasets import Dataset, Features, Value  # type: ignore[import-untyped]
    from datasets import Image as ImageFeature

    features = Features({"image": ImageFeature(decode=False), "prompt": Value("string")})
    prompts = [f"Prompt {i}" for i in range(len(paths))]
    placeholder = {"image": [{"bytes": png_bytes(), "path": None}] * len(paths), "prompt": prompts}
    Dataset.from_dict(placeholder, features=features).save_to_disk(str(folder))
    bare = {"image": [{"bytes": None, "path": p} for p in paths], "prompt": prompts}
    table = Dataset.from_dict(bare, features=features)
    [arrow] = folder.glob("*.arrow")
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, table.data.table.schema) as writer:
        writer.write_table(table.data.table)
    return folder


@pytest.fixture(autouse=True)
def own_media(settings: Any, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = str(tmp_path / "media")


def test_a_datasets_directory_cannot_read_files_outside_it(tmp_path: Path) -> None:
    """Absolute and `..` paths are refused with the same words whether the file exists or
    not: a probe learns nothing about the server."""
    folder = tmp_path / "ds"
    dataset_with_paths(folder, ["inside.png", "/etc/passwd", "/no/such/file.png", "../outside.png"])
    (folder / "inside.png").write_bytes(png_bytes())
    (tmp_path / "outside.png").write_bytes(png_bytes((9, 9, 9)))
    with pytest.raises(ImportFailed) as failed:
        import_prompts(folder)
    reasons = {p.row: p.reason for p in failed.value.report.problems}
    assert sorted(reasons) == [2, 3, 4]
    assert reasons[2] == "image path '/etc/passwd' is outside the dataset folder"
    assert reasons[3] == "image path '/no/such/file.png' is outside the dataset folder"
    assert reasons[4] == "image path '../outside.png' is outside the dataset folder"
    assert not Image.objects.exists()
    report = import_prompts(folder, skip_bad=True)
    assert report.prompts == 1 and Image.objects.count() == 1


def test_a_link_out_of_the_images_folder_is_refused(tmp_path: Path, images: Path) -> None:
    manifest = jsonl(tmp_path / "m.jsonl", [{"image": "link.png", "prompt": "x"}])
    with pytest.raises(ImportFailed) as failed:
        import_prompts(manifest, images)
    assert failed.value.report.problems[0].reason == "image path 'link.png' is outside the images folder"


BAD_TEXT = [
    ({"image": "a.png", "prompt": "a\x00b"}, "prompt contains a NUL character"),
    ({"image": "a.png", "prompt": "x", "facts": {"captions": ["a\x00"]}}, "facts contains a NUL character"),
    ({"image": "a.png", "prompt": "x", "context": [{"role": "user", "content": "\x00"}]}, "context contains a NUL"),
    ({"image": "a\x00.png", "prompt": "x"}, "image path contains a NUL character"),
    ({"image": "a.png", "prompt": "x" * 8001}, "prompt is 8001 characters long; the limit is 8000"),
    ("[" * 100_000 + "]" * 100_000, "nested deeper than 64 levels"),
]


@pytest.mark.parametrize(("row", "reason"), BAD_TEXT, ids=[reason for _, reason in BAD_TEXT])
def test_bad_text_is_a_named_row_and_skip_bad_skips_exactly_it(
    tmp_path: Path, images: Path, settings: Any, row: Any, reason: str
) -> None:
    settings.FACTLOOP_MAX_PROMPT_CHARS = 8000
    good = {"image": "b.png", "prompt": "Describe the image."}
    manifest = jsonl(tmp_path / "m.jsonl", [good, row, {"image": "a.png", "prompt": "Count."}])
    with pytest.raises(ImportFailed) as failed:
        import_prompts(manifest, images)
    [problem] = failed.value.report.problems
    assert problem.row == 2 and reason in problem.reason
    assert not Prompt.objects.exists() and stored_files(settings) == []
    report = import_prompts(manifest, images, skip_bad=True)
    assert report.prompts == 2 and [p.row for p in report.problems] == [2]


def test_a_csv_field_over_the_limit_is_a_named_row(tmp_path: Path, images: Path, settings: Any) -> None:
    settings.FACTLOOP_MAX_PROMPT_CHARS = settings.FACTLOOP_MAX_CONTEXT_CHARS = 1000
    settings.FACTLOOP_MAX_FACTS_CHARS = 1000
    manifest = tmp_path / "m.csv"
    huge = "y" * 200_000  # over Python's default 128 KiB field limit too
    manifest.write_text(f"image,prompt\na.png,First.\nb.png,{huge}\nb.png,Third.\n")
    with pytest.raises(ImportFailed) as failed:
        import_prompts(manifest, images)
    [problem] = failed.value.report.problems
    assert problem.row == 2 and "field larger than field limit" in problem.reason
    report = import_prompts(manifest, images, skip_bad=True)
    assert sorted(Prompt.objects.values_list("text", flat=True)) == ["First.", "Third."] and report.prompts == 2


def test_an_image_over_the_byte_limit_is_refused_before_it_is_read(tmp_path: Path, images: Path, settings: Any) -> None:
    settings.FACTLOOP_MAX_IMAGE_BYTES = 10
    manifest = jsonl(tmp_path / "m.jsonl", [{"image": "a.png", "prompt": "x"}])
    with pytest.raises(ImportFailed) as failed:
        import_prompts(manifest, images)
    reason = failed.value.report.problems[0].reason
    assert reason.startswith("image 'a.png' is ") and reason.endswith("bytes; the limit is 10")


def test_a_rolled_back_import_leaves_no_image_file(
    tmp_path: Path, images: Path, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second row's image changes between its check and its import: the import rolls
    back, and the first row's newly stored file goes with it."""
    from annotation.data import importers

    manifest = jsonl(tmp_path / "m.jsonl", [{"image": "a.png", "prompt": "x"}, {"image": "b.png", "prompt": "y"}])
    real = importers._read_image

    def read_then_change(path: Path) -> bytes | str:
        data = real(path)
        if path.name == "b.png":
            path.write_bytes(png_bytes((99, 99, 99)))  # another process rewrites it
        return data

    monkeypatch.setattr(importers, "_read_image", read_then_change)
    with pytest.raises(ImportFailed) as failed:
        import_prompts(manifest, images)
    assert failed.value.report.problems[0].reason == "the image file changed during the import"
    assert not Image.objects.exists() and stored_files(settings) == []


def test_label_imports_refuse_outside_paths_nul_and_oversized_responses(tmp_path: Path, settings: Any) -> None:
    settings.FACTLOOP_MAX_RESPONSE_CHARS = 100
    (tmp_path / "a.png").write_bytes(png_bytes())
    entries = [
        {"image_path": "a.png", "text": json.dumps({"question": "Q?", "chosen": "good", "rejected": "bad"})},
        {"image_path": "/etc/passwd", "text": json.dumps({"question": "Q?", "chosen": "x", "rejected": "y"})},
        {"image_path": "a.png", "text": json.dumps({"question": "Q?", "chosen": "x" * 101, "rejected": "y"})},
        {"image_path": "a.png", "text": json.dumps({"question": "Q\x00?", "chosen": "x", "rejected": "y"})},
    ]
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(entries))
    with pytest.raises(ImportFailed) as failed:
        import_labels(path, "rlhf-v")
    reasons = {p.row: p.reason for p in failed.value.report.problems}
    assert reasons[2] == "image path '/etc/passwd' is outside the images folder"
    assert reasons[3] == "corrected is 101 characters long; the limit is 100"
    assert reasons[4] == "prompt contains a NUL character"
    assert not Image.objects.exists() and stored_files(settings) == []
    report, number = import_labels(path, "rlhf-v", skip_bad=True)
    assert number is not None and [p.row for p in report.problems] == [2, 3, 4]


def test_unpacking_streams_each_member_under_its_cap(tmp_path: Path, settings: Any) -> None:
    """A 64 MB image of zeros compresses to ~64 KB: refused after the first megabytes
    over the cap, the headers' claimed size aside."""
    settings.FACTLOOP_MAX_IMAGE_BYTES = 2 * 1024**2
    bomb = zip_of({"m.jsonl": b"{}\n", "images/big.png": bytes(64 * 1024**2)}, compression=zipfile.ZIP_DEFLATED)
    assert len(bomb.getvalue()) < 1024**2
    with pytest.raises(ValidationError, match=r"'images/big.png' unpacks to more than 2097152 bytes"):
        unpack(bomb, tmp_path)
    assert sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()) <= 3 * 1024**2
    settings.FACTLOOP_MAX_IMPORT_BYTES = 1024**2
    with pytest.raises(ValidationError, match="unpacks to more than 1048576 bytes"):
        unpack(zip_of({"data.jsonl": bytes(2 * 1024**2)}), tmp_path / "second")


def test_a_manifest_member_is_held_under_its_own_cap(tmp_path: Path, settings: Any) -> None:
    """Manifests and label files are parsed in memory: a 10 KB zip of one 64 MB line is refused
    as it unpacks, while a datasets arrow file (memory-mapped) may be larger."""
    settings.FACTLOOP_MAX_MANIFEST_BYTES = 2 * 1024**2
    line = zip_of({"m.jsonl": b'{"prompt": "' + b"a" * (64 * 1024**2)}, compression=zipfile.ZIP_DEFLATED)
    assert len(line.getvalue()) < 100 * 1024
    with pytest.raises(ValidationError, match=r"'m.jsonl' unpacks to more than 2097152 bytes"):
        unpack(line, tmp_path / "first")
    unpack(zip_of({"data/data-00000-of-00001.arrow": bytes(3 * 1024**2)}), tmp_path / "second")


def test_encrypted_and_unsupported_members_are_named(tmp_path: Path) -> None:
    archive = zip_of({"m.jsonl": b"{}\n"})
    data = bytearray(archive.getvalue())
    # Set the "encrypted" bit (general purpose flag bit 0) in the central directory entry.
    central = data.rfind(b"PK\x01\x02")
    data[central + 8] |= 0x1
    with pytest.raises(ValidationError, match=r"'m\.jsonl' is encrypted"):
        unpack(io.BytesIO(bytes(data)), tmp_path)
    data = bytearray(archive.getvalue())
    data[central + 10 : central + 12] = (99).to_bytes(2, "little")  # compression method 99 (AES)
    with pytest.raises(ValidationError, match=r"'m\.jsonl' uses an unsupported compression \(method 99\)"):
        unpack(io.BytesIO(bytes(data)), tmp_path)


def test_the_admin_upload_names_bad_rows_and_never_answers_500(admin_user: User, tmp_path: Path) -> None:
    manifest = "\n".join(
        [
            json.dumps({"image": "a.png", "prompt": "Good."}),
            json.dumps({"image": "/etc/passwd", "prompt": "x"}),
            json.dumps({"image": "a.png", "prompt": "x\x00"}),
            "[" * 100_000,
        ]
    )
    upload = zip_of({"m.jsonl": manifest.encode(), "a.png": png_bytes()})
    client = Client()
    client.force_login(admin_user)
    page = client.post("/admin/annotation/prompt/import/", {"kind": "prompts", "archive": upload})
    job = Job.objects.get(kind=Job.Kind.IMPORT)
    assert page.status_code == 302 and page["Location"] == f"/admin/annotation/job/{job.pk}/change/"
    import_archive.apply(args=(job.pk,))
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "row 2: image path '/etc/passwd' is outside the images folder" in job.error
    assert "row 3: prompt contains a NUL character" in job.error and "row 4: not valid JSON" in job.error
    assert "root:" not in job.error and not Prompt.objects.exists()
    shown = client.get(page["Location"]).content.decode()
    assert "row 2: image path &#x27;/etc/passwd&#x27; is outside the images folder" in shown
    upload.seek(0)
    client.post("/admin/annotation/prompt/import/", {"kind": "prompts", "archive": upload, "skip_bad": "on"})
    job = Job.objects.filter(kind=Job.Kind.IMPORT).latest("pk")
    import_archive.apply(args=(job.pk,))
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED and Prompt.objects.count() == 1
    assert (job.result["prompts"], job.result["skipped"]) == (1, 3) and len(job.result["problems"]) == 3


def test_the_import_command_exits_cleanly_on_a_hostile_manifest(tmp_path: Path, images: Path) -> None:
    manifest = jsonl(tmp_path / "m.jsonl", ["{" * 50_000, {"image": "../../etc/passwd", "prompt": "x"}])
    errors = io.StringIO()
    with pytest.raises(CommandError, match="nothing was imported"):
        call_command("import_prompts", manifest, images=images, stderr=errors)
    assert "row 1: not valid JSON" in errors.getvalue() and "row 2: image path" in errors.getvalue()
