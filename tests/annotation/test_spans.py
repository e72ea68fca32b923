"""Changed spans of a correction, derived by the server from the two texts."""

from __future__ import annotations

import random

import pytest

from contract.spans import Span, apply_spans, changed_spans, tokens


def words(text: str) -> list[str]:
    return [t for t, _, _ in tokens(text)]


def test_identical_texts_have_no_span() -> None:
    assert changed_spans("A red ball is at the top.", "A red ball is at the top.") == []
    assert changed_spans("A red  ball.", "A red ball. ") == []  # whitespace only
    assert changed_spans("", "") == []


def test_one_replaced_word() -> None:
    original = "A small red ball is at the top left."
    corrected = "A small blue ball is at the top left."
    [span] = changed_spans(original, corrected)
    assert span == Span(8, 11, 8, 12, "red", "blue")
    assert span.kind == "replace"
    assert original[span.original_start : span.original_end] == "red"
    assert corrected[span.corrected_start : span.corrected_end] == "blue"


def test_deleted_sentence_and_inserted_word() -> None:
    original = "A red ball is at the top. A green tent is at the bottom. A box is in the center."
    corrected = "A red ball is at the top. A box is in the center."
    [deleted] = changed_spans(original, corrected)
    assert deleted.kind == "delete"
    assert deleted.original_text == "A green tent is at the bottom. "
    assert deleted.corrected_start == deleted.corrected_end == corrected.index("A box")
    assert apply_spans(original, corrected, [deleted]) == corrected

    [inserted] = changed_spans("There is a ball.", "There is a big ball.")
    assert (inserted.kind, inserted.corrected_text) == ("insert", "big ")
    assert inserted.original_start == inserted.original_end == len("There is a ")
    assert apply_spans("There is a ball.", "There is a big ball.", [inserted]) == "There is a big ball."
    [appended] = changed_spans("A cat", "A cat sat")
    assert appended.corrected_text == " sat"
    assert apply_spans("A cat", "A cat sat", [appended]) == "A cat sat"


def test_short_accidental_match_inside_a_rewrite_is_absorbed() -> None:
    original = "Then a small red ball sits at the top of the image."
    corrected = "Then a large red box sits at the bottom of the image."
    # RLHF-V's minimum match of 3 tokens: "red" and "sits at the" -> one is too short.
    merged = changed_spans(original, corrected)
    assert [(s.original_text, s.corrected_text) for s in merged] == [
        ("small red ball", "large red box"),
        ("top", "bottom"),
    ]
    split = changed_spans(original, corrected, min_match=1)
    assert [(s.original_text, s.corrected_text) for s in split] == [
        ("small", "large"),
        ("ball", "box"),
        ("top", "bottom"),
    ]


def test_short_matches_at_the_edges_stay_matches() -> None:
    [span] = changed_spans("A cat.", "A dog.")
    assert (span.original_text, span.corrected_text) == ("cat", "dog")


def test_multibyte_text_offsets_are_characters() -> None:
    original = "Un café crème près de la fenêtre 🙂."
    corrected = "Un thé vert près de la fenêtre 🙂."
    [span] = changed_spans(original, corrected)
    assert (span.original_text, span.corrected_text) == ("café crème", "thé vert")
    assert original[span.original_start : span.original_end] == "café crème"
    assert corrected[span.corrected_start : span.corrected_end] == "thé vert"


def test_a_span_inside_a_word_covers_the_whole_word() -> None:
    [span] = changed_spans("The boxes are red.", "The boxed are red.")
    assert (span.original_text, span.corrected_text) == ("boxes", "boxed")


def test_bad_min_match() -> None:
    with pytest.raises(ValueError, match="min_match"):
        changed_spans("a", "b", min_match=0)


@pytest.mark.parametrize("seed", range(40))
def test_spans_account_for_every_change(seed: int) -> None:
    rng = random.Random(seed)
    vocabulary = [
        "a",
        "the",
        "red",
        "blue",
        "green",
        "ball",
        "box",
        "kite",
        "tent",
        "is",
        "at",
        "in",
        "top",
        "left",
        "right",
        "center",
        ",",
        ".",
    ]
    original_words = [rng.choice(vocabulary) for _ in range(rng.randint(0, 25))]
    edited = list(original_words)
    for _ in range(rng.randint(0, 5)):
        operation = rng.choice(["replace", "insert", "delete"])
        position = rng.randint(0, max(0, len(edited) - 1))
        if operation == "insert" or not edited:
            edited.insert(position, rng.choice(vocabulary))
        elif operation == "delete":
            del edited[position]
        else:
            edited[position] = rng.choice(vocabulary)
    original, corrected = " ".join(original_words), " ".join(edited)
    for min_match in (1, 3):
        spans = changed_spans(original, corrected, min_match=min_match)
        assert words(apply_spans(original, corrected, spans)) == words(corrected)
        assert all(s.original_text != s.corrected_text for s in spans)
        previous = -1
        for span in spans:
            assert span.original_start >= previous
            previous = span.original_end


def test_an_inserted_sentence_is_marked_as_a_whole_sentence() -> None:
    original = "A ball is at the top. A box is at the left."
    corrected = "A ball is at the top. A kite is at the right. A box is at the left."
    [span] = changed_spans(original, corrected)
    assert span.kind == "insert"
    assert span.corrected_text == "A kite is at the right. "
    assert apply_spans(original, corrected, [span]) == corrected
