"""Imports every domain's models so that ``Base.metadata`` knows every table."""

from billfold.payments.models import PaymentMethod
from billfold.teams.models import BillingInfo, ManagementKey, OperatorToken, Team

__all__ = ["BillingInfo", "ManagementKey", "OperatorToken", "PaymentMethod", "Team"]
