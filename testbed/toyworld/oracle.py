"""The oracle: a perfect (or, with noise, a realistic) annotator of the toy world.

Given a scene and a response it finds the claims the response makes (objects with size,
colour and position; counts; yes/no answers; colours; spatial relations), marks the
hallucinated ones, writes the correction an RLHF-V annotator would write (only the wrong
segments change: a wrong word is replaced; a sentence about an absent object is rewritten
into one about an object of the scene the response does not name yet, or deleted when every
object is named: `style` "replace"; "delete" always deletes it, the earlier protocol kept
for comparison) and chooses between two responses as a LLaVA-RLHF annotator would (fewer
hallucinations first, then the more helpful one).

`noise` makes it imperfect: each hallucinated claim is missed with that probability when
correcting, and a preference is replaced by a coin flip with that probability.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Literal

from contract.spans import sentence_deletion, sentences
from testbed.toyworld.world import (
    CLASSES,
    COLOURS,
    NUMBER_WORDS,
    PLURALS,
    POSITIONS,
    SIZES,
    SYNONYMS,
    Scene,
    SceneObject,
    count_answer,
    exist_answer,
    neighbour,
    object_sentence,
    reading_order,
    spatial_answer,
)

_CLS = "|".join(sorted(CLASSES, key=len, reverse=True))
_PLURAL = "|".join(sorted(PLURALS.values(), key=len, reverse=True))
_COLOUR = "|".join(COLOURS)
_SIZE = "|".join(SIZES)
_POSITION = "|".join(sorted((p for row in POSITIONS for p in row), key=len, reverse=True))
_NUMBER = "|".join(NUMBER_WORDS)
_SINGULAR = {plural: cls for cls, plural in PLURALS.items()}
_POSITION_CELL = {POSITIONS[r][c]: (r, c) for r in range(3) for c in range(3)}

OBJECT_SENTENCE = re.compile(
    rf"An? (?P<size>{_SIZE}) (?P<colour>{_COLOUR}) (?P<cls>{_CLS}) "
    rf"is (?P<where>(?:at|in) the (?P<position>{_POSITION}))\."
)
COUNT_SENTENCE = re.compile(rf"There (?:is|are) (?P<number>{_NUMBER}) (?P<noun>{_PLURAL}|{_CLS})\.")
EXIST_SENTENCE = re.compile(rf"(?:Yes, there is an?|No, there is no) (?P<cls>{_CLS})\.")
COLOUR_SENTENCE = re.compile(rf"The (?P<cls>{_CLS}) is (?P<colour>{_COLOUR})\.")
SPATIAL_SENTENCE = re.compile(
    rf"(?:An? (?P<colour>{_COLOUR}) (?P<other>{_CLS})|Nothing) is (?P<relation>left of|above) the (?P<cls>{_CLS})\."
)
_ANY_CLASS = re.compile(
    r"\b(?:"
    + "|".join(sorted({w for cls in CLASSES for w in (cls, PLURALS[cls], *SYNONYMS[cls])}, key=len, reverse=True))
    + r")\b",
    re.IGNORECASE,
)
_SYNONYM_CLASS = {w: cls for cls in CLASSES for w in (cls, PLURALS[cls], *SYNONYMS[cls])}

ErrorType = Literal["objects", "positions", "numbers", "attributes", "actions", "other"]


@dataclass(frozen=True)
class Claim:
    """One checkable statement of a response and, if it is wrong, its fix."""

    kind: Literal["object", "count", "exist", "colour", "spatial", "unparsed"]
    start: int  # character span of the sentence in the response
    end: int
    classes: tuple[str, ...]
    hallucinated: bool
    error_type: ErrorType | None = None
    # Replacements (start, end, new text) inside the response that fix the claim.
    fixes: tuple[tuple[int, int, str], ...] = ()


@dataclass
class Report:
    response: str
    claims: list[Claim] = field(default_factory=list)

    @property
    def hallucinations(self) -> int:
        return sum(c.hallucinated for c in self.claims)

    @property
    def mentioned(self) -> list[str]:
        return [cls for c in self.claims for cls in c.classes]

    @property
    def hallucinated_objects(self) -> list[str]:
        """Classes claimed present that the scene lacks (CHAIR's notion)."""
        return [cls for c in self.claims if c.hallucinated and c.error_type == "objects" for cls in c.classes]

    @property
    def correct_claims(self) -> int:
        return sum(not c.hallucinated and c.kind != "unparsed" for c in self.claims)


def _word_fix(match: re.Match[str], group: str, offset: int, new: str) -> tuple[int, int, str]:
    return (offset + match.start(group), offset + match.end(group), new)


def check(scene: Scene, response: str) -> Report:
    """Every claim of `response` about `scene`, hallucinated or not, with its fixes."""
    report = Report(response)
    spans = sentences(response, ends=".")  # the world's sentences end at full stops
    object_matches = [OBJECT_SENTENCE.fullmatch(response[a:b]) for a, b in spans]
    referents = _match_objects(scene, object_matches)
    for index, (start, end) in enumerate(spans):
        sentence = response[start:end]
        claim = (
            _object_claim(scene, response, object_matches[index], start, end, referents.get(index))
            or _count_claim(scene, sentence, start, end)
            or _exist_claim(scene, sentence, start, end)
            or _colour_claim(scene, sentence, start, end)
            or _spatial_claim(scene, sentence, start, end)
            or _unparsed_claim(scene, response, sentence, start, end)
        )
        if claim is not None:
            report.claims.append(claim)
    return report


def _match_objects(scene: Scene, matches: list[re.Match[str] | None]) -> dict[int, SceneObject]:
    """Which object each object sentence is about, as an annotator reads it: first the
    sentences whose class and cell both fit an object, then the rest by the best fit of
    colour and size among the objects of that class still unclaimed."""
    referents: dict[int, SceneObject] = {}
    free = list(scene.objects)
    for index, match in enumerate(matches):
        if match is None:
            continue
        cell = _POSITION_CELL[match["position"]]
        exact = next((o for o in free if o.cls == match["cls"] and (o.row, o.col) == cell), None)
        if exact is not None:
            referents[index] = exact
            free.remove(exact)
    for index, match in enumerate(matches):
        if match is None or index in referents:
            continue
        same_class = [o for o in free if o.cls == match["cls"]]
        if same_class:
            best = max(same_class, key=lambda o: (o.colour == match["colour"], o.size == match["size"]))
            referents[index] = best
            free.remove(best)
    return referents


def _object_claim(
    scene: Scene, text: str, match: re.Match[str] | None, start: int, end: int, referent: SceneObject | None
) -> Claim | None:
    if match is None:
        return None
    cls = match["cls"]
    if referent is None:
        error: ErrorType = "objects" if cls not in scene.classes else "numbers"
        return Claim("object", start, end, (cls,), True, error, (sentence_deletion(text, start, end),))
    best = referent
    cell = _POSITION_CELL[match["position"]]
    fixes = []
    error_type: ErrorType | None = None
    if best.size != match["size"]:
        fixes.append(_word_fix(match, "size", start, best.size))
        error_type = "attributes"
    if best.colour != match["colour"]:
        fixes.append(_word_fix(match, "colour", start, best.colour))
        error_type = "attributes"
    if (best.row, best.col) != cell:
        where = f"in the {best.position}" if best.position == "center" else f"at the {best.position}"
        fixes.append(_word_fix(match, "where", start, where))
        error_type = error_type or "positions"
    return Claim("object", start, end, (cls,), bool(fixes), error_type, tuple(fixes))


def _count_claim(scene: Scene, sentence: str, start: int, end: int) -> Claim | None:
    match = COUNT_SENTENCE.fullmatch(sentence)
    if match is None:
        return None
    noun = match["noun"]
    cls = _SINGULAR.get(noun, noun)
    said = NUMBER_WORDS.index(match["number"])
    true = scene.count(cls)
    if said == true:
        return Claim("count", start, end, (cls,) if true else (), False)
    return Claim("count", start, end, (cls,) if said else (), True, "numbers", ((start, end, count_answer(cls, true)),))


def _exist_claim(scene: Scene, sentence: str, start: int, end: int) -> Claim | None:
    match = EXIST_SENTENCE.fullmatch(sentence)
    if match is None:
        return None
    cls = match["cls"]
    said = sentence.startswith("Yes")
    true = cls in scene.classes
    claimed = (cls,) if said else ()
    if said == true:
        return Claim("exist", start, end, claimed, False)
    return Claim("exist", start, end, claimed, True, "objects", ((start, end, exist_answer(cls, true)),))


def _colour_claim(scene: Scene, sentence: str, start: int, end: int) -> Claim | None:
    match = COLOUR_SENTENCE.fullmatch(sentence)
    if match is None:
        return None
    cls = match["cls"]
    objects = scene.of_class(cls)
    if not objects:
        return Claim("colour", start, end, (cls,), True, "objects", ((start, end, exist_answer(cls, False)),))
    if any(obj.colour == match["colour"] for obj in objects):
        return Claim("colour", start, end, (cls,), False)
    return Claim(
        "colour", start, end, (cls,), True, "attributes", (_word_fix(match, "colour", start, objects[0].colour),)
    )


def _spatial_claim(scene: Scene, sentence: str, start: int, end: int) -> Claim | None:
    match = SPATIAL_SENTENCE.fullmatch(sentence)
    if match is None:
        return None
    cls, relation = match["cls"], match["relation"]
    named = tuple(c for c in (match["other"], cls) if c)
    anchors = scene.of_class(cls)
    if len(anchors) != 1:
        wrong = not anchors
        fix = ((start, end, exist_answer(cls, False)),) if wrong else ()
        return Claim("spatial", start, end, named, wrong, "objects" if wrong else None, fix)
    other = neighbour(scene, anchors[0], relation)
    right = (
        other is None
        if match["other"] is None
        else (other is not None and other.cls == match["other"] and other.colour == match["colour"])
    )
    if right:
        return Claim("spatial", start, end, named, False)
    error: ErrorType = "objects" if match["other"] and match["other"] not in scene.classes else "positions"
    return Claim("spatial", start, end, named, True, error, ((start, end, spatial_answer(scene, cls, relation)),))


def _unparsed_claim(scene: Scene, text: str, sentence: str, start: int, end: int) -> Claim | None:
    """A sentence outside the world's grammar: judged by the objects it names."""
    named = tuple(_SYNONYM_CLASS[m.group(0).lower()] for m in _ANY_CLASS.finditer(sentence))
    if not named:
        return None
    absent = [cls for cls in named if cls not in scene.classes]
    if not absent:
        return Claim("unparsed", start, end, named, False)
    return Claim("unparsed", start, end, named, True, "objects", (sentence_deletion(text, start, end),))


# ---------------------------------------------------------------------------------------
# What an annotator writes and chooses


def apply_fixes(text: str, fixes: list[tuple[int, int, str]]) -> str:
    out = text
    for start, end, new in sorted(fixes, key=lambda f: f[0], reverse=True):
        out = out[:start] + new + out[end:]
    return out


CorrectionStyle = Literal["replace", "delete"]
CORRECTION_STYLES: tuple[CorrectionStyle, ...] = ("replace", "delete")


def unnamed_objects(scene: Scene, report: Report) -> list[SceneObject]:
    """The scene's objects of classes the response names nowhere, in reading order: what a
    rewrite can name instead of an absent object (coverage counts classes)."""
    named = {cls for claim in report.claims for cls in claim.classes}
    return [obj for obj in reading_order(scene.objects) if obj.cls not in named]


def _deletes(claim: Claim) -> bool:
    return bool(claim.fixes) and all(new == "" for _, _, new in claim.fixes)


def correct(
    scene: Scene,
    response: str,
    *,
    noise: float = 0.0,
    rng: random.Random | None = None,
    style: CorrectionStyle = "replace",
) -> str:
    """The response with its hallucinated segments rewritten (RLHF-V's annotation).

    `style` "replace" rewrites a sentence about an absent object into one about an object
    the scene has and the response does not name yet (each such object used once, in
    reading order), RLHF-V's minimal editing (Yu et al., 2024, arXiv:2312.00849, section
    3.1: annotators correct the hallucinated segment into what the image shows); it deletes
    the sentence only when no such object is left. "delete" always deletes it. Each
    hallucinated claim is missed with probability `noise`, the same draws in either style.
    A response with nothing wrong comes back unchanged ("no hallucination").
    """
    if style not in CORRECTION_STYLES:
        raise ValueError(f"correction style {style!r}: expected one of {', '.join(CORRECTION_STYLES)}")
    rng = rng or random.Random(0)
    report = check(scene, response)
    spare = unnamed_objects(scene, report) if style == "replace" else []
    fixes: list[tuple[int, int, str]] = []
    for claim in report.claims:
        if not claim.hallucinated or (noise and rng.random() < noise):
            continue
        if spare and _deletes(claim):
            fixes.append((claim.start, claim.end, object_sentence(spare.pop(0))))
        else:
            fixes.extend(claim.fixes)
    return apply_fixes(response, fixes).strip()


@dataclass(frozen=True)
class Preference:
    """A LLaVA-RLHF judgement of two responses."""

    preferred: Literal[1, 2]
    tie_on_hallucination: bool  # question 1 answered "tie"
    hallucinations: tuple[int, int]
    rejected_hallucinates: bool


def prefer(
    scene: Scene, first: str, second: str, *, noise: float = 0.0, rng: random.Random | None = None
) -> Preference:
    """Question 1: which response has fewer hallucinations? Question 2, on a tie: which is
    more helpful (more correct claims; a coin flip if equal)."""
    rng = rng or random.Random(0)
    reports = (check(scene, first), check(scene, second))
    counts = (reports[0].hallucinations, reports[1].hallucinations)
    if noise and rng.random() < noise:
        preferred: Literal[1, 2] = rng.choice((1, 2))
        tie = False
    elif counts[0] != counts[1]:
        preferred, tie = (1 if counts[0] < counts[1] else 2), False
    else:
        tie = True
        helpful = (reports[0].correct_claims, reports[1].correct_claims)
        preferred = 1 if helpful[0] > helpful[1] else 2 if helpful[1] > helpful[0] else rng.choice((1, 2))
    rejected = 2 if preferred == 1 else 1
    return Preference(preferred, tie, counts, counts[rejected - 1] > 0)
