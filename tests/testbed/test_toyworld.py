"""The synthetic world: deterministic scenes, faithful facts, co-occurrence structure,
rendering, and the oracle's judgements."""

from __future__ import annotations

import random

import pytest

from testbed.toyworld import CLASSES, Scene, SceneObject, cooccurrence, describe, render, sample_scenes, true_answer
from testbed.toyworld.oracle import check, correct, prefer, unnamed_objects
from testbed.toyworld.world import THEMES, Question, questions_for

SCENE = Scene(
    "s-1",
    "toys",
    (
        SceneObject("ball", "red", "large", 0, 0),
        SceneObject("box", "blue", "small", 0, 2),
        SceneObject("kite", "green", "small", 1, 1),
        SceneObject("ball", "yellow", "small", 2, 0),
    ),
)


def test_scenes_are_deterministic_and_within_bounds() -> None:
    first, second = sample_scenes(7, 50), sample_scenes(7, 50)
    assert first == second
    assert first != sample_scenes(8, 50)
    for scene in first:
        assert 1 <= len(scene.objects) <= 5
        assert len({(o.row, o.col) for o in scene.objects}) == len(scene.objects)


def test_facts_round_trip_and_reference_description() -> None:
    facts = SCENE.facts()
    assert facts["counts"] == {"ball": 2, "box": 1, "kite": 1}
    assert Scene.from_facts(facts) == SCENE
    assert describe(SCENE) == (
        "A large red ball is at the top left. A small blue box is at the top right. "
        "A small green kite is in the center. A small yellow ball is at the bottom left."
    )
    assert facts["captions"] == [describe(SCENE)]


def test_true_answers() -> None:
    assert true_answer(SCENE, Question("count", "", "ball")) == "There are two balls."
    assert true_answer(SCENE, Question("count", "", "tent")) == "There are no tents."
    assert true_answer(SCENE, Question("exist", "", "kite")) == "Yes, there is a kite."
    assert true_answer(SCENE, Question("color", "", "box")) == "The box is blue."
    assert true_answer(SCENE, Question("spatial", "", "box", "left of")) == "A red ball is left of the box."
    assert true_answer(SCENE, Question("spatial", "", "kite", "above")) == "Nothing is above the kite."


def test_every_prompt_kind_is_asked() -> None:
    rng = random.Random(0)
    kinds = {q.kind for scene in sample_scenes(1, 30) for q in questions_for(rng, scene)}
    assert kinds == {"describe", "count", "exist", "color", "spatial"}


def test_objects_of_a_theme_co_occur_more_than_across_themes() -> None:
    table = cooccurrence(sample_scenes(3, 3000))
    within = table["tent"]["moon"] + table["ball"]["box"]
    across = table["tent"]["box"] + table["ball"]["moon"]
    assert within > 2 * across
    assert set(THEMES["camp"]) <= set(CLASSES)


def test_rendering_is_deterministic_and_sized() -> None:
    image = render(SCENE, 96)
    assert image.size == (96, 96)
    assert image.tobytes() == render(SCENE, 96).tobytes()
    assert render(SCENE, 224).size == (224, 224)
    # The red ball's cell holds red pixels; an empty cell holds none.
    red = [(x, y) for x in range(32) for y in range(32) if image.getpixel((x, y)) == (220, 40, 40)]
    assert len(red) > 100
    assert all(image.getpixel((x, y)) == (245, 245, 240) for x in range(64, 96) for y in range(32, 64))
    with pytest.raises(ValueError, match="between 64 and 224"):
        render(SCENE, 32)


# The oracle


def test_correct_response_is_left_alone() -> None:
    text = describe(SCENE)
    assert check(SCENE, text).hallucinations == 0
    assert correct(SCENE, text) == text


def test_correction_changes_only_the_injected_errors() -> None:
    response = (
        "A large red ball is at the top left. A small purple box is at the top right. "
        "A large orange kite is at the bottom right. A small green kite is in the center. "
        "A small yellow ball is at the bottom left."
    )
    # Injected: the box's colour (purple -> blue), a ghost second kite (deleted).
    report = check(SCENE, response)
    assert report.hallucinations == 2
    assert [c.error_type for c in report.claims if c.hallucinated] == ["attributes", "numbers"]
    assert correct(SCENE, response) == describe(SCENE)


def test_absent_object_is_replaced_by_an_unnamed_one_or_deleted_and_position_fixed() -> None:
    response = (
        "A large red ball is at the top left. A small blue tent is at the bottom. A small blue box is in the center."
    )
    report = check(SCENE, response)
    assert report.hallucinated_objects == ["tent"]
    # The kite is there and named nowhere: the tent's sentence becomes one about it.
    assert unnamed_objects(SCENE, report) == [SCENE.objects[2]]
    assert correct(SCENE, response) == (
        "A large red ball is at the top left. A small green kite is in the center. "
        "A small blue box is at the top right."
    )
    assert correct(SCENE, response, style="delete") == (
        "A large red ball is at the top left. A small blue box is at the top right."
    )
    with pytest.raises(ValueError, match="correction style 'rewrite'"):
        correct(SCENE, response, style="rewrite")  # type: ignore[arg-type]


