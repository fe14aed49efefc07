"""What the CDS Hooks bodies (the hook call, feedback) have in common as pydantic models: how
strictly JSON is read, non-empty text, and pydantic's errors located as the service names them
(`context.draftOrders.entry[0].resource`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr
from pydantic_core import PydanticCustomError
from pydantic_core.core_schema import ErrorType


class Wire(BaseModel):
    # extra: ignored, as CDS Hooks requires of unknown fields and `extension`. strict: JSON
    # types only ("3" is no integer), so that the OpenAPI document generated from these models
    # is exact. python-re: `\S` then reads whitespace as str.strip() does.
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True,
                              regex_engine="python-re")


# A non-empty string that is not only whitespace.
Text = Annotated[StrictStr, Field(pattern=r"\S")]


_PYDANTIC_ERRORS = frozenset(get_args(ErrorType))


def is_own(kind: str) -> bool:
    """An error type of ours (a PydanticCustomError): its message completes '<field> ...'."""
    return kind not in _PYDANTIC_ERRORS


def rule(kind: str, says: str, check: Callable[[Any], Any]) -> AfterValidator:
    """A check beyond the JSON type: when `check` is falsy, an error of type `kind` whose
    message `says` completes '<field path> ...'."""
    def validate(value: Any) -> Any:
        if not check(value):
            raise PydanticCustomError(kind, says)
        return value
    return AfterValidator(validate)


def path(loc: tuple[str | int, ...]) -> str:
    """pydantic's location as the service writes it: feedback[2].acceptedSuggestions[0].id."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)[1:]


def sentence(table: Mapping[tuple[str, ...], str], loc: tuple[str | int, ...]) -> str | None:
    """The sentence `table` gives for `loc`; a `*` in a key is any index or key, which fills
    the next `{}` of the sentence."""
    for pattern, text in table.items():
        if len(pattern) == len(loc) and all(
                want in ("*", part) for want, part in zip(pattern, loc, strict=True)):
            return text.format(*(part for want, part in zip(pattern, loc, strict=True)
                                 if want == "*"))
    return None


def is_blank(value: object) -> bool:
    """A blank string is reported as such, even when it is also too long."""
    return isinstance(value, str) and not value.strip()
