"""`cds-service report`: exact counts on a generated history (SQLite and PostgreSQL), the
self-contained HTML with its chart, and `serve` and `report` sharing the default SQLite file."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from conftest import ANCHOR, COMMAND, FIXTURES
from feedback_history import COMMENT_ONLY, REASON_SYSTEM, generate_history, shown_card

from cds_service.bootstrap import create_app, service_of
from cds_service.cli import main
from cds_service.feedback.submit import submit_feedback
from cds_service.feedback.validation import FeedbackEntry
from cds_service.ops.config import Settings

FIELDS = ("shown", "accepted", "overridden", "ignored")


def run_report(tmp_path, url: str, *args: str):
    config = tmp_path / "service.toml"
    config.write_text(f'database_url = "{url}"\n')
    result = CliRunner().invoke(main, ["report", "--config", str(config), *args])
    assert result.exit_code == 0, result.output
    return result


def report_json(tmp_path, url: str, *args: str) -> dict:
    return json.loads(run_report(tmp_path, url, "--format", "json", *args).stdout)


def numbers(counts: dict) -> dict:
    return {field: counts[field] for field in FIELDS}


def as_numbers(expected: Counter) -> dict:
    return {field: expected[field] for field in FIELDS}


@pytest.fixture()
def history(store):
    return generate_history(store)


def test_json_counts_per_service_factor_reason_and_week_are_exact(store, history, tmp_path):
    body = report_json(tmp_path, store.url)
    assert {s: numbers(c) for s, c in body["services"].items()} == {
        s: as_numbers(c) for s, c in history.services.items()}
    assert {r: numbers(c) for r, c in body["rules"].items()} == {
        r: as_numbers(c) for r, c in history.rules.items()}
    # The alert burden by tier, for the committee.
    assert {t: numbers(c) for t, c in body["tiers"].items()} == {
        t: as_numbers(c) for t, c in history.tiers.items()}
    assert set(body["tiers"]) == {"critical", "warning", "info"}
    assert {r["code"] or COMMENT_ONLY: r["overridden"]
            for r in body["override_reasons"].values()} == dict(history.reasons)
    assert {w: numbers(c) for w, c in body["weeks"].items()} == {
        w: as_numbers(c) for w, c in history.weeks.items()}
    for (week, service), counts in history.week_services.items():
        assert numbers(body["weeks"][week]["services"][service]) == as_numbers(counts)
    total = body["total"]
    assert total["shown"] == 240 == sum(c["shown"] for c in body["services"].values())
    assert total["shown"] == total["accepted"] + total["overridden"] + total["ignored"]
    assert total["acceptance_rate"] == round(total["accepted"] / 240, 4)
    assert body["rules"]["calcium_binder"]["label"] == "calcium-based phosphate binder"


def test_since_counts_only_cards_shown_from_that_day(store, history, tmp_path):
    body = report_json(tmp_path, store.url, "--since", "2026-10-05")  # Monday of 2026-W41
    later = [week for week in history.weeks if week >= "2026-W41"]
    assert sorted(body["weeks"]) == sorted(later)
    expected: dict[str, Counter] = {}
    for (week, service), counts in history.week_services.items():
        if week in later:
            expected.setdefault(service, Counter()).update(counts)
    assert {s: numbers(c) for s, c in body["services"].items()} == {
        s: as_numbers(c) for s, c in expected.items()}
    assert body["since"] == "2026-10-05T00:00:00+00:00"


def test_text_report_lists_services_factors_weeks_and_reasons(store, history, tmp_path):
    text = run_report(tmp_path, store.url).stdout
    order_sign = history.services["calciphylaxis-order-sign"]
    line = next(li for li in text.splitlines() if li.startswith("calciphylaxis-order-sign"))
    assert line.split()[1:5] == [str(order_sign[f]) for f in FIELDS]
    for words in ("Factor (rule)", "high_pth", "2026-W37", "Override reason",
                  "reviewed-by-nephrology", COMMENT_ONLY):
        assert words in text
    warning = history.tiers["warning"]
    line = next(li for li in text.splitlines() if li.startswith("warning "))
    assert line.split()[1:5] == [str(warning[f]) for f in FIELDS]


def test_html_is_one_self_contained_file_with_the_weekly_chart(store, history, tmp_path):
    output = tmp_path / "report.html"
    run_report(tmp_path, store.url, "--format", "html", "--output", str(output))
    html = output.read_text()
    [image] = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    png = base64.b64decode(image)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched from elsewhere
    assert "<script" not in html
    assert "calciphylaxis-order-sign" in html and "2026-W44" in html


def test_html_without_matplotlib_says_which_extra_to_install(tmp_path, monkeypatch):
    """matplotlib is the optional `report` extra: without it, a clear message, no traceback,
    before any store is opened; text and JSON need no extra."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    config = tmp_path / "service.toml"
    config.write_text(f'database_url = "sqlite:///{tmp_path / "none.sqlite3"}"\n')
    result = CliRunner().invoke(main, ["report", "--config", str(config), "--format", "html"])
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit)
    assert "pip install 'cds-service[report]'" in result.output
    assert not (tmp_path / "none.sqlite3").exists()
    result = CliRunner().invoke(main, ["report", "--config", str(config), "--format", "json"])
    assert result.exit_code == 0, result.output


