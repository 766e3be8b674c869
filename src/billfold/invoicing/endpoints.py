"""HTTP surface (routes are added by this domain's work)."""

from __future__ import annotations

from billfold.kit.schemas import WireRouter
from billfold.teams.auth import Operator

billing_router = WireRouter()
admin_router = WireRouter(dependencies=[Operator])
