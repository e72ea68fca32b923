"""The released layouts both ways (annotation/data/released.py): exports read by loaders that
mirror the authors' checks, their released files imported as released, every bad row named,
and round trips that keep, field by field, what each layout carries (the table in
annotation/data/released.py and docs/administering.md)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from annotation.data.exporters import export
from annotation.data.images import add_image, add_prompt
from annotation.data.importers import ImportFailed, import_labels
from annotation.data.released import RLHF_V_COLUMNS, rlhf_v_features
from annotation.labeling import queue
from annotation.labeling.rounds import add_candidates, create_round, create_tasks, open_round
from annotation.labeling.submissions import submit_correction, submit_judgement
from annotation.models import Correction, Image, Judgement, Prompt, Round, Task
from tests.factories import make_round, png_bytes

pytestmark = pytest.mark.django_db

ORIGINAL = "A large red ball is at the top left. A small blue moon is in the center."
FIXED = ORIGINAL.replace("red ball", "red box")


# ---------------------------------------------------------------------------------------
# Loaders that mirror the published ones


def llava_rlhf_reward_loader(path: Path, image_folder: Path, captions: dict[str, list[str]]) -> list[dict[str, Any]]:
    """The checks of LLaVA-RLHF's reward-model data loader (github.com/llava-rlhf/LLaVA-RLHF,
    RLHF/data_utils/data_utils_rm.py): `make_binary_reward_modeling_data_module` reads the
    file with `datasets.load_dataset("json")`; `BinaryRewardModelingDataset` reads it with
    `json.load` and opens `os.path.join(image_folder, image)` as RGB;
    `preprocess_for_reward_modeling` maps preference through {1: 0, 2: 1}, looks the image's
    captions up by its `image` string, asserts the conversation ends with a gpt turn and
    puts each output's value there."""
    from datasets import load_dataset  # type: ignore[import-untyped]
    from PIL import Image as PILImage

    assert len(load_dataset("json", data_files=str(path))["train"]) > 0
    out = []
    with open(path) as handle:
        examples = json.load(handle)
    for example in examples:
        choice = {1: 0, 2: 1}[example["preference"]]
        PILImage.open(os.path.join(image_folder, example["image"])).convert("RGB")
        image_captions = captions[example["image"]]
        texts = []
        for key in ("output_1", "output_2"):
            turns = [dict(turn) for turn in example["conversations"]]
            assert turns[-1]["from"] == "gpt"
            turns[-1]["value"] = example[key]["value"]
            texts.append(turns)
        out.append({"choice": choice, "texts": texts, "captions": image_captions})
    return out


def rlhf_v_loader(path: Path) -> list[dict[str, Any]]:
    """What RLHF-V's code reads from its released parquet: the columns and types of the
    dataset card (huggingface.co/datasets/openbmb/RLHF-V-Dataset), `load_dataset` with the
    image cast undecoded, the image bytes opened as RGB, and `text` parsed as JSON of
    question, chosen and rejected (github.com/RLHF-V/RLAIF-V, muffin/data/datasets.py, which
    RLHF-V's data layout feeds; RLHF-V's convert_parquet_to_tsv_demo.py reads the same
    fields)."""
    from datasets import Image as ImageFeature
    from datasets import load_dataset
    from PIL import Image as PILImage

    data = load_dataset("parquet", data_files=str(path))["train"]
    assert {name: str(feature.dtype) for name, feature in data.features.items()} == {
        name: ("PIL.Image.Image" if kind == "image" else kind) for name, kind in RLHF_V_COLUMNS.items()
    }
    data = data.cast_column("image", ImageFeature(decode=False))
    out = []
    for sample in data:
        image = PILImage.open(io.BytesIO(sample["image"]["bytes"])).convert("RGB")
        text = json.loads(sample["text"])
        question = {"from": "human", "value": f"<image>\n{text['question']}"}
        out.append(
            {
                "image": image,
                "question": question,
                "chosen": {"from": "gpt", "value": text["chosen"]},
                "rejected": {"from": "gpt", "value": text["rejected"]},
                "metainfo": {k: sample[k] for k in ("origin_dataset", "origin_split", "idx", "image_path")},
            }
        )
    return out


# ---------------------------------------------------------------------------------------
# Data


