"""The embedded sandbox payment provider: a card processor in test mode.

Test cards decide the outcome, as with Stripe's test mode:

=====================  ==========================================================
``4242424242424242``   always succeeds
``4000000000000002``   always declined (``card_declined``)
``4000000000009995``   declined for insufficient funds (``insufficient_funds``)
``4000000000000119``   the charge succeeds but its answer is lost: the call raises
                       :class:`ProviderUnavailable` (a timeout) the first time;
                       ``find_charge`` then reports it
any other Luhn-valid   succeeds
=====================  ==========================================================

The sandbox plays an outside system, so it keeps its records in its own tables, written in its own
transactions -- never in the caller's. On PostgreSQL they live in the same database; on SQLite in a
file beside the main one (SQLite has one writer at a time, and the request holds it).
"""

from __future__ import annotations

import contextlib
import secrets

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError, ProgrammingError

from billfold.kit.clock import utc_now
from billfold.kit.db import PoolMode, make_engine, normalize_database_url
from billfold.kit.money import Cents
from billfold.payments.provider import (
    CardInput,
    ChargeResult,
    ChargeStatus,
    ProviderCard,
    ProviderError,
    ProviderUnavailable,
    RefundResult,
)

CARD_ALWAYS_SUCCEEDS = "4242424242424242"
CARD_DECLINED = "4000000000000002"
CARD_INSUFFICIENT_FUNDS = "4000000000009995"
CARD_TIMEOUT = "4000000000000119"

_BEHAVIOUR = {
    CARD_DECLINED: "card_declined",
    CARD_INSUFFICIENT_FUNDS: "insufficient_funds",
    CARD_TIMEOUT: "timeout",
}

metadata = MetaData()

