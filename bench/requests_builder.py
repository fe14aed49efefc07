"""The requests the benchmarks send, and the checks their answers must pass.

patient-view and order-sign requests are the reference patient's fixtures
(fixtures/requests/reference-patient-view.json and reference-order-sign.json: on hemodialysis,
calcium acetate, calcitriol, PTH 1514 pg/mL; 11 resources; the same prefetch) padded with
Conditions, Procedures and MedicationRequests of the real Synthea chart (fixtures/synthea/), in
Synthea's proportions and in the file's order, each re-pointed to the reference patient
(`subject: Patient/pt-reference`) so that the service reads it as hers. order-sign keeps the
fixture's one draft order (calcium acetate), so it must answer with one warning card about it.

Standard library only; used by patient_view.py, load.py, fixed_rate.py and profile_hook.py.
"""

from __future__ import annotations

import copy
import json
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fixtures"))
from synthea_request import FHIR_BASE, load_synthea_resources  # noqa: E402

REQUESTS_DIR = ROOT / "fixtures" / "requests"
REFERENCE_REQUEST = REQUESTS_DIR / "reference-patient-view.json"
REFERENCE_ORDER_SIGN = REQUESTS_DIR / "reference-order-sign.json"
DISCOVERY_PATH = "/cds-services"
SERVICE_PATH = "/cds-services/calciphylaxis-patient-view"
ORDER_SIGN_PATH = "/cds-services/calciphylaxis-order-sign"
# Padding comes from these Synthea types, into these prefetch Bundles.
PADDING_KEYS = {
    "Condition": "conditions",
    "Procedure": "procedures",
    "MedicationRequest": "medications",
}
DEFAULT_SIZES = (50, 250, 2000)
HOOKS = ("patient-view", "order-sign")
ORDER_SIGN_DRUG = "calcium acetate"  # the reference order-sign fixture's draft


# -- request bodies -----------------------------------------------------------------------------
def count_resources(body: dict) -> Counter:
    """Resources in the prefetch by type (the Patient plus every Bundle entry)."""
    counts: Counter = Counter()
    for value in body["prefetch"].values():
        if not isinstance(value, dict):
            continue
        if value.get("resourceType") == "Bundle":
            counts.update(e["resource"]["resourceType"] for e in value.get("entry", ()))
        else:
            counts[value["resourceType"]] += 1
    return counts


def _proportional(available: dict[str, int], wanted: int) -> dict[str, int]:
    """Split `wanted` over the types in proportion to what Synthea has (largest remainder)."""
    total = sum(available.values())
    exact = {t: wanted * n / total for t, n in available.items()}
    share = {t: int(x) for t, x in exact.items()}
    for t in sorted(exact, key=lambda t: exact[t] - share[t], reverse=True)[
        : wanted - sum(share.values())
    ]:
        share[t] += 1
    return share


def padded_request(reference: dict, synthea: tuple[dict, ...], size: int) -> dict:
    """The reference request with Synthea resources added until the prefetch holds `size`."""
    body = copy.deepcopy(reference)
    patient_ref = f"Patient/{body['context']['patientId']}"
    missing = size - sum(count_resources(body).values())
    by_type: dict[str, list[dict]] = {t: [] for t in PADDING_KEYS}
    for resource in synthea:  # the file's order (sorted by id): a mix of years and kinds
        if resource["resourceType"] in by_type:
            by_type[resource["resourceType"]].append(resource)
    available = {t: len(rs) for t, rs in by_type.items()}
    if missing < 0 or missing > sum(available.values()):
        raise SystemExit(
            f"size {size}: the reference has {size - missing} resources and "
            f"Synthea offers {sum(available.values())} more; choose another size"
        )
    for rtype, n in _proportional(available, missing).items():
        bundle = body["prefetch"][PADDING_KEYS[rtype]]
        entries = bundle.setdefault("entry", [])
        for original in by_type[rtype][:n]:
            resource = copy.deepcopy(original)
            resource["subject"] = {"reference": patient_ref}
            entries.append(
                {
                    "fullUrl": f"{FHIR_BASE}/{rtype}/{resource['id']}",
                    "resource": resource,
                    "search": {"mode": "match"},
                }
            )
        bundle["total"] = sum(1 for e in entries if e.get("search", {}).get("mode") == "match")
    counts = count_resources(body)
    assert sum(counts.values()) == size, counts
    return body


