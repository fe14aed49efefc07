"""The service's clinical knowledge, loaded once from data files.

`knowledge.toml` (reviewed by clinicians) names the codes, names and thresholds; `valuesets/`
holds the published value sets it refers to, unchanged. Everything here is immutable and built
at start so that matching during a request is set look-ups and one regex per class.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

KNOWLEDGE_DIR = Path(__file__).parent

CodeKey = tuple[str, str]  # (system URI, code)


class KnowledgeError(ValueError):
    """The knowledge files are inconsistent; raised at start, never during a request."""


def _phrase_pattern(phrases: list[str]) -> re.Pattern[str] | None:
    """One case-insensitive regex matching any phrase as whole words (longest first)."""
    if not phrases:
        return None
    alternatives = sorted({p.lower() for p in phrases}, key=len, reverse=True)
    # A space or hyphen in a phrase matches either ("one-alpha", "One Alpha", "Solu Medrol").
    body = "|".join(re.sub(r"(\\ | |\\-)+", r"[\\s\\-]+", re.escape(p)) for p in alternatives)
    return re.compile(rf"(?<![a-z0-9])(?:{body})(?![a-z0-9])", re.IGNORECASE)


def load_valueset(path: Path) -> list[tuple[str, str, str]]:
    """Members of a FHIR ValueSet file as (system, code, display): expansion, else compose."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    members = [
        (c["system"], c["code"], c.get("display", ""))
        for c in doc.get("expansion", {}).get("contains", [])
    ]
    for include in doc.get("compose", {}).get("include", []):
        system = include.get("system", "")
        members += [(system, c["code"], c.get("display", "")) for c in include.get("concept", [])]
    if not members:
        raise KnowledgeError(f"value set {path.name} has no enumerated members")
    return members


@dataclass(frozen=True)
class ConceptSet:
    """A clinical concept recognised in Conditions or Procedures by code, range, prefix or text."""

    id: str
    label: str
    codes: frozenset[CodeKey]
    excluded: frozenset[CodeKey] = frozenset()
    prefixes: tuple[CodeKey, ...] = ()
    excluded_prefixes: tuple[CodeKey, ...] = ()
    ranges: tuple[tuple[str, str, str], ...] = ()
    text: re.Pattern[str] | None = None
    text_negation: re.Pattern[str] | None = None
    text_required_for: frozenset[CodeKey] = frozenset()

    def has_code(self, key: CodeKey) -> bool:
        if key in self.excluded:
            return False
        system, code = key
        if any(system == s and code.startswith(p) for s, p in self.excluded_prefixes):
            return False
        if key in self.codes:
            return True
        if any(system == s and code.startswith(p) for s, p in self.prefixes):
            return True
        # Ranges compare codes of the same length as text: "Z68.30" <= "Z68.41" <= "Z68.45".
        return any(system == s and len(code) == len(lo) and lo <= code <= hi
                   for s, lo, hi in self.ranges)

    def match(self, codings: tuple[tuple[str, str, str], ...], text: str) -> str | None:
        """What identifies the concept (a code or a phrase), or None."""
        text_hit = self.text.search(text) if self.text and text else None
        if text_hit and self.text_negation and self.text_negation.search(text):
            text_hit = None  # "at risk for ...", "... ruled out": the text denies the concept
        for system, code, _display in codings:
            key = (system, code)
            if self.has_code(key) and (key not in self.text_required_for or text_hit):
                return code
        if text_hit:
            return text_hit.group(0)
        return None


