"""AI feedback on a response: its claims, the labeller's verdict on each, the response's score.

rlhf/ai_feedback.py makes it (RLAIF-V's recipe, arXiv:2405.17220 section 3; METHODS.md's
table: split a response into atomic claims, ask a labeller model a question about the image
per claim, score = -(claims judged false)); the web app stores it on a candidate and shows it
to annotators as machine suggestions (suspected spans, a proposed order), and the labeller's
pairs train beside the humans'. The file between them is JSON Lines, one `Feedback` a line,
keyed by the caller's `key` (a candidate id, say).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

FEEDBACK_SCHEMA = 1
ClaimKind = Literal["exist", "count", "colour", "relation"]


@dataclass(frozen=True)
class ClaimVerdict:
    """One atomic claim of a response, the question that checks it, and the answer."""

    kind: ClaimKind
    subject: str  # the object class the claim is about
    value: str  # exist: "yes"/"no"; count: the number; colour: the colour; relation: "left of|box"
    start: int  # the claimed words, as character offsets in the response
    end: int
    question: str
    answer: str = ""
    # True: the labeller's answer supports the claim; False: it contradicts it; None: the
    # answer could not be read (it counts neither way).
    supported: bool | None = None
    # The edit that would fix the claim if it is false: (start, end, replacement) in the
    # response; a deleted sentence has an empty replacement.
    fix: tuple[int, int, str] | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        """Claims with one key are one claim (a class named twice is one existence claim)."""
        return (self.kind, self.subject, self.value)


@dataclass(frozen=True)
class Feedback:
    key: str
    labeller: str  # what made it: "ai:<served model or version>"
    claims: tuple[ClaimVerdict, ...] = field(default_factory=tuple)

    @property
    def score(self) -> int:
        """RLAIF-V's score: minus the number of distinct claims judged false."""
        return -len({claim.key for claim in self.claims if claim.supported is False})

    @property
    def suspected(self) -> list[ClaimVerdict]:
        """The claims judged false, each once, in the order of the response."""
        seen: set[tuple[str, str, str]] = set()
        found = []
        for claim in sorted(self.claims, key=lambda c: c.start):
            if claim.supported is False and claim.key not in seen:
                seen.add(claim.key)
                found.append(claim)
        return found

    def as_dict(self) -> dict[str, Any]:
        return {"schema": FEEDBACK_SCHEMA, **asdict(self), "score": self.score}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Feedback:
        if data.get("schema") != FEEDBACK_SCHEMA:
            raise ValueError(f"feedback schema {data.get('schema')!r}; this version reads {FEEDBACK_SCHEMA}")
        claims = tuple(
            ClaimVerdict(**{**claim, "fix": tuple(claim["fix"]) if claim.get("fix") else None})
            for claim in data["claims"]
        )
        return cls(str(data["key"]), str(data["labeller"]), claims)


def apply_fixes(text: str, fixes: Iterable[tuple[int, int, str]]) -> str:
    """`text` with non-overlapping (start, end, replacement) edits applied; of overlapping
    edits the one that starts first (the longer, on a tie) wins."""
    chosen: list[tuple[int, int, str]] = []
    for start, end, new in sorted(fixes, key=lambda f: (f[0], -(f[1] - f[0]))):
        if chosen and start < chosen[-1][1]:
            continue
        chosen.append((start, end, new))
    for start, end, new in reversed(chosen):
        text = text[:start] + new + text[end:]
    return text


def suggested_correction(text: str, feedback: Feedback) -> str:
    """The response with every suspected claim's fix applied: what accepting all the
    machine's suggestions would submit."""
    return apply_fixes(text, [claim.fix for claim in feedback.suspected if claim.fix is not None])


def write_feedback(path: Path, items: Sequence[Feedback]) -> None:
    """One JSON object a line, written beside and renamed into place."""
    staged = path.with_name(path.name + ".part")
    with staged.open("w", encoding="utf-8") as out:
        for item in items:
            out.write(json.dumps(item.as_dict()) + "\n")
    staged.replace(path)


def read_feedback(path: Path) -> Iterator[Feedback]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield Feedback.from_dict(json.loads(line))
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{path}:{number}: not a feedback line ({error})") from None
