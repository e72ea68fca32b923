"""Hallucination metrics as plain functions of responses and known facts.

Nothing here knows the toy world: CHAIR takes a synonym table (COCO's 80 classes by
default, or any other), POPE reads and writes the standard question/answer JSONL layout,
and the MMHal-style grade is a rule over object mentions. Definitions follow
docs/methods.md section 3:

- CHAIR (Rohrbach et al., 2018, "Object Hallucination in Image Captioning"):
  CHAIR_i = hallucinated object mentions / all object mentions,
  CHAIR_s = responses with at least one hallucinated object / all responses.
- Object HalBench (RLHF-V, Yu et al., 2024): the same rates, with the response-level rate
  taken only over responses that mention at least one known object class.
- POPE (Li et al., 2023, "Evaluating Object Hallucination in Large Vision-Language
  Models"): yes/no probes, half present and half absent objects; absent ones drawn at
  random, by frequency (popular) or by co-occurrence (adversarial). An answer is "no" when
  its first sentence contains the word "No", "no" or "not" (the rule of POPE's released
  evaluation script), else "yes".
- MMHal-Bench (Sun et al., 2023, LLaVA-RLHF): a 0-6 rating where < 3 means the answer
  hallucinates; here a rule replaces the GPT-4 judge.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Protocol

# ---------------------------------------------------------------------------------------
# Object mentions

_IRREGULAR_PLURALS = {
    "person": "people",
    "man": "men",
    "woman": "women",
    "child": "children",
    "mouse": "mice",
    "knife": "knives",
    "sheep": "sheep",
    "skis": "skis",
}


def plural(word: str) -> str:
    *head, last = word.split(" ")
    if last in _IRREGULAR_PLURALS:
        tail = _IRREGULAR_PLURALS[last]
    elif re.search(r"(s|x|z|ch|sh)$", last):
        tail = last + "es"
    elif re.search(r"[^aeiou]y$", last):
        tail = last[:-1] + "ies"
    else:
        tail = last + "s"
    return " ".join([*head, tail])


@dataclass(frozen=True)
class Mention:
    cls: str  # canonical class
    surface: str  # the words as written
    start: int  # character offsets in the response
    end: int


class ObjectReader(Protocol):
    """What CHAIR needs of a vocabulary: its classes, and the mentions of them in a text
    (SynonymTable for any class list; rlhf.coco.CocoObjects for COCO as the standard reads it)."""

    classes: frozenset[str]

    def mentions(self, text: str) -> list[Mention]: ...


class SynonymTable:
    """Surface forms (synonyms, multi-word names, plurals) mapped to canonical classes.

    Matching is on whole words, case-insensitive, longest form first, so "hot dog" is one
    mention of "hot dog", not of "dog".
    """

    def __init__(self, classes: Mapping[str, Iterable[str]]) -> None:
        forms: dict[str, str] = {}
        for cls, synonyms in classes.items():
            for form in (cls, *synonyms):
                form = form.lower().strip()
                if not form:
                    continue
                for variant in (form, plural(form)):
                    previous = forms.setdefault(variant, cls)
                    if previous != cls:
                        raise ValueError(f"{variant!r} names both {previous!r} and {cls!r}")
        self.classes = frozenset(classes)
        self._forms = forms
        alternatives = sorted(forms, key=lambda f: (-len(f), f))
        words = "|".join(r"\s+".join(re.escape(part) for part in form.split(" ")) for form in alternatives)
        self._pattern = re.compile(rf"(?<![\w-])(?:{words})(?![\w-])", re.IGNORECASE)

    def mentions(self, text: str) -> list[Mention]:
        found = []
        for match in self._pattern.finditer(text):
            surface = match.group(0)
            cls = self._forms[re.sub(r"\s+", " ", surface.lower())]
            found.append(Mention(cls, surface, match.start(), match.end()))
        return found


# ---------------------------------------------------------------------------------------
# CHAIR and Object HalBench


@dataclass(frozen=True)
class ResponseChair:
    mentioned: tuple[str, ...]  # classes mentioned, one per mention
    hallucinated: tuple[str, ...]  # the mentioned classes not in the image


@dataclass(frozen=True)
class ChairResult:
    chair_i: float
    chair_s: float
    mentions: int
    hallucinated_mentions: int
    responses: int
    hallucinated_responses: int
    per_response: list[ResponseChair] = field(repr=False)

    def as_dict(self) -> dict[str, float | int]:
        return {key: value for key, value in asdict(self).items() if key != "per_response"}


def _check_lengths(responses: Sequence[str], truths: Sequence[Iterable[str]]) -> None:
    if len(responses) != len(truths):
        raise ValueError(f"{len(responses)} responses but {len(truths)} ground-truth object sets")


def chair(responses: Sequence[str], truths: Sequence[Iterable[str]], table: ObjectReader) -> ChairResult:
    """CHAIR_i and CHAIR_s. `truths[k]` holds the canonical classes present in image k.

    Every mention counts (a class named twice is two mentions), as in the CHAIR paper.
    """
    _check_lengths(responses, truths)
    per_response = []
    for text, truth in zip(responses, truths, strict=True):
        present = set(truth)
        unknown = present - table.classes
        if unknown:
            raise ValueError(f"ground truth names classes outside the synonym table: {sorted(unknown)}")
        mentioned = tuple(m.cls for m in table.mentions(text))
        per_response.append(ResponseChair(mentioned, tuple(cls for cls in mentioned if cls not in present)))
    mentions = sum(len(r.mentioned) for r in per_response)
    hallucinated = sum(len(r.hallucinated) for r in per_response)
    bad_responses = sum(bool(r.hallucinated) for r in per_response)
    return ChairResult(
        chair_i=hallucinated / mentions if mentions else 0.0,
        chair_s=bad_responses / len(per_response) if per_response else 0.0,
        mentions=mentions,
        hallucinated_mentions=hallucinated,
        responses=len(per_response),
        hallucinated_responses=bad_responses,
        per_response=per_response,
    )


def coverage(responses: Sequence[str], truths: Sequence[Iterable[str]], table: ObjectReader) -> float:
    """AMBER's "Cover" (Wang et al., 2023, "AMBER: An LLM-free Multi-dimensional Benchmark for
    MLLMs Hallucination Evaluation", arXiv:2311.07397): the mean over responses (whose image
    has annotated objects) of the share of the image's object classes the response names.
    AMBER reports it beside CHAIR because a policy can cut CHAIR by saying less; where a
    policy over-describes, a shorter answer can be the right one, and coverage tells that
    apart from an answer cut short of what is there."""
    _check_lengths(responses, truths)
    shares = []
    for response, truth in zip(responses, truths, strict=True):
        present = set(truth)
        if present:
            shares.append(len({m.cls for m in table.mentions(response)} & present) / len(present))
    return sum(shares) / len(shares) if shares else 0.0


def object_halbench(responses: Sequence[str], truths: Sequence[Iterable[str]], table: ObjectReader) -> dict[str, float]:
    """Object HalBench's rates: response-level over responses that mention a known object."""
    result = chair(responses, truths, table)
    answering = [r for r in result.per_response if r.mentioned]
    return {
        "response_rate": sum(bool(r.hallucinated) for r in answering) / len(answering) if answering else 0.0,
        "mention_rate": result.chair_i,
        "responses_with_objects": float(len(answering)),
        "responses": float(len(result.per_response)),
    }


