"""Postpaid: spending limits, the cycle statement (preview and invoice), the spend check, invoices,
and cycle close.

One piece of code states a cycle: :meth:`InvoicingService.statement` turns a team's cycle lines
(``cycle_lines``, rated at ingestion) and its credit position (``ledger.position``) into lines,
usage, the credit-paid share, the postpaid rest and VAT. The preview shows the statement of the
current cycle; cycle close writes the statement of the closed month into the invoice, so a preview
and the invoice it becomes can never disagree. Neither reads raw usage events: the cost of both is
the number of lines (SKU, price version and cluster) a team used in the month, not the number
of its events.

How a monthly invoice adds up (all cents)::

    sum(lines.amount)         = usage        (the whole spend of the cycle)
    monthly.prepaidTokensToSpend = credit_used  (the part credit paid; a SPEND ledger entry)
    subtotal = usage - credit_used = postpaid
    tax      = VAT on subtotal, rounded once, half up
    total    = subtotal + tax   (what is charged)

VAT applies to the postpaid part only (credit was bought, and taxed, as a prepayment). The rate is
``BILLFOLD_VAT_RATES`` for the team's billing country at the time of close (0 without an entry).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

import psycopg
from psycopg import pq
from psycopg.pq.abc import PGconn, PGresult
from sqlalchemy import (
    BigInteger,
    Boolean,
    Engine,
    Uuid,
    and_,
    bindparam,
    event,
    or_,
    select,
    text,
)
from sqlalchemy.orm import Session, sessionmaker

from billfold.config import Settings
from billfold.invoicing.limits import (
    SpendDecision,
    SpendingLimits,
    limits_of,
    spend_decision,
    spending_limits,
)
from billfold.invoicing.models import BillingCycle, ClosedPeriod, Invoice, InvoiceLine
from billfold.invoicing.numbers import next_invoice_number
from billfold.invoicing.periods import lock_month_exclusive, month_end, month_of, month_start
from billfold.kit.clock import rfc3339, utc_now
from billfold.kit.db import (
    LIBPQ_KEEPALIVES,
    UTCDateTime,
    dialect_insert,
    libpq_conninfo,
    transaction,
)
from billfold.kit.errors import (
    BadRequest,
    Conflict,
    InvalidField,
    ResourceNotFound,
    ServiceUnavailable,
)
from billfold.kit.money import Cents
from billfold.ledger.position import (
    CreditPosition,
    allocate_credit,
    credit_position,
)
from billfold.ledger.service import ledger_service
from billfold.metering.models import CycleLine
from billfold.payments.provider import (
    ChargeResult,
    PaymentProvider,
    ProviderError,
    ProviderUnavailable,
)
from billfold.payments.service import payment_method_service
from billfold.pricing.models import PriceVersion
from billfold.teams.models import BillingInfo, Team
from billfold.teams.service import team_service

log = logging.getLogger("billfold.invoicing")

PENDING = "PENDING"
PAID = "PAID"
FAILED = "FAILED"
WILL_NEVER_BE_CHARGED = "WILL_NEVER_BE_CHARGED"

KIND_MONTHLY = "monthly"
KIND_PREPAID = "prepaid"

# The statement reads the cycle's lines and its spend in two statements; under READ COMMITTED a
# batch may commit between them. They are read again until they agree (a batch commits in
# milliseconds, so a second read practically always does).
_CONSISTENT_READ_ATTEMPTS = 5


# --- VAT ----------------------------------------------------------------------------------------


def vat_rate(settings: Settings, country: str) -> Decimal:
    """The VAT percentage for a billing country (``BILLFOLD_VAT_RATES``); 0 when none is set."""
    text = settings.vat_table().get(country.strip().upper()) if country else None
    if not text:
        return Decimal(0)
    try:
        rate = Decimal(text)
    except InvalidOperation:
        rate = Decimal(-1)
    if not rate.is_finite() or not 0 <= rate <= 100:
        raise ServiceUnavailable(
            f"BILLFOLD_VAT_RATES: {country}={text!r} is not a percentage between 0 and 100",
            code="misconfigured",
        )
    return rate


def format_rate(rate: Decimal) -> str:
    return format(rate.normalize(), "f")


def vat_cents(amount: int, rate: Decimal) -> Cents:
    """VAT on ``amount`` cents at ``rate`` percent, rounded once, half up, computed exactly.

    Half up, like every rounding in Billfold (kit.money.round_to_cents): the exact product
    ``amount * rate / 100`` is a fraction; a remainder of half a cent or more rounds up.
    """
    numerator, denominator = rate.as_integer_ratio()
    quotient, remainder = divmod(int(amount) * numerator, denominator * 100)
    if remainder * 2 >= denominator * 100:
        quotient += 1
    return Cents(quotient)


# --- the statement of a cycle -------------------------------------------------------------------


@dataclass(frozen=True)
class StatementLine:
    sku: str
    price_version_id: int
    cluster_name: str
    description: str
    unit_type: str
    unit_price_pico: int
    num_units: int
    amount_cents: int


@dataclass(frozen=True)
class CycleStatement:
    team_id: uuid.UUID
    year: int
    month: int
    lines: tuple[StatementLine, ...]
    usage: Cents  # sum of the line amounts = the cycle's spend
    credit_available: Cents  # credit there was for this cycle before its own spend
    credit_used: Cents  # the part of usage paid by credit
    postpaid: Cents  # usage - credit_used: the invoice's subtotal
    credit_left: Cents  # credit left now, after every open cycle
    vat_rate: Decimal
    vat: Cents

    @property
    def total(self) -> Cents:
        return Cents(self.postpaid + self.vat)


@dataclass(frozen=True)
class Preview:
    statement: CycleStatement
    limits: SpendingLimits


@dataclass(frozen=True)
class TeamBilling:
    team: Team
    country: str
    year: int
    month: int
    limits: SpendingLimits
    position: CreditPosition
    decision: SpendDecision


# --- invoices -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InvoiceFilter:
    """At most one of the spec's filter groups (§5)."""

    cycle: tuple[int, int] | None = None
    since: tuple[int, int] | None = None
    invoice_ids: tuple[str, ...] | None = None


