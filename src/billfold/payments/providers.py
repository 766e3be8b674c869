"""The payment provider the settings choose (``BILLFOLD_PAYMENT_PROVIDER``)."""

from __future__ import annotations

from billfold.config import Settings
from billfold.payments.provider import PaymentProvider
from billfold.payments.sandbox import SandboxProvider


class ProviderMisconfigured(Exception):
    """A setting the chosen provider needs is missing (the message is one line)."""


def make_provider(settings: Settings) -> PaymentProvider:
    problem = settings.provider_problem()
    if problem is not None:
        raise ProviderMisconfigured(problem)
    if settings.payment_provider == "stripe":
        from billfold.payments.stripe_provider import StripeProvider

        assert settings.stripe_secret_key is not None
        return StripeProvider(
            settings.stripe_secret_key,
            publishable_key=settings.stripe_publishable_key,
            api_base=settings.stripe_api_base,
        )
    sandbox = SandboxProvider.for_database(
        settings.database_url, pool_mode=settings.database_pool_mode
    )
    sandbox.install()
    return sandbox


def close_provider(provider: PaymentProvider) -> None:
    if isinstance(provider, SandboxProvider):
        provider.engine.dispose()
