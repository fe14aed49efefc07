"""The knowledge as immutable objects: concepts, medicine classes, labs, factors, statuses.

Built once at start by `loader.load_knowledge`; during a request matching is set look-ups and a
few precompiled regexes. Every code here is already canonical (see `terminology`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType

from cds_service.knowledge.terminology import CodeKey, CodeSystems
from cds_service.knowledge.wording import CONFIRMED, NEGATED, NOT_A_DIAGNOSIS, Wording

Codings = tuple[tuple[str, str, str], ...]  # canonical (system, code, display)
# Distinct (codings, text) pairs whose verdict is remembered per process. Matching is pure (the
# knowledge never changes while serving) and charts repeat the same codes and texts, so a
# bounded cache turns most look-ups into one dict hit.
MATCH_CACHE = 16384


class KnowledgeError(ValueError):
    """The knowledge files are inconsistent; raised at start, never during a request."""


def fold(text: str) -> str:
    """Text as names are matched: accents dropped ("hemodiálisis" = "hemodialisis")."""
    if text.isascii():
        return text
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def phrase_body(phrases: list[str]) -> str:
    """Regex alternatives for phrases (longest first); a space or hyphen matches either."""
    alternatives = sorted({fold(p).lower() for p in phrases}, key=len, reverse=True)
    return "|".join(re.sub(r"(\\ | |\\-)+", r"[\\s\\-]+", re.escape(p)) for p in alternatives)


def phrase_pattern(phrases: list[str]) -> re.Pattern[str] | None:
    """One case-insensitive regex matching any phrase as whole words."""
    if not phrases:
        return None
    return re.compile(rf"(?<![a-z0-9])(?:{phrase_body(phrases)})(?![a-z0-9])", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ConceptHit:
    """What identified a concept in a resource, and what its wording says of it."""

    matched: str  # the code or phrase
    certainty: str = CONFIRMED  # wording.CONFIRMED, SUSPECTED or PRIOR


@dataclass(frozen=True)
class ConceptSet:
    """A clinical concept recognised in Conditions, Procedures or Encounters by code or text."""

    id: str
    label: str
    codes: frozenset[CodeKey]
    excluded: frozenset[CodeKey] = frozenset()
    prefixes: tuple[CodeKey, ...] = ()
    excluded_prefixes: tuple[CodeKey, ...] = ()
    ranges: tuple[tuple[str, str, str], ...] = ()
    text: re.Pattern[str] | None = None
    # Phrases that make a text match void ("hemodialysis catheter insertion" is no session).
    text_excluded: re.Pattern[str] | None = None
    # Negation, suspicion, history: only for concepts whose wording matters (calciphylaxis).
    wording: Wording | None = None
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

    def match(self, codings: Codings, text: str) -> ConceptHit | None:
        """What identifies the concept (a code or a phrase), or None."""
        text = fold(text) if text else ""
        text_hit = self.text.search(text) if self.text and text else None
        if text_hit and self.text_excluded and self.text_excluded.search(text):
            text_hit = None
        certainty = CONFIRMED
        if text_hit and self.wording is not None:
            certainty = self.wording.certainty(text)
            if certainty in (NEGATED, NOT_A_DIAGNOSIS):
                return None  # the words deny it, whatever the code says
        for system, code, _display in codings:
            key = (system, code)
            if self.has_code(key) and (key not in self.text_required_for or text_hit):
                return ConceptHit(code, certainty)
        if text_hit:
            return ConceptHit(text_hit.group(0), certainty)
        return None


class ConceptIndex:
    """Several concepts at once: one dict look-up per coding for plain codes, and the concept's
    own matcher only for concepts with prefixes, ranges or text (a few)."""

    def __init__(self, concepts: dict[str, ConceptSet]):
        self.order = list(concepts)
        exact: dict[CodeKey, list[str]] = {}
        self.special: list[ConceptSet] = []
        for concept in concepts.values():
            if concept.prefixes or concept.ranges or concept.text:
                self.special.append(concept)
                continue
            for key in concept.codes - concept.excluded:
                exact.setdefault(key, []).append(concept.id)
        self.exact = {key: tuple(ids) for key, ids in exact.items()}
        self.match = lru_cache(maxsize=MATCH_CACHE)(self._match)

    def _match(self, codings: Codings, text: str) -> MappingProxyType[str, ConceptHit]:
        """concept id -> what identifies it, in knowledge order (read-only: it is shared)."""
        hits: dict[str, ConceptHit] = {}
        for system, code, _display in codings:
            for cid in self.exact.get((system, code), ()):
                hits.setdefault(cid, ConceptHit(code))
        for concept in self.special:
            hit = concept.match(codings, text)
            if hit:
                hits[concept.id] = hit
        if len(hits) > 1:
            hits = {cid: hits[cid] for cid in self.order if cid in hits}
        return MappingProxyType(hits)


@dataclass(frozen=True)
class MedicineMatch:
    """Why a medicine belongs to a class, or why it was left out despite matching."""

    medicine_class: str
    ingredient: str
    matched_by: str
    excluded_because: str | None = None


@dataclass(frozen=True)
class SingleDose:
    """When an order or a dose given is a single dose, which does not count as exposure."""

    once: re.Pattern[str] | None  # "once", "x1", "single dose"
    # Frequency words that make "once" part of a schedule ("once daily").
    repeated: re.Pattern[str] | None
    purposes: re.Pattern[str] | None  # "pre-chemotherapy", "antiemetic"

    def matches(self, text: str, *, given: bool) -> bool:
        text = fold(text)
        if self.purposes and self.purposes.search(text):
            return True
        if given:
            return False  # a dose given is one dose by nature: only its purpose tells
        return bool(self.once and self.once.search(text)
                    and not (self.repeated and self.repeated.search(text)))


@dataclass(frozen=True)
class MedicineClass:
    id: str
    factor: str | None  # None: known only to gate advice (non-calcium binders, calcimimetics)
    rxnorm: dict[str, str]  # code -> ingredient or product name
    excluded_rxnorm: frozenset[str]
    atc: tuple[tuple[str, str], ...]  # (prefix, ingredient)
    excluded_atc: tuple[str, ...]
    names: re.Pattern[str] | None
    ingredient_of_name: dict[str, str]  # brand or other-language name -> ingredient
    non_systemic: re.Pattern[str] | None
    excluded_ingredients: re.Pattern[str] | None = None
    rxnorm_system: str = ""
    atc_system: str = ""
    # A dose given once (antiemetic dexamethasone) does not count for this class.
    single_dose: SingleDose | None = None

    def ingredient_in(self, text: str) -> str | None:
        hit = self.names.search(text) if self.names and text else None
        if not hit:
            return None
        word = normal_name(hit.group(0))
        return self.ingredient_of_name.get(word, word)

    def classify(self, codings: Codings, names: str, form_text: str) -> MedicineMatch | None:
        """Match a medicine by RxNorm, then ATC, then ingredient or brand name in its text.

        `names` is the medicine's text and displays, already folded."""
        if self.excluded_ingredients and self.excluded_ingredients.search(names):
            return None  # e.g. fludrocortisone: named like the class, not in it
        matched: MedicineMatch | None = None
        for system, code, _display in codings:
            if system == self.rxnorm_system and code in self.excluded_rxnorm:
                return MedicineMatch(self.id, self.ingredient_in(names) or code,
                                     f"RxNorm {code}", "non-systemic product (value set)")
            if system == self.atc_system and self.excluded_atc and code.startswith(
                    self.excluded_atc):
                return MedicineMatch(self.id, self.ingredient_in(names) or code,
                                     f"ATC {code}", "non-systemic product (ATC)")
            if matched is None and system == self.rxnorm_system and code in self.rxnorm:
                ingredient = self.ingredient_in(names) or self.ingredient_in(self.rxnorm[code])
                matched = MedicineMatch(self.id, ingredient or self.rxnorm[code], f"RxNorm {code}")
            if matched is None and system == self.atc_system:
                for prefix, ingredient in self.atc:
                    if code.startswith(prefix):
                        matched = MedicineMatch(
                            self.id, self.ingredient_in(names) or ingredient, f"ATC {code}")
                        break
        if matched is None:
            ingredient = self.ingredient_in(names)
            if ingredient is None:
                return None
            matched = MedicineMatch(self.id, ingredient, "name")
        if self.non_systemic:
            hit = self.non_systemic.search(f"{names} {fold(form_text)}")
            if hit:
                return MedicineMatch(matched.medicine_class, matched.ingredient,
                                     matched.matched_by, f"non-systemic form ({hit.group(0)})")
        return matched


