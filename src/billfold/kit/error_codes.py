"""The catalogue of machine codes: every ``code`` Billfold sends, with its status and meaning.

The one list of them. ``docs/errors.md`` is generated from it (``python -m
billfold.kit.error_codes > docs/errors.md``, or ``make docs``), and so are the code lists of the
error responses in ``/openapi.json`` (kit/openapi.py). Raise sites keep their ``code="..."``
literals; tests/kit/test_error_catalogue.py walks the source and fails on a code that is not
catalogued here, or that is raised with another status than the one catalogued (and on an entry
no source sends any more).

A code travels in one or more of these places:

* an **error answer** of the API, with an HTTP ``status`` (the body ``{"code", "error", ...}``);
* a **rejection**: one item of a batch refused alone, in a 200 (usage ingestion and
  cancellation, ``{"index", "eventId", "code", "error"}``) or a line of ``billfold usage ingest``;
* a **failureCode**: a failed charge attempt of an invoice (operator API); a declined top-up's
  402 carries the same codes. A payment provider's codes pass through unchanged (Stripe's:
  https://docs.stripe.com/error-codes); the ones listed are those of the sandbox provider;
* the **CLI** only (``--json`` prints the same body; every other code here can appear there too).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorCode:
    code: str
    meaning: str
    status: int | None = None  # the HTTP status of the error answers that carry it
    rejection: bool = False  # an item of a batch (or a line of an import) rejected alone
    failure: bool = False  # a failed charge's failureCode
    cli: bool = False  # said by the CLI only

    def where(self) -> str:
        """Where the code is sent, as the documented list says it."""
        places = [str(self.status)] if self.status is not None else []
        places += [
            name
            for name, flag in (
                ("rejection", self.rejection),
                ("failureCode", self.failure),
                ("CLI", self.cli),
            )
            if flag
        ]
        return ", ".join(places)


def _catalogue(*entries: ErrorCode) -> dict[str, ErrorCode]:
    codes: dict[str, ErrorCode] = {}
    for entry in entries:
        assert entry.code not in codes, f"{entry.code} catalogued twice"
        assert entry.status is not None or entry.rejection or entry.failure or entry.cli, entry
        codes[entry.code] = entry
    return codes


_E = ErrorCode

CODES: dict[str, ErrorCode] = _catalogue(
    # --- 400: bad input; nothing changed ----------------------------------------------------------
    _E("bad_request", "Bad input (the generic code of a 400).", 400),
    _E(
        "invalid_argument",
        "A field, parameter or header is missing or wrong; `field` names it.",
        400,
    ),
    _E(
        "invalid_json",
        "The body (or an imported line) is not valid JSON.",
        400,
        rejection=True,
    ),
    _E("invalid_uuid", "A path id is not a UUID.", 400),
    _E(
        "invalid_idempotency_key",
        "The `Idempotency-Key` header is not 1 to 255 characters.",
        400,
    ),
    _E("amount_out_of_range", "An amount is outside the range allowed for it.", 400),
    _E("insufficient_credit", "A negative grant takes back more credit than the team has.", 400),
    _E(
        "above_hard_limit",
        "The soft spending limit asked for exceeds the hard spending limit.",
        400,
    ),
    _E(
        "no_default_payment_method",
        "The team has no default payment method to charge.",
        400,
        failure=True,
    ),
    _E("batch_too_large", "More than 10,000 items in one batch.", 400),
    _E("cycle_not_ended", "The billing cycle has not ended yet, so it cannot be closed.", 400),
    _E("unknown_timezone", "Analytics: `timeRange.timezone` is not an IANA time zone.", 400),
    _E("invalid_time", "Analytics: a time is not `YYYY-MM-DD HH:MM:SS`.", 400),
    _E("invalid_time_range", "Analytics: the range ends at or before its start.", 400),
    _E("invalid_time_unit", "Analytics: `timeUnit` is not a `TIME_UNIT_...` name or number.", 400),
    _E("invalid_aggregation", "Analytics: an aggregation is unknown or missing.", 400),
    _E("unsupported_value", "Analytics: the value cannot be aggregated that way.", 400),
    _E("unknown_field", "Analytics: a filter or group names an unknown field.", 400),
    _E("unsupported_field", "Analytics: a value (not a field) used as a filter or group.", 400),
    _E("invalid_filter", "Analytics: a filter does not parse.", 400),
    _E("too_many_conditions", "Analytics: a filter has too many conditions.", 400),
    _E("too_many_buckets", "Analytics: the range holds more than 10,000 buckets.", 400),
    _E(
        "too_many_events",
        "Analytics: a per-event aggregation over more distinct values than it reads.",
        400,
    ),
    _E(
        "outside_raw_retention",
        "The range reaches before the raw events kept (`BILLFOLD_USAGE_RETENTION_DAYS`).",
        400,
    ),
    _E("invalid_range", "`billfold usage rebuild`: the range of days is empty.", 400),
    _E(
        "dims_too_long",
        "Rebuilding a day's rollups: some events' groupable properties are too long together.",
        400,
    ),
    _E("incorrect_number", "Card: the number is incorrect (provider's code).", 400),
    _E(
        "raw_card_number_refused",
        "A card number was sent where the provider (Stripe) takes only a payment method made "
        "client-side (`providerPaymentMethodId`).",
        400,
    ),
    _E(
        "provider_payment_method_unsupported",
        "The sandbox provider takes card numbers, not `providerPaymentMethodId`.",
        400,
    ),
    _E("setup_unsupported", "The sandbox provider has no card form (SetupIntent).", 400),
    _E(
        "invalid_request",
        "The payment provider refused the request (Stripe's code when it gives none).",
        400,
        failure=True,
    ),
    _E("invalid_signature", "`POST /webhooks/stripe`: `Stripe-Signature` missing or wrong.", 400),
    _E("invalid_payload", "`POST /webhooks/stripe`: the event is not a JSON Stripe event.", 400),
    _E("purchase_not_refundable", "Only a paid purchase can be refunded.", 400),
    _E("invalid_refund_amount", "A refund is a positive number of cents.", 400),
    _E("refund_exceeds_purchase", "The refund is more than is left of the purchase.", 400),
    _E("refund_exceeds_credit", "The refund is more than the team's credit left.", 400),
    _E(
        "refund_not_made",
        "A pending refund that reconciliation did not find at the payment provider was marked "
        "failed (a retry with its idempotencyKey answers this); refund with a new key.",
        400,
    ),
    _E("invalid_expiry_month", "Card: the expiry month is invalid (provider's code).", 400),
    _E("expired_card", "Card: expired, or its expiry year invalid (provider's code).", 400),
    # --- 401: credentials -------------------------------------------------------------------------
    _E("unauthenticated", "Credentials are missing or wrong (the generic code of a 401).", 401),
    _E("missing_credentials", "No `Authorization: Bearer ...` header.", 401),
    _E("invalid_api_key", "The management key is unknown or revoked.", 401),
    _E("invalid_operator_token", "The operator token is wrong.", 401),
    _E("invalid_metrics_token", "The `/metrics` token (`BILLFOLD_METRICS_TOKEN`) is wrong.", 401),
    # --- 402: a declined payment ------------------------------------------------------------------
    _E("payment_failed", "The payment provider declined the charge (the generic code).", 402),
    _E("card_declined", "The card was declined (provider's code).", 402, failure=True),
    _E(
        "insufficient_funds",
        "The card has insufficient funds (provider's code).",
        402,
        failure=True,
    ),
    _E("invalid_amount", "The provider refused the amount (provider's code).", 402, failure=True),
    _E(
        "requires_confirmation",
        "A charge created but not confirmed yet: it stays pending (failureCode of a pending "
        "charge).",
        failure=True,
    ),
    _E("canceled", "The provider canceled the charge (a PaymentIntent canceled).", failure=True),
    _E(
        "two_step",
        "A one-step charge asked of Stripe, whose charges are two-step (a bug if ever seen).",
        failure=True,
    ),
    _E(
        "resource_missing",
        "The provider does not know the payment method (provider's code).",
        402,
        failure=True,
    ),
    # --- 403: valid credentials that may not do this ----------------------------------------------
    _E("permission_denied", "Not allowed (the generic code of a 403).", 403),
    _E("missing_acl", "The management key lacks the endpoint's ACL.", 403),
    _E("wrong_team", "The management key belongs to another team (or to none that exists).", 403),
    # --- 404 --------------------------------------------------------------------------------------
    _E(
        "not_found",
        "No such route; in a cancellation, no such event of the team.",
        404,
        rejection=True,
    ),
    _E("team_not_found", "No such team.", 404),
    _E("purchase_not_found", "No such paid purchase (receipt invoice) of the team.", 404),
    _E("webhook_endpoint_not_found", "No such webhook endpoint.", 404),
    _E("webhook_delivery_not_found", "No such message delivered to this webhook endpoint.", 404),
    _E("key_not_found", "No such management key of the team.", 404),
    _E("invoice_not_found", "No such invoice.", 404),
    _E(
        "invoice_document_not_found",
        "No such document of one of the team's invoices (or the invoice has none yet).",
        404,
    ),
    _E("payment_method_not_found", "No such payment method of the team.", 404),
    _E("cycle_not_closed", "The billing cycle has not been closed.", 404),
    # --- 405 --------------------------------------------------------------------------------------
    _E(
        "method_not_allowed",
        "The path does not answer that method; `Allow` lists those it does.",
        405,
    ),
    # --- 409: the state does not allow it ---------------------------------------------------------
    _E("conflict", "The request conflicts with the current state (the generic code).", 409),
    _E(
        "idempotency_key_reused",
        "The idempotency key was used before with another request.",
        409,
    ),
    _E("team_exists", "A team with that id exists.", 409),
    _E("price_version_exists", "The SKU already has a price version from that time.", 409),
    _E(
        "usage_already_rated",
        "A new price version would re-price usage already rated with another.",
        409,
    ),
    _E(
        "cycle_closed",
        "The billing cycle is closed (invoiced): its usage and prices stay as invoiced.",
        409,
        rejection=True,
    ),
    _E("invoice_not_chargeable", "Only PENDING or FAILED invoices are charged.", 409),
    _E(
        "raw_events_incomplete",
        "Raw events of that day were compacted; its usage cannot be recomputed.",
        409,
        rejection=True,
    ),
    # --- 413, 429 ---------------------------------------------------------------------------------
    _E("payload_too_large", "The request body exceeds 32 MiB.", 413),
    _E(
        "rate_limited",
        "Too many requests: a request budget is spent; retry after `Retry-After` seconds.",
        429,
    ),
    # --- 500, 503 ---------------------------------------------------------------------------------
    _E("internal", "A bug: an unexpected failure; the request changed nothing.", 500),
    _E("unavailable", "The database is unreachable or busy; retry.", 503),
    _E("busy", "The team's usage is being rated right now; retry.", 503),
    _E("provider_unavailable", "The payment provider did not answer; retry (same key).", 503),
    _E(
        "misconfigured",
        "A setting is invalid (`BILLFOLD_VAT_RATES`); the operator must fix it.",
        503,
    ),
    # --- rejections: one item of a batch, or a line of an import ----------------------------------
    _E(
        "invalid_event",
        "The item is not a JSON object (with `teamId` and `eventId`).",
        rejection=True,
    ),
    _E("invalid_event_id", "`eventId` is not a string of 1 to 200 characters.", rejection=True),
    _E("invalid_team_id", "`teamId` is not a UUID.", rejection=True),
    _E("invalid_sku", "`sku` is not a string of 1 to 200 characters.", rejection=True),
    _E(
        "invalid_quantity", "`quantity` is not a whole number of units up to 10^12.", rejection=True
    ),
    _E(
        "invalid_timestamp",
        "`timestamp` is not RFC 3339 with a zone, in 1970-9000.",
        rejection=True,
    ),
    _E(
        "invalid_properties",
        "`properties` is not an object of allowed values and sizes.",
        rejection=True,
    ),
    _E(
        "timestamp_in_future",
        "The event is further in the future than the tolerance.",
        rejection=True,
    ),
    _E("timestamp_too_old", "The event is older than the retention window.", rejection=True),
    _E("unknown_team", "No such team.", rejection=True),
    _E("unknown_sku", "No price version of the SKU in force at the event's time.", rejection=True),
    _E("amount_too_large", "The event costs more than $10^11.", rejection=True),
    _E(
        "credit_expired",
        "Cancellation: a credit grant expired after the usage and counted it.",
        rejection=True,
    ),
    _E(
        "line_too_long", "`billfold usage ingest`: the line is longer than allowed.", rejection=True
    ),
    _E("invalid_csv", "`billfold usage ingest`: the CSV row cannot be read.", rejection=True),
    _E("invalid_utf8", "`billfold usage ingest`: the CSV row is not valid UTF-8.", rejection=True),
    # --- the CLI only -----------------------------------------------------------------------------
    _E(
        "provider_misconfigured",
        "`billfold serve`/`payments reconcile`: a required payment provider setting is missing.",
        cli=True,
    ),
    _E(
        "database_misconfigured",
        "`billfold serve`: the database settings cannot work together (a transaction pooler "
        "without `BILLFOLD_LISTEN_DATABASE_URL`, a replica that is not PostgreSQL).",
        cli=True,
    ),
    _E("not_stripe", "`billfold payments reconcile --check` needs the Stripe provider.", cli=True),
    _E("file_unreadable", "`billfold usage ingest`: the file cannot be read.", cli=True),
    _E(
        "admin_token_configured",
        "`billfold operator-token rotate`: `BILLFOLD_ADMIN_TOKEN` is set and is the token.",
        cli=True,
    ),
)


def codes_of_status(status: int) -> list[str]:
    """The codes answered with ``status``, in catalogue order."""
    return [entry.code for entry in CODES.values() if entry.status == status]


def statuses() -> list[int]:
    return sorted({entry.status for entry in CODES.values() if entry.status is not None})


DOC_COMMAND = "python -m billfold.kit.error_codes > docs/errors.md"


def markdown() -> str:
    """``docs/errors.md``: the catalogue as a table."""
    return "\n".join(_markdown_lines()) + "\n"


_INTRO = """\
# Error codes

