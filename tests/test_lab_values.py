"""A result's value as the lab sent it: numbers, bounds and strings, never guessed."""

from __future__ import annotations

import pytest

from cds_service.clinical.lab_values import read_value

UCUM = "http://unitsofmeasure.org"
PTH_UNITS = {"pg/mL": 1.0, "ng/L": 1.0, "pmol/L": 9.43}


def spelled(unit: str) -> str:
    return {"pg/ml": "pg/mL"}.get(unit.lower(), unit)


def read(**value):
    return read_value(value, PTH_UNITS, spelled)


@pytest.mark.parametrize("quantity,expected", [
    ({"value": 1514, "unit": "pg/mL", "system": UCUM, "code": "pg/mL"},
     (1514.0, None, "1514", "pg/mL")),
    ({"value": 2500, "comparator": ">", "unit": "pg/mL"}, (2500.0, ">", ">2500", "pg/mL")),
    ({"value": 3, "comparator": "<", "code": "pg/mL", "system": UCUM}, (3.0, "<", "<3", "pg/mL")),
    ({"value": 170.0, "unit": "pmol/L"}, (pytest.approx(1603.1), None, "170", "pmol/L")),
])
def test_value_quantity_keeps_its_comparator(quantity, expected):
    value = read(valueQuantity=quantity)
    assert (value.value, value.comparator, value.reported, value.unit) == expected
    assert value.unreadable_because is None


@pytest.mark.parametrize("text,expected", [
    (">2500 pg/mL", (2500.0, ">", ">2500", "pg/mL")),
    ("1514 pg/mL", (1514.0, None, "1514", "pg/mL")),
    (" >= 700  pg/ml ", (700.0, ">=", ">=700", "pg/mL")),
    ("≥700 pg/mL", (700.0, ">=", ">=700", "pg/mL")),
    ("<10 pg/mL", (10.0, "<", "<10", "pg/mL")),
    ("18.3 pmol/L", (pytest.approx(172.569), None, "18.3", "pmol/L")),
])
def test_a_value_string_with_a_known_unit_is_read(text, expected):
    value = read(valueString=text)
    assert (value.value, value.comparator, value.reported, value.unit) == expected


@pytest.mark.parametrize("text,reason", [
    ("2,450 pg/mL", "thousands separator"),  # never 2.45
    ("1,514", "thousands separator"),
    ("1514", "without a unit"),
    ("see comment", "text"),
    ("hemolysed, repeat", "text"),
    ("1514 pg/mL (repeat)", "text"),
    ("1514 foo/bar", "unit not recognised"),
    ("", "text"),
])
def test_anything_else_in_a_string_stays_unread_and_says_why(text, reason):
    value = read(valueString=text)
    assert value.value is None and reason in value.unreadable_because


@pytest.mark.parametrize("observation,reason", [
    ({"valueQuantity": {"value": 1514, "unit": "foo/bar"}}, "unit not recognised"),
    ({"valueQuantity": {"unit": "pg/mL"}}, "no numeric value"),
    ({"valueQuantity": {"value": 1514, "comparator": "ad", "unit": "pg/mL"}}, "comparator"),
    ({"valueInteger": 1514}, "without a unit"),
    ({"valueCodeableConcept": {"text": "high"}}, "no numeric value"),
    ({"dataAbsentReason": {"text": "error"}}, "no numeric value"),
])
def test_other_shapes_are_unreadable(observation, reason):
    value = read(**observation)
    assert value.value is None and reason in value.unreadable_because
