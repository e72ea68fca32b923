"""Exports: what a trainer reads, reproducible to the byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from annotation.data.exporters import export
from annotation.labeling import queue
from annotation.labeling.submissions import submit_correction, submit_judgement
from annotation.models import Task
from tests.factories import make_round

pytestmark = pytest.mark.django_db

ORIGINAL = "A large red ball is at the top left. A small blue moon is in the center."


def label_everything(annotator: User) -> None:
    make_round(tasks=2, per_task=3, texts=["best answer.", "middle answer.", "worst answer."])
    for _ in range(2):
        lease = queue.next_assignment_for(annotator)
        assert lease is not None
        ids = [slot.candidate_id for slot in lease.task.slots.all()]
        submit_judgement(annotator, lease.pk, ranking=ids, hallucinated=[ids[2]], rationale="third adds a kite")
    round_2 = make_round(tasks=2, kind=Task.Kind.CORRECT, texts=[ORIGINAL])
    assert round_2.number == 2
    fixed = queue.next_assignment_for(annotator)
    assert fixed is not None
    submit_correction(
        annotator, fixed.pk, corrected=ORIGINAL.replace("red ball", "red box"), span_categories=["objects"]
    )
    fine = queue.next_assignment_for(annotator)
    assert fine is not None
    submit_correction(annotator, fine.pk, corrected=None, no_hallucination=True)


def test_factloop_jsonl_has_every_label_with_provenance(annotator: User, tmp_path: Path) -> None:
    label_everything(annotator)
    counts = export("factloop", [1, 2], tmp_path / "out")
    assert counts == {"ranking": 2, "correction": 2}
    rows = [json.loads(line) for line in (tmp_path / "out/labels.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["ranking", "ranking", "correction", "correction"]
    ranking = rows[0]
    assert ranking["schema_version"] == 1 and ranking["annotator"] == "ann" and ranking["round"] == 1
    assert [c["text"] for c in ranking["candidates"]] == ["best answer.", "middle answer.", "worst answer."]
    assert ranking["image"]["sha256"] and ranking["prompt"]["text"].startswith("Describe")
    assert rows[2]["spans"][0]["category"] == "objects" and rows[3]["no_hallucination"] is True
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert manifest["counts"] == counts and set(manifest["files"]) == {"labels.jsonl"}


def test_trl_dataset_pairs_and_spans(annotator: User, tmp_path: Path) -> None:
    from datasets import load_from_disk  # type: ignore[import-untyped]

    label_everything(annotator)
    counts = export("trl", [1, 2], tmp_path / "trl")
    # Two rankings of 3 give 3 pairs each; one correction gives a pair; "no hallucination" none.
    assert counts == {"pairs": 7}
    dataset = load_from_disk(str(tmp_path / "trl"))
    assert len(dataset) == 7
    first = dataset[0]
    assert first["prompt"][0]["content"][0]["type"] == "image"
    assert first["chosen"][0]["content"][0]["text"] == "best answer."
    assert first["rejected"][0]["content"][0]["text"] == "middle answer."
    assert first["images"][0].size == (8, 8)
    [correction] = [row for row in dataset if row["source"] == "correction"]
    chosen = correction["chosen"][0]["content"][0]["text"]
    rejected = correction["rejected"][0]["content"][0]["text"]
    [[c0, c1]], [[r0, r1]] = correction["chosen_spans"], correction["rejected_spans"]
    assert (chosen[c0:c1], rejected[r0:r1]) == ("box", "ball")


@pytest.mark.parametrize("fmt", ["factloop", "trl", "llava-rlhf", "rlhf-v"])
def test_the_same_database_state_gives_byte_identical_files(annotator: User, tmp_path: Path, fmt: str) -> None:
    label_everything(annotator)
    export(fmt, [1, 2], tmp_path / "a")
    export(fmt, [1, 2], tmp_path / "b")
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b
    for name in files_a:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_export_command_writes_and_refuses_bad_input(annotator: User, tmp_path: Path) -> None:
    import io

    from django.core.management import call_command
    from django.core.management.base import CommandError

    label_everything(annotator)
    out = io.StringIO()
    call_command("export_dataset", format="factloop", round=[1], out=tmp_path / "x", stdout=out)
    assert json.loads(out.getvalue())["ranking"] == 2
    with pytest.raises(CommandError, match="exists"):
        call_command("export_dataset", format="factloop", round=[1], out=tmp_path / "x")
    with pytest.raises(CommandError, match="no round 9"):
        call_command("export_dataset", "--round", "1", "--round", "9", format="trl", out=tmp_path / "y")
    assert not (tmp_path / "y").exists()
    with pytest.raises(CommandError, match="gold accuracy threshold is from 0 to 1"):
        call_command("export_dataset", format="trl", round=[1], out=tmp_path / "z", min_gold_accuracy=1.5)
    assert not (tmp_path / "z").exists()


def test_rows_stream_in_order_across_chunks(annotator: User, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from annotation.data import exporters

    label_everything(annotator)
    whole = [json.dumps(row, sort_keys=True) for row in exporters.factloop_rows([1, 2])]
    monkeypatch.setattr(exporters, "CHUNK", 1)
    assert [json.dumps(row, sort_keys=True) for row in exporters.factloop_rows([1, 2])] == whole
