"""Pydantic building blocks for the wire format (lowerCamelCase, int64 as strings)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

from fastapi import APIRouter
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    GetJsonSchemaHandler,
    PlainSerializer,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue

from billfold.kit.clock import rfc3339
from billfold.kit.http import WireRoute
from billfold.kit.money import INT64_MAX


class WireModel(BaseModel):
    """Base of every request and response body.

    Input follows proto3 JSON, as clients generated from the upstream protobuf send it: a field
    sent as ``null`` means "the default" (so a model whose null has a meaning of its own sets
    ``keep_nulls``). Strings may not contain NUL, which PostgreSQL cannot store: it is refused as
    a bad field instead of failing at the database.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        str_strip_whitespace=False,
    )
    keep_nulls: ClassVar[bool] = False
    refuse_nul: ClassVar[bool] = True  # False on a response that echoes what a caller sent

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and not cls.keep_nulls:
            return {key: value for key, value in data.items() if value is not None}
        return data

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if not cls.refuse_nul:
            return value
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        if isinstance(value, list) and any(isinstance(v, str) and "\x00" in v for v in value):
            raise ValueError("must not contain NUL characters")
        return value


def _parse_int64(value: Any) -> int:
    # JSON transcoding sends int64 as strings; a bare number is accepted too, a float is not.
    if isinstance(value, bool):
        raise ValueError("must be an integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if not text or not text.lstrip("-").isdigit() or not text.isascii():
            raise ValueError('must be an integer string such as "1250"')
        number = int(text)
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    else:
        raise ValueError('must be an integer string such as "1250"')
    if not -INT64_MAX - 1 <= number <= INT64_MAX:
        raise ValueError("is out of the int64 range")
    return number


INT64_PATTERN = r"^-?[0-9]+$"


class _Int64Schema:
    """Int64's OpenAPI schema: a string of digits as sent; a string or a bare integer as read."""

    def __get_pydantic_json_schema__(
        self, core_schema: Any, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        text = {"type": "string", "format": "int64", "pattern": INT64_PATTERN}
        if handler.mode == "serialization":
            return text
        return {"anyOf": [text, {"type": "integer", "format": "int64"}]}


Int64 = Annotated[
    int, BeforeValidator(_parse_int64), PlainSerializer(str, return_type=str), _Int64Schema()
]
"""An int64 that travels as a JSON string and is accepted as a string or a bare integer."""

UtcDateTime = Annotated[datetime, PlainSerializer(rfc3339, return_type=str)]


def _aware_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("must be an RFC 3339 time with a zone, e.g. 2026-11-01T00:00:00Z")
    # Bounded first: converting year 1 or 9999 with an offset to UTC overflows.
    if not 1970 <= value.year <= 9000:
        raise ValueError("must be between the years 1970 and 9000")
    return value.astimezone(UTC)


_NUMBER_TEXT = re.compile(r"\s*[+-]?[0-9]+(?:\.[0-9]*)?\s*")


def _not_a_number(value: Any) -> Any:
    # pydantic reads a number, or a string of one, as Unix seconds (or milliseconds, above 2e10):
    # a guess a client never has to rely on, since every time on this API is RFC 3339 text.
    if isinstance(value, bool | int | float) or (
        isinstance(value, str) and _NUMBER_TEXT.fullmatch(value)
    ):
        raise ValueError("must be an RFC 3339 time string, e.g. 2026-11-01T00:00:00Z")
    return value


AwareUtc = Annotated[datetime, BeforeValidator(_not_a_number), AfterValidator(_aware_utc)]
"""An input time: RFC 3339 text that carries a zone (not a Unix number); converted to UTC;
years 1970-9000."""


def _not_null(value: Any) -> Any:
    if value is None:
        raise ValueError('must be an integer string such as "1250", not null (leave val out for 0)')
    return value


class Cent(WireModel):
    """The cent object of the wire: ``{"val": "<int64 cents>"}``.

    ``{}`` is zero: proto3 JSON leaves a zero ``val`` out, so that is how generated clients send 0.
    ``{"val": null}`` is refused (a 400 naming ``<field>.val``), not read as that zero: no proto3
    writer sends a null scalar, so it comes from a client whose amount is missing (a bug or an
    unset variable), and taking it for 0 would, say, set a soft limit of $0 and block the team.
    """

    keep_nulls: ClassVar[bool] = True
    val: Annotated[Int64, BeforeValidator(_not_null)] = 0


def cent(amount: int) -> Cent:
    return Cent(val=amount)


class WireRouter(APIRouter):
    """A router whose responses leave unset optional fields out instead of sending ``null``, and
    whose routes check repeated query parameters and credentials before input (``WireRoute``)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("route_class", WireRoute)
        super().__init__(**kwargs)

    def add_api_route(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        # Assigned, not defaulted: the route decorators pass False explicitly.
        kwargs["response_model_exclude_none"] = True
        super().add_api_route(path, endpoint, **kwargs)
