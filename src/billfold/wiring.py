"""The one place lower domains are handed what upper ones know.

The domains form a one-way stack (docs/architecture.md): a domain never imports one above it. Two
rules need a fact from above, and get it through a protocol of their own, implemented above and
handed in here, once, when the app or the CLI is imported:

* the price book refuses a version that would re-price rated usage: metering knows where usage
  is rated (``pricing.service.RatedUsage``);
* a usage cancellation refuses usage a booked credit expiry counted: the ledger knows the expiries
  (``metering.cancellation.BookedExpiries``).

Every write that moves a team's figures (spend, live credit, limits) notes it on the figure watch
(``figures.watch``); before its transaction commits, the crossing detection of ``spend/`` fires
the crossing events, and the listeners of lowered credit hear of it: auto top-up
(``autotopup.service.AutoTopupService.credit_lowered``) enqueues a top-up in that transaction.

And two steps need work done above them: finalizing an invoice renders and stores its documents
in the same transaction: the documents package renders them
(``invoicing.service.InvoiceDocuments``); settling an auto top-up counts the team's failures in a
row and may turn auto top-up off (``topups.service.AutoTopupOutcomes``, implemented by
``autotopup.service.AutoTopupService``).

Invoice documents download with a console session as with a key: the console knows its sessions
(``documents.endpoints.ConsoleSessions``).
"""

from billfold.autotopup.service import auto_topup_service
from billfold.console.auth import cookie_sessions
from billfold.documents import endpoints as documents_endpoints
from billfold.documents.service import document_service
from billfold.figures.watch import watch
from billfold.invoicing.service import invoicing_service
from billfold.ledger.service import ledger_service
from billfold.metering.cancellation import cancellation_service
from billfold.metering.rated import rated_usage
from billfold.pricing.service import pricing_service
from billfold.spend.crossings import crossing_detector
from billfold.topups.service import topup_service

pricing_service.use(rated_usage)
cancellation_service.use(ledger_service)
invoicing_service.use(document_service)
watch.use(crossing_detector)
watch.listen(auto_topup_service)
topup_service.use(auto_topup_service)
documents_endpoints.readers.use(cookie_sessions)