def invoice_filter(
    cycle_year: int | None,
    cycle_month: int | None,
    since_year: int | None,
    since_month: int | None,
    invoice_ids: Sequence[str] | None,
) -> InvoiceFilter:
    """Validate the query's filter groups: a group is complete or absent, and at most one is set."""
    groups: list[str] = []
    for name, year, month in (
        ("billingCycle", cycle_year, cycle_month),
        ("since", since_year, since_month),
    ):
        if (year is None) != (month is None):
            missing = f"{name}.month" if month is None else f"{name}.year"
            raise InvalidField(
                missing, f"is required with {name}.{'year' if month is None else 'month'}"
            )
        if year is not None and month is not None:
            if not 1 <= month <= 12:
                raise InvalidField(f"{name}.month", "must be between 1 and 12")
            if not 1 <= year <= 9999:
                raise InvalidField(f"{name}.year", "must be between 1 and 9999")
            groups.append(name)
    if invoice_ids:
        for invoice_id in invoice_ids:
            if "\x00" in invoice_id or len(invoice_id) > 100:
                raise InvalidField("invoiceIds.invoiceIds", "is not an invoice id")
        groups.append("invoiceIds")
    if len(groups) > 1:
        raise BadRequest(
            f"at most one filter group may be given; got {', '.join(groups)}",
            code="invalid_argument",
            field=groups[1],
        )
    if cycle_year is not None and cycle_month is not None:
        return InvoiceFilter(cycle=(cycle_year, cycle_month))
    if since_year is not None and since_month is not None:
        return InvoiceFilter(since=(since_year, since_month))
    if invoice_ids:
        return InvoiceFilter(invoice_ids=tuple(invoice_ids))
    return InvoiceFilter()


@dataclass(frozen=True)
class InvoiceWithLines:
    invoice: Invoice
    lines: tuple[InvoiceLine, ...]


# --- cycle close ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CloseTotals:
    invoices: int
    usage: Cents
    credits_applied: Cents
    subtotal: Cents
    tax: Cents
    total: Cents
    paid: Cents
    failed: Cents
    pending: Cents
    by_status: dict[str, int]


@dataclass(frozen=True)
class CloseSummary:
    year: int
    month: int
    closed_at: datetime
    invoices: tuple[Invoice, ...]
    totals: CloseTotals

    def record(self) -> dict[str, Any]:
        """The compact form kept in ``closed_periods.summary``."""
        t = self.totals
        return {
            "invoices": t.invoices,
            "usage": t.usage,
            "creditsApplied": t.credits_applied,
            "subtotal": t.subtotal,
            "tax": t.tax,
            "total": t.total,
            "paid": t.paid,
            "failed": t.failed,
            "pending": t.pending,
            "byStatus": t.by_status,
        }


def _totals(invoices: Iterable[Invoice]) -> CloseTotals:
    items = list(invoices)
    by_status: dict[str, int] = {}
    for invoice in items:
        by_status[invoice.status] = by_status.get(invoice.status, 0) + 1

    def total_of(status: str) -> Cents:
        return Cents(sum(i.total_cents for i in items if i.status == status))

    return CloseTotals(
        invoices=len(items),
        usage=Cents(sum(i.usage_cents for i in items)),
        credits_applied=Cents(sum(i.credits_applied_cents for i in items)),
        subtotal=Cents(sum(i.subtotal_cents for i in items)),
        tax=Cents(sum(i.tax_cents for i in items)),
        total=Cents(sum(i.total_cents for i in items)),
        paid=total_of(PAID),
        failed=total_of(FAILED),
        pending=total_of(PENDING),
        by_status=dict(sorted(by_status.items())),
    )


@dataclass(frozen=True)
class _ChargePlan:
    invoice_id: str
    number: str
    status: str  # the status the invoice had when the plan was made
    ticket: int
    amount: Cents
    idempotency_key: str
    customer_ref: str
    method_id: str | None
    method_ref: str