class ConceptIndex:
    """All condition concepts at once: one dict look-up per coding for plain codes, and the
    concept's own matcher only for concepts with prefixes, ranges or text (a few)."""

    def __init__(self, concepts: dict[str, ConceptSet]):
        self.order = list(concepts)
        exact: dict[CodeKey, list[str]] = {}
        self.special = []
        for concept in concepts.values():
            if concept.prefixes or concept.ranges or concept.text:
                self.special.append(concept)
                continue
            for key in concept.codes - concept.excluded:
                exact.setdefault(key, []).append(concept.id)
        self.exact = {key: tuple(ids) for key, ids in exact.items()}

    def match(self, codings, text: str) -> dict[str, str]:
        """concept id -> the code or phrase that identifies it, in knowledge order."""
        hits: dict[str, str] = {}
        for system, code, _display in codings:
            for cid in self.exact.get((system, code), ()):
                hits.setdefault(cid, code)
        for concept in self.special:
            hit = concept.match(codings, text)
            if hit:
                hits[concept.id] = hit
        if len(hits) > 1:
            hits = {cid: hits[cid] for cid in self.order if cid in hits}
        return hits


@dataclass(frozen=True)
class MedicineMatch:
    """Why a medicine belongs to a class, or why it was left out despite matching."""

    medicine_class: str
    ingredient: str
    matched_by: str
    excluded_because: str | None = None


@dataclass(frozen=True)
class MedicineClass:
    id: str
    factor: str
    rxnorm: dict[str, str]  # code -> ingredient or product name
    excluded_rxnorm: frozenset[str]
    atc: tuple[tuple[str, str], ...]  # (prefix, ingredient)
    excluded_atc: tuple[str, ...]
    names: re.Pattern[str] | None
    brand_ingredient: dict[str, str]
    non_systemic: re.Pattern[str] | None
    excluded_ingredients: re.Pattern[str] | None = None

    def _ingredient_in(self, text: str) -> str | None:
        hit = self.names.search(text) if self.names and text else None
        if not hit:
            return None
        word = _normal_name(hit.group(0))
        return self.brand_ingredient.get(word, word)

    def classify(self, codings, text: str, form_text: str) -> MedicineMatch | None:
        """Match a medicine by RxNorm, then ATC, then ingredient or brand name in its text."""
        names = " ".join([text] + [d for _s, _c, d in codings if d])
        if self.excluded_ingredients and self.excluded_ingredients.search(names):
            return None  # e.g. fludrocortisone: named like the class, not in it
        matched: MedicineMatch | None = None
        for system, code, _display in codings:
            if system == RXNORM and code in self.excluded_rxnorm:
                return MedicineMatch(self.id, self._ingredient_in(names) or code,
                                     f"RxNorm {code}", "non-systemic product (value set)")
            if system == ATC and code.startswith(self.excluded_atc or ("\0",)):
                return MedicineMatch(self.id, self._ingredient_in(names) or code,
                                     f"ATC {code}", "non-systemic product (ATC)")
            if matched is None and system == RXNORM and code in self.rxnorm:
                ingredient = self._ingredient_in(names) or self._ingredient_in(self.rxnorm[code])
                matched = MedicineMatch(self.id, ingredient or self.rxnorm[code], f"RxNorm {code}")
            if matched is None and system == ATC:
                for prefix, ingredient in self.atc:
                    if code.startswith(prefix):
                        matched = MedicineMatch(
                            self.id, self._ingredient_in(names) or ingredient, f"ATC {code}")
                        break
        if matched is None:
            ingredient = self._ingredient_in(names)
            if ingredient is None:
                return None
            matched = MedicineMatch(self.id, ingredient, "name")
        if self.non_systemic:
            hit = self.non_systemic.search(f"{names} {form_text}")
            if hit:
                return MedicineMatch(matched.medicine_class, matched.ingredient,
                                     matched.matched_by, f"non-systemic form ({hit.group(0)})")
        return matched


@dataclass(frozen=True)
class LabDefinition:
    id: str
    label: str
    loinc: frozenset[str]
    canonical_unit: str
    units: dict[str, float]
    window_days: int


