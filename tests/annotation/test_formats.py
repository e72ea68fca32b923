"""The llava-rlhf and rlhf-v layouts out and back in, datasets-directory imports, aggregation
across the overlap, and the round trip into trl's DPO collator."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError

from annotation.data.exporters import Selection, export
from annotation.data.importers import ImportFailed, import_labels, import_prompts
from annotation.labeling import queue
from annotation.labeling.rounds import add_candidates, create_round, create_tasks, mark_gold, open_round
from annotation.labeling.submissions import submit_correction, submit_judgement
from annotation.models import Correction, Judgement, Prompt, Round, Task
from tests.annotation.test_export import ORIGINAL, label_everything
from tests.factories import make_round, make_user, png_bytes

pytestmark = pytest.mark.django_db


def test_llava_rlhf_layout_and_its_import_round_trip(annotator: User, tmp_path: Path) -> None:
    label_everything(annotator)
    counts = export("llava-rlhf", [1, 2], tmp_path / "llava")
    assert counts == {"pairs": 7, "images": 1}
    items = json.loads((tmp_path / "llava/llava_rlhf.json").read_text())
    first = items[0]
    assert set(first) >= {"id", "image", "conversations", "output_1", "output_2", "preference", "hallucination"}
    # The loader of LLaVA-RLHF puts each output in the final gpt turn (tests/annotation/test_released.py).
    assert first["conversations"] == [
        {"from": "human", "value": "<image>\nDescribe the image (0)."},
        {"from": "gpt", "value": "best answer."},
    ]
    # A before B as shown, A ranked first: preference 1. The third flagged as hallucinating.
    assert (first["output_1"]["value"], first["output_2"]["value"], first["preference"]) == (
        "best answer.",
        "middle answer.",
        1,
    )
    assert [item["hallucination"] for item in items[:3]] == [False, True, True]
    assert (tmp_path / "llava/images" / first["image"]).read_bytes()[:4] == b"\x89PNG"

    report, number = import_labels(tmp_path / "llava/llava_rlhf.json", "llava-rlhf", annotator="llava-import")
    assert number == 3 and report.rows == 7 and not report.problems
    assert not User.objects.get(username="llava-import").has_usable_password()
    assert report.prompts == 0  # the prompts were already there: reused
    assert Round.objects.get(number=3).status == Round.Status.FROZEN
    again = export("llava-rlhf", [3], tmp_path / "again")
    assert again["pairs"] == 7
    back = json.loads((tmp_path / "again/llava_rlhf.json").read_text())
    key = [(i["output_1"]["value"], i["output_2"]["value"], i["preference"], i["hallucination"]) for i in items]
    assert [(i["output_1"]["value"], i["output_2"]["value"], i["preference"], i["hallucination"]) for i in back] == key


def test_rlhf_v_layout_and_its_import_keeps_the_changed_spans(annotator: User, tmp_path: Path) -> None:
    label_everything(annotator)
    from datasets import Dataset  # type: ignore[import-untyped]

    export("rlhf-v", [2], tmp_path / "rlhfv")
    [item] = Dataset.from_parquet(str(tmp_path / "rlhfv/rlhf_v.parquet"))
    text = json.loads(item["text"])
    assert {k: text[k] for k in ("question", "chosen", "rejected")} == {
        "question": "Describe the image (0).",
        "chosen": ORIGINAL.replace("red ball", "red box"),
        "rejected": ORIGINAL,
    }
    assert text["factloop"]["source"] == "correction" and text["factloop"]["categories"] == ["objects"]
    assert item["ds_name"] == "factloop" and item["idx"] == 0 and item["image_path"].endswith(".png")
    assert item["image"].size == (8, 8)  # the image bytes are in the file
    _, number = import_labels(tmp_path / "rlhfv/rlhf_v.parquet", "rlhf-v")
    assert number is not None
    correction = Correction.objects.get(assignment__task__round__number=number)
    [span] = correction.spans
    assert (span["original_text"], span["corrected_text"], span["category"]) == ("ball", "box", "objects")


def test_bad_label_entries_are_named_and_nothing_is_imported(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png_bytes())
    (tmp_path / "bad.png").write_text("no")
    good = {
        "image": "a.png",
        "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}],
        "output_1": {"from": "llava", "value": "A ball."},
        "output_2": {"from": "llava", "value": "A kite."},
        "preference": 1,
        "hallucination": True,
    }
    entries = [
        good,
        good | {"preference": 3},
        good | {"output_2": {"value": "A ball."}},
        good | {"image": "gone.png"},
        good | {"image": "bad.png"},
        good | {"conversations": [{"from": "gpt", "value": "hi"}]},
        "text",
    ]
    path = tmp_path / "prefs.json"
    path.write_text(json.dumps(entries))
    with pytest.raises(ImportFailed) as failed:
        import_labels(path, "llava-rlhf")
    reasons = {p.row: p.reason for p in failed.value.report.problems}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7]
    assert "preference must be 1 or 2" in reasons[2] and "same text" in reasons[3]
    assert "missing file" in reasons[4] and "not a readable image" in reasons[5]
    assert "no human turn" in reasons[6] and "not a JSON object" in reasons[7]
    assert not Round.objects.exists() and not Prompt.objects.exists()
    err = io.StringIO()
    call_command("import_labels", str(path), format="llava-rlhf", skip_bad=True, stderr=err, stdout=io.StringIO())
    assert Judgement.objects.count() == 1 and err.getvalue().count("skipped row") == 6
    with pytest.raises(CommandError, match="not a readable JSON"):
        (tmp_path / "broken.json").write_text("[{")
        call_command("import_labels", str(tmp_path / "broken.json"), format="rlhf-v")


def test_prompts_from_a_datasets_directory(tmp_path: Path) -> None:
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    features = Features({"image": ImageFeature(), "prompt": Value("string"), "split": Value("string")})
    rows = {
        "image": [{"bytes": png_bytes((1, 2, 3)), "path": None}, {"bytes": png_bytes((3, 2, 1)), "path": None}],
        "prompt": ["Describe it.", "How many?"],
        "split": ["train", "heldout"],
    }
    Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "ds"))
    report = import_prompts(tmp_path / "ds")
    assert (report.rows, report.prompts, report.images) == (2, 2, 2)
    assert set(Prompt.objects.values_list("text", "split")) == {("Describe it.", "train"), ("How many?", "heldout")}
    # A bad row (unknown split) stops the import; nothing more is written.
    bad = rows | {"prompt": ["Again?", "And?"], "split": ["train", "test"]}
    Dataset.from_dict(bad, features=features).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(ImportFailed) as failed:
        import_prompts(tmp_path / "bad")
    assert [(p.row, "unknown split" in p.reason) for p in failed.value.report.problems] == [(2, True)]
    assert Prompt.objects.count() == 2


def test_majority_vote_and_gold_threshold(annotator: User, second_annotator: User, tmp_path: Path) -> None:
    third = make_user("cat", "annotator")
    round_ = make_round(tasks=2, overlap=3, texts=["kind answer.", "wrong answer."])
    gold = round_.tasks.order_by("pk").first()
    assert gold is not None
    mark_gold(gold, {"best_positions": [0]})
    picks = {"ann": 0, "bea": 0, "cat": 1}  # two say A is better, one says B
    for user in (annotator, second_annotator, third):
        while (lease := queue.next_assignment_for(user)) is not None:
            ids = [slot.candidate_id for slot in lease.task.slots.all()]
            pick = picks[user.username]
            submit_judgement(user, lease.pk, ranking=[ids[pick], ids[1 - pick]])
    plain = export("trl", Selection((1,), include_gold=True), tmp_path / "plain")
    assert plain == {"pairs": 6}
    majority = export("trl", Selection((1,), aggregate="majority", include_gold=True), tmp_path / "majority")
    assert majority == {"pairs": 2}
    from datasets import load_from_disk

    rows = load_from_disk(str(tmp_path / "majority"))
    assert [row["chosen"][0]["content"][0]["text"] for row in rows] == ["kind answer.", "kind answer."]
    assert set(rows["annotator"]) == {"majority"}
    # Gold tasks are left out of the pair formats unless asked for.
    assert export("trl", Selection((1,), aggregate="majority"), tmp_path / "no-gold") == {"pairs": 1}
    # Only annotators whose gold accuracy passes: cat answered the gold task wrongly.
    passing = export("factloop", Selection((1,), min_gold_accuracy=0.8), tmp_path / "passing")
    assert passing == {"ranking": 4, "correction": 0}
    labels = [json.loads(line) for line in (tmp_path / "passing/labels.jsonl").read_text().splitlines()]
    assert {row["annotator"] for row in labels} == {"ann", "bea"}
    manifest = json.loads((tmp_path / "passing/manifest.json").read_text())
    assert manifest["filters"] == {
        "aggregate": "none",
        "include_gold": False,
        "min_gold_accuracy": 0.8,
        "ai_pairs": False,
    }
    with pytest.raises(ValueError, match="aggregate applies to the pair formats"):
        export("factloop", Selection((1,), aggregate="majority"), tmp_path / "nope")
    assert not (tmp_path / "nope").exists()
    with pytest.raises(CommandError, match="--aggregate applies"):
        call_command("export_dataset", format="factloop", round=[1], out=tmp_path / "n2", aggregate="majority")


def test_export_of_imported_and_annotated_data_feeds_trls_dpo_collator(
    annotator: User, tmp_path: Path, base_policy: Path
) -> None:
    """Import prompts, annotate through the services, export, load with datasets and collate a
    batch with trl's vision preference collator and the tiny model's processor."""
    from datasets import load_from_disk
    from transformers import AutoProcessor
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes((9, 9, 9), size=32))
    manifest = tmp_path / "prompts.jsonl"
    manifest.write_text(
        json.dumps({"image": "a.png", "prompt": "Describe the image."})
        + "\n"
        + json.dumps({"image": "a.png", "prompt": "What is there?"})
        + "\n"
    )
    import_prompts(manifest, folder)
    round_ = create_round(policy_version="base")
    for prompt in Prompt.objects.order_by("pk"):
        add_candidates(round_, prompt, ["There is a red ball.", "There is a red ball and a kite."])
    create_tasks(round_, kind=Task.Kind.RANK)
    create_tasks(round_, kind=Task.Kind.CORRECT)
    open_round(round_)
    while (lease := queue.next_assignment_for(annotator)) is not None:
        ids = [slot.candidate_id for slot in lease.task.slots.all()]
        if lease.task.kind == Task.Kind.RANK:
            submit_judgement(annotator, lease.pk, ranking=ids)
        elif "kite" in lease.task.slots.get().candidate.text:
            submit_correction(annotator, lease.pk, corrected="There is a red ball and a box.")
        else:
            submit_correction(annotator, lease.pk, corrected=None, no_hallucination=True)
    counts = export("trl", [round_.number], tmp_path / "trl")
    assert counts == {"pairs": 4}  # 2 rankings + 2 corrections of the kite answer
    dataset = load_from_disk(str(tmp_path / "trl"))
    processor = AutoProcessor.from_pretrained(str(base_policy))
    collator = DataCollatorForVisionPreference(processor)
    examples = [{k: dataset[i][k] for k in ("prompt", "chosen", "rejected", "images")} for i in range(len(dataset))]
    batch = collator(examples)
    assert batch["input_ids"].shape[0] == 2 * len(dataset)  # chosen then rejected
    assert batch["pixel_values"].shape[0] == 2 * len(dataset)
    assert batch["completion_mask"].sum(dim=1).min() > 0
    image_token = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    assert (batch["input_ids"] == image_token).any(dim=1).all()  # every sequence sees the image
