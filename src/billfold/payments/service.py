"""Payment methods of a team, stored as provider references (never card numbers)."""

from __future__ import annotations

import secrets
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from billfold.kit.clock import utc_now
from billfold.kit.errors import BadRequest, PaymentFailed, ResourceNotFound, ServiceUnavailable
from billfold.payments.models import PaymentMethod
from billfold.payments.provider import (
    CardInput,
    PaymentProvider,
    ProviderCard,
    ProviderError,
    ProviderUnavailable,
)
from billfold.teams.models import Team
from billfold.teams.service import team_service

# Which request field a provider's card error is about (Stripe's codes).
_CARD_ERROR_FIELDS = {"expired_card": "expYear", "invalid_expiry_month": "expMonth"}


class PaymentMethodService:
    def add_card(
        self,
        session: Session,
        provider: PaymentProvider,
        team: Team,
        card: CardInput,
        *,
        make_default: bool,
    ) -> PaymentMethod:
        customer = self.customer_for(session, provider, team)
        try:
            provider_card = provider.setup_card(customer, card)
        except ProviderError as exc:
            field = _CARD_ERROR_FIELDS.get(exc.code, "cardNumber")
            raise BadRequest(exc.message, code=exc.code, field=field) from None
        return self._store(session, provider, team, customer, provider_card, make_default)

    def attach(
        self,
        session: Session,
        provider: PaymentProvider,
        team: Team,
        method_ref: str,
        *,
        make_default: bool,
    ) -> PaymentMethod:
        """Attach a method the provider already holds (made client-side, e.g. by Stripe.js) to the
        team's customer, and keep the local copy that listings show. Attaching one twice gives the
        method already stored."""
        existing = session.scalars(
            select(PaymentMethod).where(
                PaymentMethod.team_id == team.id,
                PaymentMethod.provider == provider.name,
                PaymentMethod.provider_ref == method_ref,
            )
        ).first()
        if existing is not None:
            if make_default:
                team.default_payment_method_id = existing.id
            return existing
        customer = self.customer_for(session, provider, team)
        try:
            provider_card = provider.attach_method(customer, method_ref)
        except ProviderError as exc:
            if exc.declined:
                raise PaymentFailed(exc.message, code="card_declined") from None
            raise BadRequest(exc.message, code=exc.code, field="providerPaymentMethodId") from None
        except ProviderUnavailable as exc:
            raise ServiceUnavailable(
                f"the payment provider did not answer; try again ({exc})",
                code="provider_unavailable",
            ) from None
        return self._store(session, provider, team, customer, provider_card, make_default)

    def setup(self, session: Session, provider: PaymentProvider, team: Team) -> str:
        """A SetupIntent (usage off_session) on the team's customer; its client secret."""
        customer = self.customer_for(session, provider, team)
        try:
            return provider.create_setup(customer, metadata={"billfold_team": str(team.id)})
        except ProviderError as exc:
            raise BadRequest(exc.message, code=exc.code) from None
        except ProviderUnavailable as exc:
            raise ServiceUnavailable(
                f"the payment provider did not answer; try again ({exc})",
                code="provider_unavailable",
            ) from None

    def adopt(
        self, session: Session, provider: PaymentProvider, team: Team, card: ProviderCard
    ) -> PaymentMethod:
        """Keep the local copy of a method the provider attached itself (a SetupIntent that
        succeeded); the one already kept when there is one. The default only if none is set."""
        existing = session.scalars(
            select(PaymentMethod).where(
                PaymentMethod.team_id == team.id,
                PaymentMethod.provider == provider.name,
                PaymentMethod.provider_ref == card.provider_ref,
            )
        ).first()
        if existing is not None:
            return existing
        customer = self.customer_for(session, provider, team)
        return self._store(session, provider, team, customer, card, False)

    def forget(self, session: Session, provider_name: str, method_ref: str) -> int:
        """Drop the local copy of a method the provider detached; a team whose default it was has
        no default any more. How many copies were dropped."""
        methods = list(
            session.scalars(
                select(PaymentMethod).where(
                    PaymentMethod.provider == provider_name,
                    PaymentMethod.provider_ref == method_ref,
                )
            )
        )
        for method in methods:
            team = team_service.get(session, method.team_id, for_update=True)
            if team.default_payment_method_id == method.id:
                team.default_payment_method_id = None
            session.delete(method)
        session.flush()
        return len(methods)

    def customer_for(self, session: Session, provider: PaymentProvider, team: Team) -> str:
        """The team's customer at this provider, created on first need (the team row is locked by
        the caller). Stripe's customer is kept apart from the sandbox's."""
        stripe = provider.name == "stripe"
        existing = team.stripe_customer_id if stripe else team.payment_customer_ref
        if existing is not None:
            return existing
        email = team_service.get_billing_info(session, team.id).email
        try:
            customer = provider.create_customer(str(team.id), email)
        except (ProviderError, ProviderUnavailable) as exc:
            raise ServiceUnavailable(
                f"the payment provider did not create the customer; try again ({exc})",
                code="provider_unavailable",
            ) from None
        if stripe:
            team.stripe_customer_id = customer
        else:
            team.payment_customer_ref = customer
        return customer

    def _store(
        self,
        session: Session,
        provider: PaymentProvider,
        team: Team,
        customer: str,
        provider_card: ProviderCard,
        make_default: bool,
    ) -> PaymentMethod:
        billing_info = team_service.get_billing_info(session, team.id)
        method = PaymentMethod(
            id="pm_" + secrets.token_urlsafe(18),
            team_id=team.id,
            provider=provider.name,
            provider_ref=provider_card.provider_ref,
            provider_customer_ref=customer,
            payment_type="card",
            brand=provider_card.brand,
            last4=provider_card.last4,
            exp_month=provider_card.exp_month,
            exp_year=provider_card.exp_year,
            billing_info=billing_info.model_dump(mode="json", by_alias=True),
            created_at=utc_now(),
        )
        session.add(method)
        if make_default or team.default_payment_method_id is None:
            team.default_payment_method_id = method.id
        session.flush()
        return method

    def list(self, session: Session, team: Team) -> list[PaymentMethod]:
        """The team's methods, the default first, then newest first."""
        methods = list(
            session.scalars(
                select(PaymentMethod)
                .where(PaymentMethod.team_id == team.id)
                .order_by(PaymentMethod.created_at.desc(), PaymentMethod.id)
            )
        )
        methods.sort(key=lambda m: m.id != team.default_payment_method_id)
        return methods

    def set_default(self, session: Session, team_id: uuid.UUID, method_id: str) -> None:
        team = team_service.get(session, team_id, for_update=True)
        method = session.get(PaymentMethod, method_id)
        if method is None or method.team_id != team.id:
            raise ResourceNotFound(
                f"payment method {method_id!r} not found for this team",
                code="payment_method_not_found",
                field="paymentMethodId",
            )
        team.default_payment_method_id = method.id

    def default_for(self, session: Session, team: Team) -> PaymentMethod | None:
        if team.default_payment_method_id is None:
            return None
        return session.get(PaymentMethod, team.default_payment_method_id)


payment_method_service = PaymentMethodService()