<!-- Generated from src/billfold/kit/error_codes.py; do not edit by hand.
     Regenerate: {command} (or make docs) -->

Every error answer has the body `{{"code", "error"[, "field", "details"]}}`: `code` is one of the
codes below, and stable; `error` is a sentence for people and may change. *Where* says where a
code is sent:

- a number: the HTTP status of the error answers that carry it (`/openapi.json` lists the codes of
  each status under each operation's response);
- **rejection**: one item of a batch refused alone, in a 200 (usage ingestion and cancellation:
  `{{"index", "eventId", "code", "error"}}`), or a line of `billfold usage ingest`;
- **failureCode**: a failed charge attempt of an invoice (operator API). A payment provider's
  codes pass through unchanged, here and in a declined top-up's 402 (Stripe's:
  <https://docs.stripe.com/error-codes>); those listed are the sandbox provider's;
- **CLI**: said by the CLI only. Under `--json` the CLI prints the API's body, with any code of
  this list.
"""


def _markdown_lines() -> Iterator[str]:
    yield _INTRO.format(command=DOC_COMMAND)
    yield "| code | where | meaning |"
    yield "|---|---|---|"
    ordered = sorted(
        CODES.values(),
        key=lambda e: (e.status or 1000, e.status is None and not e.rejection, e.code),
    )
    for entry in ordered:
        yield f"| `{entry.code}` | {entry.where()} | {entry.meaning} |"


if __name__ == "__main__":
    print(markdown(), end="")