# The spend check in one statement: the team's limits, its posted credit (and whether a grant's
# expiry is due), and its open cycles -- one row per open cycle, or one row of NULL cycle columns.
# One statement is one snapshot, so no transaction is needed around it. The same text serves
# SQLAlchemy on SQLite (_SPEND_CHECK) and libpq on PostgreSQL (_SpendReader). No ORDER BY:
# allocate_credit orders the cycles itself, and a Sort node was a quarter of PostgreSQL's work
# per check.
_SPEND_CHECK_SQL = """
    SELECT t.soft_limit_cents, t.hard_limit_override_cents, ca.balance_cents,
           ca.next_expiry_at <= {now} AS expiry_due, {next_expiry} AS next_expiry_us,
           bc.year, bc.month, bc.spend_cents
    FROM teams t
    LEFT JOIN credit_accounts ca ON ca.team_id = t.id
    LEFT JOIN billing_cycles bc ON bc.team_id = t.id AND bc.closed_at IS NULL
    WHERE t.id = {team_id}
"""
_SPEND_CHECK = (
    text(_SPEND_CHECK_SQL.format(now=":now", team_id=":team_id", next_expiry="NULL"))
    .bindparams(bindparam("team_id", type_=Uuid()), bindparam("now", type_=UTCDateTime()))
    .columns(
        soft_limit_cents=BigInteger(),
        hard_limit_override_cents=BigInteger(),
        balance_cents=BigInteger(),
        expiry_due=Boolean(),
        next_expiry_us=BigInteger(),
        year=BigInteger(),
        month=BigInteger(),
        spend_cents=BigInteger(),
    )
)
# On PostgreSQL the next expiry comes back too, as microseconds since the epoch (no timestamp to
# parse): a cached answer (invoicing/gateway.py) is good until then.
_SPEND_CHECK_LIBPQ = _SPEND_CHECK_SQL.format(
    now="$2::timestamptz",
    team_id="$1::uuid",
    next_expiry="floor(extract(epoch FROM ca.next_expiry_at) * 1000000)::bigint",
).encode()
_SPEND_CHECK_NAME = b"billfold_spend_check"
_UNDEFINED_STATEMENT = b"26000"  # SQLSTATE invalid_sql_statement_name: not prepared here
_TIMED_OUT = (b"55P03", b"57014")  # lock_not_available, query_canceled (statement_timeout)
_READER_LIMITS = {
    **LIBPQ_KEEPALIVES,
    "connect_timeout": "2",
    "options": "-c lock_timeout=100 -c statement_timeout=1000",
}
_READER_BACKOFF = 1.0  # after a failed connection, checks answer 503 at once for this long

# (soft limit, hard override, posted credit, expiry due, next expiry in us since the epoch (None
# on SQLite), year, month, spend): one per open cycle
SpendRow = tuple[
    int | None,
    int | None,
    int | None,
    bool | None,
    int | None,
    int | None,
    int | None,
    int | None,
]


class SpendSnapshot(NamedTuple):
    """A spend check's answer and when it holds unless the team's rows change: from the start of
    the month until the next (a new cycle) or the next grant expiry, whichever comes first (a
    start too, because tests move clocks backwards). ``decision`` is None when
    an expiry is due now (the ledger books it first, see ``spend_status_booking_expiry``)."""

    decision: SpendDecision | None
    valid_from: datetime
    valid_until: datetime


_READER_IDLE = 4  # connections a process keeps open for the spend check, at most


class _ConnectionLost(Exception):
    """A spend check's connection was dropped, or could not be made."""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _int(value: bytes | None) -> int | None:
    return None if value is None else int(value)


