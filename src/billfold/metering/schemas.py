"""Wire models of metering: the operator's ingestion and the customer's usage analytics (§13)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
import orjson
from pydantic import Field
from pydantic.config import JsonDict

from billfold.kit.clock import rfc3339
from billfold.kit.schemas import UtcDateTime, WireModel

if TYPE_CHECKING:  # the service modules import these wire models
    from billfold.metering.analytics.query import AnalyticsResult
    from billfold.metering.cancellation import CancelResult
    from billfold.metering.service import IngestResult, Rejection

# --- usage ingestion (POST /admin/v1/usage-events) ---------------------------------------------


class WireEvent(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    """One usage event of a well-typed batch, as msgspec decodes it (the ingestion hot path).

    Only the JSON types are fixed here -- what every valid event has; the values (ids, quantity,
    timestamp, properties) are checked by ``metering.service.EventParser`` exactly as for a plain
    JSON object. A batch in which any event does not fit these types, or that has a field not
    named here (msgspec would skip its value unchecked: invalid UTF-8 or deep nesting there would
    pass), is decoded as plain JSON instead, and each event is then checked (and rejected) alone
    (``metering.endpoints``). So both paths accept and refuse the same bodies.

    Why msgspec: a 10,000-event batch decodes into these in ~5 ms, twice as fast as into dicts,
    and -- ``gc=False``, and dicts holding only strings and numbers -- into objects the cyclic
    garbage collector never tracks: decoded into dicts, a batch's 10,000 tracked objects made the
    collections that ran while other batches were held cost 2-4 us per event.
    """

    eventId: str  # the wire's names (camelCase)
    teamId: str
    sku: str
    quantity: str | int | float
    timestamp: str
    properties: dict[str, str | int | float | bool] | None = None


class WireBatch(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    events: list[WireEvent]


class UsageEvent(WireModel):
    """One usage event. Each event is checked alone: a bad one is rejected with its index, the
    others are ingested."""

    # Documents the body only: the endpoint parses it itself (WireEvent, EventParser).

    event_id: str = Field(description="Unique per team: a repeat is a duplicate, billed once.")
    team_id: str = Field(description="The team's UUID.")
    sku: str = Field(description="A SKU with a price version in force at the event's time.")
    quantity: str | int = Field(
        description='Whole units: an integer, or a string of one ("1200", "1200.0").',
        examples=["1200"],
    )
    timestamp: str = Field(
        description="When the usage happened: RFC 3339 with a zone.",
        examples=["2026-12-01T10:00:00Z"],
    )
    properties: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="At most 32 dimensions (string, number or boolean values) such as model.",
    )


class UsageEventBatch(WireModel):
    """The body of POST /admin/v1/usage-events: at most 10,000 events."""

    events: list[UsageEvent] = Field(max_length=10_000)


class RejectedEvent(WireModel):
    refuse_nul = False  # echoes the caller's eventId, NUL included, to say why
    index: int
    event_id: str
    code: str
    error: str


class IngestResponse(WireModel):
    accepted: int
    duplicates: int
    rejected: list[RejectedEvent]


# --- canceling usage (POST /admin/v1/usage-events/cancel) --------------------------------------


MAX_REASON_LENGTH = 500  # characters of a cancellation's reason (also checked by the CLI)


_CANCEL_ITEM: JsonDict = {
    "type": "object",
    "required": ["teamId", "eventId"],
    "properties": {"teamId": {"type": "string"}, "eventId": {"type": "string"}},
}


class CancelRequest(WireModel):
    # Each item ({"teamId", "eventId"}) is checked alone by metering.cancellation, so one bad
    # item is rejected with its index and the others are canceled.
    events: list[Any] = Field(json_schema_extra={"items": _CANCEL_ITEM})  # documented shape
    reason: str = Field(default="", max_length=MAX_REASON_LENGTH)


class CancelResponse(WireModel):
    canceled: int
    already_canceled: int
    rejected: list[RejectedEvent]


# --- usage analytics (POST /v1/billing/teams/{team_id}/usage) ----------------------------------
#
# The shapes are the JSON transcoding of xai.shared.analytics (AnalyticsRequest/-Response).
# Only types are checked here; the meaning of every field (time formats, zones, units, fields,
# filter syntax) is validated by metering.analytics.parse_query, which names the field in its 400.
# Enums are accepted as their names or their proto numbers, as proto3 JSON parsers do.


class AnalyticsTimeRange(WireModel):
    start_time: str
    end_time: str
    timezone: str = ""  # proto3 default; Billfold reads "" as UTC


class AnalyticsValue(WireModel):
    name: str
    aggregation: str | int = "AGGREGATION_NONE"


class AnalyticsRequest(WireModel):
    time_range: AnalyticsTimeRange
    time_unit: str | int = "TIME_UNIT_INVALID"
    # 32: every value-aggregation pair that means something fits (docs/api-decisions.md)
    values: list[AnalyticsValue] = Field(default_factory=list, max_length=32)
    group_by: list[str] = Field(default_factory=list, max_length=8)
    filters: list[str] = Field(default_factory=list, max_length=32)


class UsageAnalyticsRequest(WireModel):
    analytics_request: AnalyticsRequest


class AnalyticsDataPoint(WireModel):
    timestamp: UtcDateTime
    # usd is a float (dollars); num_units (but its AVG, VAR and STD), counts and distinct counts
    # are whole numbers. All are JSON numbers.
    values: list[int | float]


class AnalyticsTimeSeries(WireModel):
    group: list[str]
    group_labels: list[str]
    data_points: list[AnalyticsDataPoint]


class UsageAnalyticsResponse(WireModel):
    time_series: list[AnalyticsTimeSeries]
    limit_reached: bool


# --- shaping ----------------------------------------------------------------------------------


def rejected_out(rejections: list[Rejection]) -> list[RejectedEvent]:
    return [
        RejectedEvent(index=r.index, event_id=r.event_id, code=r.code, error=r.error)
        for r in rejections
    ]


def ingest_out(result: IngestResult) -> IngestResponse:
    return IngestResponse(
        accepted=result.accepted,
        duplicates=result.duplicates,
        rejected=rejected_out(result.rejected),
    )


def cancel_out(result: CancelResult) -> CancelResponse:
    return CancelResponse(
        canceled=result.canceled,
        already_canceled=result.already_canceled,
        rejected=rejected_out(result.rejected),
    )


def analytics_json(result: AnalyticsResult) -> bytes:
    """The wire answer, serialized with orjson straight from the result.

    An answer may hold up to MAX_DATA_POINTS points; building and re-validating a pydantic model
    per point would cost more than the query. The shape is UsageAnalyticsResponse's (declared
    above for the OpenAPI document, and checked against it in the tests).
    """
    # every series has the same buckets: format their timestamps once
    stamps = {at: rfc3339(at) for series in result.series[:1] for at, _ in series.points}
    payload = {
        "timeSeries": [
            {
                "group": series.group,
                "groupLabels": series.labels,
                "dataPoints": [
                    {
                        "timestamp": stamps[at],
                        "values": values,
                    }
                    for at, values in series.points
                ],
            }
            for series in result.series
        ],
        "limitReached": result.limit_reached,
    }
    return orjson.dumps(payload)