@dataclass(frozen=True)
class Factor:
    id: str
    label: str
    modifiable: str
    fires: bool
    culprit_drug: bool
    evidence: str
    lab: str | None = None
    condition: str | None = None
    sex: str | None = None
    above: float | None = None
    below: float | None = None
    at_least: float | None = None
    uln_multiple: float | None = None
    default_uln: float | None = None
    above_in_unit: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Substitute:
    id: str
    display: str
    atc_code: str
    atc_display: str
    replaces: tuple[str, ...]
    requires_factor: str | None


@dataclass(frozen=True)
class Statuses:
    """FHIR status codes that make a resource count."""

    current_medication_request: frozenset[str]
    current_medication_statement: frozenset[str]
    draft_order: frozenset[str]
    result: frozenset[str]
    procedure: frozenset[str]
    condition_active: frozenset[str]
    condition_ignored_verification: frozenset[str]


@dataclass(frozen=True)
class Knowledge:
    version: str
    dialysis_recency_days: int
    pth_interval_days: int
    conditions: dict[str, ConceptSet]
    procedures: dict[str, ConceptSet]
    medicines: tuple[MedicineClass, ...]
    labs: dict[str, LabDefinition]
    lab_by_loinc: dict[str, str]
    unit_aliases: dict[str, str]
    factors: dict[str, Factor]  # in card order
    condition_index: ConceptIndex
    statuses: Statuses
    substitutes: tuple[Substitute, ...]
    systems: dict[str, str] = field(repr=False)

    def classify_medicine(self, codings, text: str, form_text: str = "") -> MedicineMatch | None:
        """The first class a medicine belongs to (or is explicitly excluded from)."""
        for medicine_class in self.medicines:
            found = medicine_class.classify(codings, text, form_text)
            if found:
                return found
        return None

    def canonical_unit(self, unit: str) -> str:
        return self.unit_aliases.get(unit.lower(), unit) if unit else unit


RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"


def _keys(systems: dict[str, str], rows) -> frozenset[CodeKey]:
    try:
        return frozenset((systems[row[0]], row[1]) for row in rows)
    except KeyError as exc:
        raise KnowledgeError(f"unknown code system short name {exc}") from exc


def _concept(cid: str, spec: dict, systems: dict[str, str], base: Path) -> ConceptSet:
    codes = set(_keys(systems, spec.get("codes", [])))
    for rel in spec.get("valuesets", []):
        codes |= {(s, c) for s, c, _d in load_valueset(base / "valuesets" / rel)}
    return ConceptSet(
        id=cid,
        label=spec["label"],
        codes=frozenset(codes),
        excluded=_keys(systems, spec.get("exclude", [])),
        prefixes=tuple((systems[s], p) for s, p in spec.get("code_prefixes", [])),
        excluded_prefixes=tuple((systems[s], p) for s, p in spec.get("exclude_prefixes", [])),
        ranges=tuple((systems[s], lo, hi) for s, lo, hi in spec.get("code_ranges", [])),
        text=_phrase_pattern(spec.get("text", [])),
        text_negation=_phrase_pattern(spec.get("text_negated_by", [])),
        text_required_for=_keys(systems, spec.get("text_required_for", [])),
    )


def _normal_name(name: str) -> str:
    return re.sub(r"[\s\-]+", " ", name.lower())


