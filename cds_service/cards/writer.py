"""Findings -> CDS Hooks cards, with the wording from cards/cards.toml.

Templates are compiled once at start. Values from the chart are escaped for Markdown in details;
summaries stay under 140 characters by listing fewer items ("and N more").
"""

from __future__ import annotations

import re
import tomllib
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from cds_service.clinical.assessment import (
    CRITICAL,
    INFO,
    WARNING,
    Assessment,
    DraftFinding,
    Evidence,
    Finding,
    Suggestion,
)
from cds_service.clinical.record import Medication, ProcedureEntry
from cds_service.clinical.repeat_keys import card_keys
from cds_service.fhir.read import validate
from cds_service.knowledge import Knowledge

# The wording ships inside the package (package data); `cards_dir` in the configuration points
# at a reviewed copy elsewhere.
CARDS_DIR = Path(str(resources.files("cds_service.cards")))
# The page that explains every card (web/rules.py), relative to the service's base URL.
RULES_PATH = "/rules"
SUMMARY_LIMIT = 139  # CDS Hooks: "<140 characters"
# Characters that would turn chart text into emphasis, links, headings or tables; "<" only where
# it could open an HTML tag, so that a result reported as "<10 pg/mL" reads as sent.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]#|~]|<(?=[A-Za-z/!?]))")


class Rendered(str):
    """Markdown we rendered ourselves: inserted into another template without escaping again."""


def _markdown_escape(value: Any) -> Any:
    if isinstance(value, Rendered) or not isinstance(value, str):
        return value
    return _MARKDOWN_SPECIAL.sub(r"\\\1", value)


def _join(items, separator: str = "") -> str:
    """Jinja's join, keeping already-rendered Markdown from being escaped twice."""
    items = list(items)
    if all(isinstance(i, Rendered) for i in items):
        return Rendered(separator.join(items))
    return separator.join(str(_markdown_escape(i)) for i in items)


def _tidy(markdown: str) -> str:
    """A blank line after every list and between blocks, whatever the template's whitespace."""
    lines: list[str] = []
    for line in markdown.strip().splitlines():
        if lines and line and not line.startswith("- ") and lines[-1].startswith("- "):
            lines.append("")
        if line or (lines and lines[-1]):
            lines.append(line)
    return "\n".join(lines)


def _number(value: float) -> str:
    """Few enough digits for a clinician: 1603, 10.8, 3.05."""
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}".rstrip("0").rstrip(".")
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _date(value: datetime | None) -> str:
    return value.date().isoformat() if value else ""


def rules_anchor(tier: str, pairings, factor: str | None = None) -> str:
    """Where on the rules page a card is explained: the warning that holds first, the tier, or
    for an order's info card the drafted drug's factor (web/rules.py makes these anchors)."""
    if tier == WARNING and pairings:
        return f"warning-{pairings[0].id}"
    if tier == INFO and factor is not None:
        return f"factor-{factor}"
    return f"tier-{tier}"


def absolute_service_urls(card: dict, base: str) -> None:
    """The card's source and links name the service's own pages by path: prefix the base URL
    the EHR reaches the service at (CDS Hooks asks for absolute URLs)."""
    base = base.rstrip("/")
    source = card.get("source", {})
    if source.get("url", "").startswith("/"):
        source["url"] = base + source["url"]
    for link in card.get("links", ()):
        if link.get("url", "").startswith("/"):
            link["url"] = base + link["url"]


@dataclass(frozen=True)
class IssuedCard:
    """A card as sent, with the rule ids behind it (for the record of what was shown)."""

    card: dict
    rules: tuple[str, ...]
    # What the card is about (clinical/repeat_keys.py): an override of it answers these.
    keys: frozenset[str] = frozenset()

    @property
    def uuid(self) -> str:
        return self.card["uuid"]

    @property
    def indicator(self) -> str:
        return self.card["indicator"]

    @property
    def suggestion_uuids(self) -> tuple[str, ...]:
        return tuple(s["uuid"] for s in self.card.get("suggestions", ()))


class TemplateError(ValueError):
    """cards.toml is missing a template or a template does not compile."""


