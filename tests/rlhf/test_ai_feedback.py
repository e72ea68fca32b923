"""The AI labeller (RLAIF-V's claims, questions and scores), its pairs, active selection,
AI pairs' weight, and a round that continues the previous round's adapter."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from contract.feedback import (
    Feedback,
    agreement,
    ai_pairs,
    apply_fixes,
    read_feedback,
    suggested_correction,
    write_feedback,
)
from contract.selection import disagreement, select
from rlhf.ai_feedback import Labeller, RuleSplitter, labeller_for, read_number
from rlhf.metrics import SynonymTable
from testbed.toyworld import CLASSES, SYNONYMS, sample_scenes
from tests.rlhf.conftest import dpo_config, rlhf_cli

SPLIT = RuleSplitter(SynonymTable({cls: SYNONYMS[cls] for cls in CLASSES}))
TEXT = "A large blue ball is at the top left. There are two red boxes. There is no kite. The star is left of the moon."


def truthful(present: dict[str, tuple[int, str]]) -> Any:
    """An answerer that knows the image: class -> (count, colour); relations are all false."""

    def answer(pairs: Sequence[tuple[Any, str]]) -> list[str]:
        said = []
        for _, question in pairs:
            words = question.rstrip("?").split()
            if question.startswith("Is there a"):
                cls = words[3]
                said.append(f"Yes, there is a {cls}." if cls in present else f"No, there is no {cls}.")
            elif question.startswith("How many"):
                cls = next(c for c in present if question.startswith(f"How many {c}"))
                said.append(f"There are {['no', 'one', 'two', 'three'][present[cls][0]]} {cls}es.")
            elif question.startswith("What color"):
                said.append(f"It is {present.get(words[-1], (0, 'unknown'))[1]}.")
            else:
                said.append("No, it is not.")
        return said

    return answer


def test_the_splitter_finds_objects_counts_colours_relations_and_negations() -> None:
    found = [(c.kind, c.subject, c.value, TEXT[c.start : c.end]) for c in SPLIT(TEXT)]
    assert found == [
        ("exist", "ball", "yes", "ball"),
        ("colour", "ball", "blue", "blue"),
        ("exist", "box", "yes", "boxes"),
        ("count", "box", "2", "two"),
        ("colour", "box", "red", "red"),
        ("exist", "kite", "no", "kite"),
        ("exist", "star", "yes", "star"),
        ("relation", "star", "left of|moon", "star is left of the moon"),
        ("exist", "moon", "yes", "moon"),
    ]
    # Synonyms are their class; "no" claims absence and nothing else.
    [claim] = SPLIT("There are no orbs.")
    assert (claim.kind, claim.subject, claim.value, claim.question) == (
        "exist",
        "ball",
        "no",
        "Is there a ball in the image?",
    )
    assert SPLIT("Nothing here.") == []


def test_verdicts_score_and_the_suggested_correction() -> None:
    labeller = Labeller(SPLIT, truthful({"ball": (1, "green"), "box": (3, "red"), "star": (1, "yellow")}), "ai:test")
    [feedback] = labeller.label([("c1", "image-1", None, TEXT)])
    verdicts = {(c.kind, c.subject): c.supported for c in feedback.claims}
    assert verdicts == {
        ("exist", "ball"): True,
        ("colour", "ball"): False,  # blue claimed, green answered
        ("exist", "box"): True,
        ("count", "box"): False,  # two claimed, three answered
        ("colour", "box"): True,
        ("exist", "kite"): True,  # absent, as claimed
        ("exist", "star"): True,
        ("relation", "star"): False,
        ("exist", "moon"): False,  # not in the image
    }
    assert feedback.score == -4 and [c.kind for c in feedback.suspected] == ["colour", "count", "relation", "exist"]
    # The fixes: the answered colour and number replace the claimed ones, the sentences
    # with a false relation or an absent object go.
    assert suggested_correction(TEXT, feedback) == (
        "A large green ball is at the top left. There are three red boxes. There is no kite."
    )
    # An answer the labeller cannot read counts neither way.
    [unread] = Labeller(SPLIT, lambda pairs: ["Hmm." for _ in pairs], "ai:test").label([("c", "i", None, "Two rings.")])
    assert [c.supported for c in unread.claims if c.kind == "count"] == [None]


def test_a_sentence_about_an_absent_object_is_rewritten_into_a_confirmed_unnamed_one() -> None:
    """The existence answers about one image (asked for any response to it) supply the
    object a rewrite names; a response that names every confirmed object keeps the deletion."""
    labeller = Labeller(SPLIT, truthful({"ball": (1, "red"), "box": (1, "blue"), "star": (1, "yellow")}), "ai:test")
    first = "A red ball is at the top. The star is left of the tent. A kite is at the bottom."
    second = "A red ball is at the top. A blue box is at the left."
    third = "A blue box is at the left. A kite is at the right."
    found = labeller.label([("a", "img-1", None, first), ("b", "img-1", None, second), ("c", "img-2", None, third)])
    # First: the tent's sentence (its relation and its object, one edit) becomes the box the
    # second response's answers confirmed; the kite's has no confirmed object left: deleted.
    assert suggested_correction(first, found[0]) == "A red ball is at the top. There is a box."
    assert {c.fix for c in found[0].suspected if c.subject == "tent" or c.kind == "relation"} == {
        (first.index("The star"), first.index("tent.") + len("tent."), "There is a box.")
    }
    # Nothing wrong in the second; the third's image had no other object confirmed.
    assert found[1].suspected == []
    assert suggested_correction(third, found[2]) == "A blue box is at the left."


def test_one_question_about_one_image_is_asked_once() -> None:
    asked: list[str] = []

    def answer(pairs: Sequence[tuple[Any, str]]) -> list[str]:
        asked.extend(question for _, question in pairs)
        return ["Yes." for _ in pairs]

    Labeller(SPLIT, answer, "ai:test").label(
        [("a", "img-1", None, "A ball."), ("b", "img-1", None, "A ball and a ball."), ("c", "img-2", None, "A ball.")]
    )
    assert sorted(asked) == ["Is there a ball in the image?"] * 2


def test_read_number() -> None:
    assert [read_number(t) for t in ("There are two balls.", "There are no kites.", "3 of them", "many", "hm")] == [
        2,
        0,
        3,
        None,
        None,
    ]


def test_feedback_round_trips_and_a_bad_line_is_named(tmp_path: Path) -> None:
    labeller = Labeller(SPLIT, truthful({"ball": (1, "blue"), "box": (2, "red")}), "ai:test")
    items = labeller.label([("1", "i", None, TEXT), ("2", "i", None, "A blue ball.")])
    path = tmp_path / "feedback.jsonl"
    write_feedback(path, items)
    assert list(read_feedback(path)) == items
    assert json.loads(path.read_text().splitlines()[1])["score"] == 0
    path.write_text(path.read_text() + '{"schema": 1, "key": "3"}\n')
    with pytest.raises(ValueError, match=r"feedback\.jsonl:3"):
        list(read_feedback(path))


def test_rlaif_pairs_need_a_score_gap_and_use_each_answer_once() -> None:
    scored = [("a", 0), ("b", -2), ("c", -1), ("a", 0), ("d", 0), ("e", -3)]
    assert ai_pairs(scored) == [("a", "e"), ("d", "b")]
    assert ai_pairs(scored, limit=1) == [("a", "e")]
    assert ai_pairs([("a", -1), ("b", -1)]) == []
    assert ai_pairs(scored, min_gap=3) == [("a", "e")]


def test_agreement_with_a_persons_spans() -> None:
    labeller = Labeller(SPLIT, truthful({"ball": (1, "green"), "box": (3, "red")}), "ai:test")
    [feedback] = labeller.label([("1", "i", None, "A blue ball. A ring.")])
    # The person changed "blue" and deleted "A ring.": both flagged.
    found = agreement([feedback], [[(2, 6), (13, 20)]])
    assert found == {"precision": 1.0, "recall": 1.0, "suspected": 2.0, "marked": 2.0}
    found = agreement([feedback], [[(2, 6)]])
    assert found["precision"] == 0.5 and found["recall"] == 1.0


def test_apply_fixes_keeps_the_first_of_overlapping_edits() -> None:
    assert apply_fixes("one two three", [(4, 7, "2"), (0, 7, ""), (8, 13, "3")]) == " 3"
    assert apply_fixes("one two three", [(4, 7, "2"), (8, 13, "3")]) == "one 2 3"


def test_selection_by_disagreement_and_at_random() -> None:
    same = [{("exist", "ball", "yes")}] * 3
    split = [{("exist", "ball", "yes")}, {("exist", "box", "yes")}, {("exist", "ball", "yes"), ("count", "ball", "2")}]
    assert disagreement(same) == 0.0 and disagreement(split) > 0.5 and disagreement(same[:1]) == 0.0
    samples = {f"p{i}": same for i in range(8)} | {"hot": split}
    assert select(samples, 1, strategy="disagreement")[0] == "hot"
    picks = [select(samples, 3, strategy="random", seed=seed) for seed in range(20)]
    assert all(len(set(p)) == 3 for p in picks) and sum("hot" in p for p in picks) < 20
    assert select(samples, 3, strategy="random", seed=4) == select(samples, 3, strategy="random", seed=4)
    with pytest.raises(ValueError, match="unknown selection strategy"):
        select(samples, 1, strategy="entropy")


def test_the_tiny_policy_as_its_own_labeller_flags_absent_objects(base_policy: Path) -> None:
    """Self-feedback on the test bed: the base policy answers the existence questions
    (its POPE F1 is 1.0 on the held-out scenes), so an object the scene lacks is suspected
    and the ones it has are not."""
    import torch

    from rlhf.ai_feedback import local_answerer
    from rlhf.common import load_policy
    from testbed.tiny import image_size_of
    from testbed.toyworld import render

    torch.set_num_threads(1)
    model, processor = load_policy(str(base_policy))
    scene = next(
        s for s in sample_scenes(11, 200, prefix="labeller") if "ball" in s.classes and "moon" not in s.classes
    )
    image = render(scene, image_size_of(processor))
    labeller = labeller_for("toyworld", local_answerer(model, processor), "ai:tiny-base")
    [feedback] = labeller.label([("1", scene.scene_id, image, "There is a ball. There is a moon.")])
    assert {c.subject: c.supported for c in feedback.claims} == {"ball": True, "moon": False}
    assert feedback.score == -1 and suggested_correction("There is a ball. There is a moon.", feedback) == (
        "There is a ball."
    )


def test_the_cli_labels_items_and_refuses_bad_input(base_policy: Path, tmp_path: Path) -> None:
    from testbed.toyworld import render
    from testbed.toyworld.world import sample_scene

    scene = sample_scene(random.Random(5), "cli")
    image = tmp_path / "scene.png"
    render(scene, 64).save(image)
    absent = next(cls for cls in CLASSES if cls not in scene.classes)
    items = tmp_path / "items.jsonl"
    lines = [{"key": "k1", "image": str(image), "response": f"There is a {absent}."}]
    items.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "feedback.jsonl"
    done = rlhf_cli(
        "ai-feedback", "--items", str(items), "--out", str(out), "--vocabulary", "toyworld", "--model", str(base_policy)
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {
        "items": 1,
        "claims": 1,
        "suspected": 1,
        "labeller": f"ai:{base_policy}",
    }
    [feedback] = read_feedback(out)
    assert isinstance(feedback, Feedback) and feedback.key == "k1" and feedback.score == -1
    items.write_text('{"key": "k1"}\n')
    refused = rlhf_cli("ai-feedback", "--items", str(items), "--out", str(out), "--model", str(base_policy))
    assert refused.returncode == 2 and "items.jsonl:1" in refused.stderr
    neither = rlhf_cli("ai-feedback", "--items", str(items), "--out", str(out))
    assert neither.returncode == 2 and "--server" in neither.stderr
    local_split = rlhf_cli(
        "ai-feedback", "--items", str(items), "--out", str(out), "--model", str(base_policy), "--split-served", "x"
    )
    assert local_split.returncode == 2 and "--split-served names a model on --server" in local_split.stderr


def test_ai_pairs_are_weighed_by_sampling(base_policy: Path, oracle_export: Path, tmp_path: Path) -> None:
    from datasets import Dataset  # type: ignore[import-untyped]

    from rlhf.training_data import DataError, weigh_source

    rows = Dataset.from_dict({"source": ["correction", "ai", "ai", "ranking"] * 50, "i": list(range(200))})
    assert weigh_source(rows, "ai", 1.0, seed=0) is rows
    doubled = weigh_source(rows, "ai", 2.0, seed=0)
    assert doubled["source"].count("ai") == 200 and doubled["source"].count("correction") == 50
    half = weigh_source(rows, "ai", 0.5, seed=0)["source"].count("ai")
    assert 30 < half < 70 and half == weigh_source(rows, "ai", 0.5, seed=0)["source"].count("ai")
    assert weigh_source(rows, "ai", 0.0, seed=0)["source"].count("ai") == 0
    with pytest.raises(DataError, match="no pairs left"):
        weigh_source(Dataset.from_dict({"source": ["ai"]}), "ai", 0.0, seed=0)
    from rlhf.config import ConfigError

    with pytest.raises(ConfigError, match="ai_weight"):
        dpo_config(base_policy, oracle_export, tmp_path / "x", "ai_weight=-1")


def test_a_round_continues_the_previous_rounds_adapter(base_policy: Path, oracle_export: Path, tmp_path: Path) -> None:
    """train_round's round 2: init_adapter = round 1's adapter. The adapter trains on from
    it (its weights move), and the reference is round 1's policy: trl copies the adapter
    into its frozen "ref", so the first step's DPO loss is log 2 (policy = reference)."""
    import math

    import torch
    from safetensors.torch import load_file

    from rlhf.train_dpo import build_trainer, train

    first = train(dpo_config(base_policy, oracle_export, tmp_path / "r1", "learning_rate=2e-3"), report_to=[])
    assert first.adapter_dir is not None
    config = dpo_config(
        base_policy, oracle_export, tmp_path / "r2", "learning_rate=2e-3", f"init_adapter={first.adapter_dir}"
    )
    trainer = build_trainer(config, report_to=[])
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all(".default." in n for n in trainable)
    ref = {n: p for n, p in trainer.model.named_parameters() if ".ref." in n}
    assert ref and not any(p.requires_grad for p in ref.values())
    second = train(config, report_to=[])
    assert second.first_loss is not None and abs(second.first_loss - math.log(2)) < 0.02, second.first_loss
    before = load_file(str(Path(first.adapter_dir) / "adapter_model.safetensors"))
    after = load_file(str(Path(str(second.adapter_dir)) / "adapter_model.safetensors"))
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_a_served_splitter_reads_one_question_a_line_and_places_each_on_its_object() -> None:
    """RLAIF-V's splitter: a text model's reply (here a fixed one, as a model would write
    it) becomes one yes/no claim per question, placed on the response's mention of the
    object it names; its verdict is POPE's reading of the answer."""
    from rlhf.ai_feedback import SPLIT_INSTRUCTION, ServedSplitter

    seen: list[str] = []
    reply = "1. Is there a ball in the image?\n- Is the ball red?\nSure, here you go:\n2) Is there a moon?\n"

    def ask(instruction: str) -> str:
        seen.append(instruction)
        return reply

    text = "A red ball is on the left. A moon is above it."
    split = ServedSplitter(ask, SPLIT.reader)
    claims = split(text)
    assert seen == [SPLIT_INSTRUCTION.format(response=text)]
    assert [(c.kind, c.question, text[c.start : c.end]) for c in claims] == [
        ("question", "Is there a ball in the image?", "ball"),
        ("question", "Is the ball red?", "ball"),
        ("question", "Is there a moon?", "moon"),
    ]
    labeller = Labeller(split, lambda pairs: ["Yes.", "No, it is blue.", "No."], "ai:test")
    [feedback] = labeller.label([("1", "i", None, text)])
    assert [c.supported for c in feedback.claims] == [True, False, False]
    # Both false claims suggest deleting their sentences.
    assert suggested_correction(text, feedback) == ""
    assert split("") == []
