"""Reading knowledge.toml and the value sets it names into the immutable model, once at start."""

from __future__ import annotations

import itertools
import json
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cds_service.knowledge.model import (
    ConceptIndex,
    ConceptSet,
    Factor,
    Gates,
    Knowledge,
    KnowledgeError,
    LabCriterion,
    LabDefinition,
    MedicineClass,
    MedicineIndex,
    Pairing,
    Scope,
    SingleDose,
    Statuses,
    Substitute,
    normal_name,
    phrase_body,
    phrase_pattern,
)
from cds_service.knowledge.terminology import CodeKey, CodeSystems
from cds_service.knowledge.wording import Wording

KNOWLEDGE_DIR = Path(__file__).parent


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


class _Reader:
    """Turns the knowledge file's rows into canonical keys, with clear errors."""

    def __init__(self, systems: CodeSystems, base: Path):
        self.systems = systems
        self.base = base

    def uri(self, short: str) -> str:
        try:
            return self.systems.uri[short]
        except KeyError:
            raise KnowledgeError(f"unknown code system short name {short!r}") from None

    def key(self, short: str, code: str) -> CodeKey:
        return self.systems.canonical(self.uri(short), code)

    def keys(self, rows: Iterable[Sequence[str]]) -> frozenset[CodeKey]:
        return frozenset(self.key(row[0], row[1]) for row in rows)

    def valueset(self, rel: str) -> list[tuple[str, str, str]]:
        return [(*self.systems.canonical(s, c), d)
                for s, c, d in load_valueset(self.base / "valuesets" / rel)]

    def concept(self, cid: str, spec: dict[str, Any]) -> ConceptSet:
        codes = set(self.keys(spec.get("codes", [])))
        for rel in spec.get("valuesets", []):
            codes |= {(s, c) for s, c, _d in self.valueset(rel)}
        phrases = spec.get("text", [])
        wording = spec.get("wording")
        return ConceptSet(
            id=cid,
            label=spec["label"],
            codes=frozenset(codes),
            excluded=self.keys(spec.get("exclude", [])),
            prefixes=tuple(self.key(s, p) for s, p in spec.get("code_prefixes", [])),
            excluded_prefixes=tuple(self.key(s, p) for s, p in spec.get("exclude_prefixes", [])),
            ranges=tuple((*self.key(s, lo), self.key(s, hi)[1])
                         for s, lo, hi in spec.get("code_ranges", [])),
            text=phrase_pattern(phrases),
            text_excluded=phrase_pattern(spec.get("text_excluded_by", [])),
            wording=Wording.compile(phrase_body(phrases), wording) if wording else None,
            text_required_for=self.keys(spec.get("text_required_for", [])),
        )

    def medicine(self, mid: str, spec: dict[str, Any]) -> MedicineClass:
        rxnorm_uri, atc_uri = self.uri("rxnorm"), self.uri("atc")
        rxnorm = {code: name for code, name, _src in spec.get("rxnorm", [])}
        non_systemic = phrase_pattern(spec.get("non_systemic", []))
        excluded_ingredients = phrase_pattern(spec.get("exclude_ingredients", []))
        for vs in spec.get("valuesets", []):
            wanted = [w.lower() for w in vs.get("display_contains", [])]
            for system, code, display in self.valueset(vs["path"]):
                if system != rxnorm_uri:
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
            excluded |= {c for s, c, _d in self.valueset(rel) if s == rxnorm_uri}
        for code in excluded:
            rxnorm.pop(code, None)
        # Brands and other-language names (Spanish) both name an ingredient.
        aliases = {normal_name(k): v for k, v in spec.get("brands", {}).items()}
        aliases |= {normal_name(k): v for k, v in spec.get("other_names", {}).items()}
        return MedicineClass(
            id=mid,
            factor=spec.get("factor"),
            rxnorm=rxnorm,
            excluded_rxnorm=frozenset(excluded),
            atc=tuple((code.upper(), name) for code, name, _src in spec.get("atc", [])),
            excluded_atc=tuple(c.upper() for c in spec.get("exclude_atc", [])),
            names=phrase_pattern(spec.get("ingredients", []) + list(aliases)),
            ingredient_of_name=aliases,
            non_systemic=non_systemic,
            excluded_ingredients=excluded_ingredients,
            rxnorm_system=rxnorm_uri,
            atc_system=atc_uri,
            single_dose=_single_dose(spec.get("single_dose")),
        )


