"""Payment methods of a team, stored as provider references (never card numbers)."""

from __future__ import annotations

import secrets
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from billfold.kit.clock import utc_now
from billfold.kit.errors import BadRequest, ResourceNotFound
from billfold.payments.models import PaymentMethod
from billfold.payments.provider import CardInput, PaymentProvider, ProviderError
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
        billing_info = team_service.get_billing_info(session, team.id)
        if team.payment_customer_ref is None:
            team.payment_customer_ref = provider.create_customer(str(team.id), billing_info.email)
        customer = team.payment_customer_ref
        try:
            provider_card = provider.setup_card(customer, card)
        except ProviderError as exc:
            field = _CARD_ERROR_FIELDS.get(exc.code, "cardNumber")
            raise BadRequest(exc.message, code=exc.code, field=field) from None
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
