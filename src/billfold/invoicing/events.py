"""The ``data`` of the invoicing events (``invoice.*``, ``billing_cycle.closed``), written to the
outbox by the service in the transaction that finalizes, charges or closes.

``invoicing/schemas.py`` imports the service, so the service cannot import it back at load time:
the shapes are imported when an event is made (after both modules are loaded).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from billfold.kit.clock import rfc3339

if TYPE_CHECKING:
    from billfold.invoicing.service import CloseSummary


def invoice_event(session: Session, invoice_id: str) -> dict[str, Any]:
    """``{"invoice": <the invoice as the Billing Management API lists it>}``."""
    from billfold.invoicing.schemas import invoice_out
    from billfold.invoicing.service import invoicing_service

    item = invoicing_service.get_invoice(session, invoice_id)
    return {"invoice": invoice_out(item).model_dump(mode="json", by_alias=True, exclude_none=True)}


def cycle_closed_event(summary: CloseSummary) -> dict[str, Any]:
    """The month, when it closed and its totals (cents as strings); no per-team list (a month
    may have many thousands of invoices: each has its own ``invoice.finalized``)."""
    from billfold.invoicing.schemas import close_summary_out

    out = close_summary_out(summary).model_dump(mode="json", by_alias=True, exclude_none=True)
    return {
        "billingCycle": {"year": summary.year, "month": summary.month},
        "closeTime": rfc3339(summary.closed_at),
        "totals": out["totals"],
    }
