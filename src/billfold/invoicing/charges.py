"""Charging a finalized invoice: one attempt at a time, outside any transaction, with an
idempotency key per attempt (two-step with Stripe: the PaymentIntent's id committed
before it is confirmed), the outcome recorded under the invoice's row lock.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    select,
)
from sqlalchemy.orm import Session, sessionmaker

from billfold.invoicing.events import invoice_event
from billfold.invoicing.models import FAILED, PAID, Invoice
from billfold.kit.clock import rfc3339, utc_now
from billfold.kit.db import (
    transaction,
)
from billfold.kit.money import Cents
from billfold.outbox.events import (
    INVOICE_PAID,
    INVOICE_PAYMENT_FAILED,
)
from billfold.outbox.writer import enqueue
from billfold.payments.faults import crash_point
from billfold.payments.provider import (
    ChargeResult,
    PaymentProvider,
    ProviderError,
    ProviderUnavailable,
)
from billfold.payments.service import payment_method_service
from billfold.teams.service import team_service

log = logging.getLogger("billfold.invoicing")


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
    team_id: uuid.UUID
    provider_charge_id: str | None  # a two-step provider's charge of this attempt, once created


class InvoiceCharges:
    def charge(
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
            if provider.two_step:
                result = self._charge_two_step(sessions, provider, plan)
                if result is None:
                    return  # a concurrent run recorded this attempt
            else:
                result = provider.charge(
                    plan.customer_ref,
                    plan.method_ref,
                    plan.amount,
                    idempotency_key=plan.idempotency_key,
                    description=f"Billfold invoice {plan.number}",
                )
        except ProviderUnavailable as exc:
            # Unknown outcome: keep the invoice as it is; the next run repeats this very attempt
            # (the same key, or the stored PaymentIntent), and the provider answers with what
            # happened.
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
        if result.pending:
            return  # requires_action / processing: the webhook or reconciliation settles it
        self._record_attempt(
            sessions,
            plan,
            successful=result.succeeded,
            charge_id=result.charge_id,
            failure_code=result.failure_code,
            failure_message=result.failure_message,
        )

    def _charge_two_step(
        self, sessions: sessionmaker[Session], provider: PaymentProvider, plan: _ChargePlan
    ) -> ChargeResult | None:
        """With a two-step provider (Stripe): create the attempt's PaymentIntent, commit its id on
        the invoice, then confirm it. A rerun (a crash, a timeout, two processes) finds the stored
        id and never creates a second. None: a concurrent run recorded this attempt first."""
        charge_id = plan.provider_charge_id
        if not charge_id:
            created = provider.create_charge(
                plan.customer_ref,
                plan.method_ref,
                plan.amount,
                idempotency_key=plan.idempotency_key,
                description=f"Billfold invoice {plan.number}",
                metadata={
                    "billfold_team": str(plan.team_id),
                    "billfold_invoice": plan.invoice_id,
                },
            )
            charge_id = self._store_charge_id(sessions, plan, created)
            if charge_id is None:
                return None
            crash_point("invoice_after_create")
        result = provider.confirm_charge(charge_id)
        crash_point("invoice_after_confirm")
        return result

    @staticmethod
    def _store_charge_id(
        sessions: sessionmaker[Session], plan: _ChargePlan, charge_id: str
    ) -> str | None:
        """Commit the attempt's charge id (a concurrent run's stored first wins); None when the
        attempt was recorded meanwhile."""
        with transaction(sessions) as session:
            invoice = session.scalars(
                select(Invoice)
                .where(Invoice.id == plan.invoice_id)
                .with_for_update()
                .execution_options(populate_existing=True)
            ).one()
            if invoice.status != plan.status or len(invoice.charge_attempts) != plan.ticket:
                return None
            if not invoice.provider_charge_id:
                invoice.provider_charge_id = charge_id
            return invoice.provider_charge_id

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
                team_id=invoice.team_id,
                provider_charge_id=invoice.provider_charge_id,
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
            if not successful:
                invoice.provider_charge_id = None  # a retry is a new attempt, a new charge
            session.flush()
            event = INVOICE_PAID if successful else INVOICE_PAYMENT_FAILED
            enqueue(session, event, invoice.team_id, invoice_event(session, invoice.id))


invoice_charges = InvoiceCharges()