# ---------------------------------------------------------------------------------------
# POPE

PopeSplit = Literal["random", "popular", "adversarial"]


@dataclass(frozen=True)
class PopeQuestion:
    question_id: int
    image: str
    text: str
    label: Literal["yes", "no"]
    object: str = ""


def pope_question_text(cls: str) -> str:
    return f"Is there a {cls} in the image?"


def build_pope(
    images: Sequence[tuple[str, Iterable[str]]],
    vocabulary: Sequence[str],
    split: PopeSplit,
    *,
    per_image: int = 3,
    seed: int = 0,
    cooccurrence: Mapping[str, Mapping[str, int]] | None = None,
) -> list[PopeQuestion]:
    """Up to `per_image` present and as many absent objects per image, as POPE samples them.

    random: absent objects uniformly; popular: the most frequent classes of the whole set
    first; adversarial: the classes that co-occur most with the image's present ones first
    (`cooccurrence[a][b]`: how often a and b appear together; counted from `images` if None).
    """
    rng = random.Random(seed)
    present_sets = [(image, sorted(set(objs))) for image, objs in images]
    frequency = {cls: 0 for cls in vocabulary}
    table: dict[str, dict[str, int]] = {a: dict.fromkeys(vocabulary, 0) for a in vocabulary}
    for _, objs in present_sets:
        for a in objs:
            frequency[a] = frequency.get(a, 0) + 1
            for b in objs:
                if a != b:
                    table.setdefault(a, {}).setdefault(b, 0)
                    table[a][b] += 1
    co = cooccurrence if cooccurrence is not None else table
    questions: list[PopeQuestion] = []
    for image, present in present_sets:
        absent = [cls for cls in vocabulary if cls not in present]
        k = min(per_image, len(present), len(absent))
        if k == 0:
            continue
        positives = rng.sample(present, k)
        if split == "random":
            negatives = rng.sample(absent, k)
        elif split == "popular":
            negatives = sorted(absent, key=lambda c: (-frequency.get(c, 0), c))[:k]
        elif split == "adversarial":
            negatives = sorted(absent, key=lambda c: (-sum(co.get(p, {}).get(c, 0) for p in present), c))[:k]
        else:
            raise ValueError(f"unknown POPE split {split!r}")
        for cls, label in [(c, "yes") for c in positives] + [(c, "no") for c in negatives]:
            questions.append(PopeQuestion(len(questions) + 1, image, pope_question_text(cls), label, cls))  # type: ignore[arg-type]
    return questions