sandbox_cards = Table(
    "sandbox_cards",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("customer_ref", String(64), nullable=False, index=True),
    Column("brand", String(16), nullable=False),
    Column("last4", String(4), nullable=False),
    Column("exp_month", Integer, nullable=False),
    Column("exp_year", Integer, nullable=False),
    Column("behaviour", String(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

sandbox_charges = Table(
    "sandbox_charges",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("idempotency_key", String(200), nullable=False, unique=True),
    Column("card_id", String(40), nullable=False),
    Column("amount", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("failure_code", String(32), nullable=False),
    Column("answer_lost", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

sandbox_refunds = Table(
    "sandbox_refunds",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("idempotency_key", String(200), nullable=False, unique=True),
    Column("charge_id", String(40), nullable=False),
    Column("amount", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


def sandbox_database_url(main_url: str) -> str:
    url = normalize_database_url(main_url)
    if url.startswith("sqlite"):
        if url in ("sqlite://", "sqlite:///:memory:"):
            return url
        return url + "-sandbox"
    return url


def luhn_ok(number: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(number)):
        digit = int(char)
        if index % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def card_brand(number: str) -> str:
    two, four = int(number[:2]), int(number[:4])
    if number.startswith("4"):
        return "visa"
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return "mastercard"
    if two in (34, 37):
        return "amex"
    if number.startswith(("6011", "65")) or 644 <= int(number[:3]) <= 649:
        return "discover"
    if two in (36, 38, 39) or 300 <= int(number[:3]) <= 305:
        return "diners"
    if 3528 <= four <= 3589:
        return "jcb"
    if two == 62:
        return "unionpay"
    return "unknown"


class SandboxProvider:
    name = "sandbox"
    accepts_raw_cards = True
    two_step = False  # charges are one call, made idempotent by the sandbox's own key table

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def for_database(cls, main_url: str, *, pool_mode: PoolMode = "session") -> SandboxProvider:
        return cls(make_engine(sandbox_database_url(main_url), pool_size=5, pool_mode=pool_mode))

    def install(self) -> None:
        """Create the sandbox's own tables (idempotent)."""
        # Another process may create them at the same moment: that is success too.
        with contextlib.suppress(IntegrityError, ProgrammingError):
            metadata.create_all(self.engine, checkfirst=True)

    def create_customer(self, reference: str, email: str) -> str:
        return f"cus_{reference}"

    def setup_card(self, customer_ref: str, card: CardInput) -> ProviderCard:
        number = card.number.replace(" ", "").replace("-", "")
        if not number.isdigit() or not 12 <= len(number) <= 19 or not luhn_ok(number):
            raise ProviderError("the card number is incorrect", "incorrect_number")
        if not 1 <= card.exp_month <= 12:
            raise ProviderError("the expiry month is invalid", "invalid_expiry_month")
        now = utc_now()
        if (card.exp_year, card.exp_month) < (now.year, now.month) or card.exp_year > now.year + 50:
            raise ProviderError(
                "the card has expired or its expiry year is invalid", "expired_card"
            )
        card_id = "card_" + secrets.token_hex(12)
        brand = card_brand(number)
        with self.engine.begin() as conn:
            conn.execute(
                insert(sandbox_cards).values(
                    id=card_id,
                    customer_ref=customer_ref,
                    brand=brand,
                    last4=number[-4:],
                    exp_month=card.exp_month,
                    exp_year=card.exp_year,
                    behaviour=_BEHAVIOUR.get(number, "succeed"),
                    created_at=now,
                )
            )
        return ProviderCard(
            provider_ref=card_id,
            brand=brand,
            last4=number[-4:],
            exp_month=card.exp_month,
            exp_year=card.exp_year,
        )

    def attach_method(self, customer_ref: str, method_ref: str) -> ProviderCard:
        raise ProviderError(
            "the sandbox provider takes card numbers (cardNumber), not provider payment methods",
            "provider_payment_method_unsupported",
        )

    def retrieve_method(self, method_ref: str) -> ProviderCard:
        with self.engine.connect() as conn:
            r = conn.execute(
                select(sandbox_cards).where(sandbox_cards.c.id == method_ref)
            ).one_or_none()
        if r is None:
            raise ProviderError("no such payment method", "resource_missing")
        return ProviderCard(r.id, r.brand, r.last4, r.exp_month, r.exp_year)

    def create_setup(self, customer_ref: str, *, metadata: dict[str, str]) -> str:
        raise ProviderError(
            "the sandbox provider has no card form: add cards by number", "setup_unsupported"
        )

    def create_charge(
        self,
        customer_ref: str,
        payment_method_ref: str,
        amount: Cents,
        *,
        idempotency_key: str,
        description: str,
        metadata: dict[str, str],
    ) -> str:
        raise NotImplementedError("the sandbox charges in one step (charge)")

    def confirm_charge(self, charge_id: str) -> ChargeResult:
        raise NotImplementedError("the sandbox charges in one step (charge)")

    def retrieve_charge(self, charge_id: str) -> ChargeResult:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(sandbox_charges).where(sandbox_charges.c.id == charge_id)
            ).one_or_none()
        if row is None:
            raise ProviderError("no such charge", "resource_missing")
        return self._result(row._asdict())

    def list_cards(self, customer_ref: str) -> list[ProviderCard]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(sandbox_cards).where(sandbox_cards.c.customer_ref == customer_ref)
            ).all()
        return [ProviderCard(r.id, r.brand, r.last4, r.exp_month, r.exp_year) for r in rows]

    def charge(
        self,
        customer_ref: str,
        payment_method_ref: str,
        amount: Cents,
        *,
        idempotency_key: str,
        description: str,
    ) -> ChargeResult:
        if amount <= 0:
            raise ProviderError("amount must be positive", "invalid_amount")
        existing = self.find_charge(idempotency_key)
        if existing is not None:
            return existing
        with self.engine.connect() as conn:
            card = conn.execute(
                select(sandbox_cards).where(sandbox_cards.c.id == payment_method_ref)
            ).one_or_none()
        if card is None:
            raise ProviderError("no such payment method", "resource_missing")
        behaviour = card.behaviour
        succeeded = behaviour in ("succeed", "timeout")
        row = {
            "id": "ch_" + secrets.token_hex(12),
            "idempotency_key": idempotency_key,
            "card_id": card.id,
            "amount": int(amount),
            "status": ChargeStatus.SUCCEEDED if succeeded else ChargeStatus.DECLINED,
            "failure_code": "" if succeeded else behaviour,
            "answer_lost": 1 if behaviour == "timeout" else 0,
            "created_at": utc_now(),
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(sandbox_charges).values(**row))
        except IntegrityError:
            # A concurrent call with the same idempotency key won; answer with its result.
            found = self.find_charge(idempotency_key)
            assert found is not None
            return found
        if behaviour == "timeout":
            raise ProviderUnavailable("the sandbox provider timed out (test card ending 0119)")
        return self._result(row)

    def find_charge(self, idempotency_key: str) -> ChargeResult | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(sandbox_charges).where(sandbox_charges.c.idempotency_key == idempotency_key)
            ).one_or_none()
        return None if row is None else self._result(row._asdict())

    def find_refund(self, charge_id: str, idempotency_key: str) -> RefundResult | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(sandbox_refunds).where(
                    sandbox_refunds.c.idempotency_key == idempotency_key,
                    sandbox_refunds.c.charge_id == charge_id,
                )
            ).one_or_none()
        return None if row is None else RefundResult(row.id, row.charge_id, Cents(row.amount))

    def refund(
        self,
        charge_id: str,
        amount: Cents,
        *,
        idempotency_key: str,
        metadata: dict[str, str] | None = None,
    ) -> RefundResult:
        with self.engine.begin() as conn:
            existing = conn.execute(
                select(sandbox_refunds).where(sandbox_refunds.c.idempotency_key == idempotency_key)
            ).one_or_none()
            if existing is not None:
                return RefundResult(existing.id, existing.charge_id, Cents(existing.amount))
            charge = conn.execute(
                select(sandbox_charges).where(sandbox_charges.c.id == charge_id)
            ).one_or_none()
            if charge is None or charge.status != ChargeStatus.SUCCEEDED:
                raise ProviderError("no such successful charge", "resource_missing")
            refunded = sum(
                r.amount
                for r in conn.execute(
                    select(sandbox_refunds.c.amount).where(sandbox_refunds.c.charge_id == charge_id)
                )
            )
            if amount <= 0 or refunded + amount > charge.amount:
                raise ProviderError("refund exceeds the charge", "amount_too_large")
            refund_id = "re_" + secrets.token_hex(12)
            conn.execute(
                insert(sandbox_refunds).values(
                    id=refund_id,
                    idempotency_key=idempotency_key,
                    charge_id=charge_id,
                    amount=int(amount),
                    created_at=utc_now(),
                )
            )
        return RefundResult(refund_id, charge_id, amount)

    def total_charged(self) -> Cents:
        """Sum of successful charges minus refunds (for reconciliation and tests)."""
        with self.engine.connect() as conn:
            charged = sum(
                r.amount
                for r in conn.execute(
                    select(sandbox_charges.c.amount).where(
                        sandbox_charges.c.status == ChargeStatus.SUCCEEDED
                    )
                )
            )
            refunded = sum(r.amount for r in conn.execute(select(sandbox_refunds.c.amount)))
        return Cents(charged - refunded)

    @staticmethod
    def _result(row: dict[str, object]) -> ChargeResult:
        return ChargeResult(
            status=ChargeStatus(str(row["status"])),
            charge_id=str(row["id"]),
            amount=Cents(int(str(row["amount"]))),
            failure_code=str(row["failure_code"]),
            failure_message=(
                ""
                if row["status"] == ChargeStatus.SUCCEEDED
                else f"the card was declined ({row['failure_code']})"
            ),
        )
