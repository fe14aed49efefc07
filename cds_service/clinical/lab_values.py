"""A laboratory result's value as the lab sent it: a number, a bound, or unreadable (and why).

Labs send numbers as `valueQuantity` (sometimes with a `comparator`: ">2500" is a lower bound)
and, often enough, as `valueString` ("1514 pg/mL", ">2500 pg/mL"). A string is read only when it
is exactly an optional comparator, a plain number and a unit the lab definition knows; anything
else ("2,450", "see comment", "hemolysed", a number without its unit) stays unread and the card
says so. Nothing here guesses.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

UCUM = "http://unitsofmeasure.org"
COMPARATORS = ("<", "<=", ">=", ">")
_UNICODE_COMPARATORS = {"≤": "<=", "≥": ">=", "=<": "<=", "=>": ">="}
_VALUE_STRING = re.compile(
    r"^\s*(?P<comparator><=|>=|=<|=>|<|>|≤|≥)?\s*(?P<number>[0-9]+(?:\.[0-9]+)?)\s*"
    r"(?P<unit>[^\s0-9.,][^\s]*)?\s*$")
_THOUSANDS = re.compile(r"[0-9],[0-9]{3}(?![0-9])")


@dataclass(frozen=True, slots=True)
class ReportedValue:
    value: float | None  # in the lab's canonical unit; None when unreadable
    comparator: str | None
    reported: str  # as sent, comparator included (">2500")
    unit: str  # canonical spelling of the unit sent ("pg/mL")
    unreadable_because: str | None = None


def _number_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def read_value(observation: dict[str, Any], units: dict[str, float],
               unit_spelling: Callable[[str], str]) -> ReportedValue:
    """The value of a raw (already validated) Observation in the units a lab accepts."""
    quantity = observation.get("valueQuantity")
    if isinstance(quantity, dict):
        return _from_quantity(quantity, units, unit_spelling)
    text = observation.get("valueString")
    if isinstance(text, str):
        return _from_string(text, units, unit_spelling)
    if "valueInteger" in observation:
        return ReportedValue(None, None, _number_text(observation["valueInteger"]), "",
                             "number without a unit")
    return ReportedValue(None, None, "", "", "no numeric value")


def _from_quantity(quantity: dict[str, Any], units: dict[str, float],
                   unit_spelling: Callable[[str], str]) -> ReportedValue:
    value = quantity.get("value")
    comparator = quantity.get("comparator")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ReportedValue(None, None, "", "", "no numeric value")
    code, system = quantity.get("code"), quantity.get("system")
    raw_unit = code if code and system == UCUM else (quantity.get("unit") or code or "")
    unit = unit_spelling(str(raw_unit))
    reported = f"{comparator or ''}{_number_text(value)}"
    if comparator is not None and comparator not in COMPARATORS:
        return ReportedValue(None, None, reported, unit, "comparator not understood")
    factor = units.get(unit)
    if factor is None:
        return ReportedValue(None, comparator, reported, unit, "unit not recognised")
    return ReportedValue(float(value) * factor, comparator, reported, unit)


def _from_string(text: str, units: dict[str, float],
                 unit_spelling: Callable[[str], str]) -> ReportedValue:
    shown = " ".join(text.split())[:40]
    if _THOUSANDS.search(text):
        return ReportedValue(None, None, shown, "", "number with a thousands separator")
    parsed = _VALUE_STRING.match(text)
    if parsed is None:
        return ReportedValue(None, None, shown, "", "result is text, not a number")
    if not parsed["unit"]:
        return ReportedValue(None, None, shown, "", "number without a unit")
    comparator = parsed["comparator"]
    comparator = _UNICODE_COMPARATORS.get(comparator, comparator) if comparator else None
    unit = unit_spelling(parsed["unit"])
    factor = units.get(unit)
    reported = f"{comparator or ''}{parsed['number']}"
    if factor is None:
        return ReportedValue(None, comparator, reported, unit, "unit not recognised")
    return ReportedValue(float(parsed["number"]) * factor, comparator, reported, unit)