def pope_published(
    images: Sequence[tuple[str, Sequence[str]]], split: PopeSplit, *, per_image: int = 3, seed: int = 0
) -> list[PopeQuestion]:
    """POPE's questions as its own code builds them (Li et al., 2023; RUCAIBox/POPE,
    utils.py `pope`, `generate_ground_truth_objects`, `compute_co_occurrence`).

    Each image's objects in their given order, each once; its first `per_image` are asked as
    present, and each is followed by one absent object, none asked twice for an image and
    none of the image's: "random" any object of the set's images at random; "popular" the
    most frequent first (counted over the images); "adversarial" the objects seen most often
    together with that present one first. Where a rule finds none, one at random, as POPE
    falls back. Objects come from the images, not from a vocabulary. The question reads
    "Is there an ..." before a vowel, as POPE's published files do.
    """
    rng = random.Random(seed)
    lists = [(image, list(dict.fromkeys(objects))) for image, objects in images]
    frequency: dict[str, int] = {}
    together: dict[str, dict[str, int]] = {}
    for _, objects in lists:
        for a in objects:
            frequency[a] = frequency.get(a, 0) + 1
            row = together.setdefault(a, {})
            for b in objects:
                if b != a:
                    row[b] = row.get(b, 0) + 1
    known = list(frequency)  # first seen first, as POPE's dict keeps them
    popular = sorted(known, key=lambda cls: -frequency[cls])  # stable: ties in first-seen order
    nearest = {a: sorted(row, key=lambda b: -row[b]) for a, row in together.items()}
    if split not in ("random", "popular", "adversarial"):
        raise ValueError(f"unknown POPE split {split!r}")
    questions: list[PopeQuestion] = []

    def ask(image: str, cls: str, label: Literal["yes", "no"]) -> None:
        article = "an" if cls[:1] in "aeiou" else "a"
        questions.append(PopeQuestion(len(questions) + 1, image, f"Is there {article} {cls} in the image?", label, cls))

    for image, objects in lists:
        asked: list[str] = []
        for present in objects[:per_image]:
            asked.append(present)
            ask(image, present, "yes")
            ranked = popular if split == "popular" else nearest.get(present, []) if split == "adversarial" else []
            absent = next((cls for cls in ranked if cls not in asked and cls not in objects), None)
            if absent is None:
                pool = [cls for cls in known if cls not in asked and cls not in objects]
                if not pool:  # POPE would loop for ever: every object of the set is in the image
                    continue
                absent = rng.choice(pool)
            asked.append(absent)
            ask(image, absent, "no")
    return questions


def pope_says_yes(answer: str) -> bool:
    """POPE's rule: the first sentence, commas removed, split on spaces; "no" if it holds the
    word "No", "no" or "not". ("I don't see any" therefore counts as yes, as published.)"""
    words = answer.split(".")[0].replace(",", "").split(" ")
    return not any(word in ("No", "no", "not") for word in words)