def _single_dose(spec: dict[str, Any] | None) -> SingleDose | None:
    if not spec:
        return None
    return SingleDose(phrase_pattern(spec.get("once", [])),
                      phrase_pattern(spec.get("unless", [])),
                      phrase_pattern(spec.get("purposes", [])))


def _criterion(factor_id: str, spec: dict[str, Any]) -> LabCriterion:
    comparisons = [k for k in ("above", "below", "at_least", "above_uln_multiple",
                               "below_uln_multiple") if k in spec]
    if len(comparisons) != 1:
        raise KnowledgeError(f"factor {factor_id}: each lab needs exactly one comparison")
    kind = comparisons[0]
    comparison = {"above": "above", "above_uln_multiple": "above", "below": "below",
                  "below_uln_multiple": "below", "at_least": "at least"}[kind]
    worse_at = tuple(float(limit) for limit in spec.get("worse_at", ()))
    first = float(spec[kind])
    # Each further limit lies further from the normal range than the one before.
    steps = (first, *worse_at)
    if any((b >= a) if comparison == "below" else (b <= a)
           for a, b in itertools.pairwise(steps)):
        raise KnowledgeError(f"factor {factor_id}: worse_at must move away from {first} in order")
    if kind.endswith("uln_multiple"):
        if "default_uln" not in spec:
            raise KnowledgeError(f"factor {factor_id}: a ULN multiple needs default_uln")
        return LabCriterion(spec["lab"], comparison, uln_multiple=first,
                            default_uln=float(spec["default_uln"]), worse_at=worse_at)
    return LabCriterion(spec["lab"], comparison, threshold=first,
                        in_unit={u: float(v) for u, v in spec.get("in_unit", {}).items()},
                        worse_at=worse_at)


def _factor(fid: str, spec: dict[str, Any]) -> Factor:
    when = spec.get("condition_when", "current")
    if when not in ("current", "prior", "recent") or (when == "recent") != (
            "recent_days" in spec):
        raise KnowledgeError(f"factor {fid}: condition_when {when!r} (recent needs recent_days)")
    return Factor(id=fid, label=spec["label"], modifiable=spec["modifiable"],
                  fires=spec["fires"], culprit_drug=spec.get("culprit_drug", False),
                  evidence=spec["evidence"],
                  labs=tuple(_criterion(fid, c) for c in spec.get("labs", [])),
                  condition=spec.get("condition"), condition_when=when,
                  recent_days=spec.get("recent_days"), sex=spec.get("sex"))


def _pairing(spec: dict[str, Any]) -> Pairing:
    return Pairing(spec["id"], frozenset(spec.get("all", ())), frozenset(spec.get("any", ())),
                   bool(spec.get("any_culprit")), bool(spec.get("with_other_modifiable")),
                   bool(spec.get("consider")), spec["why"])


def _gates(spec: dict[str, Any]) -> Gates:
    cinacalcet, swap = spec["cinacalcet"], spec["binder_swap"]
    return Gates(
        cinacalcet_calcium=tuple(_criterion("gates.cinacalcet", c)
                                 for c in cinacalcet["calcium_at_least"]),
        cinacalcet_not_taking=frozenset(cinacalcet["not_taking"]),
        phosphate_below=_criterion("gates.binder_swap", swap["phosphate_below"]),
        doac_condition=spec["doac_sentence"]["condition"])


