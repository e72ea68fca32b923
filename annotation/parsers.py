"""Request bodies with a size limit.

Django caps bodies it reads itself (forms) at DATA_UPLOAD_MAX_MEMORY_SIZE, but DRF's parsers
read the raw stream, which has no cap. This parser refuses a larger body with 413 before
parsing it, whatever Content-Length claims."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from rest_framework import status
from rest_framework.exceptions import APIException
from rest_framework.parsers import JSONParser


class BodyTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "body_too_large"


class LimitedJSONParser(JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        request = (parser_context or {}).get("request")
        declared = request.META.get("CONTENT_LENGTH") if request is not None else None
        if declared and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(f"the request body is {declared} bytes; the limit is {limit}")
        body = stream.read(limit + 1)
        if len(body) > limit:
            raise BodyTooLarge(f"the request body is larger than the limit of {limit} bytes")
        return super().parse(io.BytesIO(body), media_type, parser_context)
