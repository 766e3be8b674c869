"""Imports every domain's models so that ``Base.metadata`` knows every table."""

from billfold.autotopup.models import AutoTopupSettings
from billfold.console.models import ConsoleLink, ConsoleSession
from billfold.cycles.models import BillingCycle, ClosedPeriod, CycleLine
from billfold.documents.models import InvoiceDocument
from billfold.invoicing.models import Invoice, InvoiceCounter, InvoiceLine
from billfold.kit.audit import AuditEvent
from billfold.ledger.models import CreditAccount, LedgerEntry
from billfold.metering.models import UsageEvent, UsageRollup
from billfold.notifications.models import (
    EmailDelivery,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from billfold.outbox.models import OutboxMessage
from billfold.payments.models import PaymentMethod, StripeEvent
from billfold.pricing.models import PriceVersion
from billfold.spend.models import TeamAlertState
from billfold.teams.models import (
    BillingInfo,
    ManagementKey,
    OperatorToken,
    Team,
    TeamAlertSettings,
)
from billfold.topups.models import Refund, Topup

__all__ = [
    "AuditEvent",
    "AutoTopupSettings",
    "BillingCycle",
    "BillingInfo",
    "ClosedPeriod",
    "ConsoleLink",
    "ConsoleSession",
    "CreditAccount",
    "CycleLine",
    "EmailDelivery",
    "Invoice",
    "InvoiceCounter",
    "InvoiceDocument",
    "InvoiceLine",
    "LedgerEntry",
    "ManagementKey",
    "OperatorToken",
    "OutboxMessage",
    "PaymentMethod",
    "PriceVersion",
    "Refund",
    "StripeEvent",
    "Team",
    "TeamAlertSettings",
    "TeamAlertState",
    "Topup",
    "UsageEvent",
    "UsageRollup",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
]
