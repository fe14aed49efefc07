"""The `cds-service` command: serve the API, or evaluate one request file without a server."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

import click
import orjson

from cds_service.errors import ServiceError
from cds_service.ops.config import ConfigError, Settings, load_settings

# `serve`'s servers (ops/server.py: granian's workers; ops/workers.py: granian's front before
# gunicorn's sync workers) and the one it runs unless told (README, "Slow clients").
SERVERS = ("granian", "proxy")
DEFAULT_SERVER = "granian"


@click.group()
def main() -> None:
    """Calciphylaxis risk CDS Hooks service."""


@main.command()
@click.option("--host", help="Address to bind (default from config, else 127.0.0.1).")
@click.option("--port", type=int, help="Port to bind (default from config, else 8080).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="TOML configuration file. Without one: development mode on loopback.")
@click.option("--workers", type=int, help="Worker processes, one call at a time each "
              "(default 2).")
@click.option("--server", "server_kind", type=click.Choice(SERVERS),
              default=DEFAULT_SERVER, show_default=True, envvar="CDS_SERVER",
              help="granian: granian's workers run the app; proxy: granian reads whole "
              "requests and hands them to gunicorn's sync workers (ops/workers.py).")
def serve(host: str | None, port: int | None, config_path: str | None,
          workers: int | None, server_kind: str) -> None:
    """Run the service: whole requests read with asynchronous I/O, one call at a time per
    worker process."""
    import os
    import tempfile

    # Metrics of all workers are aggregated through files: set before prometheus is imported.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="cds-metrics-"))
    from cds_service.ops.observability import json_logging
    if server_kind == "proxy":
        from cds_service.ops.workers import serve as run_server
    else:
        from cds_service.ops.server import serve as run_server

    try:
        settings = load_settings(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    json_logging()
    if settings.development:
        if host and host not in ("127.0.0.1", "localhost", "::1"):
            raise click.ClickException("development mode (no --config) binds loopback only")
        logging.getLogger("cds_service").warning(
            "DEVELOPMENT MODE: no configuration file; listening on loopback only, "
            "client authentication off")
    def build_app():
        from cds_service.bootstrap import build

        service = build(settings)
        return service.app, service.on_worker_exit

    try:
        run_server(build_app, settings, host or settings.host, port or settings.port,
                   workers or settings.workers)
    except ConfigError as exc:  # e.g. production mode without public_base_url
        raise click.ClickException(str(exc)) from exc


# The project's fixtures say the "now" they were written for, so that evaluating one gives the
# same cards next year as today. Only `evaluate` reads it: the HTTP service never lets a request
# set its clock.
FIXTURE_EXTENSION = "calciphylaxis-cds.fixture"


def _fixture_time(body: object) -> str | None:
    extension = body.get("extension") if isinstance(body, dict) else None
    fixture = extension.get(FIXTURE_EXTENSION) if isinstance(extension, dict) else None
    when = fixture.get("evaluationTime") if isinstance(fixture, dict) else None
    return when if isinstance(when, str) else None


def _print_cards(response: dict) -> None:
    cards = response["cards"]
    if not cards:
        click.echo("No cards.")
    for card in cards:
        click.echo(f"[{card['indicator'].upper()}] {card['summary']}")
        click.echo("")
        click.echo(card["detail"])
        for suggestion in card.get("suggestions", []):
            click.echo(f"  Suggestion: {suggestion['label']}")
        click.echo("-" * 72)


@main.command()
@click.argument("request_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--now", "now_text", help="Evaluate as of this ISO instant (default: the time a "
              "project fixture was written for, else now).")
@click.option("--json", "as_json", is_flag=True, help="Print the CDS Hooks response as JSON.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False))
def evaluate(request_file: str, now_text: str | None, as_json: bool,
             config_path: str | None) -> None:
    """Print the cards a CDS Hooks request file produces (no server needed)."""
    from cds_service.bootstrap import create_engine
    from cds_service.cards.writer import absolute_service_urls
    from cds_service.cdshooks.engine import service_for_hook

    try:
        settings = load_settings(config_path) if config_path else Settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        body = orjson.loads(Path(request_file).read_bytes())
    except orjson.JSONDecodeError as exc:
        raise click.ClickException(f"{request_file} is not valid JSON: {exc}") from exc
    now = datetime.now(UTC)
    fixture_time = _fixture_time(body)
    if now_text or fixture_time:
        try:
            now = datetime.fromisoformat((now_text or fixture_time).replace("Z", "+00:00"))
        except ValueError as exc:
            raise click.BadParameter("give an ISO 8601 instant, e.g. 2026-11-20T12:00:00Z",
                                     param_hint="--now" if now_text else "the request file")\
                from exc
        now = now if now.tzinfo else now.replace(tzinfo=UTC)
        if not now_text:
            click.echo(f"Evaluated as of {fixture_time}, the time the fixture was written for "
                       "(--now to change it).", err=True)
    service = service_for_hook(body.get("hook", "") if isinstance(body, dict) else "")
    if service is None:
        raise click.ClickException("the request's hook is not one this service serves")
    engine = create_engine(settings)
    try:
        response = engine.call(service, body, now)
    except ServiceError as exc:
        click.echo(f"HTTP {exc.status}: {exc.message}", err=True)
        sys.exit(1)
    # The rules page as this configuration's server would serve it.
    base = settings.public_base_url or f"http://{settings.host}:{settings.port}"
    for card in response["cards"]:
        absolute_service_urls(card, base)
    if as_json:
        click.echo(orjson.dumps(response, option=orjson.OPT_INDENT_2).decode())
    else:
        _print_cards(response)


@main.command()
@click.option("--iss", default="https://sandbox.cds-hooks.org", show_default=True,
              help="The client's issuer (the iss of its JWTs).")
@click.option("--jwks-file", help="Where its public JWK Set is saved (relative to the config).")
@click.option("--jku", help="The one URL its JWK Set may be fetched from.")
@click.option("--algorithm", "algorithms", multiple=True,
              type=click.Choice(["ES384", "RS384", "ES256", "RS256"]),
              help="Signing algorithm it uses (repeatable; default ES384 and RS384).")
@click.option("--tenant", help="Tenant its tokens must carry, if any.")
@click.option("--fhir-server", "fhir_servers", multiple=True,
              help="FHIR base URL it may send as fhirServer (repeatable).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Configuration file, to check the saved JWK Set next to it.")
def keys(iss: str, jwks_file: str | None, jku: str | None, algorithms: tuple[str, ...],
         tenant: str | None, fhir_servers: tuple[str, ...], config_path: str | None) -> None:
    """Print how to trust a client, with a [[clients]] block to paste (default: the Sandbox)."""
    from cds_service.auth.trust import trust_instructions

    click.echo(trust_instructions(
        iss, jwks_file=jwks_file, jku=jku, algorithms=algorithms, tenant=tenant,
        fhir_servers=fhir_servers,
        config_dir=Path(config_path).resolve().parent if config_path else Path.cwd()))


@main.command()
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d"]),
              help="Only cards shown on or after this day (UTC), e.g. 2026-09-01.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "html"]), default="text",
              show_default=True, help="html: one self-contained file with the weekly chart.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="The service's TOML configuration (for database_url). Without one: the "
                   "SQLite file in ./instance, as `serve` uses from the same folder.")
@click.option("--output", type=click.Path(dir_okay=False),
              help="Write the report to this file instead of standard output.")
def report(since: datetime | None, fmt: str, config_path: str | None,
           output: str | None) -> None:
    """Cards shown, accepted, overridden and ignored: per service, factor, override reason and
    ISO week."""
    from cds_service.feedback.report_cli import ReportError, produce_report

    try:
        text = produce_report(load_settings(config_path),
                              since.replace(tzinfo=UTC) if since else None, fmt)
    except (ConfigError, ReportError) as exc:
        raise click.ClickException(str(exc)) from exc
    if output:
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"Report written to {output}", err=True)
    else:
        click.echo(text, nl=False)

def _as_of(text: str | None) -> datetime:
    """A day (midnight UTC) or an ISO instant; now when not given."""
    if not text:
        return datetime.now(UTC)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter("give a date or an ISO 8601 instant, e.g. 2026-11-20 or "
                                 "2026-11-20T12:00:00Z", param_hint="--as-of") from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@main.command()
@click.argument("export", type=click.Path(exists=True))
@click.option("--as-of", "as_of_text", help="Screen as of this day or instant (default: now).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default="worklist.csv",
              show_default=True, help="The ranked worklist (owner-only permissions: PHI).")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv",
              show_default=True, help="jsonl: the same rows with structured evidence.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False),
              help="Also write a self-contained HTML report with plots.")
@click.option("--scheduler", help="Address of an existing Dask scheduler (tcp://host:8786); "
              "'synchronous' to run in this process. Default: a local cluster.")
@click.option("--workers", type=click.IntRange(min=1),
              help="Worker processes of the local cluster (default: one per core).")
@click.option("--block-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="MiB of an NDJSON file per partition (bounds each worker's memory).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="TOML configuration (for knowledge_dir and cards_dir).")
def screen(export: str, as_of_text: str | None, out_path: str, fmt: str,
           html_path: str | None, scheduler: str | None, workers: int | None,
           block_size: int, config_path: str | None) -> None:
    """Screen a Bulk FHIR export (a folder of NDJSON files or a completion manifest): every
    patient on dialysis with calciphylaxis risk, ranked, as a worklist."""
    from cds_service.screening import ExportError
    from cds_service.screening import screen as run_screen

    try:
        settings = load_settings(config_path) if config_path else Settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    as_of = _as_of(as_of_text)
    knowledge_dir = str(settings.knowledge_dir) if settings.knowledge_dir else None
    cards_dir = str(settings.cards_dir) if settings.cards_dir else None
    if html_path:
        from cds_service.screening.report import ReportUnavailable, _pyplot

        try:
            _pyplot()  # before the screen, not after it
        except ReportUnavailable as exc:
            raise click.ClickException(str(exc)) from exc
    try:
        result = run_screen(export, as_of, scheduler=scheduler, workers=workers,
                            knowledge_dir=knowledge_dir, cards_dir=cards_dir,
                            block_size=block_size * 2**20, progress=sys.stdout.isatty())
    except ExportError as exc:
        raise click.ClickException(exc.message) from exc
    from cds_service.screening.worklist import write_worklist

    write_worklist(result.rows, out_path, fmt)
    if html_path:
        from cds_service.screening.assess import clinical
        from cds_service.screening.report import write_report

        knowledge = clinical(knowledge_dir, cards_dir).knowledge
        labels = {f.id: f.label for f in knowledge.factors.values()}
        labels |= {c.id: c.id.replace("_", " ") for c in knowledge.medicines.classes}
        _factor, criterion = knowledge.criterion_for("pth")
        write_report(result, html_path, labels, criterion.uln_multiple or 9.0)
    click.echo(result.summary())
    click.echo(f"engine: {result.scheduler}; worklist: {out_path}"
               + (f"; report: {html_path}" if html_path else ""))


if __name__ == "__main__":
    main()
