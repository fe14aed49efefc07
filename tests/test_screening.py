"""Population screening (issue 15): the same answers as patient-view, every line accounted for,
every input shape, owner-only output, on a generated population and the real Bulk sample."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from population import expectations
from screening_data import (
    AS_OF,
    POPULATION,
    patient_view_request,
    read_export,
    write_population,
)

from cds_service.cdshooks.services import SERVICES
from cds_service.cli import main
from cds_service.screening import ExportError, screen
from cds_service.screening.worklist import write_worklist

NOW = datetime.fromisoformat(AS_OF.replace("Z", "+00:00"))
# The compressed size of the shuffled lines depends on how files are split: not compared.
COMPRESSED = {"shuffled_bytes": None}
BULK_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "bulk-sample"
if not BULK_SAMPLE.is_dir():  # a work tree beside main, or CI's clone beside shared/
    BULK_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bulk-sample"
SYNTHEA_DIALYSIS_PATIENT = "79a66c97-6131-3213-f3c9-4606946ab056"


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("export")
    return folder, write_population(folder)


@pytest.fixture(scope="module")
def screened(export):
    return screen(export[0], NOW, scheduler="synchronous")


def firing(row: dict) -> set[str]:
    return {f["factor"] for f in row["factors"] if f["modifiable"]}


def test_every_patient_gets_the_answer_patient_view_gives(export, screened, engine):
    patients, resources, medications = read_export(export[0])
    rows = {row["patient_id"]: row for row in screened.rows}
    service = SERVICES["calciphylaxis-patient-view"]
    factor_ids = set(engine.knowledge.factors)
    compared = 0
    for patient_id, patient in patients.items():
        body = patient_view_request(patient, resources[patient_id], medications,
                                    engine.knowledge)
        issued = engine.run(service, body, NOW).issued
        row = rows.get(patient_id)
        if not issued:
            assert row is None, patient_id
            continue
        (card,) = issued
        assert row is not None, patient_id
        assert row["tier"] == card.indicator, patient_id
        assert firing(row) == set(card.rules) & factor_ids, patient_id
        # The card's rules: its tier, the warnings that hold, the firing factors (in order).
        rules = [row["tier"], *row["warnings"], *(f["factor"] for f in row["factors"]
                                                  if f["modifiable"])]
        rules += ["known_calciphylaxis"] if row["tier"] == "critical" else []
        assert list(card.rules) == (rules if len(rules) > 1 else ["info", "pth_not_measured"])
        compared += 1
    assert compared == len(rows) > 20  # every row was a card, and there were many


def test_in_scope_patients_and_their_factors_match_the_generators_truth(screened):
    truth = [t for t in expectations(POPULATION["patients"], seed=POPULATION["seed"], as_of=AS_OF,
                                     dialysis_share=POPULATION["dialysis_share"],
                                     noise_scale=POPULATION["noise_scale"])]
    assert screened.in_scope == sum(t["in_scope"] for t in truth)
    rows = {row["patient_id"]: row for row in screened.rows}
    for t in truth:
        if t["in_scope"] and t["factors"]:
            assert firing(rows[t["patient"]]) == set(t["factors"]), t["patient"]
        if t["mrn"] and t["patient"] in rows:
            assert rows[t["patient"]]["mrn"] == t["mrn"]


def test_the_worklist_is_ranked_by_tier_then_modifiable_factors_then_pth(screened):
    order = {"critical": 0, "warning": 1, "info": 2}
    keys = [(order[r["tier"]], -r["modifiable_factors"], r["pth_multiple"] is None,
             -(r["pth_multiple"] or 0)) for r in screened.rows]
    assert keys == sorted(keys)
    assert [r["rank"] for r in screened.rows] == list(range(1, len(screened.rows) + 1))
    assert {"warning", "info"} <= {r["tier"] for r in screened.rows}


def test_each_factor_carries_its_evidence_and_action(screened):
    for row in screened.rows:
        for factor in row["factors"]:
            assert factor["evidence"], factor
            for ev in factor["evidence"]:
                if ev["kind"] == "lab":
                    assert ev["value"] and ev["unit"] and ev["date"]
                    assert ev["threshold"] is not None
                if ev["kind"] == "medication":
                    assert ev["drug"] and ev["date"] is not None
            if factor["factor"] in ("vitamin_k_antagonist", "high_pth"):
                assert factor["action"]


def test_unreadable_lines_unknown_patients_and_entered_in_error_are_counted(export, screened):
    noise = export[1]["noise"]
    assert noise["unreadable"] > 0 and noise["orphan"] > 0 and noise["entered_in_error"] > 0
    counts = screened.counts
    assert counts.unreadable == noise["unreadable"]
    assert counts.unknown_patient == noise["orphan"]
    assert counts.entered_in_error == noise["entered_in_error"]
    assert counts.patients == POPULATION["patients"]
    assert counts.lines == export[1]["lines"] - sum(
        f["count"] for f in export[1]["files"] if f["type"] == "Medication")


def test_one_bad_line_loses_nothing_else_of_its_file(export, screened, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(export[0], copy)
    for name in ("Observation.000.ndjson", "Procedure.000.ndjson"):
        lines = (copy / name).read_text().splitlines(keepends=True)
        lines.insert(len(lines) // 2, '{"resourceType":"Observation","id":"cut-sh\n')
        (copy / name).write_text("".join(lines))
    again = screen(copy, NOW, scheduler="synchronous")
    assert again.rows == screened.rows
    assert again.counts.unreadable == screened.counts.unreadable + 2


def test_gzip_split_files_and_a_manifest_give_the_same_worklist(screened, tmp_path):
    summary = write_population(tmp_path, gzip_output=True, split_lines=700, manifest=True)
    names = [Path(f["path"]).name for f in summary["files"]]
    assert "Observation.001.ndjson.gz" in names
    with gzip.open(tmp_path / "Patient.000.ndjson.gz", "rt") as handle:
        assert json.loads(handle.readline())["resourceType"] == "Patient"
    from_manifest = screen(tmp_path / "manifest.json", NOW, scheduler="synchronous")
    assert from_manifest.rows == screened.rows
    assert from_manifest.counts.as_dict() | COMPRESSED == screened.counts.as_dict() | COMPRESSED
    from_folder = screen(tmp_path, NOW, scheduler="synchronous", block_size=4096)
    assert from_folder.rows == screened.rows


def test_an_export_without_patient_files_still_screens_everyone(export, screened, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(export[0], copy)
    (copy / "Patient.000.ndjson").unlink()
    without = screen(copy, NOW, scheduler="synchronous")
    assert without.counts.patients == 0 and without.counts.unknown_patient == 0
    # Without Patient resources, sex and death are unknown; nobody flagged is lost.
    assert {r["patient_id"] for r in without.rows} >= {r["patient_id"] for r in screened.rows}
    assert without.candidates >= screened.candidates


def test_small_blocks_split_files_at_line_ends(export, screened):
    """Byte-range partitions of a few KB: every line still read once, whole."""
    small = screen(export[0], NOW, scheduler="synchronous", block_size=8192)
    assert small.partitions > 50
    assert small.rows == screened.rows
    assert small.counts.as_dict() | COMPRESSED == screened.counts.as_dict() | COMPRESSED


def test_a_missing_export_or_a_bad_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(ExportError):
        screen(tmp_path / "nothing", NOW)
    (tmp_path / "manifest.json").write_text('{"not": "a manifest"}')
    with pytest.raises(ExportError):
        screen(tmp_path / "manifest.json", NOW)


def test_the_worklist_is_owner_only_even_over_an_existing_file(screened, tmp_path):
    target = tmp_path / "worklist.csv"
    target.write_text("old")
    target.chmod(0o644)
    write_worklist(screened.rows, target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_text().startswith("rank,tier,patient_id,mrn")


# -- the real Bulk sample (../shared/data/bulk-sample, 13 Synthea patients) ---------------------
needs_sample = pytest.mark.skipif(not BULK_SAMPLE.is_dir(), reason="shared/ bulk sample absent")


def _sample_lines() -> int:
    types = ("Patient", "Condition", "Procedure", "Encounter", "MedicationRequest")
    return sum(len(p.read_text().splitlines()) for t in types
               for p in BULK_SAMPLE.glob(f"{t}.*.ndjson"))


@needs_sample
def test_the_bulk_sample_today_flags_nobody():
    result = screen(BULK_SAMPLE, datetime.now(UTC))
    assert result.counts.patients == 13
    assert result.counts.lines == _sample_lines()
    assert result.in_scope == 0 and result.rows == []
    assert result.counts.unreadable == result.counts.unknown_patient == 0


@needs_sample
def test_the_bulk_sample_in_1990_has_its_dialysis_patient_on_the_worklist():
    """Renal dialysis sessions every few days from 1985 to October 1990 (the last before June
    1990 on 30 May), no laboratory results in the sample, tacrolimus first ordered in 1993."""
    result = screen(BULK_SAMPLE, datetime(1990, 6, 1, tzinfo=UTC))
    assert result.in_scope == 1
    (row,) = result.rows
    assert row["patient_id"] == SYNTHEA_DIALYSIS_PATIENT
    assert (row["tier"], row["scope"], row["pth_overdue"]) == ("info", "dialysis", True)
    assert firing(row) == set()  # the tacrolimus order is from 1993
    assert row["mrn"] == SYNTHEA_DIALYSIS_PATIENT  # Synthea's MR identifier is the id


@needs_sample
def test_the_bulk_sample_after_the_transplant_has_nobody_in_scope():
    result = screen(BULK_SAMPLE, datetime(1991, 6, 1, tzinfo=UTC))
    assert result.in_scope == 0 and result.rows == []


# -- the command ---------------------------------------------------------------------------------
def test_the_command_writes_csv_jsonl_and_an_html_report(export, screened, tmp_path):
    runner = CliRunner()
    out, jsonl, report = tmp_path / "w.csv", tmp_path / "w.jsonl", tmp_path / "r.html"
    done = runner.invoke(main, ["screen", str(export[0]), "--as-of", AS_OF, "--out", str(out),
                                "--html", str(report), "--scheduler", "synchronous"])
    assert done.exit_code == 0, done.output
    assert f"{len(screened.rows)} flagged" in done.output
    assert "unreadable" in done.output and "s\n" in done.output
    assert "% Completed" not in done.output  # no progress bar when not a terminal
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["patient_id"] for r in rows] == [r["patient_id"] for r in screened.rows]
    assert rows[0]["evidence"] and rows[0]["factors"]
    done = runner.invoke(main, ["screen", str(export[0]), "--as-of", AS_OF, "--out", str(jsonl),
                                "--format", "jsonl", "--scheduler", "synchronous"])
    assert done.exit_code == 0, done.output
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert lines == screened.rows
    page = report.read_text()
    assert page.count("<svg") == 4
    assert "9 × ULN" in page and "Factor prevalence" in page and "Medication mix" in page
    for path in (out, jsonl, report):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # No identifier reaches the terminal.
    assert screened.rows[0]["patient_id"] not in done.output


def test_the_command_refuses_a_bad_as_of(export):
    done = CliRunner().invoke(main, ["screen", str(export[0]), "--as-of", "yesterday"])
    assert done.exit_code != 0 and "--as-of" in done.output


def test_no_identifier_is_logged(export, caplog):
    caplog.set_level("DEBUG")
    result = screen(export[0], NOW, scheduler="synchronous")
    logged = caplog.text
    assert all(row["patient_id"] not in logged and row["mrn"] not in logged
               for row in result.rows)
