"""`cds-service report`: find the store the service writes to, build the report, render it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cds_service.feedback.report import build_report
from cds_service.feedback.report_render import (
    ChartUnavailable,
    render_html,
    render_json,
    render_text,
    require_chart,
)
from cds_service.ops.config import Settings
from cds_service.store.store import (
    DEFAULT_DATABASE_FILE,
    FeedbackStore,
    StoreUnavailable,
    database_url,
)

RENDERERS = {"text": render_text, "json": render_json, "html": render_html}
# Rules that are not factors of the knowledge base.
EXTRA_LABELS = {"known_calciphylaxis": "Known calciphylaxis",
                "pth_not_measured": "PTH not measured recently"}


class ReportError(Exception):
    """The report cannot be made (no store where one was expected, store down)."""


def rule_labels(settings: Settings) -> dict[str, str]:
    from cds_service.knowledge import load_knowledge

    try:
        factors = load_knowledge(settings.knowledge_dir).factors
    except Exception:  # noqa: BLE001 - labels are a nicety; ids alone still make a report
        return dict(EXTRA_LABELS)
    return {**EXTRA_LABELS, **{fid: factor.label for fid, factor in factors.items()}}


def override_reason_names(settings: Settings) -> dict[tuple[str, str], str]:
    """The service's own override reasons (cards.toml), by (system, code)."""
    from cds_service.cards.writer import CardTemplates, TemplateError

    try:
        reasons = CardTemplates.load(settings.cards_dir).spec["override_reasons"]
    except (TemplateError, KeyError):  # names are a nicety; codes alone still make a report
        return {}
    return {(reasons["system"], r["code"]): r["display"] for r in reasons["reasons"]}


def produce_report(settings: Settings, since: datetime | None, fmt: str,
                   now: datetime | None = None) -> str:
    if fmt == "html":
        try:
            require_chart()
        except ChartUnavailable as exc:
            raise ReportError(str(exc)) from exc
    if settings.database_url is None:
        default = Path(settings.instance_dir) / DEFAULT_DATABASE_FILE
        if not default.exists():
            # Most likely run from another folder than `serve`: say so rather than report zeros.
            raise ReportError(f"no card record at {default.resolve()}: run the report from the "
                              "folder where `cds-service serve` runs, or pass --config")
    store = FeedbackStore(database_url(settings.database_url, settings.instance_dir))
    try:
        store.ensure_ready()
        now = now or datetime.now(UTC)
        store.reconcile_all(now)  # feedback whose card's record has come since
        report = build_report(store, since=since, now=now,
                              reason_names=override_reason_names(settings))
    except StoreUnavailable as exc:
        raise ReportError(f"the card store {store.display_url()} is unavailable") from exc
    finally:
        store.dispose()
    return RENDERERS[fmt](report, rule_labels(settings))