FLOOR_RESOURCES = 223  # the measurement: a 125 KB, 223-resource patient-view body
DIALYSIS_WEEKS = 4
ACTIVE_ORDERS = 20


def _dated(days: float) -> str:
    from datetime import UTC, datetime, timedelta

    anchor = datetime.fromisoformat(json.loads(REFERENCE_REQUEST.read_text())["extension"][
        "calciphylaxis-cds.fixture"]["evaluationTime"].replace("Z", "+00:00"))
    return (anchor.astimezone(UTC) - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def in_centre_month(patient_ref: str) -> tuple[list[dict], list[dict]]:
    """Four weeks of thrice-weekly in-centre hemodialysis as an outpatient unit charts it: one
    Encounter per session and the IV paricalcitol given at each (what fills the encounters and
    medicationAdministrations prefetch keys)."""
    visits, doses = [], []
    for n in range(DIALYSIS_WEEKS * 3):
        days = 1 + n * 7 / 3
        visits.append({
            "resourceType": "Encounter", "id": f"bench-hd-{n}", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                      "code": "AMB", "display": "ambulatory"},
            "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "302497006",
                                  "display": "Hemodialysis (procedure)"}],
                      "text": "Hemodialysis"}],
            "subject": {"reference": patient_ref},
            "period": {"start": _dated(days), "end": _dated(days - 4 / 24)}})
        doses.append({
            "resourceType": "MedicationAdministration", "id": f"bench-pari-{n}",
            "status": "completed",
            "medicationCodeableConcept": {"text": "Paricalcitol 5 mcg/mL injection"},
            "subject": {"reference": patient_ref}, "effectiveDateTime": _dated(days),
            "dosage": {"text": "2 mcg IV at dialysis",
                       "route": {"coding": [{"system": "http://snomed.info/sct",
                                             "code": "47625008",
                                             "display": "Intravenous route"}]}}})
    return visits, doses


def floor_request(size: int = FLOOR_RESOURCES) -> dict:
    """The reference patient-view with a month of dialysis Encounters and doses given, padded with
    Synthea resources to `size` resources in all."""
    body = json.loads(REFERENCE_REQUEST.read_text(encoding="utf-8"))
    patient_ref = f"Patient/{body['context']['patientId']}"
    visits, doses = in_centre_month(patient_ref)
    for key, resources in (("encounters", visits), ("medicationAdministrations", doses)):
        bundle = body["prefetch"][key]
        bundle["entry"] = [{"fullUrl": f"{FHIR_BASE}/{r['resourceType']}/{r['id']}",
                            "resource": r, "search": {"mode": "match"}} for r in resources]
        bundle["total"] = len(resources)
    padded = padded_request(body, load_synthea_resources(), size)
    # A dialysis patient takes 10-20 medicines: the padding's orders (Synthea's, mostly stopped)
    # are made active up to ACTIVE_ORDERS, so that the orders the rules must look at and dismiss
    # are as many as on a real chart.
    orders = [e["resource"] for e in padded["prefetch"]["medications"]["entry"]
              if e["resource"]["resourceType"] == "MedicationRequest"]
    for order in orders[:ACTIVE_ORDERS]:
        order["status"] = "active"
    return padded


# -- checks on answers --------------------------------------------------------------------------
Check = Callable[[int, bytes], str | None]


