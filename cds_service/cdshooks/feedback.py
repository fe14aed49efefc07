"""The CDS Hooks feedback request (F1) as pydantic models: `{"feedback": [entry, ...]}`.

feedback/validation.py validates a body with them and reports every problem with its entry
index; `/openapi.json` describes the feedback endpoints with the same models. Validation needs
`context={"now": datetime}`: an outcome from the future is refused.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    StrictStr,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from cds_service.cdshooks.wire import Text, Wire

MAX_ENTRIES = 1000
MAX_ID_LENGTH = 64  # card and suggestion uuids (ours are 36 characters)
MAX_CODE_LENGTH = 200
MAX_TEXT_LENGTH = 500
MAX_COMMENT_LENGTH = 4000
# An outcome from the future is a broken clock or a forged report; allow ordinary clock skew.
FUTURE_TOLERANCE = timedelta(minutes=5)
# A FHIR instant: date, time to the second, optional fraction, and a zone (Z or an offset).
INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def _problem(kind: str, says: str) -> PydanticCustomError:
    return PydanticCustomError(kind, says)


# A card or suggestion uuid; the URN form (urn:uuid:...) is the same id.
Uuid = Annotated[Text, Field(max_length=MAX_ID_LENGTH + len("urn:uuid:")),
                 AfterValidator(lambda value: value.removeprefix("urn:uuid:"))]


def _instant(value: str) -> datetime:
    fraction = INSTANT.match(value).group(1) or ""  # type: ignore[union-attr]
    try:  # fromisoformat takes at most microseconds
        parsed = datetime.fromisoformat(value.replace(fraction, fraction[:7], 1))
    except ValueError:
        raise _problem("not_a_date", "is not a valid date and time") from None
    return parsed.astimezone(UTC)


def _not_future(value: datetime, info: ValidationInfo) -> datetime:
    if value > info.context["now"] + FUTURE_TOLERANCE:
        raise _problem("future", "is in the future")
    return value


Instant = Annotated[StrictStr, Field(pattern=INSTANT.pattern), AfterValidator(_instant),
                    AfterValidator(_not_future)]


class SuggestionRef(Wire):
    id: Uuid


class Coding(Wire):
    system: Annotated[Text, Field(max_length=MAX_TEXT_LENGTH)]
    code: Annotated[Text, Field(max_length=MAX_CODE_LENGTH)]
    display: Annotated[Text, Field(max_length=MAX_TEXT_LENGTH)] | None = None


class OverrideReason(Wire):
    # userComment first: its problem is reported before the reason's.
    userComment: Annotated[Text, Field(max_length=MAX_COMMENT_LENGTH)] | None = None
    reason: Coding | None = None

    @model_validator(mode="before")
    @classmethod
    def _says_something(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("reason") is None \
                and value.get("userComment") is None:
            raise _problem("empty_reason", "needs a reason, a userComment or both")
        return value


class FeedbackItem(Wire):
    """One outcome of one card. acceptedSuggestions and overrideReason are read only with the
    outcome they belong to; an entry with an unknown outcome is not read further."""

    card: Uuid
    outcome: Literal["accepted", "overridden"]
    outcomeTimestamp: Instant
    acceptedSuggestions: list[SuggestionRef] | None = Field(default=None, validate_default=True)
    overrideReason: OverrideReason | None = None

    @field_validator("acceptedSuggestions", mode="wrap")
    @classmethod
    def _with_accepted(cls, value: Any, handler: ValidatorFunctionWrapHandler,
                       info: ValidationInfo) -> Any:
        outcome = info.data.get("outcome")
        if outcome == "accepted" and value is None:
            raise _problem("required_when_accepted", "is required when the outcome is accepted")
        if outcome == "overridden" and value not in (None, []):
            raise _problem("only_when_accepted", "is only for an accepted outcome")
        return handler(value) if outcome == "accepted" else None

    @field_validator("overrideReason", mode="wrap")
    @classmethod
    def _with_overridden(cls, value: Any, handler: ValidatorFunctionWrapHandler,
                         info: ValidationInfo) -> Any:
        outcome = info.data.get("outcome")
        if outcome == "accepted" and value is not None:
            raise _problem("only_when_overridden", "is only for an overridden outcome")
        return handler(value) if outcome == "overridden" else None


class FeedbackRequest(Wire):
    feedback: Annotated[list[FeedbackItem], Field(min_length=1, max_length=MAX_ENTRIES)]
