"""The usage page's numbers: usage analytics (``POST /v1/billing/teams/{id}/usage``) asked the
same way the API is asked -- an ``AnalyticsRequest`` read by ``parse_query`` and answered by
``usage_analytics`` -- so the chart, the table and the CSV are the API's numbers:

* per bucket and series: ``usd`` summed, grouped by ``model`` or ``description``;
* per bucket (the Total column): the same request without a group, not a sum of rounded cells;
* the range's total: the same request with ``TIME_UNIT_NONE``.

No total per series: the API's would cost a fourth query over the rollups with properties (the
dearest read when split by model), and a sum of the shown cells would be a second formula.

The table and the CSV show each dollar value to the cent (the API's number rounded half up, see
``web.usd``); the chart draws the API's numbers as they are.
"""

from __future__ import annotations

import csv
import io
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import cache
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from sqlalchemy.orm import Session

from billfold.config import Settings
from billfold.console.web import usd
from billfold.kit.clock import utc_now
from billfold.kit.errors import BadRequest
from billfold.metering.analytics.fields import available_fields
from billfold.metering.analytics.query import AnalyticsResult, parse_query
from billfold.metering.analytics.reader import usage_analytics
from billfold.metering.schemas import AnalyticsRequest

RANGES = {"month": "This month", "7d": "Last 7 days", "30d": "Last 30 days", "custom": "Custom"}
UNITS = {"day": ("TIME_UNIT_DAY", "Day"), "hour": ("TIME_UNIT_HOUR", "Hour")}
GROUPS = {"description": "Product (SKU description)", "model": "Model"}
MAX_DAYS = {"day": 366, "hour": 31}
NO_VALUE = {"model": "(no model)", "description": "(no description)"}


@cache
def time_zones() -> tuple[str, ...]:
    return tuple(sorted(z for z in available_timezones() if "/" in z or z == "UTC"))


@dataclass
class UsageForm:
    """The page's query string, checked; ``errors`` maps a field to what is wrong with it."""

    range: str = "month"
    start: str = ""
    end: str = ""
    unit: str = "day"
    by: str = "description"
    tz: str = "UTC"
    errors: dict[str, str] = field(default_factory=dict)

    def query_string(self) -> str:
        params = {"range": self.range, "unit": self.unit, "by": self.by, "tz": self.tz}
        if self.range == "custom":
            params.update(start=self.start, end=self.end)
        return urlencode(params)


def groups_available(settings: Settings) -> dict[str, str]:
    fields = available_fields(settings)
    return {name: label for name, label in GROUPS.items() if name in fields}


def read_form(
    settings: Settings,
    range_: str | None,
    start: str | None,
    end: str | None,
    unit: str | None,
    by: str | None,
    tz: str | None,
) -> UsageForm:
    form = UsageForm(
        range=range_ or "month",
        start=(start or "").strip(),
        end=(end or "").strip(),
        unit=unit or "day",
        by=by or "description",
        tz=(tz or "UTC").strip(),
    )
    if form.range not in RANGES:
        form.errors["range"] = "Choose one of the ranges."
        form.range = "month"
    if form.unit not in UNITS:
        form.errors["unit"] = "Choose day or hour."
        form.unit = "day"
    if form.by not in groups_available(settings):
        form.errors["by"] = "Choose how to split the spend."
        form.by = "description"
    try:
        ZoneInfo(form.tz)
    except (ZoneInfoNotFoundError, ValueError):
        form.errors["tz"] = "Unknown time zone; choose one from the list."
        form.tz = "UTC"
    return form


def local_days(form: UsageForm, today: date) -> tuple[date, date] | None:
    """The first and last local day of the range (inclusive), or None with ``form.errors`` set."""
    if form.range == "month":
        return today.replace(day=1), today
    if form.range == "7d":
        return today - timedelta(days=6), today
    if form.range == "30d":
        return today - timedelta(days=29), today
    first = _date(form, "start")
    last = _date(form, "end")
    if first is None or last is None:
        return None
    if last < first:
        form.errors["end"] = "The end date must be on or after the start date."
        return None
    if (last - first).days + 1 > MAX_DAYS[form.unit]:
        form.errors["end"] = (
            f"At most {MAX_DAYS[form.unit]} days by {form.unit}; choose a shorter range"
            + (" or show it by day." if form.unit == "hour" else ".")
        )
        return None
    return first, last


