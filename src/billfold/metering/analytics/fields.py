"""What an analytics request can name: values to aggregate, fields to group and filter by."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from typing import Literal

from billfold.config import Settings
from billfold.kit.errors import InvalidField


class Aggregation(StrEnum):
    """xai.shared.analytics.Aggregation by name (proto numbers: ``_AGGREGATION_NUMBERS``)."""

    NONE = "AGGREGATION_NONE"
    SUM = "AGGREGATION_SUM"
    AVG = "AGGREGATION_AVG"
    VAR = "AGGREGATION_VAR"
    STD = "AGGREGATION_STD"
    MIN = "AGGREGATION_MIN"
    MAX = "AGGREGATION_MAX"
    P50 = "AGGREGATION_P50"
    P90 = "AGGREGATION_P90"
    P99 = "AGGREGATION_P99"
    P999 = "AGGREGATION_P999"
    COUNT = "AGGREGATION_COUNT"
    COUNT_DISTINCT = "AGGREGATION_COUNT_DISTINCT"


_AGGREGATION_NUMBERS = dict(enumerate(Aggregation))  # NONE = 0 ... COUNT_DISTINCT = 12


# Values measured per event: an event's usd (quantity x unit price) and num_units (quantity).
PER_EVENT_VALUES = ("usd", "num_units")


# Of these, what the rollups' sums and counts give (flat cost), and what needs every event's own
# value (read from raw events: the cost grows with the events in the range).
ROLLUP_AGGREGATIONS = (Aggregation.SUM, Aggregation.AVG, Aggregation.COUNT)


EVENT_AGGREGATIONS = (
    Aggregation.MIN,
    Aggregation.MAX,
    Aggregation.VAR,
    Aggregation.STD,
    Aggregation.P50,
    Aggregation.P90,
    Aggregation.P99,
    Aggregation.P999,
)


# Nearest rank: the smallest event value with at least this share of the events at or below it.
PERCENTILES = {
    Aggregation.P50: Fraction(50, 100),
    Aggregation.P90: Fraction(90, 100),
    Aggregation.P99: Fraction(99, 100),
    Aggregation.P999: Fraction(999, 1000),
}


_VALUE_NAMES = {*PER_EVENT_VALUES, "requests"}


@dataclass(frozen=True)
class Field:
    """A field to group or filter by: a price version attribute or a groupable event property."""

    name: str  # as the client wrote it
    kind: Literal["price", "property"]
    key: str  # PriceVersion attribute, or the property name as sent in events (camelCase)

    @property
    def is_api_key(self) -> bool:
        return self.kind == "property" and self.key == "apiKeyId"


def available_fields(settings: Settings) -> dict[str, Field]:
    """Fields by the names clients use: price attributes, then groupable properties in snake_case
    (``apiKeyId`` -> ``api_key_id``) and, as an alias, as declared."""
    fields = {
        "description": Field("description", "price", "description"),
        "unit_type": Field("unit_type", "price", "unit_type"),
        "sku": Field("sku", "price", "sku"),
    }
    for prop in settings.groupable():
        for name in (_snake(prop), prop):
            fields.setdefault(name, Field(name, "property", prop))
    return fields


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _field_names(fields: dict[str, Field]) -> str:
    return ", ".join(sorted({f.name for f in fields.values() if f.name == _snake(f.name)}))


def _lookup_field(fields: dict[str, Field], name: str, path: str) -> Field:
    field = fields.get(name)
    if field is not None:
        return field
    if name in _VALUE_NAMES:
        raise InvalidField(
            path,
            f"{name!r} is a value, not a field: filters and groups apply to description, "
            "unit_type, sku and the groupable properties (per-event amounts are not kept)",
            code="unsupported_field",
        )
    raise InvalidField(
        path, f"unknown field {name!r}; known fields: {_field_names(fields)}", code="unknown_field"
    )