def test_html_escapes_what_clients_sent(store, tmp_path):
    card = shown_card(suggestions=0)
    store.record_shown([card])
    entry = FeedbackEntry(0, card.card_uuid, "overridden", datetime(2026, 11, 20, 13, tzinfo=UTC),
                          reason_system=REASON_SYSTEM, reason_code="x",
                          reason_display="<script>alert(1)</script>")
    submit_feedback(store, card.service_id, [entry], client_iss=None,
                    received_at=datetime.now(UTC))
    html = run_report(tmp_path, store.url, "--format", "html").stdout
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_an_empty_store_gives_an_empty_report(store, tmp_path):
    body = report_json(tmp_path, store.url)
    assert body["services"] == {} and body["weeks"] == {}
    assert numbers(body["total"]) == dict.fromkeys(FIELDS, 0)
    assert "<img" in run_report(tmp_path, store.url, "--format", "html").stdout


def test_serve_and_report_run_from_one_folder_share_the_default_database(tmp_path,
                                                                          monkeypatch):
    """No config: the service records into ./instance/cds.sqlite3 and the installed command,
    started in the same folder, reports from it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CDS_DATABASE_URL", raising=False)
    app = create_app(Settings(), clock=lambda: ANCHOR)  # what `serve` builds without --config
    request = json.loads((FIXTURES / "requests" / "reference-order-sign.json").read_text())
    [card] = app.test_client().post("/cds-services/calciphylaxis-order-sign",
                                    json=request).get_json()["cards"]
    service_of(app).feedback.recorder.close()
    assert (tmp_path / "instance" / "cds.sqlite3").exists()
    done = subprocess.run([str(COMMAND), "report", "--format", "json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert numbers(body["services"]["calciphylaxis-order-sign"]) == {
        "shown": 1, "accepted": 0, "overridden": 0, "ignored": 1}


def test_report_elsewhere_without_a_database_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CDS_DATABASE_URL", raising=False)
    result = CliRunner().invoke(main, ["report"])
    assert result.exit_code != 0
    assert "no card record at" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "instance").exists()


def test_database_url_from_the_environment(store, tmp_path, monkeypatch):
    store.record_shown([shown_card()])
    monkeypatch.setenv("CDS_DATABASE_URL", store.url)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["report", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["total"]["shown"] == 1


def test_override_reasons_sent_as_codes_only_are_named_from_the_service_list(store, tmp_path):
    card = shown_card(suggestions=0)
    store.record_shown([card])
    entry = FeedbackEntry(0, card.card_uuid, "overridden", datetime(2026, 11, 20, 13, tzinfo=UTC),
                          reason_system=REASON_SYSTEM, reason_code="reviewed-by-nephrology")
    submit_feedback(store, card.service_id, [entry], client_iss=None,
                    received_at=datetime.now(UTC))
    [reason] = report_json(tmp_path, store.url)["override_reasons"].values()
    assert reason["display"] == "Already reviewed with nephrology"
    text = run_report(tmp_path, store.url).stdout
    assert "Already reviewed with nephrology (reviewed-by-nephrology)" in text
    assert "Already reviewed with nephrology" in run_report(
        tmp_path, store.url, "--format", "html").stdout


def test_cards_not_shown_again_are_counted_per_rule(store, tmp_path):
    from cds_service.store.store import QuietedRecord

    at = datetime(2026, 11, 20, 13, tzinfo=UTC)
    store.record_shown([], [
        QuietedRecord("calciphylaxis-patient-view", "warning", "f" * 32, "card-1",
                      ("warning", "vitamin_k_antagonist"), at),
        QuietedRecord("calciphylaxis-patient-view", "warning", "f" * 32, "card-1",
                      ("warning", "vitamin_k_antagonist"), at),
        QuietedRecord("calciphylaxis-patient-view", "info", "e" * 32, "card-2",
                      ("info", "calcium_binder"), at)])
    body = report_json(tmp_path, store.url)
    assert body["quieted"] == {"total": 3, "rules": {
        "calcium_binder": 1, "info": 1, "vitamin_k_antagonist": 2, "warning": 2}}
    assert report_json(tmp_path, store.url, "--since", "2026-11-21")["quieted"]["total"] == 0
    text = run_report(tmp_path, store.url).stdout
    assert "Not shown again after an override (override quieting): 3" in text
    assert re.search(r"^\s+2\s+vitamin_k_antagonist \(warfarin", text, re.MULTILINE)
    html = run_report(tmp_path, store.url, "--format", "html").stdout
    assert "3 cards were not repeated" in html
