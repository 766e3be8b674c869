"""Settings, all from ``BILLFOLD_*`` environment variables (documented in the README)."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from billfold.kit.db import DEFAULT_DATABASE_URL


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BILLFOLD_", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    database_pool_mode: Literal["session", "transaction"] = "session"
    """``transaction`` when ``database_url`` goes through a pooler in transaction mode
    (PgBouncer's ``pool_mode = transaction``): no server-side prepared statements, no session
    settings (docs/deployment.md). Needs ``listen_database_url`` for the spend cache."""
    listen_database_url: str | None = None
    """PostgreSQL: the session connection each process LISTENs on for the spend cache
    (spend/gateway.py): the server itself or a session-mode pool. Default: ``database_url``."""
    read_database_url: str | None = None
    """PostgreSQL: a read replica for usage analytics (never for anything that decides money:
    spend checks, previews, balances, invoices, the ledger). Default: none, all reads go to
    ``database_url``."""
    admin_token: str | None = None
    key_prefix: str = "xai-"
    default_hard_limit_cents: int = Field(default=100_000, ge=0)
    topup_min_cents: int = Field(default=500, ge=1)
    topup_max_cents: int = Field(default=1_000_000, ge=1)
    auto_close_cycles: bool = False
    close_grace_hours: int = Field(default=24, ge=0)
    usage_retention_days: int = Field(default=400, ge=1)
    auto_compact_events: bool = False
    """Delete raw events past the retention window hourly (as ``billfold usage compact``)."""
    vat_rates: str = ""
    """VAT by billing country, e.g. ``"DE=19,FR=20,GB=20"`` (percent, decimals allowed)."""
    groupable_properties: str = "apiKeyId,model,clusterName"
    """Event properties kept in rollups, so analytics can group and filter by them."""
    max_batch_events: int = Field(default=10_000, ge=1)
    ingest_concurrency: int = Field(default=2, ge=1)
    """Ingestion batches one process works on at once (bounds its memory)."""
    future_tolerance_minutes: int = Field(default=60, ge=0)
    db_pool_size: int = Field(default=10, ge=1)
    switch_interval_ms: float = Field(default=1.0, gt=0, le=100)
    """How long a thread may hold the GIL while another waits (Python's default is 5 ms)."""
    spend_cache: bool = True
    spend_cache_size: int = Field(default=50_000, ge=1)
    """PostgreSQL: each process keeps spend-check answers in memory, dropped by notifications."""
    log_level: str = "info"
    log_format: Literal["text", "json"] = "text"
    """``json``: one JSON object a line (kit/logs.py), with an access line per request."""
    metrics: bool = True
    """``GET /metrics`` in Prometheus's text format and the counting behind it (kit/metrics.py);
    ``false``: no route and nothing counted on the request paths."""
    metrics_token: str | None = None
    """When set, ``/metrics`` asks for it as ``Authorization: Bearer <token>`` (else it is open)."""
    rate_limit: bool = True
    """Enforce the request budgets below (kit/ratelimit.py); ``false`` turns them all off."""
    rate_limit_key_per_minute: int = Field(default=600, ge=1)
    """Requests per management key (burst up to the same), per process."""
    rate_limit_operator_per_minute: int = Field(default=6_000, ge=1)
    """Requests per operator token on the operator API, per process."""
    rate_limit_spend_check_per_minute: int = Field(default=1_200_000, ge=1)
    """Spend checks per operator token, per process (their own budget)."""
    rate_limit_ingest_per_minute: int = Field(default=60_000, ge=1)
    """Usage-ingestion requests per operator token, per process (their own budget)."""
    rate_limit_bad_auth_per_minute: int = Field(default=30, ge=1)
    """Failed authentications per client address, per process."""
    payment_provider: Literal["sandbox", "stripe"] = "sandbox"
    """Who charges cards: the embedded ``sandbox`` (default) or ``stripe``."""
    stripe_secret_key: str | None = None
    """With ``stripe``: the secret key (``sk_test_...`` / ``sk_live_...``); required."""
    stripe_publishable_key: str | None = None
    """With ``stripe``: the publishable key handed to the console's card form."""
    stripe_webhook_secret: str | None = None
    """With ``stripe``: the signing secret of the ``/webhooks/stripe`` endpoint; required."""
    stripe_api_base: str | None = None
    """With ``stripe``: Stripe's API address (default Stripe's own; tests use a local fake)."""
    stripe_pending_after_seconds: int = Field(default=300, ge=0)
    """Reconciliation settles charges pending longer than this (``billfold payments reconcile``)."""
    seller_name: str = "Billfold"
    """The seller on invoice documents (PDF), as rendered at finalization."""
    seller_address: str = ""
    """The seller's address on invoice documents; lines separated by newlines or ``;``."""
    seller_tax_id: str = ""
    """The seller's tax id (e.g. a VAT number) on invoice documents; left out when empty."""

    def listen_url(self) -> str:
        """Where the spend cache LISTENs: ``listen_database_url``, else ``database_url``."""
        return self.listen_database_url or self.database_url

    def database_problem(self) -> str | None:
        """Why the database settings cannot work together (one line), or None."""
        if (
            self.database_pool_mode == "transaction"
            and self.spend_cache
            and not self.listen_database_url
            and not self.database_url.startswith("sqlite")
        ):
            # LISTEN through a transaction pooler is accepted and then silently deaf: the
            # notifications go to whichever server connection ran it.
            return (
                "BILLFOLD_DATABASE_POOL_MODE=transaction needs BILLFOLD_LISTEN_DATABASE_URL "
                "(a direct or session-mode connection) for the spend cache, or "
                "BILLFOLD_SPEND_CACHE=false"
            )
        if self.read_database_url and self.read_database_url.startswith("sqlite"):
            return "BILLFOLD_READ_DATABASE_URL is for a PostgreSQL read replica"
        return None

    def provider_problem(self) -> str | None:
        """Why the payment provider cannot be used as configured (one line), or None."""
        if self.payment_provider != "stripe":
            return None
        missing = [
            f"BILLFOLD_STRIPE_{name.upper()}"
            for name in ("secret_key", "webhook_secret")
            if not getattr(self, f"stripe_{name}")
        ]
        if missing:
            return f"BILLFOLD_PAYMENT_PROVIDER=stripe needs {' and '.join(missing)}"
        return None

    auto_topup_charge: bool = True
    """Run the auto top-up charger in this serving process (every process may run it)."""
    auto_topup_poll_seconds: float = Field(default=1.0, gt=0)
    """How often the charger looks for pending auto top-ups."""
    auto_topup_lease_seconds: int = Field(default=60, ge=1)
    """A claimed auto top-up is charged again (same idempotency key) by any process after this
    long if it is still pending (its charger died, or the provider did not answer)."""
    webhooks_allow_http: bool = False
    """Accept ``http://`` webhook URLs (tests, loopback); otherwise only ``https://``."""
    webhooks_deliver: bool = True
    """Run the webhook deliverer in this serving process (every process may run it)."""
    webhook_retry_schedule: str = "5,300,1800,7200,18000,36000,36000"
    """Seconds to wait after each failed attempt before the next (the default, Standard
    Webhooks' own, spans 27 hours); after the last, the delivery is ``failed``."""
    webhook_poll_seconds: float = Field(default=1.0, gt=0)
    """How often the deliverer looks for new messages and due retries."""
    webhook_concurrency: int = Field(default=32, ge=1)
    """HTTP requests one process keeps in flight at once (one slow endpoint takes at most
    ``webhook_endpoint_concurrency`` of them)."""
    webhook_endpoint_concurrency: int = Field(default=4, ge=1)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_lease_seconds: int = Field(default=60, ge=1)
    """A claimed delivery is retried by any process after this long if its sender died."""
    webhook_secret_grace_hours: float = Field(default=24.0, ge=0)
    """After a rotation, the old secret signs too for this long."""
    outbox_retention_days: int = Field(default=30, ge=0)
    """Delivered outbox messages (every delivery succeeded or failed) are deleted this many days
    after their fan-out, with their deliveries and attempt log, by the serving processes once an
    hour (notifications/retention.py); 0 keeps them."""
    smtp_url: str | None = None
    """``smtp://user:pass@host:port`` (``smtps://`` for TLS, ``?starttls=true``): with
    ``email_from``, team-level events are also e-mailed to the team's alert e-mails."""
    email_from: str | None = None
    """The ``From`` of those e-mails, e.g. ``Billfold <billing@example.com>``."""
    email_timeout_seconds: float = Field(default=10.0, gt=0)

    def email_enabled(self) -> bool:
        return bool(self.smtp_url and self.email_from)

    def groupable(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.groupable_properties.split(",") if p.strip())

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url(cls, value: str | None) -> str | None:
        if value and urlsplit(value).scheme not in ("smtp", "smtps"):
            raise ValueError(
                "an smtp:// or smtps:// URL, e.g. smtp://user:pass@host:587?starttls=true"
            )
        return value or None

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        parts = [part.strip() for part in value.split(",") if part.strip()]
        if not all(part.isdigit() for part in parts):
            raise ValueError("a comma-separated list of whole seconds, e.g. 5,300,1800")
        return value

    def webhook_retry_delays(self) -> tuple[int, ...]:
        """Seconds before each retry; the first attempt is immediate."""
        return tuple(int(part) for part in self.webhook_retry_schedule.split(",") if part.strip())

    def vat_table(self) -> dict[str, str]:
        """Country code -> VAT percent (as a decimal string)."""
        table: dict[str, str] = {}
        for item in self.vat_rates.split(","):
            if item.strip():
                country, _, rate = item.partition("=")
                table[country.strip().upper()] = rate.strip()
        return table


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
