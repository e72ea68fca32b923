"""Bounds on outside input: text length, NUL characters and JSON nesting.

Every path that takes text from outside (the API, imports, generation) checks it here, so
the limits are the same everywhere and a refusal names what was wrong. The sizes are
settings (FACTLOOP_MAX_PROMPT_CHARS, FACTLOOP_MAX_CONTEXT_CHARS, FACTLOOP_MAX_FACTS_CHARS,
FACTLOOP_MAX_RESPONSE_CHARS).
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings

# Deeper than any real prompt, fact list or API body; Python's parser would recurse ~1000
# levels before failing with a RecursionError (a 500, where a 400 belongs).
MAX_JSON_DEPTH = 64

# Every byte but a quote and the four brackets, for bytes.translate(None, ...).
_NOT_TOKENS = bytes(b for b in range(256) if b not in b'"[]{}')
_QUOTE = ord('"')
_OPENING = frozenset(b"[{")


class TooDeep(ValueError):
    pass


def check_json_depth(raw: str | bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """Raise TooDeep when the JSON text nests arrays or objects deeper than `limit`, before
    anything parses it.

    Linear in the input, in time and memory (a few copies of it at most), whatever it holds:
    it runs on unauthenticated bodies before anything else. A regex that skips a string
    whole, `"(?:[^"\\]|\\.)*"`, restarts a scan to the end at every quote of an unterminated
    string, quadratic in its length while holding the GIL."""
    data = raw.encode() if isinstance(raw, str) else raw
    # Backslashes appear only inside strings in valid JSON and pair from the left, so taking
    # out every `\\` and then every `\"` leaves the quotes that open and close strings.
    # (Outside a string a backslash is invalid JSON, which json.loads refuses afterwards.)
    data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    # What is left that matters: quotes, which now open and close strings, and brackets.
    in_string, depth = False, 0
    for byte in data.translate(None, _NOT_TOKENS):
        if byte == _QUOTE:
            in_string = not in_string
        elif in_string:
            continue
        elif byte in _OPENING:
            depth += 1
            if depth > limit:
                raise TooDeep(f"JSON nested deeper than {limit} levels")
        else:
            depth -= 1


def loads(raw: str | bytes, limit: int = MAX_JSON_DEPTH) -> Any:
    """json.loads with the nesting bounded first (raises TooDeep or json.JSONDecodeError)."""
    check_json_depth(raw, limit)
    return json.loads(raw)


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def text_problem(name: str, value: Any, max_chars: int) -> str | None:
    """Why a text field (or a JSON value, measured as JSON) is not acceptable, or None.
    NUL characters are refused: PostgreSQL text cannot hold them."""
    if _has_nul(value):
        return f"{name} contains a NUL character"
    size = len(value) if isinstance(value, str) else len(json.dumps(value, ensure_ascii=False))
    if size > max_chars:
        return f"{name} is {size} characters long; the limit is {max_chars}"
    return None


def prompt_problems(prompt: Any, context: Any = None, facts: Any = None) -> list[str]:
    """The limit problems of an imported prompt, its context and its image's facts."""
    checks = [
        ("prompt", prompt, settings.FACTLOOP_MAX_PROMPT_CHARS),
        ("context", context or [], settings.FACTLOOP_MAX_CONTEXT_CHARS),
        ("facts", facts or {}, settings.FACTLOOP_MAX_FACTS_CHARS),
    ]
    return [problem for name, value, limit in checks if (problem := text_problem(name, value, limit))]


def response_problem(name: str, text: Any) -> str | None:
    return text_problem(name, text, settings.FACTLOOP_MAX_RESPONSE_CHARS)
