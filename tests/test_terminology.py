"""One normalisation of code systems: every spelling hospitals use means the same code."""

from __future__ import annotations

import pytest

from cds_service.knowledge import load_knowledge

ICD = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
CPT = "http://www.ama-assn.org/go/cpt"
HCPCS = "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
ATC = "http://www.whocc.no/atc"


@pytest.mark.parametrize("system,code,canonical", [
    ("urn:oid:2.16.840.1.113883.6.90", "N18.6", (ICD, "N18.6")),
    ("urn:oid:2.16.840.1.113883.6.90", "N186", (ICD, "N18.6")),  # without the dot
    (ICD, "z992", (ICD, "Z99.2")),
    (ICD, " E66.01 ", (ICD, "E66.01")),
    ("http://hl7.org/fhir/sid/icd-10", "Z992", (ICD, "Z99.2")),  # claims: ICD10 version
    ("urn:oid:2.16.840.1.113883.6.96", "46177005", (SNOMED, "46177005")),
    ("http://snomed.info/sct/", "46177005", (SNOMED, "46177005")),  # trailing slash, case
    ("urn:oid:2.16.840.1.113883.6.88", "855332", (RXNORM, "855332")),
    ("urn:oid:2.16.840.1.113883.6.1", "2731-8", (LOINC, "2731-8")),
    ("urn:oid:2.16.840.1.113883.6.12", "90935", (CPT, "90935")),
    ("urn:oid:2.16.840.1.113883.6.73", "v03ae07", (ATC, "V03AE07")),
    # Blue Button sends CPT inside HCPCS: CPT-shaped codes are CPT, the others HCPCS level II.
    ("https://bluebutton.cms.gov/resources/codesystem/hcpcs", "90935", (CPT, "90935")),
    ("https://bluebutton.cms.gov/resources/codesystem/hcpcs", "g0257", (HCPCS, "G0257")),
    ("https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets", "S9339", (HCPCS, "S9339")),
])
def test_every_spelling_of_a_system_gives_the_canonical_code(knowledge, system, code, canonical):
    assert knowledge.code_systems.canonical(system, code) == canonical


@pytest.mark.parametrize("system", [
    "urn:oid:1.2.840.114350.1.13.0.1.7.2.728286",  # Epic local ids
    "https://fhir.cerner.com/ec2458f2-1e24-41c8-b71b-0e701af7583d/codeSet/72",  # Oracle Health
    "", "http://example.org/local",
])
def test_local_systems_pass_through_and_never_become_standard_codes(knowledge, system):
    assert knowledge.code_systems.canonical(system, "46177005") == (system, "46177005")
    assert not knowledge.conditions["esrd_on_dialysis"].match(((system, "46177005", ""),), "")


@pytest.mark.parametrize("system,code", [
    ("urn:oid:2.16.840.1.113883.6.90", "N186"), ("http://hl7.org/fhir/sid/icd-10", "N18.6"),
    ("urn:oid:2.16.840.1.113883.6.96", "46177005"),
])
def test_concepts_match_codes_in_any_spelling_once_normalised(knowledge, system, code):
    canonical = knowledge.code_systems.canonical(system, code)
    assert knowledge.condition_index.match(((*canonical, ""),), "") .keys() >= {
        "esrd_on_dialysis"}


def test_value_sets_are_read_through_the_same_normalisation(tmp_path):
    """A value set listing a code under an OID URI is compared like the canonical one."""
    import shutil

    from cds_service.knowledge import KNOWLEDGE_DIR

    shutil.copytree(KNOWLEDGE_DIR, tmp_path / "k", dirs_exist_ok=True)
    path = tmp_path / "k" / "valuesets" / "vsac" / "valueset-2.16.840.1.113883.3.526.3.353.json"
    path.write_text(path.read_text().replace('"http://hl7.org/fhir/sid/icd-10-cm"',
                                             '"urn:oid:2.16.840.1.113883.6.90"'))
    knowledge = load_knowledge(tmp_path / "k")
    assert knowledge.conditions["esrd_on_dialysis"].has_code((ICD, "N18.6"))


def test_medicines_are_matched_under_oid_uris(knowledge):
    canonical = knowledge.code_systems.canonical("urn:oid:2.16.840.1.113883.6.88", "855332")
    assert knowledge.classify_medicine(((*canonical, ""),), "").ingredient == "warfarin"