def _check(knowledge: Knowledge) -> None:
    for medicine in knowledge.medicines.classes:
        if medicine.factor is not None and medicine.factor not in knowledge.factors:
            raise KnowledgeError(f"medicine class {medicine.id} names unknown factor")
    for factor in knowledge.factors.values():
        for criterion in factor.labs:
            if criterion.lab not in knowledge.labs:
                raise KnowledgeError(f"factor {factor.id} names unknown lab {criterion.lab}")
        if factor.condition and factor.condition not in knowledge.conditions:
            raise KnowledgeError(f"factor {factor.id} names unknown condition")
    for needed in ("dialysis", "kidney_transplant"):
        if needed not in knowledge.procedures:
            raise KnowledgeError(f"procedures.{needed} is missing")
    for pairing in knowledge.warnings:
        unknown = (pairing.all | pairing.any) - set(knowledge.factors)
        if unknown:
            raise KnowledgeError(f"warning {pairing.id} names unknown factors {sorted(unknown)}")
    classes = {m.id for m in knowledge.medicines.classes}
    gates = knowledge.gates
    if gates.doac_condition not in knowledge.conditions or not gates.cinacalcet_not_taking <= (
            classes):
        raise KnowledgeError("gates name an unknown condition or medicine class")
    for substitute in knowledge.substitutes:
        if substitute.gate not in (None, "cinacalcet"):
            raise KnowledgeError(f"substitute {substitute.id} names unknown gate")


def load_knowledge(directory: Path | None = None) -> Knowledge:
    """Read knowledge.toml and the value sets it names; fail loudly on any inconsistency."""
    base = directory or KNOWLEDGE_DIR
    spec = tomllib.loads((base / "knowledge.toml").read_text(encoding="utf-8"))
    systems = CodeSystems(spec["code_systems"])
    read = _Reader(systems, base)
    labs = {
        lid: LabDefinition(lid, s["label"], frozenset(s["loinc"]), s["canonical_unit"],
                           dict(s["units"]), int(s["window_days"]))
        for lid, s in spec["labs"].items()
    }
    conditions = {cid: read.concept(cid, s) for cid, s in spec["conditions"].items()}
    procedures = {pid: read.concept(pid, s) for pid, s in spec["procedures"].items()}
    scope = spec["scope"]
    substitutes = tuple(
        Substitute(sid, s["display"],
                   tuple((read.uri(row[0]), row[1], row[2]) for row in s["codes"]),
                   tuple(s.get("replaces", ())), s.get("requires_factor"), s.get("sig", ""),
                   tuple(s.get("adds_to", ())), s.get("gate"), tuple(s.get("same_as", ())))
        for sid, s in spec.get("substitutes", {}).items()
    )
    knowledge = Knowledge(
        version=spec["meta"]["version"],
        scope=Scope(
            dialysis_recency_days=int(scope["dialysis_recency_days"]),
            graft_failure_dialysis_days=int(scope["graft_failure_dialysis_days"]),
            ambiguous_dialysis_codes=read.keys(scope["ambiguous_dialysis_codes"]),
        ),
        administration_recency_days=int(spec["medication_use"]["administration_recency_days"]),
        pth_interval_days=int(spec["monitoring"]["pth_interval_days"]),
        conditions=conditions,
        procedures=procedures,
        medicines=MedicineIndex(
            tuple(read.medicine(mid, s) for mid, s in spec["medicines"].items()),
            read.uri("rxnorm"), read.uri("atc")),
        labs=labs,
        lab_by_loinc={code: lid for lid, lab in labs.items() for code in lab.loinc},
        unit_aliases={k.lower(): v for k, v in spec.get("unit_aliases", {}).items()},
        factors={fid: _factor(fid, s) for fid, s in spec["factors"].items()},
        warnings=tuple(_pairing(w) for w in spec["warnings"]),
        gates=_gates(spec["gates"]),
        condition_index=ConceptIndex(conditions),
        procedure_index=ConceptIndex(procedures),
        statuses=Statuses(**{k: frozenset(v) for k, v in spec["statuses"].items()}),
        substitutes=substitutes,
        code_systems=systems,
        uln_range_types=read.keys(spec["reference_ranges"]["uln_types"]),
        duration_days={k: float(v) for k, v in spec["medication_use"]["duration_days"].items()},
    )
    _check(knowledge)
    return knowledge
