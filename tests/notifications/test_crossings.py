"""Crossing events (spend/crossings.py): ``spend.threshold_reached``, ``spend.blocked`` /
``spend.unblocked``, ``credit.low``, ``credit.depleted`` -- in the outbox when the crossing call
returns, once per crossing, delivered to a real loopback receiver; and the figure watch's
listeners of lowered credit (figures/watch.py), the hook auto top-up uses.

Crossings are of the current cycle: these tests freeze the clock in months of 2061 and 2062
(and close none: thresholds are per team, so teams of their own keep the tests apart)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from billfold.config import Settings
from billfold.figures.watch import CreditChange, watch
from billfold.kit.db import make_engine, make_sessionmaker
from billfold.metering.service import metering_service
from billfold.outbox.models import OutboxMessage
from tests.conftest import Api, event, frozen_at, unique_sku
from tests.notifications.conftest import Hooks, of_team
from tests.notifications.receiver import receiver

CROSSINGS = [
    "spend.threshold_reached",
    "spend.blocked",
    "spend.unblocked",
    "credit.low",
    "credit.depleted",
]


def outbox(api: Api, team_id: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """The team's crossing events in the outbox by message id, read straight from the database
    (so a test sees what the call that returned had committed)."""
    engine = make_engine(api.url, pool_size=1)
    try:
        with Session(engine) as session:
            rows = session.scalars(
                select(OutboxMessage).where(
                    OutboxMessage.team_id == uuid.UUID(team_id),
                    OutboxMessage.type.in_(CROSSINGS),
                )
            ).all()
            return {m.id: (m.type, m.data) for m in rows}
    finally:
        engine.dispose()


class Team:
    """A team with a price of 1 cent per unit, frozen in one month, and what its calls did."""

    def __init__(self, api: Api, month: str) -> None:
        self.api = api
        self.month = month  # "2061-03"
        self.sku = unique_sku()
        api.set_price(self.sku, "0.01", "2061-01-01T00:00:00Z")
        self.id, self.headers = api.team_with_key()
        self.seen: set[str] = set()  # messages of the outbox already looked at

    def use(self, *quantities: int, day: int = 5) -> dict[str, Any]:
        """One batch: an event per quantity (cents), this month."""
        events = [
            event(self.id, self.sku, q, f"{self.month}-{day:02d}T10:00:00Z") for q in quantities
        ]
        return self.api.ingest(events)

    def new(self) -> list[tuple[str, dict[str, Any]]]:
        """The crossing events written since the last call, in the order of CROSSINGS, then of
        their thresholds (the clock is frozen: one call's events share their time)."""
        found = outbox(self.api, self.id)
        fresh = [found[id_] for id_ in found.keys() - self.seen]
        self.seen |= found.keys()
        return sorted(fresh, key=lambda e: (CROSSINGS.index(e[0]), e[1].get("thresholdPercent")))

    def types(self) -> list[str]:
        return [t for t, _ in self.new()]

    def hard_limit(self, cents: int | None) -> None:
        response = self.api.admin(
            "PUT",
            f"/admin/v1/teams/{self.id}/hard-spending-limit",
            json={"amount": None if cents is None else str(cents)},
        )
        assert response.status_code == 200, response.text

    def soft_limit(self, cents: int) -> None:
        response = self.api.client.post(
            f"/v1/billing/teams/{self.id}/postpaid/spending-limits",
            headers=self.headers,
            json={"desiredSoftSpendingLimit": {"val": str(cents)}},
        )
        assert response.status_code == 200, response.text

    def credit(self, cents: int) -> None:
        response = self.api.admin(
            "POST",
            f"/admin/v1/teams/{self.id}/credits",
            json={"amount": str(cents), "reason": "test"},
        )
        assert response.status_code == 201, response.text

    def alerts(self, thresholds: list[int], low: int | None) -> None:
        response = self.api.admin(
            "PUT",
            f"/admin/v1/teams/{self.id}/alerts",
            json={
                "spendThresholdsPercent": thresholds,
                "lowCreditCents": None if low is None else str(low),
                "emails": [],
            },
        )
        assert response.status_code == 200, response.text


def test_thresholds_fire_once_per_threshold_per_cycle_and_blocked_at_the_limit(
    api: Api, hooks: Hooks
) -> None:
    with receiver() as rx:
        hooks.create(rx.url, CROSSINGS)
        with frozen_at("2061-03-10T12:00:00"):
            team = Team(api, "2061-03")
            team.hard_limit(1000)
            assert team.new() == []
            team.use(100, 200)  # 30 %
            assert team.new() == []
            batch = [event(team.id, team.sku, 250, "2061-03-05T11:00:00Z")]
            api.ingest(batch)  # 55 %: in the outbox when the call returns
            ((kind, data),) = team.new()
            assert kind == "spend.threshold_reached"
            assert data == {
                "teamId": team.id,
                "billingCycle": {"year": 2061, "month": 3},
                "thresholdPercent": 50,
                "postpaidSpend": "550",
                "effectiveSpendingLimit": "1000",
            }
            assert api.ingest(batch)["duplicates"] == 1  # a retried batch crosses nothing again
            assert team.new() == []
            for _ in range(6):  # 10 batches of 5 % each way past 80 %: fired once
                team.use(50)
            assert [d["thresholdPercent"] for _, d in team.new()] == [80]
            team.use(200, 100)  # 85 % -> 115 %: 100 % and blocked in one batch
            crossed = team.new()
            assert [t for t, _ in crossed] == ["spend.threshold_reached", "spend.blocked"]
            assert crossed[0][1]["thresholdPercent"] == 100
            assert crossed[1][1]["reason"] == "spending_limit_reached"
            assert crossed[1][1]["postpaidSpend"] == "1150"
            team.use(10)  # still blocked: nothing new
            assert team.new() == []

            team.hard_limit(5000)  # raised: unblocked, no threshold again this cycle
            ((kind, data),) = team.new()
            assert (kind, data["effectiveSpendingLimit"]) == ("spend.unblocked", "5000")
            team.use(2000)  # 3160 of 5000 = 63 %: 50 % fired already this cycle
            assert team.new() == []
            team.soft_limit(3000)  # lowered below the spend by the team itself: blocked again
            assert team.types() == ["spend.blocked"]
            team.soft_limit(5000)
            assert team.types() == ["spend.unblocked"]

        with frozen_at("2062-01-02T00:00:00"):  # a new cycle: thresholds count again
            year = Team(api, "2062-01")
            year.hard_limit(1000)
            year.use(600, day=1)
            assert [d["thresholdPercent"] for _, d in year.new()] == [50]
        with frozen_at("2062-02-02T00:00:00"):
            year.month = "2062-02"
            year.use(500, day=1)
            assert [d["thresholdPercent"] for _, d in year.new()] == [50]

        mine = rx.wait(7, of_team(team.id))
        time.sleep(0.5)
        assert len(rx.messages(of_team(team.id))) == 7
        assert [m.json["type"] for m in mine].count("spend.threshold_reached") == 3


def test_blocked_in_one_cycle_is_unblocked_by_the_next(api: Api) -> None:
    with frozen_at("2061-05-20T12:00:00"):
        team = Team(api, "2061-05")
        team.hard_limit(100)
        team.use(150)
        assert team.types() == [
            "spend.threshold_reached",
            "spend.threshold_reached",
            "spend.threshold_reached",
            "spend.blocked",
        ]
    with frozen_at("2061-06-01T12:00:00"):  # May not closed yet; June's postpaid is 0
        team.month = "2061-06"
        team.use(10, day=1)  # the first write of the new cycle sees it
        assert team.types() == ["spend.unblocked"]


def test_credit_low_and_depleted_fire_once_and_rearm(api: Api, hooks: Hooks) -> None:
    with receiver() as rx:
        hooks.create(rx.url, ["credit.low", "credit.depleted"])
        with frozen_at("2061-07-10T12:00:00"):
            team = Team(api, "2061-07")
            team.alerts([50, 80, 100], low=500)
            team.credit(1000)
            assert team.new() == []  # credit rose: nothing
            team.use(300)  # 700 left
            assert team.new() == []
            team.use(250)  # 450 < 500
            ((kind, data),) = team.new()
            assert (kind, data) == (
                "credit.low",
                {"teamId": team.id, "creditLeft": "450", "lowCreditCents": "500"},
            )
            team.use(100)  # 350: low already
            assert team.new() == []
            team.credit(1000)  # 1350: re-armed, silently
            assert team.new() == []
            team.use(900)  # 450 again: fires again
            assert team.types() == ["credit.low"]
            team.use(400, 100)  # 0: depleted (the rest is postpaid)
            ((kind, data),) = team.new()
            assert (kind, data["creditLeft"]) == ("credit.depleted", "0")
            team.use(100)
            assert team.new() == []
            team.credit(50)  # pays part of the postpaid usage first: still 0
            assert team.new() == []
            team.credit(200)  # 100 > 0 re-arms depleted; still low
            assert team.new() == []
            team.use(60)
            assert team.new() == []
            team.use(150)
            assert team.types() == ["credit.depleted"]
        rx.wait(4, of_team(team.id))
        time.sleep(0.5)
        assert len(rx.messages(of_team(team.id))) == 4


def test_credit_only_team_blocked_when_credit_runs_out_and_unblocked_by_credit(api: Api) -> None:
    with frozen_at("2061-08-10T12:00:00"):
        team = Team(api, "2061-08")
        team.soft_limit(0)  # credit only, and no credit: it can no longer spend
        ((kind, data),) = team.new()
        assert (kind, data["reason"]) == ("spend.blocked", "prepaid_exhausted")
        team.credit(500)
        assert team.types() == ["spend.unblocked"]
        team.use(200)
        team.use(300)
        assert team.types() == ["spend.blocked", "credit.depleted"]
        team.credit(100)
        assert team.types() == ["spend.unblocked"]
        # a negative adjustment (operator) takes it out again
        team.credit(-100)
        assert team.types() == ["spend.blocked", "credit.depleted"]


class Recorder:
    def __init__(self) -> None:
        self.calls: list[list[CreditChange]] = []

    def credit_lowered(self, session: Session, changes: Sequence[CreditChange]) -> None:
        assert session.in_transaction()
        self.calls.append(list(changes))


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    listener = Recorder()
    watch.listen(listener)
    yield listener
    watch.unlisten(listener)


def test_credit_listeners_hear_every_write_that_lowers_live_credit(
    api: Api, recorder: Recorder
) -> None:
    with frozen_at("2061-09-10T12:00:00"):
        team = Team(api, "2061-09")
        other = Team(api, "2061-09")
        team.credit(1000)
        other.use(5)  # no credit: usage lowers nothing
        assert recorder.calls == []
        team_id = uuid.UUID(team.id)
        api.ingest(  # one batch, two teams, many events: one call
            [event(team.id, team.sku, 10, "2061-09-05T10:00:00Z") for _ in range(20)]
            + [event(other.id, team.sku, 3, "2061-09-05T10:00:00Z")]
        )
        assert recorder.calls == [[CreditChange(team_id, 1000, 800)]]
        team.credit(-300)
        assert recorder.calls[-1] == [CreditChange(team_id, 800, 500)]
        calls = len(recorder.calls)
        team.credit(100)  # raised: not told
        team.hard_limit(1)  # limits: not credit
        assert len(recorder.calls) == calls
        team.use(700)
        assert recorder.calls[-1] == [CreditChange(team_id, 600, 0)]


def test_concurrent_batches_crossing_one_threshold_fire_it_once_on_postgres(
    postgres_api: Api,
) -> None:
    """Two batches of one team, each crossing 50 % on its own figures, in transactions that
    overlap: the second waits for the first's cycle row, reads the figures the first committed,
    and fires nothing. Then many batches at once: each threshold once."""
    api = postgres_api
    app: Any = api.client.app
    settings: Settings = app.state.settings
    engine = make_engine(api.url, pool_size=4)
    sessions = make_sessionmaker(engine, settings=settings)
    try:
        with frozen_at("2061-10-10T12:00:00"):
            team = Team(api, "2061-10")
            team.hard_limit(1000)

            first = sessions()
            metering_service.ingest(
                first, settings, [event(team.id, team.sku, 600, "2061-10-05T10:00:00Z")]
            )
            first.flush()

            def second() -> None:
                with sessions() as session, session.begin():
                    metering_service.ingest(
                        session, settings, [event(team.id, team.sku, 600, "2061-10-05T11:00:00Z")]
                    )

            thread = threading.Thread(target=second)
            thread.start()
            time.sleep(0.5)
            assert thread.is_alive()  # waiting for the first batch's cycle row
            first.commit()
            first.close()
            thread.join(10)
            assert not thread.is_alive()
            assert [(t, d.get("thresholdPercent")) for t, d in team.new()] == [
                ("spend.threshold_reached", 50),
                ("spend.threshold_reached", 80),
                ("spend.threshold_reached", 100),
                ("spend.blocked", None),
            ]

            many = Team(api, "2061-10")
            many.hard_limit(10_000)
            barrier = threading.Barrier(8)

            def batch(n: int) -> None:
                barrier.wait()
                for i in range(5):
                    with sessions() as session, session.begin():
                        metering_service.ingest(
                            session,
                            settings,
                            [event(many.id, many.sku, 300, f"2061-10-05T{n:02d}:{i:02d}:00Z")],
                        )

            threads = [threading.Thread(target=batch, args=(n,)) for n in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            # 40 batches of 300 = 12,000 of 10,000
            assert sorted((t, d.get("thresholdPercent")) for t, d in many.new()) == sorted(
                [
                    ("spend.threshold_reached", 50),
                    ("spend.threshold_reached", 80),
                    ("spend.threshold_reached", 100),
                    ("spend.blocked", None),
                ]
            )
    finally:
        engine.dispose()
