"""``billfold invoices backfill-documents`` (the ``invoices`` group is invoicing's)."""

from __future__ import annotations

from billfold.config import get_settings
from billfold.documents.service import document_service
from billfold.invoicing.cli import invoices_app
from billfold.kit.cli import JsonOpt, console, print_json
from billfold.kit.db import make_engine, make_sessionmaker


@invoices_app.command("backfill-documents")
def backfill_documents(as_json: JsonOpt = False) -> None:
    """Render the PDF (and a monthly invoice's CSV) of finalized invoices that have none.

    Idempotent and resumable: each invoice commits on its own; a second run renders nothing.
    The buyer shown is the team's billing info now (the one at finalization was not kept).
    """
    settings = get_settings()
    engine = make_engine(settings.database_url, pool_size=2, pool_mode=settings.database_pool_mode)
    try:
        rendered = document_service.backfill(make_sessionmaker(engine))
    finally:
        engine.dispose()
    if as_json:
        print_json({"invoices": rendered})
        return
    console.print(f"rendered documents of {rendered} invoice(s)")
