"""The floor: a Flask app that only decodes the request body and answers an empty card list.

Served by gunicorn with the same sync workers as the service, it is what any service on this
stack costs before doing any work: bench/floor.py measures the service beside it.
"""

from __future__ import annotations

import orjson
from flask import Flask, Response, request

app = Flask(__name__)


@app.post("/cds-services/<service_id>")
def parse_only(service_id: str) -> Response:
    body = orjson.loads(request.get_data(cache=False))
    return Response(orjson.dumps({"cards": [], "keys": len(body)}),
                    mimetype="application/json")
