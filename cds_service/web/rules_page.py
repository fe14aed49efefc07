"""What the rules page (GET /rules) shows, gathered from the knowledge file and the card templates.

Nothing here is written by hand: who is in scope, the tiers and their pairings, every factor
with its codes, value sets, thresholds and evidence, the advice the cards give and when, the
suggestions and their safety gates, the quiet period and the sources all come from
`knowledge.toml` (as loaded, plus its rows for the displays and source grades the model does not
keep), its value sets and `cards.toml`. A committee that edits those files sees the page change.
"""

from __future__ import annotations

import json
import tomllib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

from cds_service.cards.writer import CardWriter
from cds_service.knowledge import KNOWLEDGE_DIR, Factor, Knowledge, LabCriterion
from cds_service.knowledge.model import Pairing

_MARKDOWN = MarkdownIt("commonmark", {"html": False})
COMPARISON_SIGN = {"above": ">", "below": "<", "at least": "≥"}


def markdown(text: str) -> str:
    """Markdown from cards.toml as HTML (raw HTML in it stays escaped)."""
    return _MARKDOWN.render(text)


@dataclass
class CodeRow:
    system: str
    code: str
    display: str = ""
    grade: str = ""


@dataclass
class ValueSetRef:
    title: str
    url: str
    version: str
    publisher: str
    members: list[CodeRow]
    note: str = ""


@dataclass
class Concept:
    """A diagnosis, procedure or medicine class: how the service recognises it."""

    id: str
    label: str
    codes: list[CodeRow] = field(default_factory=list)
    valuesets: list[ValueSetRef] = field(default_factory=list)
    excluded: list[CodeRow] = field(default_factory=list)
    excluded_valuesets: list[ValueSetRef] = field(default_factory=list)
    prefixes: list[CodeRow] = field(default_factory=list)
    ranges: list[str] = field(default_factory=list)
    phrases: list[str] = field(default_factory=list)
    phrases_excluded: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # ingredients, brands, other languages
    not_systemic: list[str] = field(default_factory=list)


@dataclass
class Advice:
    when: str
    html: str


class _Catalogue:
    """Reads the knowledge file's rows, as written, for what the page lists."""

    def __init__(self, directory: Path):
        self.base = directory
        self.spec = tomllib.loads((directory / "knowledge.toml").read_text(encoding="utf-8"))
        self.systems = {short: entry.get("name", short)
                        for short, entry in self.spec["code_systems"].items()}

    def rows(self, rows: list) -> list[CodeRow]:
        return [CodeRow(self.systems.get(r[0], r[0]), r[1], r[2] if len(r) > 2 else "",
                        r[3] if len(r) > 3 else "") for r in rows]

    def valueset(self, ref: str | dict) -> ValueSetRef:
        path = ref if isinstance(ref, str) else ref["path"]
        doc = json.loads((self.base / "valuesets" / path).read_text(encoding="utf-8"))
        members = [CodeRow(c.get("system", ""), c["code"], c.get("display", ""))
                   for c in doc.get("expansion", {}).get("contains", [])]
        for include in doc.get("compose", {}).get("include", []):
            members += [CodeRow(include.get("system", ""), c["code"], c.get("display", ""))
                        for c in include.get("concept", [])]
        names = {uri: short for short, uri in
                 ((s, e["uri"]) for s, e in self.spec["code_systems"].items())}
        for member in members:
            member.system = self.systems.get(names.get(member.system, ""), member.system)
        note = ""
        if isinstance(ref, dict) and ref.get("display_contains"):
            note = "only members named " + " or ".join(ref["display_contains"])
        return ValueSetRef(doc.get("title") or doc.get("name", path), doc.get("url", ""),
                           str(doc.get("version", "")), doc.get("publisher", ""), members, note)

    def concept(self, cid: str, spec: dict, label: str) -> Concept:
        return Concept(
            id=cid, label=label, codes=self.rows(spec.get("codes", [])),
            valuesets=[self.valueset(v) for v in spec.get("valuesets", [])],
            excluded=self.rows(spec.get("exclude", [])),
            excluded_valuesets=[self.valueset(v) for v in spec.get("exclude_valuesets", [])],
            prefixes=self.rows(spec.get("code_prefixes", [])),
            ranges=[f"{self.systems.get(s, s)} {lo} to {hi}"
                    for s, lo, hi in spec.get("code_ranges", [])],
            phrases=list(spec.get("text", [])),
            phrases_excluded=list(spec.get("text_excluded_by", [])))

    def medicine(self, mid: str, label: str) -> Concept:
        spec = self.spec["medicines"][mid]
        concept = self.concept(mid, spec, label)
        concept.codes = self.rows([["rxnorm", *r] for r in spec.get("rxnorm", [])]
                                  + [["atc", *r] for r in spec.get("atc", [])])
        concept.excluded = self.rows([["atc", c] for c in spec.get("exclude_atc", [])])
        names = list(spec.get("ingredients", []))
        names += [f"{k} ({v})" for k, v in spec.get("brands", {}).items()]
        names += [f"{k} ({v})" for k, v in spec.get("other_names", {}).items()]
        concept.names = names
        concept.not_systemic = list(spec.get("non_systemic", [])) + list(
            spec.get("exclude_ingredients", []))
        return concept


