"""Changed spans between a response and its correction (RLHF-V's span annotation).

The annotator rewrites only the hallucinated segments; the server, never the client,
derives which segments changed, by diffing the two texts. The result is a list of spans
with character offsets in both texts, so that any tokenizer can later weight the tokens
that fall inside them (DDPO, docs/methods.md section 2c).

How the diff works:
- Both texts are split into tokens: runs of word characters, and single other non-space
  characters; whitespace separates tokens and is never a token itself.
- difflib's SequenceMatcher (autojunk off) aligns the two token sequences.
- RLHF-V's released code diffs token ids with a minimum match size of 3, so that a short
  accidental match inside a rewrite ("red" in "small red ball" -> "large red box") does not
  split one corrected segment in two. FactLoop does the same on word tokens: a matching run
  shorter than `min_match` that lies between two changes is absorbed into one span. A short
  match at either end of the text is kept as a match.
- Insertions in the corrected text and deletions from the original are spans too (with an
  empty side), unlike the released code, which gives weight only to replaced tokens
  (docs/methods.md section 2c); exporters say so, and training keeps a switch for that behaviour.

FactLoop's spans against RLHF-V's released weighting (`released_changes`, which training's
`released_weighting: true` applies to token ids; docs/methods.md sections 1b
and 2c; docs/training.md tabulates the same):
- What is diffed: the released code diffs the tokenizer's ids; FactLoop diffs words and
  punctuation, because spans are made when the annotator submits, are shown to them, and
  must fit any tokenizer.
- A match shorter than 3 at the very start or end: the released code merges it into the
  change; FactLoop keeps it as a match, since nothing on its far side changed ("A" in
  "A red ball" -> "A blue ball" is not an error).
- difflib's autojunk: on in the released code, off here. With it, a token in more than 1% of
  a response of 200+ tokens ("the", ",") cannot seed a match, which moves the changes.
- A pure insertion or deletion: no weight in the released code; a span here, since a
  hallucinated clause the annotator deleted is exactly what DDPO should push down.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Literal

_TOKEN = re.compile(r"\w+|[^\w\s]")
RELEASED_MIN_MATCH = 3  # RLHF-V's released diff: minimum match size, in tokens


@dataclass(frozen=True)
class Span:
    """One changed segment: original[original_start:original_end] became
    corrected[corrected_start:corrected_end]. Offsets count Python characters (code points).

    A replacement spans exactly its words; an insertion or deletion also takes the space that
    separated the words it adds or removes."""

    original_start: int
    original_end: int
    corrected_start: int
    corrected_end: int
    original_text: str
    corrected_text: str

    @property
    def kind(self) -> Literal["replace", "insert", "delete"]:
        if not self.original_text:
            return "insert"
        if not self.corrected_text:
            return "delete"
        return "replace"

    def as_dict(self) -> dict[str, int | str]:
        return {
            "original_start": self.original_start,
            "original_end": self.original_end,
            "corrected_start": self.corrected_start,
            "corrected_end": self.corrected_end,
            "original_text": self.original_text,
            "corrected_text": self.corrected_text,
            "kind": self.kind,
        }


def tokens(text: str) -> list[tuple[str, int, int]]:
    """(token, start, end) for every word or punctuation mark of `text`."""
    return [(m.group(0), m.start(), m.end()) for m in _TOKEN.finditer(text)]


def _range(toks: list[tuple[str, int, int]], first: int, last: int, text: str, other_empty: bool) -> tuple[int, int]:
    """Character range of tokens[first:last] in `text`.

    An empty range is the point where the other text's tokens go: the start of the next
    token, or the end of the text. When the other side is empty (a pure insertion or
    deletion), the range takes the whitespace that separated the words too (the following
    whitespace, or at the end of the text the preceding one), so that swapping the spans
    rebuilds the other text without gluing or doubling words.
    """
    if first == last:
        return (toks[first][1], toks[first][1]) if first < len(toks) else (len(text), len(text))
    start, end = toks[first][1], toks[last - 1][2]
    if other_empty:
        if last < len(toks):
            end = toks[last][1]
        elif first > 0:
            start = toks[first - 1][2]
    return start, end


def changed_spans(original: str, corrected: str, *, min_match: int = RELEASED_MIN_MATCH) -> list[Span]:
    """The segments in which `corrected` differs from `original`, in order.

    Identical token sequences give no span, whatever the whitespace between tokens.
    """
    if min_match < 1:
        raise ValueError("min_match must be at least 1")
    a, b = tokens(original), tokens(corrected)
    matcher = SequenceMatcher(None, [t for t, _, _ in a], [t for t, _, _ in b], autojunk=False)
    blocks = [block for block in matcher.get_matching_blocks() if block.size]
    # Keep a short match only where it does not sit between two changes.
    kept = []
    for block in blocks:
        at_start = block.a == 0 and block.b == 0
        at_end = block.a + block.size == len(a) and block.b + block.size == len(b)
        if block.size >= min_match or at_start or at_end:
            kept.append(block)
    gaps = []
    previous_a = previous_b = 0
    # The changes are the stretches between kept matches, and after the last one.
    for next_a, next_b, size in [(m.a, m.b, m.size) for m in kept] + [(len(a), len(b), 0)]:
        if next_a > previous_a or next_b > previous_b:
            gaps.append([previous_a, next_a, previous_b, next_b])
        previous_a, previous_b = next_a + size, next_b + size
    _slide_left(gaps, [t for t, _, _ in a], [t for t, _, _ in b])

    spans = []
    for pa, na, pb, nb in gaps:
        o_start, o_end = _range(a, pa, na, original, other_empty=nb == pb)
        c_start, c_end = _range(b, pb, nb, corrected, other_empty=na == pa)
        spans.append(Span(o_start, o_end, c_start, c_end, original[o_start:o_end], corrected[c_start:c_end]))
    return spans


def released_changes(
    original: Sequence[Hashable], corrected: Sequence[Hashable], *, autojunk: bool = True
) -> tuple[set[int], set[int]]:
    """The positions RLHF-V's released weighting counts as changed, in each sequence.

    The released rules (docs/methods.md 1b and 2c; the issue that asked for them restates them):
    difflib's SequenceMatcher with its defaults (autojunk on) matches `original` against
    `corrected`; every matching block shorter than RELEASED_MIN_MATCH is dropped, wherever it
    sits; the stretches between the remaining blocks are the changes, and only those changed
    on both sides (replacements) count: a pure insertion or deletion gives no position.
    `autojunk=False` is for measuring that rule alone (bench/weighting.py).
    """
    matcher = SequenceMatcher(None, original, corrected, autojunk=autojunk)  # True: difflib's default
    kept = [b for b in matcher.get_matching_blocks() if b.size >= RELEASED_MIN_MATCH]
    changed_a: set[int] = set()
    changed_b: set[int] = set()
    previous_a = previous_b = 0
    for next_a, next_b, size in [(m.a, m.b, m.size) for m in kept] + [(len(original), len(corrected), 0)]:
        if next_a > previous_a and next_b > previous_b:
            changed_a.update(range(previous_a, next_a))
            changed_b.update(range(previous_b, next_b))
        previous_a, previous_b = next_a + size, next_b + size
    return changed_a, changed_b


def _slide_left(gaps: list[list[int]], a: list[str], b: list[str]) -> None:
    """Place each pure insertion or deletion where a person would mark it.

    "top . A green ... bottom . A box" can lose "green ... . A", "A green ... ." or
    ". A green ... bottom" with the same result. Of the places a gap can slide to, take the
    one that starts a sentence (a word right after . ! ?), else the leftmost that starts
    with a word, else where the diff put it.
    """
    floor_a = floor_b = 0
    for gap in gaps:
        pa, na, pb, nb = gap
        if (pa == na) != (pb == nb):
            side = a if pb == nb else b
            start, end = (pa, na) if pb == nb else (pb, nb)
            floor = floor_a if pb == nb else floor_b
            shifts = [0]
            while start - shifts[-1] > floor and side[start - shifts[-1] - 1] == side[end - shifts[-1] - 1]:
                shifts.append(shifts[-1] + 1)

            def starts_sentence(shift: int, side: list[str] = side, start: int = start) -> bool:
                first = start - shift
                return side[first][0].isalnum() and (first == 0 or side[first - 1] in ".!?")

            def starts_word(shift: int, side: list[str] = side, start: int = start) -> bool:
                return side[start - shift][0].isalnum()

            sentence = [k for k in shifts if starts_sentence(k)]
            word = [k for k in shifts if starts_word(k)]
            shift = sentence[0] if sentence else (word[-1] if word else 0)
            pa, na, pb, nb = pa - shift, na - shift, pb - shift, nb - shift
            gap[:] = [pa, na, pb, nb]
        floor_a, floor_b = na, nb


def apply_spans(original: str, corrected: str, spans: list[Span]) -> str:
    """Rebuild `corrected` from `original` by swapping in each span's corrected text.

    The result equals `corrected` token for token (whitespace between unchanged words is the
    original's); tests use it to check that a set of spans accounts for every change.
    """
    out = original
    for span in sorted(spans, key=lambda s: s.original_start, reverse=True):
        out = (
            out[: span.original_start] + corrected[span.corrected_start : span.corrected_end] + out[span.original_end :]
        )
    return out


def sentences(text: str, ends: str = ".!?") -> list[tuple[int, int]]:
    """Spans of sentences: up to and including one of `ends`, or the rest of the text;
    leading spaces are not part of a sentence."""
    stop = re.escape(ends)
    found = []
    for match in re.finditer(rf"[^{stop}]*[{stop}]|[^{stop}]+$", text):
        start, end = match.span()
        while start < end and text[start].isspace():
            start += 1
        if start < end:
            found.append((start, end))
    return found


def sentence_deletion(text: str, start: int, end: int) -> tuple[int, int, str]:
    """The edit (start, end, "") that deletes a sentence with the space separating it from
    its neighbour (the one after it, else the one before)."""
    if end < len(text) and text[end] == " ":
        return (start, end + 1, "")
    if start > 0 and text[start - 1] == " ":
        return (start - 1, end, "")
    return (start, end, "")