def pope_scores(questions: Sequence[PopeQuestion], answers: Mapping[int, str]) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of "yes" (the positive class), and the yes-ratio.

    Answers are matched to questions by question id; a question without an answer counts as
    answered wrongly, and is reported as `unanswered`.
    """
    tp = fp = tn = fn = unanswered = 0
    for question in questions:
        text = answers.get(question.question_id)
        if text is None:
            unanswered += 1
            said_yes = question.label == "no"  # wrong either way
        else:
            said_yes = pope_says_yes(text)
        if question.label == "yes":
            tp, fn = (tp + 1, fn) if said_yes else (tp, fn + 1)
        else:
            fp, tn = (fp + 1, tn) if said_yes else (fp, tn + 1)
    total = tp + fp + tn + fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": (tp + tn) / total if total else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": (tp + fp) / total if total else 0.0,
        "questions": float(total),
        "unanswered": float(unanswered),
    }


def write_pope_questions(path: Path, questions: Iterable[PopeQuestion]) -> None:
    """POPE's layout: one JSON object a line with question_id, image, text, label."""
    with open(path, "w", encoding="utf-8") as handle:
        for q in questions:
            handle.write(json.dumps({"question_id": q.question_id, "image": q.image, "text": q.text, "label": q.label}))
            handle.write("\n")


def read_pope_questions(path: Path) -> list[PopeQuestion]:
    questions = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            label = row["label"]
            if label not in ("yes", "no"):
                raise ValueError(f"label must be yes or no, got {label!r}")
            questions.append(PopeQuestion(int(row["question_id"]), str(row["image"]), str(row["text"]), label))
        except (KeyError, ValueError, TypeError) as error:
            raise ValueError(f"{path}:{number}: not a POPE question ({error})") from None
    return questions


def write_pope_answers(path: Path, answers: Mapping[int, str]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for question_id, text in sorted(answers.items()):
            handle.write(json.dumps({"question_id": question_id, "text": text}) + "\n")


def read_pope_answers(path: Path) -> dict[int, str]:
    answers: dict[int, str] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            question_id = int(row["question_id"])
            text = row.get("text", row.get("answer"))
            if not isinstance(text, str):
                raise ValueError("no text")
        except (KeyError, ValueError, TypeError) as error:
            raise ValueError(f"{path}:{number}: not a POPE answer ({error})") from None
        if question_id in answers:
            raise ValueError(f"{path}:{number}: question {question_id} answered twice")
        answers[question_id] = text
    return answers


# ---------------------------------------------------------------------------------------
# MMHal-style rule grade


def mmhal_grade(mentioned: Iterable[str], truth: Iterable[str], *, attribute_errors: int = 0) -> int:
    """A 0-6 rating in MMHal-Bench's scale, from object mentions instead of a GPT-4 judge.

    MMHal-Bench's rubric: 6 very informative with good analysis, 5 very informative,
    4 somewhat informative, 3 not informative, all without hallucination; 2 very
    informative, 1 somewhat informative, 0 not informative, with hallucination. Here a
    hallucination is a mentioned class absent from `truth` or a wrong attribute; being very
    informative is naming every present class, somewhat is naming at least half; good
    analysis is very informative with no attribute errors and more than one class.
    """
    named = set(mentioned)
    present = set(truth)
    hallucinated = bool(named - present) or attribute_errors > 0
    coverage = len(named & present) / len(present) if present else 1.0
    level = 2 if coverage >= 1.0 else (1 if coverage >= 0.5 else 0)
    if hallucinated:
        return level
    if level == 2 and len(present) > 1:
        return 6
    return 3 + level


def mmhal_summary(grades: Sequence[int]) -> dict[str, float]:
    """Mean rating and the hallucination rate (rating < 3), as MMHal-Bench reports them."""
    if not grades:
        return {"score": 0.0, "hallucination_rate": 0.0}
    if any(not 0 <= g <= 6 for g in grades):
        raise ValueError("MMHal ratings lie in 0..6")
    return {"score": sum(grades) / len(grades), "hallucination_rate": sum(g < 3 for g in grades) / len(grades)}
