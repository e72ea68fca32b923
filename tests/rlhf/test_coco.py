"""CHAIR's reading of COCO objects, rule by rule, as the standard implementation reads them
(Rohrbach et al., 2018; rlhf/coco.py), on sentences written for each rule."""

from __future__ import annotations

import pytest

from rlhf.coco import CocoObjects
from rlhf.metrics import chair

COCO = CocoObjects()


def classes(text: str, table: CocoObjects = COCO) -> list[str]:
    return [cls for _, cls, _, _ in table.objects(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The standard list's words, beyond the class names.
        ("A cowboy rides a mustang past a panda.", ["person", "horse", "bear"]),
        ("A goat and an owl sit by the freezer.", ["sheep", "bird", "refrigerator"]),
        ("A chef holds a cheeseburger and a smartphone.", ["person", "sandwich", "cell phone"]),
        # Plurals, irregular ones included.
        ("Geese fly over two calves and three oxen.", ["bird", "cow", "cow"]),
        ("Puppies and kittens play with the mice.", ["dog", "cat", "mouse"]),
        ("The women and men carry knives and buses pass.", ["person", "person", "knife", "bus"]),
        ("Some benches, couches and sandwiches.", ["bench", "couch", "sandwich"]),
        ("A pair of skis and scissors.", ["skis", "scissors"]),
        # Two-word names are one object.
        ("A hot dog near the fire hydrant.", ["hot dog", "fire hydrant"]),
        ("Hot dogs and wine glasses on the table.", ["hot dog", "wine glass", "dining table"]),
        ("A motor cycle by the stop sign.", ["motorcycle", "stop sign"]),
        ("A teddy bear and a sports ball.", ["teddy bear", "sports ball"]),
        # Qualifiers: a baby or adult animal names no person; a passenger jet or train no person.
        ("A baby elephant follows an adult giraffe.", ["elephant", "giraffe"]),
        ("Passenger jets and a passenger train.", ["airplane", "train"]),
        ("A baby sleeps.", ["person"]),
        # "train tracks" names no train; a bow tie is a tie.
        ("Train tracks run past the station.", []),
        ("A man in a bow tie.", ["person", "tie"]),
        # A toilet seat is a toilet, and "seat" beside a toilet is no chair.
        ("The toilet seat is up.", ["toilet"]),
        ("The seat of the toilet is up.", ["toilet"]),
        ("A seat by the window.", ["chair"]),
        # "meters" alone is no parking meter.
        ("The tower is 50 meters tall.", []),
        # "motor bike" and "cheesecake" follow a double space in the standard list: never matched.
        ("A motor bike and a cheesecake.", []),
        # Apostrophes split, hyphenated words stay whole, case does not matter.
        ("The DOG's bowl and a hot-dog stand.", ["dog", "bowl"]),
    ],
)
def test_each_rule_of_the_standard(text: str, expected: list[str]) -> None:
    assert classes(text) == expected


def test_hair_dryer_is_read_only_when_asked() -> None:
    text = "A hair dryer and a hair drier."
    assert classes(text) == ["hair drier"]  # the standard knows only "hair drier"
    assert classes(text, CocoObjects(hair_dryer=True)) == ["hair drier", "hair drier"]


def test_mentions_keep_the_words_as_written() -> None:
    mentions = COCO.mentions("Two Geese near the Hot Dogs.")
    assert [(m.cls, m.surface) for m in mentions] == [("bird", "Geese"), ("hot dog", "Hot Dogs")]


def test_reference_captions_add_to_the_ground_truth_as_chair_does() -> None:
    truth = {"dog"} | COCO.named(["A puppy on a sofa.", "A dog lies on a couch."])
    assert truth == {"dog", "couch"}
    result = chair(["A dog on a couch with a cat."], [truth], COCO)
    assert (result.mentions, result.hallucinated_mentions, result.chair_s) == (3, 1, 1.0)