def _named_round(annotator: User) -> None:
    """Round 1: a 3-way ranking with a Q1 tie between the first two (ordered by Q2), on an
    image imported as `coco/0001.png`, a held-out prompt with a reference answer and one
    earlier turn. Round 2: a correction with an error type, and a "no hallucination"."""
    image = add_image(png_bytes((1, 2, 3)), source="coco/0001.png", facts={"classes": ["ball"]})
    prompt = add_prompt(
        image,
        "And the colour?",
        split=Prompt.Split.HELDOUT,
        context=[{"role": "user", "content": "What is it?"}, {"role": "assistant", "content": "A ball."}],
        meta={"reference": "It is red."},
    )
    round_ = create_round(policy_version="test-policy")
    add_candidates(round_, prompt, ["best.", "second.", "worst."])
    create_tasks(round_, kind=Task.Kind.RANK, overlap=1, per_task=3)
    open_round(round_)
    lease = queue.next_assignment_for(annotator)
    assert lease is not None
    a, b, c = (slot.candidate_id for slot in lease.task.slots.order_by("position"))
    submit_judgement(annotator, lease.pk, ranking=[a, b, c], tiers=[[a, b], [c]], hallucinated=[c])
    make_round(tasks=2, kind=Task.Kind.CORRECT, texts=[ORIGINAL])
    for corrected in (FIXED, None):
        lease = queue.next_assignment_for(annotator)
        assert lease is not None
        if corrected:
            submit_correction(annotator, lease.pk, corrected=corrected, span_categories=["objects"])
        else:
            submit_correction(annotator, lease.pk, corrected=None, no_hallucination=True)


def _labels(round_number: int) -> list[dict[str, Any]]:
    """Each label of a round as what a format can carry, in a comparable form."""
    out: list[dict[str, Any]] = []
    for task in Task.objects.filter(round__number=round_number).order_by("pk"):
        assignment = task.assignments.get()
        prompt, image = task.prompt, task.prompt.image
        texts = {slot.candidate_id: slot.candidate.text for slot in task.slots.all()}
        common = {
            "image": (image.sha256, image.source, image.facts),
            "prompt": (prompt.text, prompt.context, prompt.split, prompt.meta),
        }
        if task.kind == Task.Kind.RANK:
            judgement = assignment.judgement
            out.append(
                common
                | {
                    "ranking": [texts[c] for c in judgement.ranking],
                    "tiers": [sorted(texts[c] for c in tier) for tier in judgement.tiers],
                    "hallucinated": sorted(texts[c] for c in judgement.hallucinated),
                }
            )
        else:
            correction = assignment.correction
            out.append(common | {"corrected": (correction.original, correction.corrected, correction.spans)})
    return out


# ---------------------------------------------------------------------------------------
# Exports the authors' loaders read


def test_llava_rlhf_export_passes_the_reward_model_loader(annotator: User, tmp_path: Path) -> None:
    _named_round(annotator)
    export("llava-rlhf", [1, 2], tmp_path / "out")
    items = json.loads((tmp_path / "out/llava_rlhf.json").read_text())
    unnamed = Image.objects.exclude(source="coco/0001.png").get()
    assert {item["image"] for item in items} == {"coco/0001.png", f"{unnamed.sha256}.png"}
    loaded = llava_rlhf_reward_loader(
        tmp_path / "out/llava_rlhf.json",
        tmp_path / "out/images",
        {item["image"]: ["a caption"] for item in items},
    )
    assert len(loaded) == 4  # three pairs of the ranking, one correction
    first = items[0]
    assert first["conversations"] == [
        {"from": "human", "value": "<image>\nWhat is it?"},
        {"from": "gpt", "value": "A ball."},
        {"from": "human", "value": "And the colour?"},
        {"from": "gpt", "value": "It is red."},  # the reference answer
    ]
    assert loaded[0]["texts"][0][-1] == {"from": "gpt", "value": "best."}


def test_rlhf_v_export_is_parquet_in_the_released_columns(annotator: User, tmp_path: Path) -> None:
    _named_round(annotator)
    counts = export("rlhf-v", [1, 2], tmp_path / "out")
    assert counts == {"pairs": 4, "images": 2}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.json", "rlhf_v.parquet"]
    loaded = rlhf_v_loader(tmp_path / "out/rlhf_v.parquet")
    assert [row["metainfo"]["idx"] for row in loaded] == [0, 1, 2, 3]
    assert loaded[0]["image"].size == (8, 8) and loaded[0]["metainfo"]["image_path"] == "coco/0001.png"
    assert loaded[0]["metainfo"]["origin_split"] == "heldout"
    assert (loaded[3]["chosen"]["value"], loaded[3]["rejected"]["value"]) == (FIXED, ORIGINAL)


# ---------------------------------------------------------------------------------------
# Released files, as released