def _date(form: UsageForm, name: str) -> date | None:
    text = getattr(form, name)
    try:
        value = date.fromisoformat(text)
    except ValueError:
        form.errors[name] = "Enter a date as YYYY-MM-DD."
        return None
    if not 1900 <= value.year <= 2998:
        form.errors[name] = "Enter a date between 1900 and 2998."
        return None
    return value


@dataclass(frozen=True)
class UsageRow:
    start: datetime  # local
    label: str
    values: list[float]  # per series, the API's dollars
    total: float


@dataclass(frozen=True)
class UsageTable:
    first: date
    last: date
    zone: str
    unit: str
    series: list[str]  # labels, in the API's order (largest spend first)
    rows: list[UsageRow]
    grand_total: float
    limit_reached: bool

    def chart(self) -> dict[str, object]:
        return {
            "labels": [row.label for row in self.rows],
            "series": [
                {"label": label, "data": [row.values[i] for row in self.rows]}
                for i, label in enumerate(self.series)
            ],
            "unit": self.unit,
        }

    def csv(self) -> str:
        """The table as CSV: the same rows, columns and to-the-cent numbers."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["start", *self.series, "total"])
        for row in self.rows:
            writer.writerow(
                [
                    row.start.isoformat(),
                    *(plain(value) for value in row.values),
                    plain(row.total),
                ]
            )
        writer.writerow(["total", *("" for _ in self.series), plain(self.grand_total)])
        return out.getvalue()


def plain(value: float) -> str:
    """``$1,234.56`` as the CSV writes it: ``1234.56``."""
    return usd(value).replace("$", "").replace(",", "")


def _request(form: UsageForm, first: date, last: date, unit: str, group: bool) -> AnalyticsRequest:
    return AnalyticsRequest.model_validate(
        {
            "timeRange": {
                "startTime": f"{first.isoformat()} 00:00:00",
                "endTime": f"{(last + timedelta(days=1)).isoformat()} 00:00:00",
                "timezone": form.tz,
            },
            "timeUnit": unit,
            "values": [{"name": "usd", "aggregation": "AGGREGATION_SUM"}],
            "groupBy": [form.by] if group else [],
        }
    )


def analytics_request(form: UsageForm, first: date, last: date) -> AnalyticsRequest:
    """The API request whose answer is the chart (tests send it to the API to compare)."""
    return _request(form, first, last, UNITS[form.unit][0], group=True)


def _run(
    session: Session, settings: Settings, team_id: uuid.UUID, request: AnalyticsRequest
) -> AnalyticsResult:
    return usage_analytics.run(session, settings, parse_query(request, settings, team_id))


def usage_table(
    session: Session, settings: Settings, team_id: uuid.UUID, form: UsageForm
) -> UsageTable | None:
    """The numbers of the chosen range, or None when the form has errors."""
    zone = ZoneInfo(form.tz)
    today = utc_now().astimezone(zone).date()
    days = local_days(form, today)
    if days is None or form.errors:
        return None
    first, last = days
    try:
        grouped = _run(session, settings, team_id, analytics_request(form, first, last))
        totals = _run(
            session, settings, team_id, _request(form, first, last, UNITS[form.unit][0], False)
        )
        whole = _run(
            session, settings, team_id, _request(form, first, last, "TIME_UNIT_NONE", False)
        )
    except BadRequest as exc:  # a range analytics refuses (too many buckets, ...)
        form.errors["range"] = exc.message
        return None
    (total_series,) = totals.series
    labels = [
        (series.labels[0] if series.labels and series.labels[0] else NO_VALUE[form.by])
        for series in grouped.series
    ]
    rows = []
    for index, (at, total_values) in enumerate(total_series.points):
        local = at.astimezone(zone)
        # An hour label names its offset: the hour a DST fall-back repeats is two rows.
        label = local.strftime("%Y-%m-%d" if form.unit == "day" else "%Y-%m-%d %H:%M %Z")
        rows.append(
            UsageRow(
                start=local,
                label=label,
                values=[float(series.points[index][1][0]) for series in grouped.series],
                total=float(total_values[0]),
            )
        )
    grand = float(whole.series[0].points[0][1][0]) if whole.series else 0.0
    return UsageTable(
        first=first,
        last=last,
        zone=form.tz,
        unit=form.unit,
        series=labels,
        rows=rows,
        grand_total=grand,
        limit_reached=grouped.limit_reached,
    )