def _cards(status: int, content: bytes) -> tuple[list | None, str | None]:
    if status != 200:
        return None, f"HTTP {status}: {content[:200].decode(errors='replace')}"
    try:
        cards = json.loads(content).get("cards")
    except (ValueError, AttributeError) as exc:
        return None, f"unreadable response: {exc}"
    if not isinstance(cards, list):
        return None, f"no cards list in the response: {content[:200].decode(errors='replace')}"
    return cards, None


def one_warning_card(status: int, content: bytes) -> str | None:
    """None if the answer is HTTP 200 with exactly one warning card, else what is wrong."""
    cards, problem = _cards(status, content)
    if problem:
        return problem
    if len(cards) != 1 or not isinstance(cards[0], dict) or cards[0].get("indicator") != "warning":
        return "expected exactly one warning card, got " + json.dumps(
            [c.get("indicator") if isinstance(c, dict) else c for c in cards]
        )
    return None


def one_warning_card_about(drug: str) -> Check:
    """Like one_warning_card, and the card must name `drug` (order-sign: the drafted drug)."""

    def check(status: int, content: bytes) -> str | None:
        problem = one_warning_card(status, content)
        if problem:
            return problem
        card = json.loads(content)["cards"][0]
        if drug not in f"{card.get('summary', '')} {card.get('detail', '')}".lower():
            return f"the warning card does not name {drug}: {card.get('summary')!r}"
        return None

    return check


def discovery_ok(status: int, content: bytes) -> str | None:
    if status != 200:
        return f"HTTP {status}: {content[:200].decode(errors='replace')}"
    try:
        services = json.loads(content).get("services")
    except (ValueError, AttributeError) as exc:
        return f"unreadable response: {exc}"
    return None if services else "discovery lists no services"


def describe(content: bytes) -> str:
    """One line saying what a (correct) answer held, for the record."""
    body = json.loads(content)
    if "cards" in body:
        return "; ".join(f"[{c.get('indicator')}] {c.get('summary')}" for c in body["cards"])
    return f"{len(body.get('services', []))} services"


# -- what the load benchmarks send --------------------------------------------------------------
@dataclass
class Case:
    """One kind of request: the baseline GET, or a hook call at one prefetch size."""

    name: str
    method: str
    path: str
    check: Check
    body: bytes = b""
    resources: int | None = None
    counts: Counter = field(default_factory=Counter)
    # For a load generator that cannot parse JSON (wrk's Lua): (substring, n) pairs that a right
    # answer's body holds exactly n times (-1: at least once). The service writes compact JSON.
    markers: tuple[tuple[str, int], ...] = ()

    @property
    def hook(self) -> str | None:
        return None if self.method == "GET" else self.name.split()[1]


ONE_WARNING_CARD = (('"indicator":', 1), ('"indicator":"warning"', 1))


def baseline_case() -> Case:
    return Case("GET /cds-services (base)", "GET", DISCOVERY_PATH, discovery_ok,
                markers=(('{"services":[{', 1),))


def hook_cases(sizes: list[int] | tuple[int, ...], hooks: tuple[str, ...] = HOOKS) -> list[Case]:
    """patient-view and order-sign requests at each size, hook by hook, smallest first."""
    synthea = load_synthea_resources()
    references = {
        "patient-view": (REFERENCE_REQUEST, SERVICE_PATH, one_warning_card, ONE_WARNING_CARD),
        "order-sign": (REFERENCE_ORDER_SIGN, ORDER_SIGN_PATH,
                       one_warning_card_about(ORDER_SIGN_DRUG),
                       (*ONE_WARNING_CARD, (ORDER_SIGN_DRUG, -1))),
    }
    cases = []
    for hook in hooks:
        path, service_path, check, markers = references[hook]
        reference = json.loads(path.read_text(encoding="utf-8"))
        for size in sizes:
            body = padded_request(reference, synthea, size)
            counts = count_resources(body)
            cases.append(
                Case(f"POST {hook} {size:,}", "POST", service_path, check,
                     json.dumps(body).encode(), sum(counts.values()), counts, markers)
            )
    return cases
