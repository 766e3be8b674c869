"""The crossing detection's plain-integer ``standing`` (spend/crossings.py, run per team in
every batch) is the rule of ``ledger.position.allocate_credit``, ``spend.limits.limits_of`` and
``spend_decision``: the same live credit, postpaid spend, effective limit and blocked answer."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from billfold.config import Settings
from billfold.kit.money import Cents
from billfold.ledger.position import allocate_credit
from billfold.spend.crossings import standing
from billfold.spend.limits import limits_of, spend_decision

NOW = datetime(2061, 11, 15, tzinfo=UTC)
cents = st.integers(min_value=0, max_value=10**9)
months = st.sampled_from([(2061, 9), (2061, 10), (2061, 11)])


@given(
    balance=st.integers(min_value=-(10**6), max_value=10**9),
    spends=st.dictionaries(months, cents, max_size=3),
    soft=st.none() | cents,
    hard=st.none() | cents,
    default_hard=cents,
)
def test_standing_is_the_spend_checks_rule(
    balance: int,
    spends: dict[tuple[int, int], int],
    soft: int | None,
    hard: int | None,
    default_hard: int,
) -> None:
    settings = Settings(database_url="sqlite://", default_hard_limit_cents=default_hard)
    position = allocate_credit(
        uuid.uuid4(), Cents(balance), {k: Cents(v) for k, v in spends.items()}, NOW
    )
    limits = limits_of(
        None if soft is None else Cents(soft), None if hard is None else Cents(hard), settings
    )
    decision = spend_decision(limits, position, NOW.year, NOW.month)
    credit, postpaid, effective = standing(
        balance, spends, soft, hard, default_hard, (NOW.year, NOW.month)
    )
    assert credit == position.credit_left
    assert postpaid == decision.postpaid_spend
    assert effective == decision.effective_limit
    assert (credit <= 0 and postpaid >= effective) == (not decision.allowed)
