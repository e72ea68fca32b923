"""Request body parsers (kept apart from the views: DRF reads DEFAULT_PARSER_CLASSES while
rest_framework.views is being imported)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from annotation.rules import limits


class BoundedJSONParser(JSONParser):
    """DRF's JSON parser with the nesting bounded before parsing: a body nested thousands
    deep gets a 400, not a RecursionError."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        raw = stream.read() if stream is not None else b""
        try:
            limits.check_json_depth(raw)
        except limits.TooDeep as error:
            raise ParseError(f"JSON parse error - {error}") from None
        return super().parse(io.BytesIO(raw), media_type, parser_context)