def test_replacements_name_each_unnamed_object_once_then_delete() -> None:
    # Three ghosts, two unnamed objects (the box and the kite; the second ball's class is
    # named already): two rewrites in reading order, then a deletion.
    response = (
        "A large red ball is at the top left. A small red tent is at the top. "
        "A large green moon is at the left. A small blue ring is at the right."
    )
    fixed = correct(SCENE, response)
    assert fixed == (
        "A large red ball is at the top left. A small blue box is at the top right. "
        "A small green kite is in the center."
    )
    assert check(SCENE, fixed).hallucinations == 0
    # The same claims are missed in either style (the same draws of the noise).
    for seed in range(20):
        replaced = correct(SCENE, response, noise=0.5, rng=random.Random(seed))
        deleted = correct(SCENE, response, noise=0.5, rng=random.Random(seed), style="delete")
        assert check(SCENE, replaced).hallucinations == check(SCENE, deleted).hallucinations


def test_a_replacement_is_a_changed_span_on_both_sides() -> None:
    """DDPO's weights fall on the rewritten tokens of the chosen response too; a deletion
    leaves the chosen side without a changed span."""
    from rlhf.toy_pairs import correction_pair

    response = "A large red ball is at the top left. A small blue tent is at the bottom."
    replaced = correction_pair(SCENE, "Describe the image.", response, correct(SCENE, response))
    deleted = correction_pair(SCENE, "Describe the image.", response, correct(SCENE, response, style="delete"))
    assert replaced is not None and deleted is not None
    assert replaced.corrected.endswith("A small blue box is at the top right.")  # the first unnamed object
    assert any("box" in replaced.corrected[a:b] for a, b in replaced.chosen_spans)
    assert any("tent" in response[a:b] for a, b in replaced.rejected_spans)
    assert all(a == b for a, b in deleted.chosen_spans)


@pytest.mark.parametrize(
    ("response", "fixed"),
    [
        ("There are three balls.", "There are two balls."),
        ("There is one kite.", "There is one kite."),
        ("Yes, there is a tent.", "No, there is no tent."),
        ("No, there is no box.", "Yes, there is a box."),
        ("The box is red.", "The box is blue."),
        ("A yellow ball is left of the box.", "A red ball is left of the box."),
        ("Nothing is left of the box.", "A red ball is left of the box."),
        ("I see a tent and a ball.", "A small blue box is at the top right."),  # rewritten, not deleted
        ("I see a ball.", "I see a ball."),
    ],
)
def test_short_answers_are_fixed(response: str, fixed: str) -> None:
    assert correct(SCENE, response) == fixed


def test_a_sentence_outside_the_grammar_is_deleted_in_the_delete_style() -> None:
    assert correct(SCENE, "I see a tent and a ball.", style="delete") == ""


def test_noise_misses_errors() -> None:
    response = "Yes, there is a tent."
    assert correct(SCENE, response, noise=1.0) == response
    misses = sum(correct(SCENE, response, noise=0.3, rng=random.Random(k)) == response for k in range(400))
    assert 80 < misses < 160


def test_preference_fewer_hallucinations_first_then_helpfulness() -> None:
    truth = describe(SCENE)
    ghost = truth + " A small red tent is at the bottom right."
    judged = prefer(SCENE, ghost, truth)
    assert (judged.preferred, judged.tie_on_hallucination, judged.hallucinations) == (2, False, (1, 0))
    assert judged.rejected_hallucinates
    short = "A large red ball is at the top left."
    judged = prefer(SCENE, short, truth)
    assert (judged.preferred, judged.tie_on_hallucination, judged.rejected_hallucinates) == (2, True, False)


def test_noisy_preferences_flip_sometimes() -> None:
    truth = describe(SCENE)
    ghost = "A small red tent is at the bottom right."
    picks = [prefer(SCENE, truth, ghost, noise=0.4, rng=random.Random(k)).preferred for k in range(500)]
    wrong = picks.count(2) / len(picks)
    assert 0.1 < wrong < 0.3  # a coin flip 40% of the time is wrong half of those


def test_the_simulated_annotator_corrects_in_either_style() -> None:
    from testbed.demo.simulation import oracle_submission

    response = "A large red ball is at the top left. A small blue tent is at the bottom."
    shown = [(7, response)]
    replaced = oracle_submission("correct", SCENE.facts(), shown, noise=0.0, rng=random.Random(0))
    deleted = oracle_submission("correct", SCENE.facts(), shown, noise=0.0, rng=random.Random(0), style="delete")
    assert replaced == {"corrected": "A large red ball is at the top left. A small blue box is at the top right."}
    assert deleted == {"corrected": "A large red ball is at the top left."}
