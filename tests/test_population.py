"""The Bulk population generator (fixtures/population.py): determinism, layouts and manifest,
the mix, FHIR validity, references and noise, and a ground truth that agrees with the service's
own record builder and assessment."""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import population  # conftest puts fixtures/ on sys.path
import pytest

from cds_service.clinical.assessment import assess
from cds_service.clinical.record_builder import build_record
from cds_service.knowledge import load_knowledge

SEED = 7
NOISE = 50  # times the default noise rates, so that a small export has some of each kind


def lines_of(path: Path) -> list[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return handle.readlines()


def read_export(summary: dict) -> tuple[list[dict], int]:
    """Every resource of an export, and the number of lines that are not JSON."""
    resources, unreadable = [], 0
    for entry in summary["files"]:
        for line in lines_of(Path(entry["path"])):
            try:
                resources.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                unreadable += 1
    return resources, unreadable


def truth_file(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """2,000 patients, the default mix: counted and their truth kept, no files written."""
    truth = tmp_path_factory.mktemp("export") / "truth.jsonl"
    summary = population.generate(None, 2000, seed=SEED, noise_scale=NOISE, truth_path=truth)
    return summary, truth_file(truth)


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """300 patients, half of them on dialysis: many shapes in few lines."""
    out = tmp_path_factory.mktemp("dense")
    summary = population.generate(out, 300, seed=SEED, dialysis_share=0.5, noise_scale=NOISE,
                                  truth_path=out / "truth.jsonl")
    return summary, truth_file(out / "truth.jsonl")


def small(tmp_path: Path, name: str, **options) -> dict:
    return population.generate(tmp_path / name, 150, seed=options.pop("seed", SEED),
                               noise_scale=NOISE, **options)


def contents(summary: dict) -> dict[str, bytes]:
    """Each type's lines, files joined in order, decompressed."""
    joined: dict[str, bytes] = defaultdict(bytes)
    for entry in summary["files"]:
        joined[entry["type"]] += "".join(lines_of(Path(entry["path"]))).encode()
    return joined


def test_same_seed_same_bytes(tmp_path):
    first, again = small(tmp_path, "a"), small(tmp_path, "b")
    for one, other in zip(first["files"], again["files"], strict=True):
        assert Path(one["path"]).name == Path(other["path"]).name
        assert Path(one["path"]).read_bytes() == Path(other["path"]).read_bytes()
    gz_first, gz_again = small(tmp_path, "c", gzip_output=True), small(tmp_path, "d",
                                                                       gzip_output=True)
    for one, other in zip(gz_first["files"], gz_again["files"], strict=True):
        assert Path(one["path"]).read_bytes() == Path(other["path"]).read_bytes()
    assert contents(small(tmp_path, "e", seed=SEED + 1)) != contents(first)


def test_split_gzip_layout_and_manifest(tmp_path):
    plain = small(tmp_path, "plain")
    split = small(tmp_path, "split", gzip_output=True, split_lines=700, manifest=True)
    assert contents(split) == contents(plain)  # the same lines, only cut and compressed
    by_type = defaultdict(list)
    for entry in split["files"]:
        path = Path(entry["path"])
        assert re.fullmatch(rf"{entry['type']}\.\d{{3}}\.ndjson\.gz", path.name)
        by_type[entry["type"]].append(entry)
        assert entry["count"] == len(lines_of(path)) <= 700
    assert len(by_type["Observation"]) > 1
    for entries in by_type.values():
        names = [Path(e["path"]).name for e in entries]
        assert names == sorted(names) and names[0].endswith(".000.ndjson.gz")
        assert all(e["count"] == 700 for e in entries[:-1])

    manifest = json.loads(Path(split["manifest"]).read_text())
    assert manifest["transactionTime"] == "2026-11-20T12:00:00Z"
    assert manifest["requiresAccessToken"] is False and manifest["error"] == []
    assert "$export" in manifest["request"]
    assert [(o["type"], o["count"]) for o in manifest["output"]] == [
        (e["type"], e["count"]) for e in split["files"]]
    for output in manifest["output"]:
        assert output["url"].startswith("file:///")
        assert Path(output["url"].removeprefix("file://")).is_file()
    assert {o["type"] for o in manifest["output"]} == set(population.TYPES)


def test_dialysis_share_and_mix(export):
    summary, truth = export
    assert len(truth) == summary["resources"]["Patient"] == 2000
    on_dialysis = [t for t in truth if t["on_dialysis"]]
    assert 0.04 <= len(on_dialysis) / len(truth) <= 0.06
    groups = Counter(t["group"] for t in truth)
    assert groups["general"] > 0.85 * len(truth) and groups["ckd"] and groups["transplant"]
    assert 70 <= summary["lines"] / len(truth) <= 110  # ~87 resources a patient, as the issue
    evidence = Counter(e.split(":")[0] for t in on_dialysis for e in t["dialysis_evidence"])
    assert evidence["procedure"] and evidence["encounter"] and evidence["condition"]


def test_dialysis_drug_and_lab_patterns(dense):
    _, truth = dense
    patients = [t for t in truth if t["in_scope"]]
    assert len(patients) > 120

    def share(factor: str, key: str = "factors") -> float:
        return sum(factor in t[key] for t in patients) / len(patients)

    assert 0.40 <= share("calcium_binder") <= 0.70
    assert 0.50 <= share("active_vitamin_d") <= 0.80
    assert 0.28 <= share("hyperphosphatemia") <= 0.52
    assert 0.10 <= share("high_pth") <= 0.30 and 0.07 <= share("low_pth", "context") <= 0.25
    assert share("vitamin_k_antagonist") <= 0.12


def test_every_line_is_valid_fhir_but_the_unreadable_noise(dense):
    """Lines of one shape (same keys, codes and strings once digits and ids are masked) are
    validated once: 300 patients hold ~1,500 shapes."""
    fhir = pytest.importorskip("fhir.resources.R4B")
    summary, _ = dense
    mask = re.compile(r'"(id|reference|value|family|given|city|line|postalCode)":'
                      r'("[^"]*"|\[[^\]]*\])')
    shapes: dict[str, str] = {}
    for entry in summary["files"]:
        for line in lines_of(Path(entry["path"])):
            shapes.setdefault(mask.sub(r'"\1":""', re.sub(r"[0-9]", "0", line)), line)
    unreadable, failures = 0, []
    for line in shapes.values():
        try:
            resource = json.loads(line)
        except ValueError:
            unreadable += 1
            continue
        try:
            fhir.get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        except Exception as error:  # pydantic's ValidationError
            failures.append(f"{resource['resourceType']}/{resource['id']}: {error}")
    assert failures == []
    assert unreadable == summary["noise"]["unreadable"] > 0


def test_references_point_at_exported_patients_except_the_counted_noise(dense):
    summary, _ = dense
    resources, unreadable = read_export(summary)
    assert unreadable == summary["noise"]["unreadable"] > 0
    assert len(resources) + unreadable == summary["lines"]
    patients = {r["id"] for r in resources if r["resourceType"] == "Patient"}
    medications = {f"Medication/{r['id']}" for r in resources if r["resourceType"] == "Medication"}
    foreign, in_error = 0, 0
    ids = defaultdict(set)
    for resource in resources:
        kind = resource["resourceType"]
        assert resource["id"] not in ids[kind], "ids are unique within a type"
        ids[kind].add(resource["id"])
        if kind in ("Patient", "Medication"):
            continue
        subject = resource["subject"]["reference"]
        assert subject.startswith("Patient/")
        foreign += subject.removeprefix("Patient/") not in patients
        status = resource.get("status") or resource["verificationStatus"]["coding"][0]["code"]
        in_error += status == "entered-in-error"
        reference = resource.get("medicationReference", {}).get("reference")
        if reference:
            local = {f"#{c['id']}" for c in resource.get("contained", [])}
            assert reference in medications | local
    assert foreign == summary["noise"]["orphan"] > 0
    assert in_error == summary["noise"]["entered_in_error"] > 0
    mrns = [i["value"] for r in resources if r["resourceType"] == "Patient"
            for i in r["identifier"] if i["type"]["coding"][0]["code"] == "MR"]
    assert len(set(mrns)) == len(patients)


def test_expectations_are_the_truth_written(dense):
    summary, truth = dense
    assert list(population.expectations(300, seed=SEED, dialysis_share=0.5,
                                        noise_scale=NOISE)) == truth


def test_truth_agrees_with_the_service_assessment(dense):
    """The ground truth is derived from the values written; the service reads the same lines.
    Scope, the factors that fire and the context the truth models must agree for everyone."""
    summary, truth = dense
    resources, _ = read_export(summary)
    by_patient, formulary = defaultdict(list), []
    for resource in resources:
        if resource["resourceType"] == "Medication":
            formulary.append(resource)
        elif resource["resourceType"] == "Patient":
            by_patient[resource["id"]].append(resource)
        else:
            by_patient[resource["subject"]["reference"].removeprefix("Patient/")].append(resource)
    knowledge = load_knowledge()
    now = population.parse_as_of(population.DEFAULT_AS_OF)
    disagreements = []
    for expected in truth:
        record = build_record(knowledge, expected["patient"],
                              by_patient[expected["patient"]] + formulary, as_of=now)
        result = assess(record, knowledge, now)
        known = expected["calciphylaxis"] in ("active", "suspected") and not expected["deceased"]
        found = {"in_scope": result.in_scope, "known": result.known_calciphylaxis is not None}
        wanted = {"in_scope": expected["in_scope"], "known": known}
        if result.in_scope or known:
            found["factors"] = sorted(f.factor.id for f in result.firing)
            found["context"] = sorted(f.factor.id for f in result.context
                                      if f.factor.id in ("low_pth", "low_albumin"))
            wanted["factors"], wanted["context"] = expected["factors"], expected["context"]
        if found != wanted:
            disagreements.append((expected["patient"], found, wanted))
    assert disagreements == []
    assert sum(t["in_scope"] for t in truth) > 120


def test_cli_check(tmp_path, capsys):
    pytest.importorskip("fhir.resources.R4B")
    out = tmp_path / "cli"
    assert population.main([str(out), "--patients", "40", "--seed", "3", "--split-lines", "500",
                            "--manifest", "--check", "--as-of", "2027-03-01T12:00:00Z"]) == 0
    printed = capsys.readouterr().out
    assert "40 patients" in printed and "'invalid': 0" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["transactionTime"] == "2027-03-01T12:00:00Z"
    assert (out / "Observation.001.ndjson").is_file()
