"""Findings -> CDS Hooks cards, with the wording from cards/cards.toml.

Templates are compiled once at start. Values from the chart are escaped for Markdown in details;
summaries stay under 140 characters by listing fewer items ("and N more").
"""

from __future__ import annotations

import re
import tomllib
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from .assessment import Assessment, DraftFinding, Evidence, Finding
from .fhir_read import validate
from .knowledge import Knowledge
from .record import ProcedureEntry

CARDS_DIR = Path(__file__).resolve().parent.parent / "cards"
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


@dataclass(frozen=True)
class IssuedCard:
    """A card as sent, with the rule ids behind it (for the record of what was shown)."""

    card: dict
    rules: tuple[str, ...]

    @property
    def uuid(self) -> str:
        return self.card["uuid"]

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
        reasons = spec["override_reasons"]
        self.override_reasons = [{"system": reasons["system"], "code": r["code"],
                                  "display": r["display"]} for r in reasons["reasons"]]
        self.footer = f"{spec['scope_note']}\n\n{spec['references'].strip()}"
        self.evidence = {k: md("evidence", k) for k in
                         ("medication", "administration", "lab", "condition", "unreadable_lab",
                          "unreadable_medication", "unavailable_data")}
        self.calciphylaxis = {k: md("calciphylaxis", k) for k in ("confirmed", "suspected")}
        self.items = {k: get("summary_items", k) for k in ("medication", "lab")}
        self.actions = dict(spec["actions"])
        self.pv_summary = {k: get("patient_view", k, "summary")
                           for k in ("warning", "critical", "info")}
        self.pv_detail = md("patient_view", "detail", "text")
        self.pv_info_detail = md("patient_view", "info", "detail")
        self.order_summary = {k: get("order", k, "summary") for k in ("warning", "critical")}
        self.order_detail = md("order", "detail", "text")
        self.replace = {k: get("suggestions", "replace", k) for k in ("label", "delete", "create")}
        self.scope = {k: md("scope", k) for k in ("dialysis", "diagnosis")}
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
                matched_by=m.matched_by)
        if ev.lab:
            return self.evidence["lab"].render(**self._lab_vars(ev))
        if ev.condition:
            c = ev.condition
            return self.evidence["condition"].render(name=self._condition_name(c),
                                                     code=c.matched[0])
        raise ValueError("sex is shown by its factor label alone")

    def _item(self, ev: Evidence) -> str | None:
        if ev.medication:
            return self.items["medication"].render(ingredient=ev.medication.ingredient)
        if ev.lab:
            return self.items["lab"].render(**self._lab_vars(ev))
        return None

    def _factor_rows(self, findings: list[Finding]) -> list[dict]:
        return [{"label": f.factor.label,
                 "lines": [line for e in f.evidence if (line := self._line(e))],
                 "action": self.actions.get(f.factor.id, "")} for f in findings]

    def _scope_line(self, assessment: Assessment, template: dict) -> Rendered:
        procedure = next((e for e in assessment.scope_evidence if isinstance(e, ProcedureEntry)),
                         None)
        condition = next((e for e in assessment.scope_evidence
                          if not isinstance(e, ProcedureEntry)), None)
        if procedure is not None:
            return Rendered(template["dialysis"].render(
                procedure=procedure.name or procedure.code, date=_date(procedure.performed),
                condition=self._condition_name(condition) if condition else ""))
        return Rendered(template["diagnosis"].render(condition=self._condition_name(condition),
                                                     code=condition.matched[0]))

    @staticmethod
    def _suspected(assessment: Assessment) -> bool:
        known = assessment.known_calciphylaxis
        return known is not None and known.certainty == "suspected"

    def _calciphylaxis_line(self, assessment: Assessment) -> Rendered | str:
        known = assessment.known_calciphylaxis
        if known is None:
            return ""
        template = self.calciphylaxis["suspected" if known.certainty == "suspected"
                                      else "confirmed"]
        return Rendered(template.render(name=self._condition_name(known),
                                        code=known.matched[0] if known.matched[0].lower()
                                        not in known.name.lower() else ""))

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

    def _detail(self, body: str) -> str:
        return f"{_tidy(body)}\n\n{self.footer}"

    def _card(self, rules, summary: str, indicator: str, detail: str,
              suggestions=None) -> IssuedCard:
        card = {"uuid": str(uuid.uuid4()), "summary": summary, "indicator": indicator,
                "detail": detail, "source": self.source, "links": self.links,
                "overrideReasons": self.override_reasons}
        if suggestions:
            card["suggestions"] = suggestions
            card["selectionBehavior"] = "at-most-one"
        return IssuedCard(card, tuple(rules))

    # -- patient-view --------------------------------------------------------------------------
    def patient_view(self, assessment: Assessment) -> list[IssuedCard]:
        if not assessment.in_scope:
            return []
        scope = self._scope_line(assessment, self.scope)
        unreadable = self._unreadable_lines(assessment)
        firing = assessment.firing
        if not firing:
            if not assessment.pth_overdue:
                return []
            days = self.knowledge.pth_interval_days
            return [self._card(
                ("pth_not_measured",),
                self._summary(self.pv_summary["info"], [], pth_interval_days=days), "info",
                self._detail(self.pv_info_detail.render(
                    pth_interval_days=days, scope=scope, unreadable=unreadable)))]
        critical = assessment.known_calciphylaxis is not None and assessment.on_culprit_drug
        # A critical summary names only the drugs to stop ("still on warfarin").
        named = [f for f in firing if f.factor.culprit_drug] if critical else firing
        items = [i for f in named for e in f.evidence if (i := self._item(e))]
        items = list(dict.fromkeys(items))
        detail = self.pv_detail.render(
            known_calciphylaxis=self._calciphylaxis_line(assessment),
            scope=scope, factors=self._factor_rows(firing),
            context=self._factor_rows(assessment.context), unreadable=unreadable,
            pth_overdue=assessment.pth_overdue,
            pth_interval_days=self.knowledge.pth_interval_days)
        indicator = "critical" if critical else "warning"
        rules = [f.factor.id for f in firing] + (["known_calciphylaxis"] if critical else [])
        return [self._card(rules, self._summary(self.pv_summary[indicator], items,
                                                suspected=self._suspected(assessment)),
                           indicator, self._detail(detail))]

    # -- order-select / order-sign -------------------------------------------------------------
    def order_cards(self, assessment: Assessment, patient_id: str) -> list[IssuedCard]:
        if not assessment.in_scope:
            return []
        return [self._order_card(assessment, draft, patient_id)
                for draft in assessment.draft_findings]

    def _order_card(self, assessment: Assessment, draft: DraftFinding,
                    patient_id: str) -> IssuedCard:
        order = draft.order
        others = assessment.firing
        items = list(dict.fromkeys(
            i for f in others for e in f.evidence
            if (i := self._item(e)) and i != order.ingredient))
        critical = assessment.known_calciphylaxis is not None
        indicator = "critical" if critical else "warning"
        detail = self.order_detail.render(
            known_calciphylaxis=self._calciphylaxis_line(assessment),
            order=order.name, drug=order.ingredient, factor=draft.finding.factor.label,
            action=self.actions.get(draft.finding.factor.id, ""),
            scope=self._scope_line(assessment, self.scope),
            factors=self._factor_rows(others), context=self._factor_rows(assessment.context),
            other_drafts=[m.name for m in draft.other_drafts],
            unreadable=self._unreadable_lines(assessment))
        summary = self._summary(self.order_summary[indicator], items, drug=order.ingredient,
                                suspected=self._suspected(assessment))
        suggestions = [self._replacement(order, s, patient_id) for s in draft.substitutes]
        rules = [draft.finding.factor.id] + (["known_calciphylaxis"] if critical else [])
        return self._card(rules, summary, indicator, self._detail(detail),
                          [s for s in suggestions if s])

    def _substitute_order(self, substitute, patient_id: str) -> dict:
        """The draft MedicationRequest a replace suggestion creates."""
        return {
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

    def _replacement(self, order, substitute, patient_id: str) -> dict | None:
        """Delete the draft and create the substitute: a one-click swap in the EHR."""
        if "/" not in order.reference:
            return None  # a draft without an id cannot be deleted
        words = dict(drug=order.ingredient, order=order.name, substitute=substitute.display)
        resource = self._substitute_order(substitute, patient_id)
        return {
            "uuid": str(uuid.uuid4()),
            "label": self.replace["label"].render(**words),
            "isRecommended": True,
            "actions": [
                {"type": "delete", "description": self.replace["delete"].render(**words),
                 "resourceId": order.reference},
                {"type": "create", "description": self.replace["create"].render(**words),
                 "resource": resource},
            ],
        }