class _SpendReader:
    """The spend check's own connections to PostgreSQL, per process and per app engine.

    The check is the platform's per-request call, so its read is kept to one round trip and as
    little Python as it can be:

    * no ping: the app's pool pings every connection it hands out (``pool_pre_ping``), a round
      trip as long as the check's statement. Instead a read whose connection turns out dropped (a
      PostgreSQL restart, an idle-connection timeout) is retried once on a fresh connection --
      harmless, the read changes nothing; the other idle connections are closed with it (after a
      restart they are as dead);
    * libpq itself (``psycopg.pq``, psycopg's own libpq binding), not a psycopg cursor through
      SQLAlchemy's pool: the statement is prepared once per connection and each check sends only
      the team id and the time, in text, and reads a few integers back. That costs ~25 us of
      CPU and ~65 us of wall time per read against ~80 us and ~155 us (measured in-process);
    * no transaction: libpq runs a lone statement in autocommit, one statement is one snapshot.

    It holds connections only, never an answer: every worker process reads the same committed
    rows. The checks of a process run one at a time on its event loop, so one connection is
    usually all it opens; more only when reads overlap (several threads or event loops). A
    connection is opened on the event loop too (the first check of a process, or after a drop):
    put ``connect_timeout`` in the database URL when the database is remote.
    """

    def __init__(self, engine: Engine) -> None:
        # The read runs on the event loop, so nothing may make it wait long: a table lock (an
        # ALTER TABLE queued behind a long transaction), a slow statement, a connection attempt
        # or a peer gone silent would stall every request of the process. Hence the timeouts
        # (a lock or statement timeout answers 503 like an unreachable database) and keepalives.
        self.conninfo = libpq_conninfo(engine, _READER_LIMITS)
        self._idle: list[PGconn] = []  # list.pop/append are atomic: safe across threads
        self._down_until = 0.0

    def read(self, team_id: uuid.UUID, now: datetime) -> list[SpendRow]:
        if time.monotonic() < self._down_until:  # failed a moment ago: do not wait again now
            raise ServiceUnavailable("the database is unreachable; retry", code="unavailable")
        params = [str(team_id).encode(), now.isoformat().encode()]
        try:
            return self._read(params)
        except _ConnectionLost:
            self.dispose()
        try:
            return self._read(params)
        except _ConnectionLost as lost:
            log.warning("spend check: the database is unreachable: %s", lost)
            self._down_until = time.monotonic() + _READER_BACKOFF
            raise ServiceUnavailable(
                "the database is unreachable; retry", code="unavailable"
            ) from lost

    def _read(self, params: list[bytes]) -> list[SpendRow]:
        try:
            connection = self._idle.pop()
        except IndexError:
            connection = self._connect()
        result = self._execute(connection, params)
        if result is not None and result.status == pq.ExecStatus.TUPLES_OK:
            self._release(connection)
            value = result.get_value
            return [
                (
                    _int(value(row, 0)),
                    _int(value(row, 1)),
                    _int(value(row, 2)),
                    None if (due := value(row, 3)) is None else due == b"t",
                    _int(value(row, 4)),
                    _int(value(row, 5)),
                    _int(value(row, 6)),
                    _int(value(row, 7)),
                )
                for row in range(result.ntuples)
            ]
        message = _libpq_error(connection if result is None else result)
        if connection.status != pq.ConnStatus.OK:
            connection.finish()
            raise _ConnectionLost(message)
        self._release(connection)  # the statement failed, the connection is fine: no retry
        if result is not None and result.error_field(pq.DiagnosticField.SQLSTATE) in _TIMED_OUT:
            log.warning("spend check: %s", message)
            raise ServiceUnavailable("the database is busy; retry", code="unavailable")
        raise psycopg.DatabaseError(message)

    def _execute(self, connection: PGconn, params: list[bytes]) -> PGresult | None:
        """The prepared statement's result; None when libpq could not even send it."""
        try:
            result = connection.exec_prepared(_SPEND_CHECK_NAME, params)
            if result.error_field(pq.DiagnosticField.SQLSTATE) == _UNDEFINED_STATEMENT:
                # The session lost it (DISCARD ALL, or a pooler such as PgBouncer handing over
                # another server connection): prepare it again, once.
                prepared = connection.prepare(_SPEND_CHECK_NAME, _SPEND_CHECK_LIBPQ)
                if prepared.status == pq.ExecStatus.COMMAND_OK:
                    result = connection.exec_prepared(_SPEND_CHECK_NAME, params)
            return result
        except psycopg.OperationalError:
            return None

    def _connect(self) -> PGconn:
        connection = pq.PGconn.connect(self.conninfo)
        if connection.status != pq.ConnStatus.OK:
            message = _libpq_error(connection)
            connection.finish()
            raise _ConnectionLost(message)
        prepared = connection.prepare(_SPEND_CHECK_NAME, _SPEND_CHECK_LIBPQ)
        if prepared.status != pq.ExecStatus.COMMAND_OK:
            message = _libpq_error(prepared)
            lost = connection.status != pq.ConnStatus.OK
            connection.finish()
            raise _ConnectionLost(message) if lost else psycopg.DatabaseError(message)
        return connection

    def _release(self, connection: PGconn) -> None:
        if len(self._idle) < _READER_IDLE:
            self._idle.append(connection)
        else:
            connection.finish()

    def dispose(self) -> None:
        """Close the idle connections (those in use are closed or kept when they come back)."""
        while True:
            try:
                self._idle.pop().finish()
            except IndexError:
                return


def _libpq_error(source: PGconn | PGresult) -> str:
    return source.error_message.decode(errors="replace").strip() or "libpq error"


_spend_readers: weakref.WeakKeyDictionary[Engine, _SpendReader] = weakref.WeakKeyDictionary()
_spend_readers_lock = threading.Lock()


def _spend_reader(engine: Engine) -> _SpendReader:
    """The reader of ``engine``'s database in this process, created at the first check (each
    uvicorn worker builds its own app and engine, so each gets its own)."""
    reader = _spend_readers.get(engine)
    if reader is None:
        with _spend_readers_lock:
            reader = _spend_readers.get(engine)
            if reader is None:
                reader = _spend_readers[engine] = _SpendReader(engine)
                # The app disposes its engine at shutdown: close these connections with it.
                event.listen(engine, "engine_disposed", _dispose_reader(reader))
    return reader


def _dispose_reader(reader: _SpendReader) -> Callable[[Engine], None]:
    def dispose(_engine: Engine) -> None:
        reader.dispose()

    return dispose


def new_invoice_id() -> str:
    return "inv_" + secrets.token_urlsafe(18)


def _month_key(year: int, month: int) -> str:
    return f"{year:04d}-{month:02d}"