@dataclass(frozen=True)
class CardTemplates:
    spec: dict
    plain: SandboxedEnvironment
    markdown: SandboxedEnvironment

    @classmethod
    def load(cls, directory: Path | None = None) -> CardTemplates:
        path = (directory or CARDS_DIR) / "cards.toml"
        try:
            spec = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise TemplateError(f"cannot read {path}: {exc}") from exc
        options = dict(undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                       autoescape=False)
        markdown = SandboxedEnvironment(finalize=_markdown_escape, **options)
        markdown.filters["join"] = _join
        return cls(spec, SandboxedEnvironment(**options), markdown)

    def plain_text(self, *keys: str):
        return self.plain.from_string(self._get(keys))

    def markdown_text(self, *keys: str):
        return self.markdown.from_string(self._get(keys))

    def _get(self, keys: tuple[str, ...]) -> str:
        node: Any = self.spec
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                raise TemplateError(f"cards.toml has no {'.'.join(keys)}")
            node = node[key]
        return node


class CardWriter:
    """Writes the cards for one assessment; built once, used for every request."""

    def __init__(self, knowledge: Knowledge, templates: CardTemplates):
        self.knowledge = knowledge
        self.t = templates
        spec = templates.spec
        get = templates.plain_text
        md = templates.markdown_text
        self.source = {"label": spec["source"]["label"], "topic": dict(spec["source"]["topic"])}
        self.links = [{"label": link["label"], "url": link["url"], "type": "absolute"}
                      for link in spec["links"]]
        self.rules_link_label = spec["source"]["rules_link"]
        reasons = spec["override_reasons"]
        self.override_reasons = [{"system": reasons["system"], "code": r["code"],
                                  "display": r["display"]} for r in reasons["reasons"]]
        self.scope_note = spec["scope_note"]
        self.transplant_note = spec["transplant_note"]
        self.references = spec["references"].strip()
        self.evidence = {k: md("evidence", k) for k in
                         ("medication", "administration", "lab", "condition", "unreadable_lab",
                          "unreadable_medication", "unavailable_data")}
        self.calciphylaxis = {k: md("calciphylaxis", k) for k in ("confirmed", "suspected",
                                                                   "prior", "consider")}
        self.items = {k: get("summary_items", k) for k in ("medication", "lab")}
        # Advice is written for the patient: each action sees what is present and taken.
        self.actions = {k: md("actions", k) for k in spec["actions"]}
        self.pv_summary = {k: get("patient_view", k, "summary")
                           for k in (CRITICAL, WARNING, INFO, "consider", "pth")}
        self.pv_detail = md("patient_view", "detail", "text")
        self.pv_pth_detail = md("patient_view", "pth", "detail")
        self.order_summary = {k: get("order", k, "summary")
                              for k in (CRITICAL, WARNING, INFO, "consider")}
        self.order_detail = md("order", "detail", "text")
        self.suggest = {kind: {k: get("suggestions", kind, k) for k in spec["suggestions"][kind]}
                        for kind in ("replace", "add")}
        self.scope = {k: md("scope", k) for k in ("dialysis", "diagnosis", "not_in_scope")}
        self.why = md("why", "text")
        self.acknowledged_line = md("acknowledged", "text")
        # What we ask the EHR to create must itself be valid FHIR R4: checked once, here.
        for substitute in knowledge.substitutes:
            validate(self._substitute_order(substitute, "example"))

    # -- evidence as words ---------------------------------------------------------------------
    def _lab_vars(self, ev: Evidence) -> dict:
        lab = ev.lab
        definition = self.knowledge.labs[lab.lab]
        criterion = ev.criterion or self.knowledge.criterion_for(lab.lab)[1]
        # A limit published in the unit reported is stated in that unit (2.54 mmol/L).
        in_unit = criterion.in_unit.get(lab.reported_unit) if criterion.uln_multiple is None \
            else None
        return dict(label=definition.label, reported_value=lab.reported_value,
                    reported_unit=lab.reported_unit,
                    value=(lab.comparator or "") + _number(lab.value),
                    unit=definition.canonical_unit,
                    converted=lab.reported_unit != definition.canonical_unit
                    and definition.units.get(lab.reported_unit) != 1.0 and in_unit is None,
                    date=_date(lab.effective),
                    threshold=_number(in_unit if in_unit is not None else ev.threshold),
                    threshold_unit=lab.reported_unit if in_unit is not None
                    else definition.canonical_unit,
                    comparison=criterion.comparison, uln=_number(ev.uln) if ev.uln else "",
                    uln_multiple=_number(criterion.uln_multiple) if criterion.uln_multiple
                    else "", uln_from_assay=ev.uln_from_assay)

    def _line(self, ev: Evidence) -> Rendered | None:
        return Rendered(self._evidence_text(ev)) if not ev.sex else None

    def _evidence_text(self, ev: Evidence) -> str:
        if ev.medication:
            m = ev.medication
            template = "administration" if m.kind == "administration" else "medication"
            return self.evidence[template].render(
                name=m.name, ingredient=m.ingredient, status=m.status, date=_date(m.date),
                matched_by=m.matched_by, on_hold=m.status == "on-hold")
        if ev.lab:
            return self.evidence["lab"].render(**self._lab_vars(ev))
        if ev.condition:
            c = ev.condition
            return self.evidence["condition"].render(name=self._condition_name(c),
                                                     date=_date(c.onset or c.recorded))
        raise ValueError("sex is shown by its factor label alone")

    def _item(self, ev: Evidence) -> str | None:
        if ev.medication:
            return self.items["medication"].render(ingredient=ev.medication.ingredient)
        if ev.lab:
            return self.items["lab"].render(**self._lab_vars(ev))
        return None

    def _advice_context(self, assessment: Assessment, extra: Medication | None = None,
                        suggestions: tuple[Suggestion, ...] = (),
                        phosphate_low: bool | None = None) -> dict:
        """What the advice templates may say of this patient: factors present, drugs taken."""
        drugs: dict[str, list[str]] = {}
        for finding in assessment.findings:
            for ev in finding.evidence:
                if ev.medication is not None:
                    drugs.setdefault(finding.factor.id, []).append(ev.medication.ingredient)
        present = set(assessment.present)
        if extra is not None:
            factor = self.knowledge.medicines.by_id[extra.medicine_class].factor
            drugs.setdefault(factor, []).append(extra.ingredient)
            present.add(factor)
        # A defaultdict: advice may ask for drugs of any class ("drugs.calcium_binder").
        taken = defaultdict(list, {k: list(dict.fromkeys(v)) for k, v in drugs.items()})
        return dict(present=present, drugs=taken,
                    doac=not assessment.doac_contraindications,
                    phosphate_low=(assessment.phosphate_low is not None
                                   if phosphate_low is None else phosphate_low),
                    calcimimetic_offered=any(s.substitute.gate == "cinacalcet"
                                             for s in suggestions))

    def factor_actions(self, assessment: Assessment) -> dict[str, str]:
        """What a clinician can do about each factor present, worded as on the patient-view card
        (Markdown): population screening lists it beside the factor on its worklist."""
        context = self._advice_context(assessment, suggestions=assessment.suggestions)
        return {f.factor.id: " ".join(self.actions[f.factor.id].render(**context).split())
                for f in assessment.findings if f.factor.id in self.actions}

    def _factor_rows(self, findings: list[Finding], context: dict) -> list[dict]:
        return [{"label": f.factor.label,
                 "lines": [line for e in f.evidence if (line := self._line(e))],
                 "action": Rendered(" ".join(self.actions[f.factor.id].render(**context).split()))
                 if f.factor.id in self.actions else ""} for f in findings]

    def _scope_line(self, assessment: Assessment) -> Rendered:
        if not assessment.in_scope:
            return Rendered(self.scope["not_in_scope"].render(reason=assessment.scope_reason))
        procedure = next((e for e in assessment.scope_evidence if isinstance(e, ProcedureEntry)),
                         None)
        condition = next((e for e in assessment.scope_evidence
                          if not isinstance(e, ProcedureEntry)), None)
        if procedure is not None:
            return Rendered(self.scope["dialysis"].render(
                procedure=procedure.name or self.knowledge.procedures[procedure.concept].label,
                date=_date(procedure.performed),
                condition=self._condition_name(condition) if condition else ""))
        return Rendered(self.scope["diagnosis"].render(
            condition=self._condition_name(condition)))

    @staticmethod
    def _suspected(assessment: Assessment) -> bool:
        known = assessment.known_calciphylaxis
        return known is not None and known.certainty == "suspected"

    def _condition_line(self, kind: str, condition) -> Rendered:
        return Rendered(self.calciphylaxis[kind].render(
            name=self._condition_name(condition),
            date=_date(condition.onset or condition.recorded)))

    def _calciphylaxis_lines(self, assessment: Assessment, culprits: list[str]) -> list[Rendered]:
        """The known, suspected or previous calciphylaxis and a new lesion: named first."""
        lines = []
        known = assessment.known_calciphylaxis
        if known is not None:
            lines.append(self._condition_line(
                "suspected" if known.certainty == "suspected" else "confirmed", known))
        prior = assessment.finding("prior_calciphylaxis")
        if prior is not None:
            lines.append(self._condition_line("prior", prior.evidence[0].condition))
        lesion = assessment.finding("new_skin_lesion")
        if lesion is not None and culprits and any(p.consider for p in assessment.pairings):
            lines.append(Rendered(self.calciphylaxis["consider"].render(
                lesion=self._condition_name(lesion.evidence[0].condition),
                date=_date(lesion.evidence[0].condition.onset), drugs=culprits)))
        return lines

    def _condition_name(self, condition) -> str:
        """The chart's wording, else the knowledge label of what it was recognised as."""
        return condition.name or self.knowledge.conditions[condition.concepts[0]].label

    def _unreadable_lines(self, assessment: Assessment) -> list[str]:
        lines = []
        for note in assessment.lab_notes:
            lines.append(Rendered(self.evidence["unreadable_lab"].render(
                label=self.knowledge.labs[note.lab].label, date=_date(note.result.effective),
                reason=note.result.unreadable_because or "unreadable")))
        if assessment.unresolved_orders:
            lines.append(Rendered(self.evidence["unreadable_medication"].render(
                count=assessment.unresolved_orders)))
        if assessment.unavailable_data:
            lines.append(Rendered(self.evidence["unavailable_data"].render(
                what=[self.t.spec["data_labels"].get(k, k) for k in assessment.unavailable_data])))
        return lines

    def _summary(self, template, items: list[str], **values) -> str:
        """Render with as many items as fit under the limit; the rest become "and N more"."""
        for keep in range(len(items), -1, -1):
            text = template.render(items=items[:keep], more=len(items) - keep, **values)
            text = " ".join(text.split())
            if len(text) <= SUMMARY_LIMIT:
                return text
        return text[: SUMMARY_LIMIT - 1].rstrip() + "…"

    def _detail(self, body: str, assessment: Assessment) -> str:
        note = self.scope_note
        if assessment.transplanted:  # said only where it applies
            note = f"{note} {self.transplant_note}"
        return f"{_tidy(body)}\n\n{note}\n\n{self.references}"

    def _card(self, rules, summary: str, indicator: str, detail: str, anchor: str,
              suggestions=None, keys: frozenset[str] = frozenset()) -> IssuedCard:
        # The rules page explains this card; the web layer makes the path absolute.
        rules_url = f"{RULES_PATH}#{anchor}"
        card = {"uuid": str(uuid.uuid4()), "summary": summary, "indicator": indicator,
                "detail": detail, "source": {**self.source, "url": rules_url},
                "links": [*self.links, {"label": self.rules_link_label, "url": rules_url,
                                        "type": "absolute"}],
                "overrideReasons": self.override_reasons}
        if suggestions:
            card["suggestions"] = suggestions
            card["selectionBehavior"] = "at-most-one"
        return IssuedCard(card, tuple(rules), keys)

    def acknowledged(self, issued: IssuedCard, at: datetime, reason: str | None) -> IssuedCard:
        """The card with, first in its detail, when the risk was last acknowledged."""
        line = self.acknowledged_line.render(date=_date(at), reason=reason or "")
        card = {**issued.card, "detail": f"{line}\n\n{issued.card['detail']}"}
        return IssuedCard(card, issued.rules, issued.keys)

    def _items(self, findings: list[Finding], first: frozenset[str] = frozenset()) -> list[str]:
        """Short summary phrases, the factors of the warnings that hold first."""
        ordered = sorted(findings, key=lambda f: f.factor.id not in first)
        return list(dict.fromkeys(i for f in ordered for e in f.evidence if (i := self._item(e))))

    def _culprits(self, assessment: Assessment) -> tuple[list[str], list[str]]:
        """(culprit drugs taken, culprit drugs on hold), by ingredient."""
        taken, held = [], []
        for finding in assessment.findings:
            if finding.factor.culprit_drug:
                for ev in finding.evidence:
                    if ev.medication is not None:
                        (held if ev.medication.status == "on-hold" else taken).append(
                            ev.medication.ingredient)
        return list(dict.fromkeys(taken)), list(dict.fromkeys(held))

    def _why(self, pairings, findings: list[Finding], extra: Medication | None = None) -> list:
        """Each warning that holds, named by this patient's items ("calcium acetate with PTH
        1514 pg/mL") and its rationale."""
        lines = []
        for pairing in pairings:
            named = [f for f in findings if f.factor.id in pairing.all | pairing.any
                     or (pairing.any_culprit and f.factor.culprit_drug)]
            items = self._items(named, pairing.all)
            if extra is not None and extra.ingredient not in items and pairing.involves(
                    self.knowledge.factors[self.knowledge.medicines.by_id[
                        extra.medicine_class].factor]):
                items.insert(0, extra.ingredient)
            lines.append(Rendered(self.why.render(items=items, reason=pairing.why)))
        return lines

    @staticmethod
    def _pairing_factors(pairings) -> frozenset[str]:
        return frozenset(f for p in pairings for f in (*p.all, *p.any))

    # -- patient-view --------------------------------------------------------------------------
    def patient_view(self, assessment: Assessment) -> list[IssuedCard]:
        tier = assessment.tier
        if tier is None:
            return []
        unreadable = self._unreadable_lines(assessment)
        firing = assessment.firing
        if tier == INFO and not firing:
            days = self.knowledge.pth_interval_days
            return [self._card(
                ("info", "pth_not_measured"),
                self._summary(self.pv_summary["pth"], [], pth_interval_days=days), INFO,
                self._detail(self.pv_pth_detail.render(
                    pth_interval_days=days, scope=self._scope_line(assessment),
                    unreadable=unreadable), assessment), "monitoring",
                keys=card_keys(INFO, []) | {"monitoring:pth"})]
        taken, held = self._culprits(assessment)
        consider = tier == WARNING and any(p.consider for p in assessment.pairings)
        if tier == CRITICAL:
            # A critical summary names only the drugs to stop ("still on warfarin").
            template, items = self.pv_summary[CRITICAL], taken
        elif consider:
            template, items = self.pv_summary["consider"], taken + held
        else:
            template = self.pv_summary[tier]
            items = self._items(firing, self._pairing_factors(assessment.pairings))
        context = self._advice_context(assessment, suggestions=assessment.suggestions)
        detail = self.pv_detail.render(
            tier=tier, calciphylaxis=self._calciphylaxis_lines(assessment, taken + held),
            why=self._why(assessment.pairings, assessment.findings),
            scope=self._scope_line(assessment),
            factors=self._factor_rows(firing, context),
            context=self._factor_rows(assessment.context, context), unreadable=unreadable,
            pth_overdue=assessment.pth_overdue,
            pth_interval_days=self.knowledge.pth_interval_days)
        rules = [tier, *(p.id for p in assessment.pairings), *(f.factor.id for f in firing)]
        if tier == CRITICAL:
            rules.append("known_calciphylaxis")
        summary = self._summary(template, items, on_hold=held,
                                suspected=self._suspected(assessment),
                                lesion=self._lesion_phrase(assessment))
        suggestions = self._suggestions(assessment.suggestions, assessment.patient_id)
        return [self._card(rules, summary, tier, self._detail(detail, assessment),
                           rules_anchor(tier, assessment.pairings), suggestions,
                           card_keys(tier, assessment.findings, assessment.pairings))]

    def _lesion_phrase(self, assessment: Assessment) -> str:
        lesion = assessment.finding("new_skin_lesion")
        if lesion is None:
            return ""
        name = self._condition_name(lesion.evidence[0].condition)
        return name if len(name) <= 40 else lesion.factor.label

    # -- order-select / order-sign -------------------------------------------------------------
    def order_cards(self, assessment: Assessment, patient_id: str) -> list[IssuedCard]:
        return [self._order_card(assessment, draft, patient_id)
                for draft in assessment.draft_findings]

    def _order_card(self, assessment: Assessment, draft: DraftFinding,
                    patient_id: str) -> IssuedCard:
        order = draft.order
        tier = draft.tier
        others = assessment.firing
        consider = tier == WARNING and any(p.consider for p in draft.pairings)
        items = [i for i in self._items(others, self._pairing_factors(draft.pairings))
                 if i != order.ingredient]
        context = self._advice_context(assessment, order, draft.suggestions,
                                       draft.phosphate_low is not None)
        action = self.actions.get(draft.finding.factor.id)
        taken, held = self._culprits(assessment)
        detail = self.order_detail.render(
            tier=tier, calciphylaxis=self._calciphylaxis_lines(assessment,
                                                                taken + held + [order.ingredient]),
            why=self._why(draft.pairings, assessment.findings, order),
            order=order.name, drug=order.ingredient, factor=draft.finding.factor.label,
            action=Rendered(" ".join(action.render(**context).split())) if action else "",
            scope=self._scope_line(assessment),
            factors=self._factor_rows(others, context),
            context=self._factor_rows(assessment.context, context),
            other_drafts=[m.name for m in draft.other_drafts],
            unreadable=self._unreadable_lines(assessment))
        summary = self._summary(self.order_summary["consider" if consider else tier], items,
                                drug=order.ingredient, suspected=self._suspected(assessment),
                                lesion=self._lesion_phrase(assessment))
        rules = [tier, draft.finding.factor.id, *(p.id for p in draft.pairings)]
        if tier == CRITICAL:
            rules.append("known_calciphylaxis")
        return self._card(rules, summary, tier, self._detail(detail, assessment),
                          rules_anchor(tier, draft.pairings, draft.finding.factor.id),
                          self._suggestions(draft.suggestions, patient_id),
                          card_keys(tier, assessment.findings, draft.pairings, order))

    # -- suggestions ---------------------------------------------------------------------------
    def _substitute_order(self, substitute, patient_id: str) -> dict:
        """The draft MedicationRequest a suggestion creates, with the label's starting sig."""
        order = {
            "resourceType": "MedicationRequest",
            "status": "draft",
            "intent": "order",
            "subject": {"reference": f"Patient/{patient_id}"},
            "medicationCodeableConcept": {
                "coding": [{"system": system, "code": code, "display": display}
                           for system, code, display in substitute.codings],
                "text": substitute.display,
            },
        }
        if substitute.sig:
            order["dosageInstruction"] = [{"text": substitute.sig}]
        return order

    def _suggestions(self, offered: tuple[Suggestion, ...], patient_id: str) -> list[dict]:
        """Replacements (create the substitute first, then remove the order: a client that
        applies only a suggestion's first action still orders the safer drug) and additions.
        Only the first is recommended."""
        suggestions = []
        for item in offered:
            substitute, replaced = item.substitute, item.replaces
            words = dict(substitute=substitute.display, sig=substitute.sig,
                         drug=replaced.ingredient if replaced else "",
                         order=replaced.name if replaced else "",
                         draft=bool(replaced and replaced.is_draft))
            kind = "replace" if replaced is not None else "add"
            text = self.suggest[kind]
            actions = [{"type": "create", "description": text["create"].render(**words),
                        "resource": self._substitute_order(substitute, patient_id)}]
            if replaced is not None:
                actions.append({"type": "delete", "description": text["delete"].render(**words),
                                "resourceId": replaced.reference})
            suggestions.append({"uuid": str(uuid.uuid4()), "label": text["label"].render(**words),
                                "isRecommended": not suggestions, "actions": actions})
        return suggestions
