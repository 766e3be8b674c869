"""Auto top-up: the settings, the decision to enqueue one, and what its outcome changes.

An auto top-up is a ``topups`` row of origin ``AUTO_PURCHASE``, two-phase like every top-up
(topups/service.py):

1. **enqueue**: :meth:`AutoTopupService.on_live_credit` runs in the transaction of every write
   that lowers a team's live credit (an ingestion batch included), told the credit after the
   write. Below the threshold, with auto top-up on and nothing pending, it inserts one
   ``TO_CHARGE`` auto top-up -- committed with the write, or rolled back with it;
2. **charge**: a serving process's charger (charger.py) charges it through the provider, the
   top-up's id as the idempotency key, outside any transaction;
3. **settle**: topups/service.py books ``AUTO_PURCHASE`` SUCCEEDED (ledger entry, receipt
   invoice, ``auto_topup.succeeded``) or FAILED_TO_CHARGE (``auto_topup.failed``), and calls
   :meth:`AutoTopupService.auto_topup_settled` in that transaction: a success clears the
   failures in a row, a failure counts one, and the third in a row turns auto top-up off
   (``auto_topup.disabled``).

The rules, and why they hold under any concurrency:

* **one pending per team**: the decision locks the team's settings row (``FOR UPDATE``;
  SQLite's one write lock serializes writers anyway) and looks for a pending one first; the
  partial unique index ``uq_topups_one_pending_auto`` is the last line;
* **the monthly cap**: under the same lock, the calendar month's (UTC, by enqueue time)
  succeeded *and pending* auto top-ups are summed; the new one must fit in what is left. Only
  an enqueue raises that sum, and enqueues are serialized by the lock, so succeeded ones never
  exceed ``monthlyLimitCents`` (a failure frees its amount). When the next amount does not fit,
  **the remainder is charged** (the cap is what the team agreed to spend; stopping short of it
  would leave the team out of credit for no reason), unless the remainder is below the smallest
  top-up (``BILLFOLD_TOPUP_MIN_CENTS``): then nothing is enqueued until the next month;
* **amount or target**: ``amountCents`` is charged as is; ``targetCents`` charges
  ``target - live credit`` at the time of the write. Either is kept within
  ``BILLFOLD_TOPUP_MIN_CENTS``..``BILLFOLD_TOPUP_MAX_CENTS`` (then within the cap).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billfold.autotopup.models import AutoTopupSettings
from billfold.config import Settings, get_settings
from billfold.cycles.periods import month_end, month_of, month_start
from billfold.figures.watch import CreditChange
from billfold.kit.clock import utc_now
from billfold.kit.db import SETTINGS_INFO
from billfold.kit.errors import BadRequest, InvalidField
from billfold.kit.money import Cents
from billfold.ledger.schemas import AUTO_PURCHASE, SUCCEEDED, TO_CHARGE
from billfold.ledger.service import ledger_service
from billfold.outbox.events import AUTO_TOPUP_DISABLED
from billfold.outbox.writer import enqueue
from billfold.payments.service import payment_method_service
from billfold.spend.crossings import lock_current_cycles
from billfold.teams.service import team_service
from billfold.topups.models import Topup

log = logging.getLogger("billfold.autotopup")

# Failures in a row (FAILED_TO_CHARGE auto top-ups with no success between) that turn it off.
MAX_CONSECUTIVE_FAILURES = 3
DISABLED_AFTER_FAILURES = "consecutive_failures"


@dataclass(frozen=True)
class AutoTopupConfig:
    """What the operator sets (``PUT .../auto-top-up``), already typed by the wire model."""

    enabled: bool
    threshold: Cents | None
    amount: Cents | None
    target: Cents | None
    monthly_limit: Cents | None


@dataclass(frozen=True)
class AutoTopupView:
    """The settings and where the team stands (``GET .../auto-top-up``)."""

    team_id: uuid.UUID
    enabled: bool
    threshold: Cents | None
    amount: Cents | None
    target: Cents | None
    monthly_limit: Cents | None
    consecutive_failures: int
    disabled_reason: str
    month_to_date: Cents  # succeeded + pending auto top-ups of this calendar month
    pending: Topup | None


def _settings(session: Session) -> Settings:
    """The app's or the CLI's settings, carried by the session (the top-up bounds)."""
    settings: Settings | None = session.info.get(SETTINGS_INFO)
    return settings if settings is not None else get_settings()


class AutoTopupService:
    # --- the operator's settings ----------------------------------------------------------

    def get(self, session: Session, team_id: uuid.UUID) -> AutoTopupView:
        team_service.get(session, team_id)
        return self._view(session, team_id, session.get(AutoTopupSettings, team_id))

    def set(self, session: Session, team_id: uuid.UUID, config: AutoTopupConfig) -> AutoTopupView:
        """Replace the team's settings. On: every figure, one of amount and target, and a
        default payment method are needed. Turning it on (again) clears the failures in a row."""
        team = team_service.get(session, team_id, for_update=True)
        self._validate(_settings(session), config)
        if config.enabled and payment_method_service.default_for(session, team) is None:
            raise BadRequest(
                "auto top-up needs a default payment method to charge",
                code="no_default_payment_method",
            )
        row = self._lock(session, team_id)
        if row is None:
            row = AutoTopupSettings(team_id=team_id, consecutive_failures=0, disabled_reason="")
            session.add(row)
        if config.enabled:
            row.consecutive_failures = 0
            row.disabled_reason = ""
        row.enabled = config.enabled
        row.threshold_cents = config.threshold
        row.amount_cents = config.amount
        row.target_cents = config.target
        row.monthly_limit_cents = config.monthly_limit
        row.updated_at = utc_now()
        session.flush()
        return self._view(session, team_id, row)

    @staticmethod
    def _validate(settings: Settings, config: AutoTopupConfig) -> None:
        lowest, highest = settings.topup_min_cents, settings.topup_max_cents
        for field, value in (
            ("thresholdCents", config.threshold),
            ("amountCents", config.amount),
            ("targetCents", config.target),
            ("monthlyLimitCents", config.monthly_limit),
        ):
            if value is not None and value < 0:
                raise InvalidField(field, "must not be negative")
        if config.amount is not None and config.target is not None:
            raise InvalidField("targetCents", "give amountCents or targetCents, not both")
        if config.amount is not None and not lowest <= config.amount <= highest:
            raise BadRequest(
                f"amountCents: an auto top-up is between {lowest} and {highest} cents",
                code="amount_out_of_range",
                field="amountCents",
            )
        if not config.enabled:
            return  # off: the figures are kept as given, none is needed
        if config.threshold is None:
            raise InvalidField("thresholdCents", "is required when enabled")
        if config.amount is None and config.target is None:
            raise InvalidField("amountCents", "amountCents or targetCents is required")
        if config.monthly_limit is None:
            raise InvalidField("monthlyLimitCents", "is required when enabled")
        if config.target is not None and config.target <= config.threshold:
            raise InvalidField("targetCents", "must be above thresholdCents")
        smallest = config.amount if config.amount is not None else lowest
        if config.monthly_limit < smallest:
            raise InvalidField(
                "monthlyLimitCents",
                f"must allow at least one auto top-up ({smallest} cents)",
            )

    # --- the decision, in the transaction of the write ------------------------------------

    def credit_lowered(self, session: Session, changes: Sequence[CreditChange]) -> None:
        """``figures.watch.CreditListener``: before the commit of every write that lowered live
        credit (an ingestion batch: once per batch), for each team whose credit fell."""
        for change in changes:
            self.on_live_credit(session, change.team_id, change.after)

    def on_live_credit(self, session: Session, team_id: uuid.UUID, live_credit: Cents) -> None:
        """Told, in the transaction of a write that lowered the team's live credit, the credit
        after it: enqueue one auto top-up when it is below the threshold and none is pending.
        Costs a team without auto top-up one primary-key read.

        Every lowering write that leaves the credit below the threshold while none is pending
        enqueues one (the crossing itself, and the writes after a failure or after a top-up too
        small to lift the credit above the threshold), until the cap, or three failures."""
        row = session.get(AutoTopupSettings, team_id)
        if row is None or not row.enabled or not self._below(row, live_credit):
            return
        row = self._lock(session, team_id)  # serializes the team's decisions (the cap, one pending)
        if row is None or not row.enabled:
            return
        now = utc_now()
        # Re-read under the lock: a write of another transaction that committed meanwhile (and
        # its auto top-up) is seen now.
        live_credit = ledger_service.credit_position(session, team_id, now).credit_left
        if not self._below(row, live_credit) or self._pending(session, team_id) is not None:
            return
        settings = _settings(session)
        amount = self._next_amount(settings, row, live_credit)
        if amount is None:
            return
        left = Cents((row.monthly_limit_cents or 0) - self._month_to_date(session, team_id, now))
        amount = min(amount, left)
        if amount < settings.topup_min_cents:
            log.info("auto top-up of team %s: the monthly limit is reached", team_id)
            return
        method = payment_method_service.default_for(session, team_service.get(session, team_id))
        if method is None:
            log.warning("auto top-up of team %s: no default payment method, none enqueued", team_id)
            return
        session.add(
            Topup(
                id=uuid.uuid4(),
                team_id=team_id,
                origin=AUTO_PURCHASE,
                amount_cents=amount,
                status=TO_CHARGE,
                idempotency_key=None,
                request_fingerprint="",
                payment_method_id=method.id,
                provider=method.provider,
                provider_charge_id="",
                failure_code="",
                failure_message="",
                ledger_entry_id=None,
                invoice_id=None,
                created_at=now,
                settled_at=None,
                lease_until=None,
            )
        )
        session.flush()

    @staticmethod
    def _below(row: AutoTopupSettings, live_credit: Cents) -> bool:
        return row.threshold_cents is not None and live_credit < row.threshold_cents

    @staticmethod
    def _next_amount(
        settings: Settings, row: AutoTopupSettings, live_credit: Cents
    ) -> Cents | None:
        """The amount of the next auto top-up before the cap (None: none is needed)."""
        if row.amount_cents is not None:
            wanted = row.amount_cents
        elif row.target_cents is not None:
            if live_credit >= row.target_cents:
                return None
            wanted = Cents(row.target_cents - live_credit)
        else:
            return None
        bounded = max(settings.topup_min_cents, min(wanted, settings.topup_max_cents))
        return Cents(bounded)

    # --- what an outcome changes (topups.service.AutoTopupOutcomes) -----------------------

    def auto_topup_settled(self, session: Session, topup: Topup) -> None:
        """In the transaction that settled ``topup``: count the failures in a row, and turn
        auto top-up off at the third (``auto_topup.disabled``). Locks in the order an ingestion
        batch takes them (its cycle row, then, through its credit listener, this settings row):
        the team's current cycle row first, else the two deadlock."""
        now = utc_now()
        lock_current_cycles(session, [topup.team_id], (now.year, now.month))
        row = self._lock(session, topup.team_id)
        if row is None:
            return
        if topup.status == SUCCEEDED:
            row.consecutive_failures = 0
            return
        row.consecutive_failures += 1
        if row.enabled and row.consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            row.enabled = False
            row.disabled_reason = DISABLED_AFTER_FAILURES
            row.updated_at = utc_now()
            enqueue(
                session,
                AUTO_TOPUP_DISABLED,
                topup.team_id,
                {
                    "reason": DISABLED_AFTER_FAILURES,
                    "consecutiveFailures": row.consecutive_failures,
                    "lastTopupId": str(topup.id),
                    "lastFailureCode": topup.failure_code,
                },
            )
        session.flush()

    # --- reads ----------------------------------------------------------------------------

    @staticmethod
    def _lock(session: Session, team_id: uuid.UUID) -> AutoTopupSettings | None:
        return session.scalars(
            select(AutoTopupSettings)
            .where(AutoTopupSettings.team_id == team_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).one_or_none()

    @staticmethod
    def _pending(session: Session, team_id: uuid.UUID) -> Topup | None:
        return session.scalars(
            select(Topup).where(
                Topup.team_id == team_id,
                Topup.origin == AUTO_PURCHASE,
                Topup.status == TO_CHARGE,
            )
        ).first()

    @staticmethod
    def _month_to_date(session: Session, team_id: uuid.UUID, now: datetime) -> Cents:
        year, month = month_of(now)
        total = session.scalar(
            select(func.coalesce(func.sum(Topup.amount_cents), 0)).where(
                Topup.team_id == team_id,
                Topup.origin == AUTO_PURCHASE,
                Topup.status.in_((SUCCEEDED, TO_CHARGE)),
                Topup.created_at >= month_start(year, month),
                Topup.created_at < month_end(year, month),
            )
        )
        return Cents(int(total or 0))

    def _view(
        self, session: Session, team_id: uuid.UUID, row: AutoTopupSettings | None
    ) -> AutoTopupView:
        month_to_date = self._month_to_date(session, team_id, utc_now())
        pending = self._pending(session, team_id)
        if row is None:
            return AutoTopupView(
                team_id, False, None, None, None, None, 0, "", month_to_date, pending
            )
        return AutoTopupView(
            team_id=team_id,
            enabled=row.enabled,
            threshold=row.threshold_cents,
            amount=row.amount_cents,
            target=row.target_cents,
            monthly_limit=row.monthly_limit_cents,
            consecutive_failures=row.consecutive_failures,
            disabled_reason=row.disabled_reason,
            month_to_date=month_to_date,
            pending=pending,
        )


auto_topup_service = AutoTopupService()
