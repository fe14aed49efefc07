"""Decoding a JSON request body, strictly: the media type, the charset, the size and the JSON.

- Media type: application/json, or application/fhir+json (the +json type FHIR registers);
  anything else is 415. Charset: none, or UTF-8 (JSON's only encoding, RFC 8259).
- Duplicate object keys are a 400: with them a second `context` or `status` would silently
  replace the first. orjson cannot see them; jiter can (catch_duplicate_keys), at ~0.5 ms per
  278 KB body over orjson (bench/README.md).
- NaN and Infinity are not JSON: 400.
"""

from __future__ import annotations

import jiter
from flask import request

from cds_service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

JSON_MEDIA_TYPES = frozenset({"application/json", "application/fhir+json"})


def check_media_type() -> None:
    if (request.mimetype or "") not in JSON_MEDIA_TYPES:
        raise UnsupportedMediaType("send the request as application/json")
    charset = request.mimetype_params.get("charset")
    if charset is not None and charset.lower().replace("_", "-") not in ("utf-8", "utf8"):
        raise UnsupportedMediaType("JSON bodies are UTF-8: send charset=utf-8 or none")


def decode_json_body() -> object:
    check_media_type()
    raw = request.get_data(cache=False)  # raises 413 past MAX_CONTENT_LENGTH
    limit = request.max_content_length
    if limit is not None and request.content_length is None and len(raw) >= limit:
        # A chunked body is cut at the limit rather than refused: refuse it ourselves.
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    if not raw:
        raise BadRequest("request body is empty")
    try:
        # Nesting: jiter refuses more than ~200 levels (400 here); each FHIR resource the
        # service reads is held to MAX_JSON_DEPTH before validation (fhir_read.validate).
        return jiter.from_json(raw, catch_duplicate_keys=True, allow_inf_nan=False,
                               cache_mode="keys")
    except ValueError as exc:
        if "recursion limit" in str(exc):
            raise BadRequest("request body is not valid JSON for this service: it nests too "
                             "deep") from None
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
