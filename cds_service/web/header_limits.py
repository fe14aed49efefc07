"""Limits on request headers, answered like every other error: a JSON OperationOutcome (431)
with the CORS headers, before authentication looks at them.

The HTTP layer (granian) has a higher limit of its own (server.MAX_HEADER_BUFFER_BYTES) that
answers a bare 431; these lower ones come first so that a client sees the service's error shape.
"""

from __future__ import annotations

from flask import Flask, request
from werkzeug.exceptions import RequestHeaderFieldsTooLarge

MAX_FIELD_BYTES = 8190  # one header's name and value, as gunicorn's limit_request_field_size
MAX_TOTAL_BYTES = 32 * 1024
MAX_FIELDS = 100


def check_headers() -> None:
    total = count = 0
    for name, value in request.headers.items():
        size = len(name) + len(value) + 2
        if size > MAX_FIELD_BYTES:
            raise RequestHeaderFieldsTooLarge(f"header {name[:40]} is longer than "
                                              f"{MAX_FIELD_BYTES} bytes")
        total += size
        count += 1
    if total > MAX_TOTAL_BYTES or count > MAX_FIELDS:
        raise RequestHeaderFieldsTooLarge(f"request headers exceed {MAX_TOTAL_BYTES} bytes or "
                                          f"{MAX_FIELDS} fields")


def init_app(app: Flask) -> None:
    app.before_request(check_headers)