def normal_name(name: str) -> str:
    return re.sub(r"[\s\-]+", " ", fold(name).lower())


class MedicineIndex:
    """Every medicine class at once. Most medicines on a chart belong to none: a set look-up
    and one regex say so before any class is asked (and before any FHIR validation)."""

    def __init__(self, classes: tuple[MedicineClass, ...], rxnorm_system: str, atc_system: str):
        self.classes = classes
        self.by_id = {c.id: c for c in classes}
        self.rxnorm_system = rxnorm_system
        self.atc_system = atc_system
        self.rxnorm_codes = frozenset(
            code for c in classes for code in (*c.rxnorm, *c.excluded_rxnorm))
        self.atc_prefixes = tuple(
            {p for c in classes for p in (*(a for a, _ in c.atc), *c.excluded_atc)})
        patterns = [c.names.pattern for c in classes if c.names]
        patterns += [c.excluded_ingredients.pattern for c in classes if c.excluded_ingredients]
        self.any_name = re.compile("|".join(patterns), re.IGNORECASE) if patterns else None
        self.classify = lru_cache(maxsize=MATCH_CACHE)(self._classify)

    def may_match(self, codings: Codings, names: str) -> bool:
        for system, code, _display in codings:
            if system == self.rxnorm_system and code in self.rxnorm_codes:
                return True
            if system == self.atc_system and code.startswith(self.atc_prefixes):
                return True
        return bool(self.any_name and names and self.any_name.search(names))

    def _classify(self, codings: Codings, text: str, form_text: str = "") -> MedicineMatch | None:
        """The first class a medicine belongs to (or is explicitly excluded from)."""
        names = fold(" ".join([text] + [d for _s, _c, d in codings if d]))
        if not self.may_match(codings, names):
            return None
        for medicine_class in self.classes:
            found = medicine_class.classify(codings, names, form_text)
            if found:
                return found
        return None