class InvoicingService:
    # --- spending limits ------------------------------------------------------------------------

    def limits(self, session: Session, settings: Settings, team_id: uuid.UUID) -> SpendingLimits:
        return spending_limits(team_service.get(session, team_id), settings)

    def set_soft_limit(
        self, session: Session, settings: Settings, team_id: uuid.UUID, desired: int
    ) -> Cents:
        """The team's own limit (§10). It may not exceed the effective hard limit.

        The team row is locked so the check against the hard limit holds until commit (an
        operator lowering the hard limit at the same moment waits, or is waited for).
        """
        field = "desiredSoftSpendingLimit.val"
        if desired < 0:
            raise InvalidField(field, "must not be negative")
        team = team_service.get(session, team_id, for_update=True)
        limits = spending_limits(team, settings)
        if desired > limits.effective_hard:
            raise InvalidField(
                field,
                f"must not exceed the hard spending limit (effectiveHardSl) of "
                f"{limits.effective_hard} cents",
                code="above_hard_limit",
            )
        team.soft_limit_cents = desired
        return Cents(desired)

    def set_hard_limit(
        self, session: Session, settings: Settings, team_id: uuid.UUID, amount: int | None
    ) -> SpendingLimits:
        """The operator's per-team hard limit; ``None`` falls back to ``hardSlAuto``.

        A soft limit above the new hard limit is kept as the team set it (see limits.py); the
        effective limit is the lower of the two at once.
        """
        if amount is not None and amount < 0:
            raise InvalidField("amount", "must not be negative (null removes the override)")
        team = team_service.get(session, team_id, for_update=True)
        team.hard_limit_override_cents = amount
        return spending_limits(team, settings)

    # --- statements: preview and invoice share this -----------------------------------------

    def cycle_lines(
        self, session: Session, team_id: uuid.UUID, year: int, month: int
    ) -> list[StatementLine]:
        """One line per SKU, price version and cluster used in the cycle, from ``cycle_lines``:
        by SKU, then price version (in time order), then cluster name (``""``, no cluster,
        first). The preview and the invoice at close are this one list, so they agree line by
        line."""
        rows = session.execute(
            select(
                CycleLine.price_version_id,
                CycleLine.cluster_name,
                CycleLine.quantity,
                CycleLine.amount_cents,
                PriceVersion.sku,
                PriceVersion.description,
                PriceVersion.unit_type,
                PriceVersion.unit_price_pico,
            )
            .join(PriceVersion, PriceVersion.id == CycleLine.price_version_id)
            .where(CycleLine.team_id == team_id, CycleLine.year == year, CycleLine.month == month)
            .order_by(PriceVersion.sku, PriceVersion.effective_from, CycleLine.cluster_name)
        ).all()
        return [
            StatementLine(
                sku=r.sku,
                price_version_id=r.price_version_id,
                cluster_name=r.cluster_name,
                description=r.description,
                unit_type=r.unit_type,
                unit_price_pico=r.unit_price_pico,
                num_units=r.quantity,
                amount_cents=r.amount_cents,
            )
            for r in rows
        ]

    def billing_country(self, session: Session, team_id: uuid.UUID) -> str:
        country = session.scalar(select(BillingInfo.country).where(BillingInfo.team_id == team_id))
        return country or ""

    def statement(
        self,
        session: Session,
        settings: Settings,
        team_id: uuid.UUID,
        year: int,
        month: int,
        now: datetime,
    ) -> CycleStatement:
        """The cycle as it stands: lines, the credit split and VAT. Only for open cycles."""
        rate = vat_rate(settings, self.billing_country(session, team_id))
        for _ in range(_CONSISTENT_READ_ATTEMPTS):
            lines = self.cycle_lines(session, team_id, year, month)
            position = credit_position(session, team_id, now)
            cycle = position.cycle(year, month)
            usage = Cents(sum(line.amount_cents for line in lines))
            if usage == cycle.spend:
                break
        else:
            raise ServiceUnavailable(
                "this team's usage is being rated right now; retry", code="busy"
            )
        return CycleStatement(
            team_id=team_id,
            year=year,
            month=month,
            lines=tuple(lines),
            usage=usage,
            credit_available=Cents(max(cycle.credit_available, 0)),
            credit_used=cycle.credit_used,
            postpaid=cycle.postpaid,
            credit_left=Cents(max(position.credit_left, 0)),
            vat_rate=rate,
            vat=vat_cents(cycle.postpaid, rate),
        )

    def preview(self, session: Session, settings: Settings, team_id: uuid.UUID) -> Preview:
        """The running invoice of the current UTC month (§8), exact as of the last batch."""
        team = team_service.get(session, team_id)
        now = utc_now()
        year, month = month_of(now)
        statement = self.statement(session, settings, team_id, year, month, now)
        return Preview(statement=statement, limits=spending_limits(team, settings))

    # --- the spend check ------------------------------------------------------------------------

    def spend_status(
        self, session: Session, settings: Settings, team_id: uuid.UUID
    ) -> SpendDecision:
        """May the team spend now? Three indexed reads: the team, its credit account, and its
        open cycles -- rows that ingestion updates in the batch's own transaction, so the answer
        is exact as of the last committed batch, in every process, without a cache."""
        team = team_service.get(session, team_id)
        now = utc_now()
        position = credit_position(session, team_id, now)
        return spend_decision(spending_limits(team, settings), position, now.year, now.month)

    def reads_inline(self, engine: Engine) -> bool:
        """May the spend check's one-statement read run on the event loop instead of a worker
        thread? On PostgreSQL: its reader never waits for a connection (it opens one when none is
        idle), and the indexed read (~65 us) costs less than the hop to a thread and back. Not on
        SQLite: a read there takes the database write lock and may wait for it.
        """
        return engine.dialect.name == "postgresql"

    def spend_snapshot(
        self, engine: Engine, settings: Settings, team_id: uuid.UUID
    ) -> SpendSnapshot:
        """:meth:`spend_status` in one round trip, for the gateway's per-request check.

        The same answer from the same committed rows, read by one statement (one snapshot, more
        consistent than three); on PostgreSQL through the check's own connections
        (:class:`_SpendReader`). Its decision is None when a grant's expiry is due: the ledger
        must book it before the credit is read, in a transaction
        (:meth:`spend_status_booking_expiry`).
        """
        now = utc_now()
        rows: Sequence[SpendRow]
        if engine.dialect.name == "postgresql":
            rows = _spend_reader(engine).read(team_id, now)
        else:
            with engine.connect() as connection:
                result = connection.execute(_SPEND_CHECK, {"team_id": team_id, "now": now})
                rows = [tuple(row) for row in result]
        return self._spend_snapshot(rows, settings, team_id, now)

    def spend_status_booking_expiry(
        self, sessions: sessionmaker[Session], settings: Settings, team_id: uuid.UUID
    ) -> SpendDecision:
        """:meth:`spend_status` in a transaction of its own (the position books due expiries)."""
        with transaction(sessions) as session:
            return self.spend_status(session, settings, team_id)

    def _spend_snapshot(
        self, rows: Sequence[SpendRow], settings: Settings, team_id: uuid.UUID, now: datetime
    ) -> SpendSnapshot:
        if not rows:
            raise ResourceNotFound(f"team {team_id} not found", code="team_not_found")
        soft, hard, credit, expiry_due, next_expiry_us = rows[0][:5]
        # Nothing but a new month or an expiry changes the answer without a write to these rows.
        valid_from, valid_until = month_start(now.year, now.month), month_end(now.year, now.month)
        if next_expiry_us is not None:
            valid_until = min(valid_until, _EPOCH + timedelta(microseconds=next_expiry_us))
        if expiry_due:
            # credit expires now: the ledger books that before anyone reads it
            return SpendSnapshot(None, valid_from, valid_until)
        spends = {(r[5], r[6]): r[7] or 0 for r in rows if r[5] is not None and r[6] is not None}
        position = allocate_credit(team_id, Cents(credit or 0), spends, now)
        limits = limits_of(soft, hard, settings)
        decision = spend_decision(limits, position, now.year, now.month)
        return SpendSnapshot(decision, valid_from, valid_until)

    def team_billing(self, session: Session, settings: Settings, team_id: uuid.UUID) -> TeamBilling:
        team = team_service.get(session, team_id)
        now = utc_now()
        position = credit_position(session, team_id, now)
        limits = spending_limits(team, settings)
        return TeamBilling(
            team=team,
            country=self.billing_country(session, team_id),
            year=now.year,
            month=now.month,
            limits=limits,
            position=position,
            decision=spend_decision(limits, position, now.year, now.month),
        )

    # --- invoices -------------------------------------------------------------------------------

    def list_invoices(
        self, session: Session, team_id: uuid.UUID, wanted: InvoiceFilter
    ) -> list[InvoiceWithLines]:
        """The team's invoices (monthly and prepaid receipts), newest first, with their lines."""
        stmt = select(Invoice).where(Invoice.team_id == team_id)
        if wanted.cycle is not None:
            stmt = stmt.where(
                Invoice.cycle_year == wanted.cycle[0], Invoice.cycle_month == wanted.cycle[1]
            )
        if wanted.since is not None:
            year, month = wanted.since
            stmt = stmt.where(
                or_(
                    Invoice.cycle_year > year,
                    and_(Invoice.cycle_year == year, Invoice.cycle_month >= month),
                )
            )
        if wanted.invoice_ids is not None:
            stmt = stmt.where(Invoice.id.in_(wanted.invoice_ids))
        invoices = list(
            session.scalars(stmt.order_by(Invoice.created_at.desc(), Invoice.number.desc()))
        )
        lines: dict[str, list[InvoiceLine]] = {i.id: [] for i in invoices}
        if invoices:
            for line in session.scalars(
                select(InvoiceLine)
                .where(InvoiceLine.invoice_id.in_(list(lines)))
                .order_by(InvoiceLine.invoice_id, InvoiceLine.position)
            ):
                lines[line.invoice_id].append(line)
        return [InvoiceWithLines(i, tuple(lines[i.id])) for i in invoices]

    def get_invoice(self, session: Session, invoice_id: str) -> InvoiceWithLines:
        invoice = session.get(Invoice, invoice_id)
        if invoice is None:
            raise ResourceNotFound(f"invoice {invoice_id!r} not found", code="invoice_not_found")
        lines = session.scalars(
            select(InvoiceLine)
            .where(InvoiceLine.invoice_id == invoice_id)
            .order_by(InvoiceLine.position)
        )
        return InvoiceWithLines(invoice, tuple(lines))

    # --- cycle close ----------------------------------------------------------------------------

    def close_cycle(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        provider: PaymentProvider,
        year: int,
        month: int,
    ) -> CloseSummary:
        """Close a month: no more usage in it, one invoice per team with usage, charged once.

        Idempotent, and safe to run from several processes at once: the month mark is an insert
        that ignores a conflict; each team's cycle is finalized under its row lock and skipped once
        ``closed_at`` is set; an invoice is charged only while it is ``PENDING``, with its own id as
        the provider's idempotency key. A second run therefore finalizes nothing, charges nothing
        again, and returns the same summary. It does charge an invoice that a crash (or a provider
        timeout) left ``PENDING`` -- the provider answers such a repeat with the first charge.
        ``FAILED`` invoices are not retried here (a declined card would be charged again on every
        run); the operator retries them with :meth:`charge_invoice`.

        Each step commits on its own (the month mark, each team's invoice, each charge), so the
        card is charged outside any database transaction and only after the invoice is durable.
        """
        now = utc_now()
        if month_end(year, month) > now:
            raise BadRequest(
                f"{_month_key(year, month)} has not ended yet; a cycle is closed after its month",
                code="cycle_not_ended",
                field="month",
            )
        with transaction(sessions) as session:
            # Waits for every in-flight batch of the month (they hold this lock shared) and marks
            # the month closed; a later batch reads the mark after taking the lock and rejects
            # the month's events. From here on, the month's cycles no longer change.
            lock_month_exclusive(session, year, month)
            insert = dialect_insert(session)
            session.execute(
                insert(ClosedPeriod)
                .values(year=year, month=month, closed_at=now, summary={})
                .on_conflict_do_nothing(index_elements=["year", "month"])
            )
        with transaction(sessions) as session:
            team_ids = list(
                session.scalars(
                    select(BillingCycle.team_id)
                    .where(
                        BillingCycle.year == year,
                        BillingCycle.month == month,
                        BillingCycle.closed_at.is_(None),
                    )
                    .order_by(BillingCycle.team_id)
                )
            )
        for team_id in team_ids:
            with transaction(sessions) as session:
                self._finalize(session, settings, team_id, year, month)
        with transaction(sessions) as session:
            pending = list(
                session.scalars(
                    select(Invoice.id)
                    .where(
                        Invoice.kind == KIND_MONTHLY,
                        Invoice.cycle_year == year,
                        Invoice.cycle_month == month,
                        Invoice.status == PENDING,
                    )
                    .order_by(Invoice.number)
                )
            )
        for invoice_id in pending:
            self._charge(sessions, provider, invoice_id, allowed=(PENDING,))
        with transaction(sessions) as session:
            summary = self.cycle_summary(session, year, month)
            period = session.get(ClosedPeriod, (year, month), with_for_update=True)
            if period is not None:
                period.summary = summary.record()
        return summary

    def cycle_summary(self, session: Session, year: int, month: int) -> CloseSummary:
        period = session.get(ClosedPeriod, (year, month))
        if period is None:
            raise ResourceNotFound(
                f"{_month_key(year, month)} is not closed", code="cycle_not_closed"
            )
        invoices = tuple(
            session.scalars(
                select(Invoice)
                .where(
                    Invoice.kind == KIND_MONTHLY,
                    Invoice.cycle_year == year,
                    Invoice.cycle_month == month,
                )
                .order_by(Invoice.number)
            )
        )
        return CloseSummary(year, month, period.closed_at, invoices, _totals(invoices))

    def _finalize(
        self, session: Session, settings: Settings, team_id: uuid.UUID, year: int, month: int
    ) -> Invoice | None:
        """Turn one team's closed cycle into its SPEND entry and its monthly invoice.

        Locks, always in this order: the cycle row (so two closes finalize it once), the team's
        credit account (so no grant, top-up or expiry moves the credit between computing the
        cycle's credit share and posting it), then the invoice counter (gapless numbers).
        """
        cycle = session.scalars(
            select(BillingCycle)
            .where(
                BillingCycle.team_id == team_id,
                BillingCycle.year == year,
                BillingCycle.month == month,
            )
            .with_for_update()
            .execution_options(populate_existing=True)
        ).one_or_none()
        if cycle is None or cycle.closed_at is not None:
            return None
        ledger_service.lock_account(session, team_id)
        now = utc_now()
        statement = self.statement(session, settings, team_id, year, month, now)
        key = _month_key(year, month)
        invoice = Invoice(
            id=new_invoice_id(),
            team_id=team_id,
            number=next_invoice_number(session),
            kind=KIND_MONTHLY,
            dedupe_key=f"monthly:{team_id}:{key}",
            status=PENDING if statement.total > 0 else WILL_NEVER_BE_CHARGED,
            cycle_year=year,
            cycle_month=month,
            topup_id=None,
            subtotal_cents=statement.postpaid,
            tax_cents=statement.vat,
            total_cents=statement.total,
            usage_cents=statement.usage,
            credits_applied_cents=statement.credit_used,
            vat_rate=format_rate(statement.vat_rate),
            charge_attempts=[],
            due_at=now,  # charged right after close
            created_at=now,
        )
        session.add(invoice)
        session.flush()
        session.add_all(
            InvoiceLine(
                invoice_id=invoice.id,
                position=position,
                sku=line.sku,
                price_version_id=line.price_version_id,
                cluster_name=line.cluster_name,
                description=line.description,
                unit_type=line.unit_type,
                unit_price_pico=line.unit_price_pico,
                num_units=line.num_units,
                amount_cents=line.amount_cents,
            )
            for position, line in enumerate(statement.lines)
        )
        if statement.credit_used > 0:
            ledger_service.append(
                session,
                team_id,
                kind="spend",
                credit_cents=-statement.credit_used,
                idempotency_key=f"spend:{key}",
                reference=invoice.number,
                description=f"Usage of {key} paid by credit",
                cycle=(year, month),
                invoice_id=invoice.id,
            )
        cycle.closed_at = now
        cycle.invoice_id = invoice.id
        session.flush()
        return invoice

    # --- charging -------------------------------------------------------------------------------

    def charge_invoice(
        self, sessions: sessionmaker[Session], provider: PaymentProvider, invoice_id: str
    ) -> None:
        """Charge a ``PENDING`` invoice, or retry a ``FAILED`` one (operator action)."""
        with transaction(sessions) as session:
            invoice = session.get(Invoice, invoice_id)
            if invoice is None:
                raise ResourceNotFound(
                    f"invoice {invoice_id!r} not found", code="invoice_not_found"
                )
            if invoice.status not in (PENDING, FAILED):
                raise Conflict(
                    f"invoice {invoice.number} is {invoice.status}; only PENDING or FAILED "
                    "invoices are charged",
                    code="invoice_not_chargeable",
                )
        self._charge(sessions, provider, invoice_id, allowed=(PENDING, FAILED))

    def _charge(
        self,
        sessions: sessionmaker[Session],
        provider: PaymentProvider,
        invoice_id: str,
        *,
        allowed: tuple[str, ...],
    ) -> None:
        """Charge the invoice's total to the team's default method and record the attempt.

        Two-phase: the invoice is already committed; the provider is called outside any
        transaction; the outcome is recorded under the invoice's row lock only if no concurrent
        run recorded this attempt first. The idempotency key is the invoice id for the first
        attempt (ticket 0) and ``<invoice id>:<ticket>`` for each retry, so a repeat of the same
        attempt (a crash, a timeout, two processes) is answered by the provider with the first
        charge and never charges twice.
        """
        plan = self._plan_charge(sessions, provider, invoice_id, allowed)
        if plan is None:
            return
        if plan.method_id is None:
            self._record_attempt(
                sessions,
                plan,
                successful=False,
                charge_id="",
                failure_code="no_default_payment_method",
                failure_message="the team has no default payment method to charge",
            )
            return
        try:
            result: ChargeResult | None = provider.charge(
                plan.customer_ref,
                plan.method_ref,
                plan.amount,
                idempotency_key=plan.idempotency_key,
                description=f"Billfold invoice {plan.number}",
            )
        except ProviderUnavailable as exc:
            # Unknown outcome: keep the invoice as it is; the next run repeats this very attempt
            # with the same key, and the provider answers with what happened.
            log.warning("charge of invoice %s: provider unavailable (%s)", plan.number, exc)
            return
        except ProviderError as exc:
            self._record_attempt(
                sessions,
                plan,
                successful=False,
                charge_id="",
                failure_code=exc.code,
                failure_message=exc.message,
            )
            return
        assert result is not None
        self._record_attempt(
            sessions,
            plan,
            successful=result.succeeded,
            charge_id=result.charge_id,
            failure_code=result.failure_code,
            failure_message=result.failure_message,
        )

    def _plan_charge(
        self,
        sessions: sessionmaker[Session],
        provider: PaymentProvider,
        invoice_id: str,
        allowed: tuple[str, ...],
    ) -> _ChargePlan | None:
        with transaction(sessions) as session:
            invoice = session.get(Invoice, invoice_id)
            if invoice is None or invoice.status not in allowed or invoice.total_cents <= 0:
                return None
            team = team_service.get(session, invoice.team_id)
            method = payment_method_service.default_for(session, team)
            ticket = len(invoice.charge_attempts)
            return _ChargePlan(
                invoice_id=invoice.id,
                number=invoice.number,
                status=invoice.status,
                ticket=ticket,
                amount=Cents(invoice.total_cents),
                idempotency_key=invoice.id if ticket == 0 else f"{invoice.id}:{ticket}",
                customer_ref="" if method is None else method.provider_customer_ref,
                method_id=None if method is None else method.id,
                method_ref="" if method is None else method.provider_ref,
            )

    def _record_attempt(
        self,
        sessions: sessionmaker[Session],
        plan: _ChargePlan,
        *,
        successful: bool,
        charge_id: str,
        failure_code: str,
        failure_message: str,
    ) -> None:
        with transaction(sessions) as session:
            invoice = session.scalars(
                select(Invoice)
                .where(Invoice.id == plan.invoice_id)
                .with_for_update()
                .execution_options(populate_existing=True)
            ).one()
            if invoice.status != plan.status or len(invoice.charge_attempts) != plan.ticket:
                return  # a concurrent run recorded this attempt (same key, same outcome)
            attempt: dict[str, Any] = {
                "ticket": plan.ticket,
                "successful": successful,
                "paymentMethodId": plan.method_id or "",
                "chargeId": charge_id,
                "failureCode": "" if successful else failure_code,
                "failureMessage": "" if successful else failure_message,
                "at": rfc3339(utc_now()),
            }
            invoice.charge_attempts = [*invoice.charge_attempts, attempt]
            invoice.status = PAID if successful else FAILED


invoicing_service = InvoicingService()
