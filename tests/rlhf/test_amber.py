"""AMBER's generative-task scores (rlhf/amber.py; contract.protocols "amber"): a description
is read as AMBER's scorer reads it (object words only, case-sensitive lemmas, safe words
counted but never flagged, the first matching entry covered), the scores are pooled over the
descriptions, and the protocol asks only the descriptions of a set that carries AMBER's
associations, refusing before anything is asked otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contract.comparison import draws, gate, indices, parse_gate, statistics, summary
from contract.heldout import ITEMS, Associations, HeldoutError, Item, image_name, read_heldout, write_heldout
from contract.methods import AMBER_CHAIR, AMBER_COG, AMBER_COVER, AMBER_HAL, CHAIR_I
from contract.protocols import AMBER_PROMPT, check_gate
from rlhf.amber import AmberReader
from rlhf.cli import main
from rlhf.hallucination import Request, evaluate
from tests.factories import png_bytes
from tests.rlhf.test_heldout import Scripted

ASSOCIATIONS = Associations(
    {
        "grass": ("ground",),
        "ground": ("floor",),
        "road": ("path", "street", "ground"),
        "dog": ("puppy",),
        "bird": (),
        "sky": (),
        "light": (),
        "cat": (),
    },
    safe_words=("light",),
)
TRUTH, HALLU = ("grass", "ground", "road"), ("dog", "bird")


def test_a_description_is_read_as_ambers_scorer_reads_it() -> None:
    reader = AmberReader(ASSOCIATIONS)
    text = "Dogs run on the ground by a street under the light; a Cat and two puppies watch the sky."
    # Capitalised words are no object words (WordNet's lemmas are lower case); "puppies" is
    # "puppy" by WordNet's -ies rule; "run", "watch" are no object words.
    assert reader.object_words(text) == ["ground", "street", "light", "puppy", "sky"]
    # ground: the first entry it matches is grass's associated word, so it covers grass (as
    # AMBER's code does), not the truth object "ground"; street covers road; light is a safe
    # word (counted, not flagged); puppy is dog's associated word: a hallucination that
    # counts for Cog; sky is a hallucination. [words, hallucinated, truth, covered, hallu, named]
    assert reader.row(text, TRUTH, HALLU) == [5, 2, 3, 2, 2, 1]
    assert reader.row("A floor.", TRUTH, HALLU) == [1, 0, 3, 1, 2, 0]  # floor: ground's word, covers ground
    assert reader.row("", TRUTH, HALLU) == [0, 0, 3, 0, 2, 0]
    assert reader.lemma("sunglasses") == "sunglass"  # WordNet's lemma, where the rules alone would keep the word
    with pytest.raises(HeldoutError, match="'unicorn' has no association"):
        reader.row("sky", ("unicorn",), ())


def test_the_scores_are_pooled_over_the_descriptions() -> None:
    records = {
        "describe": [],
        "qa": [],
        "pope": {},
        "amber": [[5, 2, 3, 2, 2, 1], [0, 0, 2, 0, 3, 0], [4, 0, 5, 4, 1, 0]],
    }
    metrics = statistics(records, indices(records))
    assert metrics[AMBER_CHAIR] == pytest.approx(2 / 9)  # hallucinated words over all object words
    assert metrics[AMBER_COVER] == pytest.approx(6 / 10)  # covered truth objects over truth objects
    assert metrics[AMBER_HAL] == pytest.approx(1 / 3)  # descriptions with any hallucination
    assert metrics[AMBER_COG] == pytest.approx(1 / 6)  # named likely hallucinations over those annotated
    assert CHAIR_I not in metrics  # no describe rows, no CHAIR_i
    # An evaluation without AMBER rows (every other protocol's) resamples as before: the
    # "amber" group is drawn last and, empty, draws nothing.
    older = {"describe": [[1, 0, 3]] * 4, "qa": [1, 0], "pope": {"random": [[1, 1]] * 3}}
    assert [{k: v for k, v in d.items() if k != "amber"} for d in draws(older, 5, 3)] == [
        {k: v for k, v in d.items() if k != "amber"} for d in draws({**older, "amber": []}, 5, 3)
    ]
    assert list(indices(older))[-1] == "amber" and all(d["amber"] == [] for d in draws(older, 5, 3))


def amber_set(folder: Path, *, associations: Associations | None = ASSOCIATIONS) -> Path:
    items = []
    for index in range(3):
        data = png_bytes((index * 50, 20, 30))
        item = Item(str(index), image_name(data, "png"), AMBER_PROMPT, objects=TRUTH[: index + 1], absent=HALLU)
        items.append((item, data))
    data = items[0][1]
    items.append((Item("q", items[0][0].image, "Is there grass?", kind="question", answer="yes"), data))
    classes = tuple((word, ()) for word in ("grass", "ground", "road", "dog", "bird", "sky", "light", "cat", "puppy"))
    write_heldout(folder, "amber", items, dataset="amber", classes=classes, associations=associations)
    return folder


def test_the_amber_protocol_asks_the_descriptions_and_scores_them_by_ambers_reading(tmp_path: Path) -> None:
    heldout = read_heldout(amber_set(tmp_path / "set"))
    assert heldout.associations == ASSOCIATIONS and heldout.items[0].absent == HALLU
    asked: list[Request] = []

    def answers(request: Request) -> str:
        asked.append(request)
        return (
            "The sky over a street, and a puppy."
            if request.image == heldout.image_bytes(heldout.items[1])
            else "Some grass."
        )

    result = evaluate(heldout, Scripted(answers), protocol="amber", bootstrap=50)
    assert [r.prompt for r in asked] == [AMBER_PROMPT] * 3  # the descriptions only: no question, no POPE
    # Item 1 (truth grass, ground): sky and street are hallucinations there (street is road's
    # word and road is not in this image); puppy counts for Cog. Items 0 and 2 say grass.
    assert result.records["amber"] == [[1, 0, 1, 1, 2, 0], [3, 3, 2, 0, 2, 1], [1, 0, 3, 1, 2, 0]]
    assert result.metrics[AMBER_CHAIR] == pytest.approx(3 / 5) and result.metrics[AMBER_COVER] == pytest.approx(2 / 6)
    assert result.metrics[AMBER_HAL] == pytest.approx(1 / 3) and result.metrics[AMBER_COG] == pytest.approx(1 / 6)
    assert result.settings["protocol_size"] == {"pope_images": 0, "describe_items": 3}
    assert result.settings["comparable"] is False  # AMBER has 1,004 images; this set 3
    # FactLoop's own protocol on the same set keeps its records' shape: no AMBER rows.
    assert "amber" not in evaluate(heldout, Scripted(lambda r: "Some grass."), bootstrap=10).records


def test_a_set_without_ambers_data_is_refused_before_anything_is_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    heldout = read_heldout(amber_set(tmp_path / "set", associations=None))

    def never(request: Request) -> str:
        raise AssertionError("asked")

    with pytest.raises(HeldoutError, match=r"needs AMBER's associations and safe words.*import_amber"):
        evaluate(heldout, Scripted(never), protocol="amber")
    # The command line refuses it before it loads a model ("no-such-model" is never opened).
    assert main(["evaluate", "--data", str(tmp_path / "set"), "--model", "no-such-model", "--protocol", "amber"]) == 2
    assert "needs AMBER's associations" in capsys.readouterr().err
    # Items without `absent` are written as before, so an existing set keeps its digest.
    lines = [json.loads(line) for line in (tmp_path / "set" / ITEMS).read_text().splitlines()]
    assert ["absent" in line for line in lines] == [True, True, True, False]


def test_the_gate_under_amber_takes_ambers_metrics_only(tmp_path: Path) -> None:
    heldout = read_heldout(amber_set(tmp_path / "set"))
    careful = evaluate(heldout, Scripted(lambda r: "Some grass."), protocol="amber", bootstrap=50)
    inventive = evaluate(heldout, Scripted(lambda r: "Some grass, a sky and a puppy."), protocol="amber", bootstrap=50)
    decision = gate(inventive, careful, parse_gate("amber_chair,amber_cover"), samples=200)
    assert not decision["passed"] and "worse on AMBER CHAIR by 0.667" in summary(decision)
    assert gate(careful, inventive, parse_gate("amber_chair"), samples=200)["passed"]
    check_gate("amber", [AMBER_CHAIR, AMBER_COVER])
    with pytest.raises(ValueError, match="does not measure chair_i"):
        check_gate("amber", [CHAIR_I])
    with pytest.raises(ValueError, match="does not measure amber_hal"):
        check_gate("factloop", [AMBER_HAL])
    assert parse_gate("amber_chair,amber_cover:0.01") == [(AMBER_CHAIR, 0.0), (AMBER_COVER, 0.01)]