def _number(value: float) -> str:
    return f"{value:g}"


def criterion_text(knowledge: Knowledge, criterion: LabCriterion) -> dict[str, Any]:
    """A lab limit in words and units, with the same limit as published in other units."""
    lab = knowledge.labs[criterion.lab]
    sign = COMPARISON_SIGN[criterion.comparison]
    if criterion.uln_multiple is not None:
        limit = (f"{sign} {_number(criterion.uln_multiple)} × the assay's upper limit of normal"
                 f" (default upper limit {_number(criterion.default_uln or 0)} "
                 f"{lab.canonical_unit}: {sign} "
                 f"{_number(criterion.uln_multiple * (criterion.default_uln or 0))} "
                 f"{lab.canonical_unit})")
        worse = [f"{_number(w)} × the upper limit" for w in criterion.worse_at]
    else:
        also = "".join(f" (= {sign} {_number(v)} {u})" for u, v in criterion.in_unit.items())
        limit = f"{sign} {_number(criterion.threshold or 0)} {lab.canonical_unit}{also}"
        worse = [f"{_number(w)} {lab.canonical_unit}" for w in criterion.worse_at]
    return {"lab": lab.label, "lab_id": lab.id, "limit": limit, "loinc": sorted(lab.loinc),
            "units": sorted(lab.units), "window_days": lab.window_days, "worse_at": worse}


def _advice(writer: CardWriter, knowledge: Knowledge, factor: Factor) -> list[Advice]:
    """The advice a card gives for a factor, rendered for each situation the knowledge file
    distinguishes: the factor alone, with each partner of a warning it takes part in, with a
    low phosphate, with a DOAC contraindication, with a calcimimetic offered."""
    template = writer.actions.get(factor.id)
    if template is None:
        return []
    gates = knowledge.gates

    def render(present: set[str], **flags: bool) -> str:
        drugs: dict[str, list[str]] = defaultdict(list)
        for fid in present:
            if knowledge.factors[fid].culprit_drug:
                drugs[fid] = [f"the {knowledge.factors[fid].label}"]
        context = dict(present=present, drugs=drugs, doac=flags.get("doac", True),
                       phosphate_low=flags.get("phosphate_low", False),
                       calcimimetic_offered=flags.get("calcimimetic_offered", False))
        return " ".join(template.render(**context).split())

    label = knowledge.factors
    situations: list[tuple[str, set[str], dict[str, bool]]] = [
        (f"{factor.label} on its own", {factor.id}, {})]
    for pairing in knowledge.warnings:
        if factor.id not in pairing.all | pairing.any:
            continue
        for partner in sorted((pairing.all | pairing.any) - {factor.id}):
            present = {factor.id, partner} | set(pairing.all)
            situations.append((f"with {label[partner].label}", present, {}))
    phosphate = criterion_text(knowledge, gates.phosphate_below)["limit"]
    doac_label = knowledge.conditions[gates.doac_condition].label
    situations += [
        (f"with phosphate {phosphate}", {factor.id}, {"phosphate_low": True}),
        (f"with {doac_label}", {factor.id}, {"doac": False}),
        ("when a calcimimetic is suggested on the card", {factor.id},
         {"calcimimetic_offered": True}),
    ]
    seen: dict[str, Advice] = {}
    for when, present, flags in situations:
        text = render(present, **flags)
        if text and text not in seen:
            seen[text] = Advice(when, markdown(text))
    return list(seen.values())


def _pairing_text(knowledge: Knowledge, pairing: Pairing) -> str:
    label = knowledge.factors
    parts = [" and ".join(label[f].label for f in sorted(pairing.all))] if pairing.all else []
    if pairing.any:
        parts.append("any of " + ", ".join(label[f].label for f in sorted(pairing.any)))
    if pairing.any_culprit:
        parts.append("any drug that promotes calciphylaxis")
    if pairing.with_other_modifiable:
        parts.append("at least one other modifiable factor")
    return " with ".join(parts)


