"""The published evaluation protocols (contract/protocols.py): POPE asks 3 present and 3
absent objects per image and split, by POPE's own rules; Object HalBench reads RLHF-V's
synonym list and asks only its descriptions; the gate refuses a metric a protocol does not
measure, and two evaluations under different protocols."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest

from contract.comparison import gate, parse_gate
from contract.heldout import HeldoutError, Item, image_name, read_heldout, write_heldout
from contract.protocols import OBJECT_HALBENCH_PROMPTS, PROTOCOLS, check_gate
from rlhf.cli import main
from rlhf.hallucination import Request, evaluate, pope_probes
from rlhf.metrics import pope_published
from rlhf.vocabularies import vocabulary
from tests.factories import png_bytes
from tests.rlhf.test_heldout import Scripted

# Objects per image, in annotation order: 0-3 have at least 3, 4 has 2 (POPE leaves it out).
OBJECTS = [
    ("person", "dog", "car", "bench"),
    ("person", "car", "bus"),
    ("cat", "couch", "tv", "remote"),
    ("person", "dog", "frisbee"),
    ("apple", "banana"),
]


def coco_set(folder: Path, objects: list[tuple[str, ...]] = OBJECTS, *, prompt: str = "Describe.") -> Path:
    items = []
    for index, names in enumerate(objects):
        data = png_bytes((index * 37 % 255, index, 9))
        items.append((Item(str(index), image_name(data, "png"), prompt, objects=names), data))
    data = items[0][1]
    items.append((Item("q", items[0][0].image, "Is the dog brown?", kind="question", answer="yes"), data))
    write_heldout(folder, "coco", items)
    return folder


def test_pope_published_follows_popes_rules_on_a_hand_worked_set() -> None:
    images = [("a", ["person", "dog", "car"]), ("b", ["person", "car", "bus"]), ("c", ["cat", "apple", "dog"])]
    # Frequencies over the images: person 2, dog 2, car 2, bus 1, cat 1, apple 1 (first seen first).
    popular = pope_published(images, "popular", per_image=3)
    asked = [(q.image, q.object, q.label) for q in popular]
    # Image a: each present object is followed by the most frequent object not in the image
    # and not asked yet: bus, cat, apple.
    assert asked[:6] == [
        ("a", "person", "yes"),
        ("a", "bus", "no"),
        ("a", "dog", "yes"),
        ("a", "cat", "no"),
        ("a", "car", "yes"),
        ("a", "apple", "no"),
    ]
    # Adversarial, image c: cat is seen with apple and dog only (both in c), so a random
    # absent one; apple likewise; dog is seen most with person (a), then car, cat, apple.
    adversarial = [(q.object, q.label) for q in pope_published(images, "adversarial", per_image=3) if q.image == "c"]
    assert adversarial[0] == ("cat", "yes") and adversarial[2] == ("apple", "yes") and adversarial[4] == ("dog", "yes")
    random_ones = {adversarial[1][0], adversarial[3][0]}
    assert random_ones <= {"person", "car", "bus"}
    assert adversarial[5] == (next(o for o in ("person", "car", "bus") if o not in random_ones), "no")
    # Image b's "person" is seen most with dog and car: car is in b, so dog.
    b = [(q.object, q.label) for q in pope_published(images, "adversarial", per_image=3) if q.image == "b"]
    assert b[:2] == [("person", "yes"), ("dog", "no")]
    # Every split: 3 yes and 3 no per image, no object asked twice for an image, no absent
    # one from the image, the article as POPE's files write it.
    for split in ("random", "popular", "adversarial"):
        questions = pope_published(images, split, per_image=3, seed=7)
        for image, present in images:
            mine = [q for q in questions if q.image == image]
            assert Counter(q.label for q in mine) == {"yes": 3, "no": 3}
            assert len({q.object for q in mine}) == 6
            assert all((q.object in present) == (q.label == "yes") for q in mine)
        apple = [q.text for q in questions if q.object == "apple"]
        assert all(text == "Is there an apple in the image?" for text in apple) and apple
    with pytest.raises(ValueError, match="unknown POPE split"):
        pope_published(images, "hard", per_image=3)  # type: ignore[arg-type]


def test_the_pope_protocol_asks_3_and_3_per_image_and_split_and_nothing_else(tmp_path: Path) -> None:
    heldout = read_heldout(coco_set(tmp_path / "set"))
    asked: list[Request] = []

    def answers(request: Request) -> str:
        asked.append(request)
        return "Yes." if "dog" in request.prompt or "person" in request.prompt else "No."

    result = evaluate(heldout, Scripted(answers), protocol="pope", bootstrap=100)
    # 4 images with at least 3 objects; 6 questions each; 3 splits; no description, no question.
    assert len(asked) == 4 * 6 * 3 and all(r.prompt.startswith("Is there a") for r in asked)
    for split in ("random", "popular", "adversarial"):
        rows = result.records["pope"][split]
        assert len(rows) == 24 and sum(label for label, _ in rows) == 12
    assert result.records["describe"] == [] and result.records["qa"] == []
    assert "pope_f1" in result.metrics and "chair_i" not in result.metrics and "qa_accuracy" not in result.metrics
    assert result.settings["protocol"] == "pope" and result.settings["pope_per_image"] == 3
    # 4 images, not POPE's 500: measured, and marked as not comparable.
    assert result.settings["protocol_size"]["pope_images"] == 4 and result.settings["comparable"] is False
    # The protocol's 3 may not be changed; an unknown protocol is refused by name.
    with pytest.raises(HeldoutError, match="asks 3 POPE objects per image"):
        evaluate(heldout, Scripted(answers), protocol="pope", pope_per_image=1)
    with pytest.raises(HeldoutError, match="unknown evaluation protocol 'chair'"):
        evaluate(heldout, Scripted(answers), protocol="chair")
    # A set where no image has 3 objects gives POPE nothing to ask: refused, not an empty figure.
    small = read_heldout(coco_set(tmp_path / "small", [("cat",), ("dog", "person")]))
    with pytest.raises(HeldoutError, match="at least 3 annotated objects"):
        evaluate(small, Scripted(answers), protocol="pope")


def test_pope_draws_its_images_when_the_set_has_more_than_the_protocol_takes(tmp_path: Path) -> None:
    pool = ("person", "dog", "car", "bus", "cat", "kite", "tie", "cup")
    objects = [tuple(pool[(index + k) % 8] for k in range(3 + index % 2)) for index in range(12)]
    heldout = read_heldout(coco_set(tmp_path / "set", objects))
    fewer = dataclasses.replace(PROTOCOLS["pope"], pope_images=5)
    vocab = vocabulary("coco")
    first = pope_probes(heldout, vocab, per_image=3, seed=0, chosen=fewer)
    again = pope_probes(heldout, vocab, per_image=3, seed=0, chosen=fewer)
    other = pope_probes(heldout, vocab, per_image=3, seed=1, chosen=fewer)
    for split, questions in first.items():
        assert len({q.image for q in questions}) == 5 and len(questions) == 30
        assert questions == again[split]  # the same seed, the same images and questions
    assert {q.image for q in first["random"]} != {q.image for q in other["random"]}


def test_object_halbench_reads_rlhf_vs_list_and_asks_only_descriptions(tmp_path: Path) -> None:
    heldout = read_heldout(
        coco_set(tmp_path / "set", [("person",), ("person", "dog")], prompt=OBJECT_HALBENCH_PROMPTS[0])
    )
    asked: list[Request] = []

    def answers(request: Request) -> str:
        asked.append(request)
        return "A pedestrian beside a coffee table."

    halbench = evaluate(heldout, Scripted(answers), protocol="object_halbench", bootstrap=100)
    assert len(asked) == 2 and all(r.prompt == OBJECT_HALBENCH_PROMPTS[0] for r in asked)
    # RLHF-V's list reads "pedestrian" as a person (present) and "coffee table" as a dining
    # table (absent): 1 of 2 mentions hallucinated in each answer.
    assert halbench.metrics["chair_i"] == 0.5 and halbench.metrics["chair_s"] == 1.0
    assert halbench.records["pope"] == {"random": [], "popular": [], "adversarial": []}
    assert halbench.settings["protocol_size"]["describe_items"] == 2 and not halbench.settings["comparable"]
    # The standard list knows no "pedestrian": the table is its only mention there.
    own = evaluate(heldout, Scripted(answers), bootstrap=100)
    assert own.metrics["chair_i"] == 1.0 and own.settings["protocol"] == "factloop"
    assert len(own.records["pope"]["random"]) > 0 and own.records["qa"]
    # Only COCO text is read by RLHF-V's list.
    toy = tmp_path / "toy"
    data = png_bytes()
    write_heldout(toy, "toyworld", [(Item("1", image_name(data, "png"), "Describe.", objects=("ball",)), data)])
    with pytest.raises(HeldoutError, match="the rlhf-v reading is COCO's"):
        evaluate(read_heldout(toy), Scripted(answers), protocol="object_halbench")


def test_the_gate_takes_only_metrics_its_protocol_measures(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="the pope protocol does not measure chair_i, coverage"):
        check_gate("pope", [metric for metric, _ in parse_gate("chair_i,coverage")])
    check_gate("pope", ["pope_f1"])
    check_gate("object_halbench", ["chair_i", "coverage"])
    with pytest.raises(ValueError, match="does not measure pope_f1"):
        check_gate("object_halbench", ["pope_f1"])
    with pytest.raises(ValueError, match="unknown evaluation protocol"):
        check_gate("mme", [])

    heldout = read_heldout(coco_set(tmp_path / "set"))
    sure = evaluate(heldout, Scripted(lambda r: "Yes."), protocol="pope", bootstrap=100)
    right = evaluate(
        heldout, Scripted(lambda r: "Yes." if any(w in r.prompt for w in ("dog", "person")) else "No."), protocol="pope"
    )
    decision = gate(right, sure, parse_gate("pope_f1"))
    assert decision["passed"] and decision["criteria"][0]["metric"] == "pope_f1"
    with pytest.raises(HeldoutError, match=r"\(pope protocol\) do not measure chair_i"):
        gate(right, sure, parse_gate("chair_i"))
    own = evaluate(heldout, Scripted(lambda r: "Yes."))
    with pytest.raises(HeldoutError, match="different protocols"):
        gate(right, own, parse_gate("pope_f1"))


def test_the_command_line_takes_a_protocol_and_refuses_a_changed_pope_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = coco_set(tmp_path / "set")
    args = ["evaluate", "--data", str(data), "--model", "none", "--protocol", "pope", "--pope-per-image", "2"]
    assert main(args) == 2
    assert "the pope protocol asks 3 POPE objects per image" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--data", str(data), "--model", "none", "--protocol", "chair"])
    assert "invalid choice: 'chair'" in capsys.readouterr().err
