"""FHIR date and dateTime values as UTC-aware datetimes.

fhir.resources hands back `date`, aware `datetime`, or the original string for partial dates
("2019", "2019-04"). A partial date is read as its first day: older, so never fresher than sent.
"""

from __future__ import annotations

from datetime import UTC, date, datetime


def as_utc(value: object) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str):
        parts = value.split("-")
        try:
            year = int(parts[0])
            month = int(parts[1]) if len(parts) > 1 else 1
            return datetime(year, month, 1, tzinfo=UTC)
        except (ValueError, IndexError):
            return None
    return None


def parse_instant(value: object) -> datetime | None:
    """A raw FHIR date/dateTime string as UTC, cheaply, for ordering before validation."""
    if not isinstance(value, str) or len(value) < 4:
        return None
    if len(value) <= 7:
        return as_utc(value)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return as_utc(parsed)


def raw_period_end(period: object) -> datetime | None:
    if not isinstance(period, dict):
        return None
    return parse_instant(period.get("end")) or parse_instant(period.get("start"))