@dataclass(frozen=True)
class LabDefinition:
    id: str
    label: str
    loinc: frozenset[str]
    canonical_unit: str
    units: dict[str, float]
    window_days: int


@dataclass(frozen=True)
class LabCriterion:
    """When a lab result makes a factor present: compared with a fixed limit or a multiple of the
    assay's upper limit of normal (ULN), in the lab's canonical unit."""

    lab: str
    comparison: str  # "above" | "below" | "at least"
    threshold: float | None = None
    uln_multiple: float | None = None
    default_uln: float | None = None
    # The same fixed limit as published in other units: compared in the unit reported, so
    # conversion rounding cannot push a value at the limit over it.
    in_unit: dict[str, float] = field(default_factory=dict)
    # Further limits past the first, in the same terms (canonical unit or ULN multiple): a
    # result past one more of them is "worse" and shows an overridden card again (quieting).
    worse_at: tuple[float, ...] = ()

    def limit(self, assay_uln: float | None = None) -> tuple[float, float | None]:
        """(the limit in the canonical unit, the ULN it multiplies or None for a fixed limit):
        a ULN multiple uses the assay's own upper limit when the result gives one."""
        if self.uln_multiple is not None:
            uln = assay_uln or self.default_uln
            if uln is None:  # the loader refuses a ULN multiple without default_uln
                raise ValueError(f"{self.lab}: a ULN multiple without default_uln")
            return self.uln_multiple * uln, uln
        if self.threshold is None:
            raise ValueError(f"{self.lab}: a criterion with no limit")
        return self.threshold, None

    def band(self, value: float, uln: float | None = None) -> int:
        """How many `worse_at` limits a result (already past the first limit) is past."""
        measure = value / uln if self.uln_multiple is not None and uln else value
        if self.comparison == "below":
            return sum(measure < limit for limit in self.worse_at)
        return sum(measure > limit for limit in self.worse_at)


@dataclass(frozen=True)
class Factor:
    id: str
    label: str
    modifiable: str
    fires: bool
    culprit_drug: bool
    evidence: str
    labs: tuple[LabCriterion, ...] = ()
    condition: str | None = None
    # "current" (active), "prior" (resolved, inactive, "history of") or "recent" (active, and
    # recorded within recent_days)
    condition_when: str = "current"
    recent_days: int | None = None
    sex: str | None = None


