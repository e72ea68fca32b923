"""`manage.py import_amber`: AMBER's generative task from the files of its repository
becomes held-out description prompts whose facts are AMBER's truth and hallu objects, in a
vocabulary registered with AMBER's associations and safe words; the exported held-out set
carries them to the evaluator's "amber" protocol. Bad input is refused whole."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from annotation.loop.evaluation import amber_responses, export_heldout
from annotation.models import Dataset, Image, Prompt, Vocabulary
from annotation.rules.datasets import scorable
from annotation.rules.errors import Refused
from contract.heldout import read_heldout
from contract.methods import AMBER_CHAIR, AMBER_COVER
from rlhf.hallucination import Request, evaluate
from tests.factories import png_bytes
from tests.rlhf.test_heldout import Scripted

pytestmark = pytest.mark.django_db

RELATION = {"grass": ["ground"], "road": ["street"], "dog": ["puppy"], "bird": [], "sky": [], "light": []}


def amber_checkout(root: Path, *, annotations: list[dict[str, Any]] | None = None) -> Path:
    """AMBER's layout: data/annotations.json, data/query/query_generative.json,
    data/relation.json, data/safe_words.txt (no newline after its last word, as AMBER's)."""
    (root / "data" / "query").mkdir(parents=True)
    (root / "images").mkdir()
    rows = annotations or [
        {"id": 1, "type": "generative", "truth": ["grass", "road"], "hallu": ["dog", "bird"]},
        {"id": 2, "type": "generative", "truth": ["sky"], "hallu": ["dog"]},
        {"id": 3, "type": "discriminative-hallucination", "truth": "no"},
    ]
    (root / "data" / "annotations.json").write_text(json.dumps(rows))
    queries = [{"id": n, "image": f"AMBER_{n}.png", "query": "Describe this image."} for n in (1, 2)]
    (root / "data" / "query" / "query_generative.json").write_text(json.dumps(queries))
    (root / "data" / "relation.json").write_text(json.dumps(RELATION))
    (root / "data" / "safe_words.txt").write_text("orange\nlight")
    for n in (1, 2):
        (root / "images" / f"AMBER_{n}.png").write_bytes(png_bytes((n * 60, 5, 5)))
    return root


def test_ambers_files_become_a_dataset_its_vocabulary_and_a_set_the_amber_protocol_scores(tmp_path: Path) -> None:
    root = amber_checkout(tmp_path / "AMBER")
    out = io.StringIO()
    call_command("import_amber", amber=root, images=root / "images", stdout=out)
    assert "imported 2 prompts on 2 images" in out.getvalue() and "dataset 'amber'" in out.getvalue()
    prompts = list(Prompt.objects.filter(dataset__name="amber").order_by("pk"))
    assert [p.text for p in prompts] == ["Describe this image."] * 2
    assert prompts[0].image.facts == {
        "classes": ["grass", "road"],
        "absent": ["dog", "bird"],
        "amber_id": 1,
        "vocabulary": "amber",
    }
    vocabulary = Vocabulary.objects.get(name="amber")
    # AMBER's annotated objects (the associations' keys); the words only associated are
    # its scorer's alone.
    assert vocabulary.classes == [[name, []] for name in RELATION]
    assert vocabulary.associations == {"associations": RELATION, "safe_words": ["orange", "light"]}

    # The same files again: nothing new, the vocabulary kept.
    again = io.StringIO()
    call_command("import_amber", amber=root, images=root / "images", stdout=again)
    assert "2 already imported" in again.getvalue() and Vocabulary.objects.count() == 1

    heldout = (
        read_heldout(tmp_path / "set") if export_heldout(tmp_path / "set", Dataset.objects.get(name="amber")) else None
    )
    assert heldout is not None and heldout.associations is not None
    assert heldout.associations.safe_words == ("orange", "light")
    assert [(i.objects, i.absent) for i in heldout.items] == [
        (("grass", "road"), ("dog", "bird")),
        (("sky",), ("dog",)),
    ]

    def answers(request: Request) -> str:  # image 1: two truth objects named; image 2: a puppy under the sky
        return "grass by the street" if request.image == heldout.image_bytes(heldout.items[0]) else "a puppy, sky"

    result = evaluate(heldout, Scripted(answers), protocol="amber", bootstrap=20)
    assert result.records["amber"] == [[2, 0, 2, 2, 2, 0], [2, 1, 1, 1, 1, 1]]
    assert result.metrics[AMBER_CHAIR] == pytest.approx(1 / 4) and result.metrics[AMBER_COVER] == 1.0

    # The descriptions, by AMBER's ids, as AMBER's own inference.py reads them (--inference_data).
    assert amber_responses(dataclasses.asdict(result)) == [
        {"id": 1, "response": "grass by the street"},
        {"id": 2, "response": "a puppy, sky"},
    ]
    with pytest.raises(Refused, match="only the amber protocol keeps them"):
        amber_responses(dataclasses.asdict(evaluate(heldout, Scripted(answers), bootstrap=10)))
    with pytest.raises(CommandError, match="--amber-responses needs --protocol amber"):
        call_command("evaluate", version="v1", amber_responses=tmp_path / "responses.json")


@pytest.mark.parametrize(
    ("annotations", "reason"),
    [
        ([{"id": 1, "type": "generative", "truth": ["unicorn"], "hallu": []}], "row 1: annotation 1: objects without"),
        ([{"id": 1, "type": "generative", "truth": "grass", "hallu": []}], "truth and hallu must be lists"),
        ([{"id": 2, "type": "generative", "truth": ["sky"], "hallu": []}], "row 1: query 1: no generative"),
    ],
)
def test_bad_amber_rows_are_refused_and_nothing_is_written(
    tmp_path: Path, annotations: list[dict[str, Any]], reason: str
) -> None:
    root = amber_checkout(tmp_path / "AMBER", annotations=annotations)
    errors = io.StringIO()
    with pytest.raises(CommandError, match="nothing was imported"):
        call_command("import_amber", amber=root, images=root / "images", stdout=io.StringIO(), stderr=errors)
    assert reason in errors.getvalue()
    # Not even the vocabulary: it goes with the rows.
    assert not Prompt.objects.exists() and not Image.objects.exists() and not Vocabulary.objects.exists()


def test_unreadable_amber_files_and_a_taken_vocabulary_are_refused(tmp_path: Path) -> None:
    root = amber_checkout(tmp_path / "AMBER")
    with pytest.raises(CommandError, match=r"give --amber .* or --annotations, --queries"):
        call_command("import_amber", images=root / "images", relation=root / "data" / "relation.json")
    (root / "data" / "relation.json").write_text('{"grass": "ground"}')
    with pytest.raises(CommandError, match="association 'grass': a list of non-empty words"):
        call_command("import_amber", amber=root, images=root / "images")
    (root / "data" / "relation.json").write_text(json.dumps(RELATION))
    with pytest.raises(CommandError, match="cannot read the safe words"):
        call_command("import_amber", amber=root, images=root / "images", safe_words=root / "missing.txt")
    (root / "queries.json").write_text('{"id": 1}')
    with pytest.raises(CommandError, match="are AMBER's lists"):
        call_command("import_amber", amber=root, images=root / "images", queries=root / "queries.json")
    assert not Prompt.objects.exists() and not Vocabulary.objects.exists()
    call_command("register_vocabulary", "amber", str(_write(tmp_path / "v.json", ["grass"])), stdout=io.StringIO())
    with pytest.raises(CommandError, match=r"vocabulary 'amber' exists.*--vocabulary names another"):
        call_command("import_amber", amber=root, images=root / "images")
    # A set in a vocabulary without AMBER's data is refused the amber protocol before any
    # evaluation or training starts (evaluate, train_round's plan).
    plain = Dataset.objects.create(name="plain", vocabulary="amber")
    with pytest.raises(Refused, match=r"amber protocol scores by AMBER's associations .* 'plain'"):
        scorable(plain, protocol="amber")
    call_command("import_amber", amber=root, images=root / "images", vocabulary="amber-words", stdout=io.StringIO())
    assert Dataset.objects.get(name="amber").vocabulary == "amber-words"
    assert scorable(Dataset.objects.get(name="amber"), protocol="amber")["items"] == 2


def _write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path
