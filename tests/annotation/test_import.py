"""Importing prompts: every kind of bad row is named, and nothing is half-imported."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from PIL import Image as PILImage

from annotation.models import Image, Prompt
from tests.factories import png_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder of good and bad images for the module (the bomb takes a moment to make)."""
    folder = tmp_path_factory.mktemp("images")
    (folder / "a.png").write_bytes(png_bytes((10, 20, 30)))
    (folder / "b.png").write_bytes(png_bytes((30, 20, 10)))
    buffer = io.BytesIO()
    PILImage.new("RGB", (64, 64), (1, 2, 3)).save(buffer, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    bmp = io.BytesIO()
    PILImage.new("RGB", (4, 4)).save(bmp, format="BMP")
    (folder / "old.bmp").write_bytes(bmp.getvalue())
    (folder / "notes.png").write_text("not an image")
    # A PNG that claims 20000 x 20000 pixels: 400 million, a decompression bomb.
    bomb = io.BytesIO()
    PILImage.new("1", (20000, 20000)).save(bomb, format="PNG")
    (folder / "bomb.png").write_bytes(bomb.getvalue())
    return folder


def jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


GOOD = [
    {"image": "a.png", "prompt": "Describe the image.", "facts": {"objects": ["ball"]}},
    {"image": "b.png", "prompt": "How many balls?", "split": "heldout"},
    {"image": "a.png", "prompt": "What colour is it?", "context": [{"role": "user", "content": "Hi"}]},
]
BAD = [
    ({"prompt": "no image"}, "missing field 'image'"),
    ({"image": "a.png"}, "missing field 'prompt'"),
    ({"image": "gone.png", "prompt": "x"}, "missing file 'gone.png'"),
    ({"image": "../secret.png", "prompt": "x"}, "outside the images folder"),
    ({"image": "truncated.jpg", "prompt": "x"}, "not a readable image"),
    ({"image": "notes.png", "prompt": "x"}, "not a readable image"),
    ({"image": "old.bmp", "prompt": "x"}, "unsupported image format BMP"),
    ({"image": "bomb.png", "prompt": "x"}, "decompression bomb"),
    ({"image": "b.png", "prompt": "x", "split": "test"}, "unknown split"),
    ({"image": "b.png", "prompt": "x", "facts": ["ball"]}, "facts must be an object"),
    ({"image": "a.png", "prompt": "Describe the image."}, "duplicate of row 1"),
    ("{not json", "not valid JSON"),
    # One line longer than any row can be is reported, never held whole.
    ('{"prompt": "' + "a" * 900_000, "the line is longer than"),
]


def test_good_rows_import_with_their_fields(tmp_path: Path, images: Path) -> None:
    out = io.StringIO()
    call_command("import_prompts", jsonl(tmp_path / "m.jsonl", GOOD), images=images, stdout=out)
    assert "imported 3 prompts on 2 images from 3 rows" in out.getvalue()
    assert Image.objects.count() == 2
    described = Prompt.objects.get(text="Describe the image.")
    assert described.image.facts == {"objects": ["ball"]} and described.image.source == "a.png"
    assert Prompt.objects.get(text="How many balls?").split == "heldout"
    assert Prompt.objects.get(text="What colour is it?").context == [{"role": "user", "content": "Hi"}]
    # The same rows again, and one new: only the new one is imported, the rest counted.
    again, more = io.StringIO(), {"image": "b.png", "prompt": "Is there a kite?", "facts": {}}
    call_command("import_prompts", jsonl(tmp_path / "again.jsonl", [*GOOD, more]), images=images, stdout=again)
    assert "imported 1 prompts on 1 images from 4 rows; 3 already imported" in again.getvalue()
    assert Prompt.objects.count() == 4


def test_an_image_s_facts_are_never_changed_or_kept_silently(tmp_path: Path, images: Path) -> None:
    call_command("import_prompts", jsonl(tmp_path / "m.jsonl", GOOD[:1]), images=images, stdout=io.StringIO())
    changed = {"image": "a.png", "prompt": "Another question?", "facts": {"objects": ["kite"]}}
    errors = io.StringIO()
    with pytest.raises(CommandError, match="1 bad row"):
        call_command("import_prompts", jsonl(tmp_path / "c.jsonl", [changed]), images=images, stderr=errors)
    assert 'already imported with other facts ({"objects": ["ball"]})' in errors.getvalue()
    assert Image.objects.get().facts == {"objects": ["ball"]} and Prompt.objects.count() == 1


@pytest.mark.parametrize(("row", "reason"), BAD, ids=[reason for _, reason in BAD])
def test_each_bad_row_is_named_and_nothing_is_imported(tmp_path: Path, images: Path, row: object, reason: str) -> None:
    manifest = jsonl(tmp_path / "m.jsonl", [GOOD[0], row])
    errors = io.StringIO()
    with pytest.raises(CommandError, match="nothing was imported"):
        call_command("import_prompts", manifest, images=images, stderr=errors)
    assert "row 2: " in errors.getvalue() and reason in errors.getvalue()
    assert not Prompt.objects.exists() and not Image.objects.exists()


def test_skip_bad_imports_the_good_rows_and_reports_the_rest(tmp_path: Path, images: Path) -> None:
    manifest = jsonl(tmp_path / "m.jsonl", [*GOOD, *(row for row, _ in BAD)])
    out, errors = io.StringIO(), io.StringIO()
    call_command("import_prompts", manifest, images=images, skip_bad=True, stdout=out, stderr=errors)
    assert "imported 3 prompts" in out.getvalue() and f"skipped {len(BAD)}" in out.getvalue()
    assert errors.getvalue().count("skipped row") == len(BAD)
    assert Prompt.objects.count() == 3


def test_csv_manifests_with_json_columns(tmp_path: Path, images: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        'image,prompt,split,facts\na.png,Describe it.,train,"{""objects"": [""ball""]}"\nb.png,Count.,,\n'
    )
    call_command("import_prompts", manifest, images=images, stdout=io.StringIO())
    assert Prompt.objects.get(text="Describe it.").image.facts == {"objects": ["ball"]}
    assert Prompt.objects.get(text="Count.").split == "train"


def test_a_spreadsheet_s_byte_order_mark_is_not_part_of_the_first_column(tmp_path: Path, images: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,prompt\na.png,Describe it.\n", encoding="utf-8-sig")
    call_command("import_prompts", manifest, images=images, stdout=io.StringIO())
    assert Prompt.objects.get(text="Describe it.").image.sha256


def test_an_unreadable_image_is_named_without_python_s_internals(tmp_path: Path, images: Path) -> None:
    manifest = jsonl(tmp_path / "m.jsonl", [{"image": "notes.png", "prompt": "x"}])
    errors = io.StringIO()
    with pytest.raises(CommandError):
        call_command("import_prompts", manifest, images=images, stderr=errors)
    assert "not a readable image: not PNG, JPEG, WEBP, GIF data" in errors.getvalue()
    assert "BytesIO" not in errors.getvalue() and "0x" not in errors.getvalue()


def test_a_missing_manifest_or_folder_is_a_clear_error(tmp_path: Path, images: Path) -> None:
    with pytest.raises(CommandError, match="no manifest"):
        call_command("import_prompts", tmp_path / "nope.jsonl", images=tmp_path)
    with pytest.raises(CommandError, match="not a folder"):
        call_command("import_prompts", jsonl(tmp_path / "m.jsonl", GOOD), images=tmp_path / "nope")
    with pytest.raises(CommandError, match=r"\.jsonl or a \.csv"):
        call_command("import_prompts", jsonl(tmp_path / "m.txt", GOOD), images=tmp_path)