def _released_llava(folder: Path) -> Path:
    (folder / "images").mkdir(parents=True)
    (folder / "images/COCO_train2014_000000000009.jpg").write_bytes(png_bytes((10, 200, 10)))
    entries = [
        {
            "id": "9_0",
            "image": "COCO_train2014_000000000009.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is on the plate?"},
                {"from": "gpt", "value": "Broccoli and rice."},
            ],
            "output_1": {"from": "llava", "value": "Broccoli, rice and a fork."},
            "output_2": {"from": "llava", "value": "Broccoli and rice."},
            "preference": 2,
            "hallucination": 1,
            "flip": False,
        }
    ]
    path = folder / "human_preference.json"
    path.write_text(json.dumps(entries))
    return path


def _released_rlhf_v(path: Path, rows: list[dict[str, Any]]) -> Path:
    from datasets import Dataset

    Dataset.from_list(rows, features=rlhf_v_features()).to_parquet(str(path))
    return path


def _rlhf_v_row(idx: int, image: bytes | None = None, **text: Any) -> dict[str, Any]:
    body = {"question": "Describe the image.", "chosen": "A green ball.", "rejected": "A red ball and a cat."} | text
    return {
        "ds_name": "RLHF-V-Hall_v0",
        "image": {"bytes": image if image is not None else png_bytes((30, 30, 200)), "path": None},
        "text": json.dumps(body),
        "origin_dataset": "VQAv2",
        "origin_split": json.dumps({"split": "train"}),
        "idx": idx,
        "image_path": f"images/{idx}.jpg",
    }


def test_released_llava_rlhf_file_imports_and_exports_back_unchanged(tmp_path: Path) -> None:
    path = _released_llava(tmp_path / "released")
    report, number = import_labels(path, "llava-rlhf", images=tmp_path / "released/images")
    assert number == 1 and not report.problems
    judgement = Judgement.objects.get()
    assert [c.text for c in judgement.assignment.task.candidates.order_by("index")] == [
        "Broccoli, rice and a fork.",
        "Broccoli and rice.",
    ]
    assert judgement.preferred.text == "Broccoli and rice." and judgement.rejected_hallucinates
    prompt = Prompt.objects.get()
    assert prompt.meta == {"reference": "Broccoli and rice."} and prompt.image.source.startswith("COCO_")
    export("llava-rlhf", [1], tmp_path / "again")
    [back] = json.loads((tmp_path / "again/llava_rlhf.json").read_text())
    released = json.loads(path.read_text())[0]
    assert {k: v for k, v in back.items() if k != "factloop"} == released
    assert (tmp_path / "again/images/COCO_train2014_000000000009.jpg").is_file()


def test_released_rlhf_v_parquet_imports_and_exports_back(tmp_path: Path) -> None:
    path = _released_rlhf_v(tmp_path / "RLHF-V-Dataset.parquet", [_rlhf_v_row(7), _rlhf_v_row(8, chosen="A ball.")])
    report, number = import_labels(path, "rlhf-v")
    assert number == 1 and report.rows == 2 and not report.problems
    corrections = Correction.objects.order_by("pk")
    assert [c.corrected for c in corrections] == ["A green ball.", "A ball."]
    # The server's spans: "ball" (one word between two changes) is absorbed (contract/spans.py).
    spans = [(s["original_text"], s["corrected_text"]) for s in corrections[0].spans]
    assert spans == [("red ball and a cat", "green ball")]
    export("rlhf-v", [1], tmp_path / "again")
    before, after = rlhf_v_loader(path), rlhf_v_loader(tmp_path / "again/rlhf_v.parquet")
    for old, new in zip(before, after, strict=True):
        assert old["metainfo"] == new["metainfo"]  # origin_dataset, origin_split, idx, image_path
        assert (old["question"], old["chosen"], old["rejected"]) == (new["question"], new["chosen"], new["rejected"])
        assert old["image"].tobytes() == new["image"].tobytes()