@dataclass(frozen=True)
class Pairing:
    """When present factors make a warning (clinical.md tiers), as the knowledge file says."""

    id: str
    all: frozenset[str]
    any: frozenset[str]
    any_culprit: bool
    with_other_modifiable: bool
    consider: bool  # the "consider calciphylaxis" warning
    why: str

    def involves(self, factor: Factor) -> bool:
        """Whether a factor takes part in this pairing (for an order card: is the drug being
        ordered part of what makes the warning?)."""
        return (factor.id in self.all | self.any
                or (self.any_culprit and factor.culprit_drug)
                or (self.with_other_modifiable and factor.fires))

    def holds(self, present: frozenset[str], modifiable: frozenset[str],
              culprits: frozenset[str]) -> bool:
        if not self.all <= present:
            return False
        if self.any and not self.any & present:
            return False
        if self.any_culprit and not culprits & present:
            return False
        if self.with_other_modifiable:
            own = self.all | (self.any & present)
            return bool(modifiable - own)
        return True


@dataclass(frozen=True)
class Gates:
    """When a suggestion is safe to offer (clinical.md "Suggestions must be safe")."""

    cinacalcet_calcium: tuple[LabCriterion, ...]  # the latest calcium must meet one of these
    cinacalcet_not_taking: frozenset[str]  # medicine classes
    phosphate_below: LabCriterion  # no binder swap when the latest phosphate is this low
    doac_condition: str  # no "a DOAC may be used" with this diagnosis


@dataclass(frozen=True)
class Substitute:
    id: str
    display: str
    codings: tuple[tuple[str, str, str], ...]  # (system URI, code, display): RxNorm SCD, ATC
    replaces: tuple[str, ...]  # offered instead of a draft of these medicine classes
    requires_factor: str | None
    sig: str = ""  # the label's starting dose
    adds_to: tuple[str, ...] = ()  # offered beside a draft of these classes (nothing removed)
    gate: str | None = None
    same_as: tuple[str, ...] = ()  # ingredients that mean the patient already takes it


@dataclass(frozen=True)
class Statuses:
    """FHIR status codes that make a resource count."""

    current_medication_request: frozenset[str]
    current_medication_statement: frozenset[str]
    medication_administration: frozenset[str]
    draft_order: frozenset[str]
    result: frozenset[str]
    procedure: frozenset[str]
    encounter: frozenset[str]
    condition_active: frozenset[str]
    condition_ignored_verification: frozenset[str]
    condition_suspected_verification: frozenset[str]


@dataclass(frozen=True)
class Scope:
    """Who is on maintenance dialysis (clinical.md "Who is in scope", "Dialysis scope, refined")."""

    dialysis_recency_days: int
    # Dialysis after a kidney transplant counts (graft failure) only this recently.
    graft_failure_dialysis_days: int
    # Codes that also bill acute continuous therapy (CPT 90945/90947): maintenance dialysis
    # only with a chronic diagnosis or another session code.
    ambiguous_dialysis_codes: frozenset[CodeKey]


@dataclass(frozen=True)
class Knowledge:
    version: str
    scope: Scope
    administration_recency_days: int
    pth_interval_days: int
    conditions: dict[str, ConceptSet]
    procedures: dict[str, ConceptSet]
    medicines: MedicineIndex
    labs: dict[str, LabDefinition]
    lab_by_loinc: dict[str, str]
    unit_aliases: dict[str, str]
    factors: dict[str, Factor]  # in card order
    warnings: tuple[Pairing, ...]
    gates: Gates
    condition_index: ConceptIndex
    procedure_index: ConceptIndex
    statuses: Statuses
    substitutes: tuple[Substitute, ...]
    code_systems: CodeSystems = field(repr=False)
    # Reference-range types whose `high` is the assay's upper limit of normal.
    uln_range_types: frozenset[CodeKey] = frozenset()
    duration_days: dict[str, float] = field(default_factory=dict)

    @property
    def systems(self) -> dict[str, str]:
        """Short name -> canonical URI."""
        return self.code_systems.uri

    @property
    def dialysis_recency_days(self) -> int:
        return self.scope.dialysis_recency_days

    def classify_medicine(self, codings: Codings, text: str,
                          form_text: str = "") -> MedicineMatch | None:
        return self.medicines.classify(codings, text, form_text)

    def canonical_unit(self, unit: str) -> str:
        return self.unit_aliases.get(unit.lower(), unit) if unit else unit

    def criterion_for(self, lab: str) -> tuple[Factor, LabCriterion]:
        """The first factor criterion reading a lab (for wording a result)."""
        for factor in self.factors.values():
            for criterion in factor.labs:
                if criterion.lab == lab:
                    return factor, criterion
        raise KeyError(lab)
