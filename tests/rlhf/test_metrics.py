"""Hallucination metrics against hand-computed examples."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf.coco import CocoObjects
from rlhf.metrics import (
    PopeQuestion,
    SynonymTable,
    build_pope,
    chair,
    coverage,
    mmhal_grade,
    mmhal_summary,
    object_halbench,
    plural,
    pope_says_yes,
    pope_scores,
    read_pope_answers,
    read_pope_questions,
    write_pope_answers,
    write_pope_questions,
)

COCO = CocoObjects()


def test_coco_table_has_the_80_classes() -> None:
    assert len(COCO.classes) == 80


def test_mentions_take_synonyms_plurals_and_two_word_names() -> None:
    text = "Two men eat hot dogs while a Puppy sleeps near the fire hydrant and some dogs."
    found = [(m.cls, m.surface) for m in COCO.mentions(text)]
    assert found == [
        ("person", "men"),
        ("hot dog", "hot dogs"),
        ("dog", "Puppy"),
        ("fire hydrant", "fire hydrant"),
        ("dog", "dogs"),
    ]


def test_plurals() -> None:
    assert [plural(w) for w in ("box", "knife", "puppy", "toy", "wine glass", "bus")] == [
        "boxes",
        "knives",
        "puppies",
        "toys",
        "wine glasses",
        "buses",
    ]


def test_chair_by_hand() -> None:
    responses = ["A cat sits on a couch next to a dog.", "A cat.", "Nothing here.", "Two dogs and a dog."]
    truths = [{"cat", "couch"}, {"cat"}, {"cat"}, {"cat"}]
    result = chair(responses, truths, COCO)
    # mentions: cat, couch, dog | cat | - | dog, dog -> 6 mentions, 3 hallucinated (dog x3)
    assert (result.mentions, result.hallucinated_mentions) == (6, 3)
    assert result.chair_i == pytest.approx(3 / 6)
    # responses 1 and 4 hallucinate
    assert result.chair_s == pytest.approx(2 / 4)
    halbench = object_halbench(responses, truths, COCO)
    assert halbench["response_rate"] == pytest.approx(2 / 3)  # over the 3 responses that name an object
    assert halbench["responses_with_objects"] == 3


def test_coverage_by_hand() -> None:
    responses = ["A cat sits on a couch next to a dog.", "A dog.", "Nothing here.", "A car."]
    truths = [{"cat", "couch", "tv"}, {"cat"}, set(), {"car", "person"}]
    # 2 of 3, 0 of 1, no objects (not counted), 1 of 2: a hallucinated dog adds nothing.
    assert coverage(responses, truths, COCO) == pytest.approx((2 / 3 + 0 + 1 / 2) / 3)
    with pytest.raises(ValueError, match="2 responses but 1"):
        coverage(["a", "b"], [{"cat"}], COCO)


def test_chair_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="2 responses but 1"):
        chair(["a", "b"], [{"cat"}], COCO)
    with pytest.raises(ValueError, match="outside the synonym table"):
        chair(["a cat"], [{"unicorn"}], COCO)


def test_synonym_table_refuses_ambiguous_words() -> None:
    with pytest.raises(ValueError, match="names both"):
        SynonymTable({"cup": ("mug",), "beer": ("mug",)})


@pytest.mark.parametrize(
    ("answer", "yes"),
    [
        ("Yes, there is a cat.", True),
        ("No, there is no cat.", False),
        ("There is not a cat in the image.", False),
        ("no cat here", False),
        ("I don't see any cat.", True),  # the published rule's known misreading, kept on purpose
        ("Yes. No, wait.", True),  # only the first sentence counts
        ("Nope, there's nothing.", True),  # "Nope" is not the word "No"
    ],
)
def test_pope_answer_rule(answer: str, yes: bool) -> None:
    assert pope_says_yes(answer) is yes


def test_pope_scores_by_hand_matched_by_id() -> None:
    questions = [
        PopeQuestion(1, "a.png", "Is there a cat in the image?", "yes"),
        PopeQuestion(2, "a.png", "Is there a dog in the image?", "no"),
        PopeQuestion(3, "b.png", "Is there a car in the image?", "yes"),
        PopeQuestion(4, "b.png", "Is there a bus in the image?", "no"),
        PopeQuestion(5, "b.png", "Is there a cup in the image?", "no"),
    ]
    # Answers out of order; id 5 missing.
    # tp=1 (q1), fn=1 (q3), fp=1 (q2), tn=1 (q4); q5 unanswered counts as wrong (fp).
    answers = {4: "No.", 3: "No, there is no car.", 2: "Yes, there is a dog.", 1: "Yes."}
    scores = pope_scores(questions, answers)
    assert scores["accuracy"] == pytest.approx(2 / 5)
    assert scores["precision"] == pytest.approx(1 / 3)
    assert scores["recall"] == pytest.approx(1 / 2)
    assert scores["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert scores["yes_ratio"] == pytest.approx(3 / 5)
    assert scores["unanswered"] == 1


def test_pope_splits() -> None:
    images = [("1", ["cat", "dog"]), ("2", ["cat", "dog", "couch"]), ("3", ["car", "bus"]), ("4", ["cup"])]
    vocabulary = ["cat", "dog", "couch", "car", "bus", "cup", "fork"]
    adversarial = build_pope(images, vocabulary, "adversarial", per_image=1, seed=0)
    negatives = {q.image: q.object for q in adversarial if q.label == "no"}
    # Image 1 (cat, dog): "couch" co-occurs with both in image 2; nothing else does.
    assert negatives["1"] == "couch"
    popular = build_pope(images, vocabulary, "popular", per_image=1, seed=0)
    # Image 3 (car, bus): the most frequent absent classes are cat and dog (2 images each); ties by name.
    assert {q.image: q.object for q in popular if q.label == "no"}["3"] == "cat"
    random_split = build_pope(images, vocabulary, "random", per_image=2, seed=3)
    for q in random_split:
        present = dict(images)[q.image]
        assert (q.object in present) == (q.label == "yes")
    labels = [q.label for q in random_split]
    assert labels.count("yes") == labels.count("no")
    assert [q.question_id for q in random_split] == list(range(1, len(random_split) + 1))


def test_pope_files_round_trip_and_bad_lines(tmp_path: Path) -> None:
    questions = build_pope([("1", ["cat"]), ("2", ["dog"])], ["cat", "dog", "car"], "random", per_image=1)
    write_pope_questions(tmp_path / "q.jsonl", questions)
    again = read_pope_questions(tmp_path / "q.jsonl")
    assert [(q.question_id, q.image, q.text, q.label) for q in again] == [
        (q.question_id, q.image, q.text, q.label) for q in questions
    ]
    write_pope_answers(tmp_path / "a.jsonl", {2: "No.", 1: "Yes."})
    assert read_pope_answers(tmp_path / "a.jsonl") == {1: "Yes.", 2: "No."}

    (tmp_path / "bad.jsonl").write_text(
        '{"question_id": 1, "image": "x", "text": "t", "label": "yes"}\n{"question_id": 2}\n'
    )
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a POPE question"):
        read_pope_questions(tmp_path / "bad.jsonl")
    (tmp_path / "twice.jsonl").write_text('{"question_id": 1, "text": "Yes"}\n{"question_id": 1, "text": "No"}\n')
    with pytest.raises(ValueError, match="answered twice"):
        read_pope_answers(tmp_path / "twice.jsonl")


@pytest.mark.parametrize(
    ("mentioned", "truth", "attribute_errors", "grade"),
    [
        (["cat", "dog"], ["cat", "dog"], 0, 6),  # every class, no error, more than one
        (["cat"], ["cat"], 0, 5),  # very informative, a single object
        (["cat"], ["cat", "dog"], 0, 4),  # half
        ([], ["cat", "dog", "cup"], 0, 3),  # says nothing wrong, nothing useful
        (["cat", "dog", "bus"], ["cat", "dog"], 0, 2),  # complete, one ghost
        (["cat", "dog"], ["cat", "dog"], 1, 2),  # a wrong attribute
        (["cat", "bus"], ["cat", "dog"], 0, 1),
        (["bus"], ["cat", "dog", "cup"], 0, 0),
    ],
)
def test_mmhal_grades(mentioned: list[str], truth: list[str], attribute_errors: int, grade: int) -> None:
    assert mmhal_grade(mentioned, truth, attribute_errors=attribute_errors) == grade


def test_mmhal_summary() -> None:
    assert mmhal_summary([6, 2, 4, 0]) == {"score": 3.0, "hallucination_rate": 0.5}
    with pytest.raises(ValueError):
        mmhal_summary([7])