def test_bad_released_rows_are_all_named_and_nothing_is_written(tmp_path: Path) -> None:
    rows = [
        _rlhf_v_row(0),
        _rlhf_v_row(1, image=b"not an image"),
        _rlhf_v_row(2) | {"text": "{broken"},
        _rlhf_v_row(3, chosen="A red ball and a cat."),  # chosen == rejected
        _rlhf_v_row(4, question=""),
    ]
    path = _released_rlhf_v(tmp_path / "bad.parquet", rows)
    with pytest.raises(ImportFailed) as failed:
        import_labels(path, "rlhf-v")
    reasons = {p.row: p.reason for p in failed.value.report.problems}
    assert sorted(reasons) == [2, 3, 4, 5]
    assert "not a readable image" in reasons[2] and "not valid JSON" in reasons[3]
    assert "same text" in reasons[4] and "needs a question" in reasons[5]
    assert not Round.objects.exists() and not Image.objects.exists()

    from datasets import Dataset

    Dataset.from_list([{k: v for k, v in _rlhf_v_row(0).items() if k != "text"}]).to_parquet(
        str(tmp_path / "m.parquet")
    )
    with pytest.raises(ValueError, match="missing column 'text'"):
        import_labels(tmp_path / "m.parquet", "rlhf-v")
    (tmp_path / "not.parquet").write_text("nope")
    with pytest.raises(ValueError, match="not a readable parquet"):
        import_labels(tmp_path / "not.parquet", "rlhf-v")

    released = json.loads(_released_llava(tmp_path / "llava").read_text())[0]
    bad = [released | {"preference": "2"}, released | {"conversations": []}, released, released | {"image": "../x.jpg"}]
    (tmp_path / "llava/bad.json").write_text(json.dumps(bad))
    with pytest.raises(ImportFailed) as failed:
        import_labels(tmp_path / "llava/bad.json", "llava-rlhf")
    reasons = {p.row: p.reason for p in failed.value.report.problems}
    assert sorted(reasons) == [1, 2, 4]
    assert "preference must be 1 or 2" in reasons[1] and "no human turn" in reasons[2] and "outside" in reasons[4]
    assert not Round.objects.exists() and not Prompt.objects.exists()


# ---------------------------------------------------------------------------------------
# Round trips


def _wipe() -> None:
    Judgement.objects.all().delete()
    Correction.objects.all().delete()
    Round.objects.all().delete()
    Prompt.objects.all().delete()
    Image.objects.all().delete()


@pytest.mark.parametrize("fmt", ["llava-rlhf", "rlhf-v"])
def test_a_round_trip_keeps_every_field_the_layout_carries(annotator: User, tmp_path: Path, fmt: str) -> None:
    """Field by field (annotation/data/released.py's table): image bytes, name and facts; the
    prompt, earlier turns, split and meta (the reference answer); a 3-way ranking with its Q1
    tie and flags, regrouped from its three pairs; the correction with its error type.
    Dropped: the "no hallucination" label (no pair), rationale and timing."""
    _named_round(annotator)
    data = {"llava-rlhf": "llava_rlhf.json", "rlhf-v": "rlhf_v.parquet"}[fmt]
    export(fmt, [1, 2], tmp_path / "out")
    originals = _labels(1) + [label for label in _labels(2) if label["corrected"][2]]
    _wipe()  # into an empty database: everything must come from the file
    report, number = import_labels(tmp_path / "out" / data, fmt)
    assert number == 1 and report.rows == 4 and not report.problems
    imported = _labels(1)
    assert len(imported) == 2  # the ranking's three pairs came back as one 3-way ranking
    assert imported[0] == originals[0]
    # The correction's image had no file name (its source is "test-..."): it is named by its digest.
    sha, _, facts = originals[1]["image"]
    assert imported[1] == originals[1] | {"image": (sha, f"{sha}.png", facts)}
    assert Task.objects.get(kind=Task.Kind.RANK).origin["factloop"]["annotator"] == "ann"
    # And out again: the same file, but for the tasks' new ids in the extras.
    export(fmt, [1], tmp_path / "again")
    if fmt == "llava-rlhf":
        first = json.loads((tmp_path / "out" / data).read_text())
        second = json.loads((tmp_path / "again" / data).read_text())
        assert [{k: v for k, v in i.items() if k != "factloop"} for i in first] == [
            {k: v for k, v in i.items() if k != "factloop"} for i in second
        ]
    else:
        first_rows = rlhf_v_loader(tmp_path / "out" / data)
        second_rows = rlhf_v_loader(tmp_path / "again" / data)
        assert [(r["question"], r["chosen"], r["rejected"], r["metainfo"]) for r in first_rows] == [
            (r["question"], r["chosen"], r["rejected"], r["metainfo"]) for r in second_rows
        ]


def test_a_pair_that_disagrees_with_its_ranking_label_is_refused(annotator: User, tmp_path: Path) -> None:
    _named_round(annotator)
    export("llava-rlhf", [1], tmp_path / "out")
    items = json.loads((tmp_path / "out/llava_rlhf.json").read_text())
    items[1]["preference"] = 3 - items[1]["preference"]  # flip one of the three pairs
    (tmp_path / "out/llava_rlhf.json").write_text(json.dumps(items))
    with pytest.raises(ImportFailed) as failed:
        import_labels(tmp_path / "out/llava_rlhf.json", "llava-rlhf")
    [problem] = failed.value.report.problems
    assert problem.row == 2 and "disagrees with its ranking" in problem.reason
