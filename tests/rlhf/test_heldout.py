"""The held-out evaluator's scoring and its gate, on answers written here (a scripted
responder stands for a policy whose outputs are known), so each figure can be checked by
hand: CHAIR with caption objects, POPE from the set's own objects, question accuracy, the
bootstrap intervals and the paired comparison."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from contract.comparison import compare, gate, parse_gate
from contract.heldout import COCO_CLASSES, Evaluation, HeldoutError, Item, image_name, read_heldout, write_heldout
from contract.methods import DEFAULT_GATE
from rlhf.cli import main
from rlhf.coco import CocoObjects
from rlhf.hallucination import Request, evaluate
from tests.factories import png_bytes


@dataclasses.dataclass
class Scripted:
    """Answers by rule: `describe(prompt index)` for descriptions, POPE's "yes" when the
    asked object is in `believes`."""

    answers: Callable[[Request], str]
    name: str = "scripted"

    def answer(self, requests: Sequence[Request]) -> list[str]:
        return [self.answers(request) for request in requests]


def make_set(folder: Path, n: int = 30) -> Path:
    items = []
    for index in range(n):
        data = png_bytes((index * 7 % 255, 10, 10))
        objects = ("dog", "person") if index % 2 else ("cat",)
        item = Item(str(index), image_name(data, "png"), "Describe this image.", objects=objects)
        items.append((item, data))
    items.append(
        (
            Item("q", items[0][0].image, "Is the cat black?", kind="question", answer="yes", objects=("cat",)),
            items[0][1],
        )
    )
    write_heldout(folder, "coco", items)
    return folder


def test_chair_pope_and_accuracy_are_scored_from_the_items_facts(tmp_path: Path) -> None:
    heldout = read_heldout(make_set(tmp_path / "set", 10))

    def answers(request: Request) -> str:
        if request.prompt.startswith("Is there a "):
            return "Yes." if "dog" in request.prompt or "cat" in request.prompt else "No, there is not."
        if request.prompt.startswith("Is the cat"):
            return "Yes, it is black."
        return "A dog on the grass."  # right on the odd images (dog, person), wrong on the even (cat)

    result = evaluate(heldout, Scripted(answers), bootstrap=200)
    # 5 of 10 descriptions name an absent dog; each names one object.
    assert result.metrics["chair_i"] == 0.5 and result.metrics["chair_s"] == 0.5
    assert result.metrics["qa_accuracy"] == 1.0 and result.metrics["mean_words"] == 5.0
    assert result.metrics["empty_share"] == 0.0
    # POPE: 10 present probes (one per image) all "yes"-able only for cat/dog; person present
    # on odd images may be asked and answered "no".
    assert len(result.records["pope"]["random"]) == 20
    for key, value in result.metrics.items():
        low, high = result.intervals[key]
        assert low <= value <= high, key


def test_reference_captions_add_to_the_truth_as_chair_does(tmp_path: Path) -> None:
    data = png_bytes()
    item = Item("1", image_name(data, "png"), "Describe.", objects=("person",), captions=("A man with his dog.",))
    write_heldout(tmp_path / "s", "coco", [(item, data)])
    heldout = read_heldout(tmp_path / "s")
    result = evaluate(heldout, Scripted(lambda r: "A person and a dog." if r.prompt == "Describe." else "no"))
    assert result.metrics["chair_i"] == 0.0  # the dog is in a reference caption


def test_the_gate_passes_an_equal_policy_and_refuses_a_clearly_worse_one(tmp_path: Path) -> None:
    heldout = read_heldout(make_set(tmp_path / "set", 40))
    good = evaluate(heldout, Scripted(lambda r: "A cat." if r.prompt == "Describe this image." else "No."))
    worse = evaluate(
        heldout, Scripted(lambda r: "A cat and a giraffe." if r.prompt == "Describe this image." else "No.")
    )
    same = compare(good, good, "chair_i")
    assert same["passed"] and same["worse_by"] == 0.0 and same["worse_by_interval"] == [0.0, 0.0]
    decision = compare(worse, good, "chair_i")
    assert not decision["passed"] and decision["worse_by"] > 0 and decision["worse_by_interval"][0] > 0
    assert compare(good, worse, "chair_i")["passed"]
    # A margin above the whole interval lets it through; a negative margin asks for a gain.
    assert compare(worse, good, "chair_i", margin=1.0)["passed"]
    assert not compare(good, good, "chair_i", margin=-0.1)["passed"]
    with pytest.raises(ValueError, match="gate metric"):
        compare(good, good, "bleu")
    other = dataclasses.replace(good, heldout_digest="other")
    with pytest.raises(HeldoutError, match="different held-out sets"):
        compare(good, other, "chair_i")


def test_coverage_is_the_share_of_an_images_objects_a_description_names(tmp_path: Path) -> None:
    """AMBER's Cover on COCO-style items: the item's classes are the annotated objects."""
    heldout = read_heldout(make_set(tmp_path / "set", 20))
    full = evaluate(heldout, Scripted(lambda r: "A cat, a dog and a person." if r.prompt.startswith("Desc") else "no"))
    brief = evaluate(heldout, Scripted(lambda r: "A dog." if r.prompt.startswith("Desc") else "no"))
    # Full: every object named (the cat is a hallucination on the dog images).
    assert full.metrics["coverage"] == 1.0
    # Brief: nothing on the cat images, one of two on the dog-and-person images.
    assert brief.metrics["coverage"] == pytest.approx((10 * 0 + 10 * 0.5) / 20)
    low, high = brief.intervals["coverage"]
    assert low <= 0.25 <= high
    # An item without objects counts the classes its captions name.
    data = png_bytes()
    item = Item("1", image_name(data, "png"), "Describe.", captions=("A man with his dog.",))
    write_heldout(tmp_path / "captions", "coco", [(item, data)])
    captioned = evaluate(
        read_heldout(tmp_path / "captions"), Scripted(lambda r: "A dog." if r.prompt == "Describe." else "no")
    )
    assert captioned.metrics["coverage"] == 0.5


def test_the_default_gate_refuses_a_policy_that_says_less_and_says_so_in_words(tmp_path: Path) -> None:
    heldout = read_heldout(make_set(tmp_path / "set", 40))

    by_image = {(tmp_path / "set" / item.image).read_bytes(): item.objects for item in heldout.items}

    def policy(describe: Callable[[tuple[str, ...]], str]) -> Evaluation:
        def answer(request: Request) -> str:
            return describe(by_image[request.image]) if request.prompt == "Describe this image." else "No."

        return evaluate(heldout, Scripted(answer))

    current = policy(lambda objects: "A giraffe and " + " and ".join(f"a {o}" for o in objects) + ".")
    faithful = policy(lambda objects: " and ".join(f"a {o}" for o in objects).capitalize() + ".")
    terse = policy(lambda objects: f"A {objects[0]}.")
    criteria = parse_gate(DEFAULT_GATE)
    assert criteria == [("chair_i", 0.0), ("coverage", 0.0)]
    better = gate(faithful, current, criteria)
    assert better["passed"] and better["summary"].startswith("passed: better on CHAIR_i by 0.")
    assert "; coverage not measurably worse (1.000 to 1.000; change 95% +0.000 to +0.000)" in better["summary"]
    # Saying less also cuts CHAIR_i; coverage catches it.
    shorter = gate(terse, current, criteria)
    assert not shorter["passed"]
    assert shorter["summary"].startswith("refused: better on CHAIR_i by ")
    assert "; worse on coverage by 0.250 (95% " in shorter["summary"]
    assert [c["passed"] for c in shorter["criteria"]] == [True, False]
    # CHAIR_i alone lets it through; a margin on coverage does too.
    assert gate(terse, current, parse_gate("chair_i"))["passed"]
    allowed = gate(terse, current, parse_gate("chair_i,coverage:0.3"))
    assert allowed["passed"] and "; worse on coverage by 0.250 (95% " in allowed["summary"]
    assert allowed["summary"].endswith("), within the margin 0.300")
    demanding = gate(faithful, current, parse_gate("chair_i", margin=-0.9))
    assert demanding["summary"].startswith("refused: not better on CHAIR_i by the required 0.900")
    for spec, problem in (
        ("bleu", "gate metric 'bleu'"),
        ("chair_i:much", "gate margin 'much'"),
        ("chair_i,chair_i", "named twice"),
        (" , ", "at least one metric"),
    ):
        with pytest.raises(ValueError, match=problem):
            parse_gate(spec)


def test_a_broken_folder_or_an_object_outside_the_vocabulary_is_refused(tmp_path: Path) -> None:
    folder = make_set(tmp_path / "set", 3)
    (folder / "items.jsonl").write_text((folder / "items.jsonl").read_text() + "\n")
    with pytest.raises(HeldoutError, match="does not match its manifest"):
        read_heldout(folder)
    data = png_bytes()
    write_heldout(
        tmp_path / "u", "coco", [(Item("1", image_name(data, "png"), "Describe.", objects=("unicorn",)), data)]
    )
    with pytest.raises(HeldoutError, match="outside the coco vocabulary"):
        evaluate(read_heldout(tmp_path / "u"), Scripted(lambda r: "x"))


def test_cocos_classes_in_the_contract_are_the_standard_lists_in_order() -> None:
    assert CocoObjects().order == COCO_CLASSES and len(COCO_CLASSES) == 80


def test_the_command_line_refuses_bad_input_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_set(tmp_path / "set", 3)
    assert main(["evaluate", "--data", str(tmp_path / "nothing"), "--model", "x"]) == 2
    assert "is not a held-out folder" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(folder)]) == 2
    assert "needs either --server" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(folder), "--server", " , ", "--served", "base"]) == 2
    assert "--server names no URL" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(folder), "--model", "x", "--adapter", str(tmp_path)]) == 2
    assert "holds no LoRA adapter" in capsys.readouterr().err
    assert (
        main(
            ["compare", "--new", str(tmp_path / "a.json"), "--current", str(tmp_path / "b.json"), "--metric", "chair_i"]
        )
        == 2
    )
    heldout = read_heldout(folder)
    result = evaluate(heldout, Scripted(lambda r: "A cat."))
    result.write(tmp_path / "a.json")
    assert Evaluation.read(tmp_path / "a.json").metrics == result.metrics
    assert (
        main(
            ["compare", "--new", str(tmp_path / "a.json"), "--current", str(tmp_path / "a.json"), "--metric", "chair_i"]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["passed"] is True


def test_a_reward_model_scores_the_answers(reward_model: Path, tmp_path: Path) -> None:
    from rlhf.scoring import RewardModel

    heldout = read_heldout(make_set(tmp_path / "set", 6))
    scorer = RewardModel(reward_model)
    truthful = evaluate(
        heldout, Scripted(lambda r: "A cat." if "Describe" in r.prompt else "Yes."), reward_model=scorer
    )
    other = evaluate(heldout, Scripted(lambda r: "Two zebras and a car."), reward_model=scorer)
    assert len(truthful.records["reward"]) == 7  # six descriptions and the question
    low, high = truthful.intervals["reward_mean"]
    assert low <= truthful.metrics["reward_mean"] <= high
    assert truthful.records["reward"] != other.records["reward"]  # it read the answers
    again = evaluate(heldout, Scripted(lambda r: "A cat." if "Describe" in r.prompt else "Yes."), reward_model=scorer)
    assert again.records["reward"] == truthful.records["reward"]
