from __future__ import annotations

from datetime import datetime

from sqlalchemy import Identity, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db import Base, BigInt
from billfold.kit.money import Pico


class PriceVersion(Base):
    """One version of a SKU's price, in force from ``effective_from`` until the next version.

    Versions are immutable once created: events are rated by them, and invoice lines name them.
    """

    __tablename__ = "price_versions"
    __table_args__ = (UniqueConstraint("sku", "effective_from"),)

    id: Mapped[int] = mapped_column(BigInt, Identity(), primary_key=True)
    sku: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(String(500))
    unit_type: Mapped[str] = mapped_column(String(200))
    unit_price_pico: Mapped[Pico]  # 10^-12 USD per unit, exact
    effective_from: Mapped[datetime]
    created_at: Mapped[datetime]
