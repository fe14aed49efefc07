"""GET /rules: how the check decides, as one plain HTML page a clinician can read on a phone.

Cards link here (`source.url` and their last link, with an anchor per tier, warning, factor and
the monitoring card: cards/writer.rules_anchor). The page is rendered once, when the service
starts, from the knowledge and templates the engine itself uses (web/rules_page.py); it needs no
token, holds no patient data and runs no JavaScript.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from flask import Blueprint, Response, request
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from cds_service.cards.writer import CardWriter
from cds_service.knowledge import Knowledge
from cds_service.web.rules_page import rules_context

_TEMPLATES = Environment(loader=PackageLoader("cds_service.web", "templates"),
                         autoescape=select_autoescape(["html"]), undefined=StrictUndefined,
                         trim_blocks=True, lstrip_blocks=True)


def render_rules(knowledge: Knowledge, writer: CardWriter, *, quiet_days: int,
                 knowledge_dir: Path | None = None) -> str:
    context = rules_context(knowledge, writer, quiet_days=quiet_days,
                            knowledge_dir=knowledge_dir)
    return _TEMPLATES.get_template("rules.html").render(**context)


def rules_blueprint(knowledge: Knowledge, writer: CardWriter, *, quiet_days: int,
                    knowledge_dir: Path | None = None) -> Blueprint:
    page = render_rules(knowledge, writer, quiet_days=quiet_days, knowledge_dir=knowledge_dir)
    etag = hashlib.blake2b(page.encode(), digest_size=12).hexdigest()
    blueprint = Blueprint("rules", __name__)

    @blueprint.get("/rules")
    def rules() -> Response:
        response = Response(page, mimetype="text/html")
        response.set_etag(etag)
        # The page changes only with a new release of the knowledge or the templates.
        response.cache_control.public = True
        response.cache_control.max_age = 300
        return response.make_conditional(request)

    return blueprint
