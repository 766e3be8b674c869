"""The event types (operator-api.md, "Notifications"): what a webhook endpoint subscribes to."""

from __future__ import annotations

SPEND_THRESHOLD_REACHED = "spend.threshold_reached"
SPEND_BLOCKED = "spend.blocked"
SPEND_UNBLOCKED = "spend.unblocked"
CREDIT_LOW = "credit.low"
CREDIT_DEPLETED = "credit.depleted"
TOPUP_SUCCEEDED = "topup.succeeded"
TOPUP_FAILED = "topup.failed"
AUTO_TOPUP_SUCCEEDED = "auto_topup.succeeded"
AUTO_TOPUP_FAILED = "auto_topup.failed"
AUTO_TOPUP_DISABLED = "auto_topup.disabled"
INVOICE_FINALIZED = "invoice.finalized"
INVOICE_PAID = "invoice.paid"
INVOICE_PAYMENT_FAILED = "invoice.payment_failed"
BILLING_CYCLE_CLOSED = "billing_cycle.closed"
# Billfold's own: a delivery gave up after its last retry (never sent to that endpoint itself).
WEBHOOK_FAILED = "webhook.failed"

EVENT_TYPES = (
    SPEND_THRESHOLD_REACHED,
    SPEND_BLOCKED,
    SPEND_UNBLOCKED,
    CREDIT_LOW,
    CREDIT_DEPLETED,
    TOPUP_SUCCEEDED,
    TOPUP_FAILED,
    AUTO_TOPUP_SUCCEEDED,
    AUTO_TOPUP_FAILED,
    AUTO_TOPUP_DISABLED,
    INVOICE_FINALIZED,
    INVOICE_PAID,
    INVOICE_PAYMENT_FAILED,
    BILLING_CYCLE_CLOSED,
    WEBHOOK_FAILED,
)
