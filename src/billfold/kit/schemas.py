"""Pydantic building blocks for the wire format (lowerCamelCase, int64 as strings)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer
from pydantic.alias_generators import to_camel

from billfold.kit.clock import rfc3339
from billfold.kit.money import INT64_MAX


class WireModel(BaseModel):
    """Base of every request and response body."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        str_strip_whitespace=False,
    )


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


Int64 = Annotated[int, BeforeValidator(_parse_int64), PlainSerializer(str, return_type=str)]
"""An int64 that travels as a JSON string and is accepted as a string or a bare integer."""

UtcDateTime = Annotated[datetime, PlainSerializer(rfc3339, return_type=str)]


class Cent(WireModel):
    """The cent object of the wire: ``{"val": "<int64 cents>"}``."""

    val: Int64


def cent(amount: int) -> Cent:
    return Cent(val=amount)


class WireRouter(APIRouter):
    """A router whose responses leave unset optional fields out instead of sending ``null``."""

    def add_api_route(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        # Assigned, not defaulted: the route decorators pass False explicitly.
        kwargs["response_model_exclude_none"] = True
        super().add_api_route(path, endpoint, **kwargs)