def rules_context(knowledge: Knowledge, writer: CardWriter, *, quiet_days: int,
                  knowledge_dir: Path | None = None) -> dict[str, Any]:
    """Everything the rules page template shows."""
    catalogue = _Catalogue(knowledge_dir or KNOWLEDGE_DIR)
    spec = catalogue.spec
    conditions = {cid: catalogue.concept(cid, s, knowledge.conditions[cid].label)
                  for cid, s in spec["conditions"].items()}
    procedures = {pid: catalogue.concept(pid, s, knowledge.procedures[pid].label)
                  for pid, s in spec["procedures"].items()}
    medicines = {c.id: catalogue.medicine(
        c.id, knowledge.factors[c.factor].label if c.factor
        else spec["medicines"][c.id].get("label", c.id)) for c in knowledge.medicines.classes}
    factors = []
    for factor in knowledge.factors.values():
        classes = [medicines[c.id] for c in knowledge.medicines.classes if c.factor == factor.id]
        factors.append({
            "id": factor.id, "label": factor.label, "modifiable": factor.modifiable,
            "fires": factor.fires, "culprit_drug": factor.culprit_drug,
            "evidence": factor.evidence, "medicines": classes,
            "labs": [criterion_text(knowledge, c) for c in factor.labs],
            "condition": conditions.get(factor.condition) if factor.condition else None,
            "condition_when": factor.condition_when, "recent_days": factor.recent_days,
            "sex": factor.sex,
            "warnings": [(p.id, _pairing_text(knowledge, p)) for p in knowledge.warnings
                         if p.involves(factor) and factor.fires],
            "advice": _advice(writer, knowledge, factor),
        })
    gates = knowledge.gates
    substitutes = [{
        "id": s.id, "display": s.display, "sig": s.sig,
        "codes": [CodeRow(_system_name(catalogue, uri), code, display)
                  for uri, code, display in s.codings],
        "replaces": [medicines[m].label for m in s.replaces],
        "adds_to": [medicines[m].label for m in s.adds_to],
        "requires": knowledge.factors[s.requires_factor].label if s.requires_factor else "",
        "gate": s.gate, "same_as": list(s.same_as),
    } for s in knowledge.substitutes]
    return {
        "version": knowledge.version,
        "status": spec["meta"].get("status", ""),
        "title": writer.source["label"],
        "scope": {
            "note": writer.scope_note, "transplant_note": writer.transplant_note,
            "recency_days": knowledge.scope.dialysis_recency_days,
            "graft_failure_days": knowledge.scope.graft_failure_dialysis_days,
            "ambiguous": catalogue.rows(spec["scope"]["ambiguous_dialysis_codes"]),
            "diagnoses": [conditions[c] for c in ("esrd_on_dialysis", "dialysis_dependence")
                          if c in conditions],
            "procedures": [procedures["dialysis"]] if "dialysis" in procedures else [],
            "transplant": [c for c in (conditions.get("kidney_transplant"),
                                       procedures.get("kidney_transplant")) if c],
            "acute": [c for c in (conditions.get("acute_kidney_injury"),
                                  conditions.get("esrd_untreated")) if c],
            "calciphylaxis": conditions.get("calciphylaxis"),
            "lesion": conditions.get("calciphylaxis_like_lesion"),
        },
        "warnings": [{"id": p.id, "when": _pairing_text(knowledge, p), "why": p.why,
                      "consider": p.consider} for p in knowledge.warnings],
        "factors": factors,
        "substitutes": substitutes,
        # Medicines known only to keep a suggestion from doubling what is taken.
        "gate_medicines": [medicines[c.id] for c in knowledge.medicines.classes
                           if c.factor is None],
        "gates": {
            "cinacalcet_calcium": [criterion_text(knowledge, c)
                                   for c in gates.cinacalcet_calcium],
            "cinacalcet_not_taking": [medicines[m].label for m in gates.cinacalcet_not_taking],
            "phosphate_below": criterion_text(knowledge, gates.phosphate_below),
            "doac": conditions[gates.doac_condition],
        },
        "statuses": {k: sorted(v) for k, v in vars(knowledge.statuses).items()},
        "administration_days": knowledge.administration_recency_days,
        "pth_interval_days": knowledge.pth_interval_days,
        "pth_lab": criterion_text(knowledge, knowledge.factors["high_pth"].labs[0])
        if "high_pth" in knowledge.factors and knowledge.factors["high_pth"].labs else None,
        "quiet_days": quiet_days,
        "quiet_bands": [dict(criterion_text(knowledge, c), factor=f.label)
                        for f in knowledge.factors.values() for c in f.labs if c.worse_at],
        "references": markdown(writer.references),
        "links": writer.links,
        "override_reasons": writer.override_reasons,
        "rules_link": writer.rules_link_label,
    }


def _system_name(catalogue: _Catalogue, uri: str) -> str:
    for short, entry in catalogue.spec["code_systems"].items():
        if entry["uri"] == uri:
            return catalogue.systems[short]
    return uri