def _medicine(mid: str, spec: dict, base: Path) -> MedicineClass:
    rxnorm = {code: name for code, name, _src in spec.get("rxnorm", [])}
    non_systemic = _phrase_pattern(spec.get("non_systemic", []))
    excluded_ingredients = _phrase_pattern(spec.get("exclude_ingredients", []))
    for vs in spec.get("valuesets", []):
        wanted = [w.lower() for w in vs.get("display_contains", [])]
        for system, code, display in load_valueset(base / "valuesets" / vs["path"]):
            if system != RXNORM:
                continue
            if wanted and not any(w in display.lower() for w in wanted):
                continue
            # Published sets mix in products that do not carry the risk (an eye implant, a
            # suppository, fludrocortisone): their names say so, and they are left out.
            if any(p and p.search(display) for p in (non_systemic, excluded_ingredients)):
                continue
            rxnorm.setdefault(code, display)
    excluded = set()
    for rel in spec.get("exclude_valuesets", []):
        excluded |= {c for s, c, _d in load_valueset(base / "valuesets" / rel) if s == RXNORM}
    for code in excluded:
        rxnorm.pop(code, None)
    brands = {_normal_name(k): v for k, v in spec.get("brands", {}).items()}
    return MedicineClass(
        id=mid,
        factor=spec["factor"],
        rxnorm=rxnorm,
        excluded_rxnorm=frozenset(excluded),
        atc=tuple((code, name) for code, name, _src in spec.get("atc", [])),
        excluded_atc=tuple(spec.get("exclude_atc", [])),
        names=_phrase_pattern(spec.get("ingredients", []) + list(brands)),
        brand_ingredient=brands,
        non_systemic=non_systemic,
        excluded_ingredients=excluded_ingredients,
    )


def load_knowledge(directory: Path | None = None) -> Knowledge:
    """Read knowledge.toml and the value sets it names; fail loudly on any inconsistency."""
    base = directory or KNOWLEDGE_DIR
    spec = tomllib.loads((base / "knowledge.toml").read_text(encoding="utf-8"))
    systems = spec["systems"]
    labs = {
        lid: LabDefinition(lid, s["label"], frozenset(s["loinc"]), s["canonical_unit"],
                           dict(s["units"]), int(s["window_days"]))
        for lid, s in spec["labs"].items()
    }
    factors = {
        fid: Factor(id=fid, label=s["label"], modifiable=s["modifiable"], fires=s["fires"],
                    culprit_drug=s.get("culprit_drug", False), evidence=s["evidence"],
                    lab=s.get("lab"), condition=s.get("condition"), sex=s.get("sex"),
                    above=s.get("above"), below=s.get("below"), at_least=s.get("at_least"),
                    uln_multiple=s.get("uln_multiple"), default_uln=s.get("default_uln"),
                    above_in_unit=dict(s.get("above_in_unit", {})))
        for fid, s in spec["factors"].items()
    }
    medicines = tuple(_medicine(mid, s, base) for mid, s in spec["medicines"].items())
    conditions = {cid: _concept(cid, s, systems, base) for cid, s in spec["conditions"].items()}
    for medicine in medicines:
        if medicine.factor not in factors:
            raise KnowledgeError(f"medicine class {medicine.id} names unknown factor")
    for factor in factors.values():
        if factor.lab and factor.lab not in labs:
            raise KnowledgeError(f"factor {factor.id} names unknown lab {factor.lab}")
        if factor.condition and factor.condition not in conditions:
            raise KnowledgeError(f"factor {factor.id} names unknown condition")
    substitutes = tuple(
        Substitute(sid, s["display"], s["atc"][0], s["atc"][1], tuple(s["replaces"]),
                   s.get("requires_factor"))
        for sid, s in spec.get("substitutes", {}).items()
    )
    return Knowledge(
        version=spec["meta"]["version"],
        dialysis_recency_days=int(spec["scope"]["dialysis_recency_days"]),
        pth_interval_days=int(spec["monitoring"]["pth_interval_days"]),
        conditions=conditions,
        procedures={pid: _concept(pid, s, systems, base) for pid, s in spec["procedures"].items()},
        medicines=medicines,
        labs=labs,
        lab_by_loinc={code: lid for lid, lab in labs.items() for code in lab.loinc},
        unit_aliases={k.lower(): v for k, v in spec.get("unit_aliases", {}).items()},
        factors=factors,
        condition_index=ConceptIndex(conditions),
        statuses=Statuses(**{k: frozenset(v) for k, v in spec["statuses"].items()}),
        substitutes=substitutes,
        systems=systems,
    )
