"""AI feedback on a response: its claims, the labeller's verdict on each, the response's score.

rlhf/ai_feedback.py makes it (RLAIF-V's recipe, arXiv:2405.17220 section 3; docs/methods.md's
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
# "question": a yes/no question a served splitter wrote for one claim (its value is the question).
ClaimKind = Literal["exist", "count", "colour", "relation", "question"]


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
    """`text` with (start, end, replacement) edits applied. Overlapping deletions merge (two
    neighbouring sentences deleted share the space between them); of other overlapping edits
    the one that starts first (the longer, on a tie) wins."""
    chosen: list[tuple[int, int, str]] = []
    for start, end, new in sorted(fixes, key=lambda f: (f[0], -(f[1] - f[0]))):
        if chosen and start < chosen[-1][1]:
            last_start, last_end, last_new = chosen[-1]
            if not new and not last_new:
                chosen[-1] = (last_start, max(last_end, end), "")
            continue
        chosen.append((start, end, new))
    for start, end, new in reversed(chosen):
        text = text[:start] + new + text[end:]
    return text


def suggested_correction(text: str, feedback: Feedback) -> str:
    """The response with every suspected claim's fix applied: what accepting all the
    machine's suggestions would submit."""
    return apply_fixes(text, [claim.fix for claim in feedback.suspected if claim.fix is not None])


def ai_pairs(scored: Sequence[tuple[str, int]], *, min_gap: int = 1, limit: int = 2) -> list[tuple[str, str]]:
    """RLAIF-V's pairs from one prompt's (response, score): (chosen, rejected) with a score
    gap of at least `min_gap`, largest gaps first, each response in one pair at most, at
    most `limit` pairs; identical texts are one response."""
    distinct: dict[str, int] = {}
    for text, score in scored:
        distinct.setdefault(text, score)
    order = sorted(distinct.items(), key=lambda item: -item[1])
    candidates = sorted(
        ((high, low) for i, high in enumerate(order) for low in order[i + 1 :] if high[1] - low[1] >= min_gap),
        key=lambda pair: -(pair[0][1] - pair[1][1]),
    )
    used: set[str] = set()
    pairs = []
    for (chosen, _), (rejected, _) in candidates:
        if chosen in used or rejected in used:
            continue
        used.update((chosen, rejected))
        pairs.append((chosen, rejected))
        if len(pairs) == limit:
            break
    return pairs


def agreement(feedback: Iterable[Feedback], truth: Iterable[Iterable[tuple[int, int]]]) -> dict[str, float]:
    """How the labeller's suspected claims match spans a person marked (the changed segments
    of their correction), per response: precision (suspected claims overlapping a marked
    span) and recall (marked spans overlapping a suspected claim)."""
    hits = flagged = found = marked = 0
    for item, spans in zip(feedback, truth, strict=True):
        spans = list(spans)
        suspected = [(c.start, c.end) for c in item.suspected]
        flagged += len(suspected)
        hits += sum(any(s < e2 and s2 < e for s2, e2 in spans) for s, e in suspected)
        marked += len(spans)
        found += sum(any(s < e2 and s2 < e for s2, e2 in suspected) for s, e in spans)
    return {
        "precision": hits / flagged if flagged else 0.0,
        "recall": found / marked if marked else 0.0,
        "suspected": float(flagged),
        "marked": float(marked),
    }


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
