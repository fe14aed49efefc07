"""`cds-service evaluate`: the cards of one request file, without a server."""

from __future__ import annotations

import json
import subprocess

import pytest
from click.testing import CliRunner
from conftest import COMMAND, FIXTURES, MANIFEST, ROOT
from test_protocol_http import check_cds_response

from cds_service.cli import main

NOW = MANIFEST["anchor"]
REQUESTS = FIXTURES / "requests"
REFERENCE = REQUESTS / "reference-patient-view.json"


def evaluate(*args: str):
    return CliRunner().invoke(main, ["evaluate", *map(str, args)])


def assert_clean_failure(result, says: str) -> None:
    """A non-zero exit with a message and no traceback: click's own error path."""
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert says.lower() in result.output.lower(), result.output


def test_evaluate_prints_a_warning_naming_drugs_and_pth():
    result = evaluate(REFERENCE, "--now", NOW)
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    assert first.startswith("[WARNING]")
    for words in ("calcium acetate", "calcitriol", "PTH 1514 pg/mL"):
        assert words in first


def test_installed_command_prints_the_same_warning():
    done = subprocess.run([str(COMMAND), "evaluate", str(REFERENCE), "--now", NOW],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "WARNING" in done.stdout
    for words in ("calcium acetate", "calcitriol", "PTH 1514 pg/mL"):
        assert words in done.stdout
    assert "Traceback" not in done.stderr


def test_evaluate_json_prints_a_valid_cds_hooks_response():
    result = evaluate(REFERENCE, "--now", NOW, "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert [c["indicator"] for c in body["cards"]] == ["warning"]
    check_cds_response(body, json.loads(REFERENCE.read_text()))


def test_evaluate_json_of_an_order_sign_carries_the_swap_suggestions():
    path = REQUESTS / "reference-order-sign.json"
    result = evaluate(path, "--now", NOW, "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    [card] = body["cards"]
    assert {a["type"] for s in card["suggestions"] for a in s["actions"]} == {"delete", "create"}
    check_cds_response(body, json.loads(path.read_text()))


def test_evaluate_prints_the_suggestions_of_an_order_sign():
    result = evaluate(REQUESTS / "reference-order-sign.json", "--now", NOW)
    assert result.exit_code == 0, result.output
    assert "Suggestion: Replace calcium acetate with" in result.stdout


@pytest.mark.parametrize("name", ["not-on-dialysis-ckd3", "warfarin-stopped"])
def test_evaluate_prints_no_cards_for_a_negative_case(name):
    result = evaluate(REQUESTS / f"{name}.json", "--now", NOW)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "No cards."


def test_evaluate_json_of_a_negative_case_is_an_empty_cards_list():
    result = evaluate(REQUESTS / "not-on-dialysis-ckd3.json", "--now", NOW, "--json")
    assert json.loads(result.stdout) == {"cards": []}


def test_evaluate_missing_prefetch_exits_non_zero_with_412():
    result = evaluate(REQUESTS / "missing-prefetch.json", "--now", NOW)
    assert result.exit_code != 0
    assert "412" in result.output
    assert "Traceback" not in result.output
    assert "No cards." not in result.stdout


@pytest.mark.parametrize("content", [b"hook: patient-view\n", b"\xff\xfe\x00garbage"],
                         ids=["yaml", "binary"])
def test_evaluate_a_file_that_is_not_json_is_a_clean_error(tmp_path, content):
    path = tmp_path / "request.json"
    path.write_bytes(content)
    assert_clean_failure(evaluate(path, "--now", NOW), "not valid JSON")


def test_evaluate_non_json_file_through_the_installed_command_has_no_traceback(tmp_path):
    path = tmp_path / "request.json"
    path.write_text("{ not json")
    done = subprocess.run([str(COMMAND), "evaluate", str(path)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode != 0
    assert "not valid JSON" in done.stderr
    assert "Traceback" not in done.stderr


def test_evaluate_json_array_file_is_a_clean_error(tmp_path):
    path = tmp_path / "request.json"
    path.write_text("[1, 2]")
    assert_clean_failure(evaluate(path, "--now", NOW), "hook")


def test_evaluate_request_missing_context_reports_400(tmp_path):
    request = json.loads(REFERENCE.read_text())
    del request["context"]
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    result = evaluate(path, "--now", NOW)
    assert result.exit_code != 0
    assert "400" in result.output and "context" in result.output
    assert "Traceback" not in result.output


def test_evaluate_unparseable_now_is_a_clean_error():
    assert_clean_failure(evaluate(REFERENCE, "--now", "yesterday"), "now")


def test_evaluate_unreadable_config_is_a_clean_error(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("this is = = not toml")
    assert_clean_failure(evaluate(REFERENCE, "--now", NOW, "--config", config), "config")


def test_a_fixture_is_evaluated_as_of_the_time_it_was_written_for():
    """The README's example keeps showing a card next year: fixtures carry their own 'now'."""
    result = evaluate(REFERENCE)
    assert result.exit_code == 0, result.output
    assert result.stdout == evaluate(REFERENCE, "--now", NOW).stdout
    assert result.stdout.startswith("[WARNING]")
    assert NOW in result.stderr


def test_now_given_on_the_command_line_wins_over_the_fixture_time():
    a_year_later = NOW.replace(NOW[:4], str(int(NOW[:4]) + 1), 1)
    result = evaluate(REFERENCE, "--now", a_year_later)
    assert result.exit_code == 0, result.output
    # A year later her PTH of 1514 pg/mL is too old to count: the card no longer names it.
    first = result.stdout.splitlines()[0]
    assert "calcium acetate" in first and "PTH" not in first


def test_the_http_service_never_takes_its_clock_from_a_request(client):
    body = json.loads(REFERENCE.read_text())
    body["extension"]["calciphylaxis-cds.fixture"]["evaluationTime"] = "2031-01-01T00:00:00Z"
    response = client.post("/cds-services/calciphylaxis-patient-view", json=body)
    assert [c["indicator"] for c in response.get_json()["cards"]] == ["warning"]
