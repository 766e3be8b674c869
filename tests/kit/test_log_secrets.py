"""The run-wide log check (tests/log_secrets.py) finds what it is meant to, and only that."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.log_secrets import captured_logs, scan, secrets_in


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("Authorization: Bearer xai-" + "a1B2_c3-" * 4, "management key"),
        ("token bfop_" + "Zz09_-" * 5, "operator token"),
        ('{"secret": "whsec_' + "QUJDRA==" * 4 + '"}', "webhook secret"),
        ("api key sk_live_51Habcdef", "Stripe secret key"),
        ("card 4242424242424242", "card number"),
        ("card 5555-5555-5555-4444 given", "card number"),
        ("card 4000 0566 5566 5556", "card number"),
        ("the configured op-token-xyz here", "configured secret"),
    ],
)
def test_each_shape_of_secret_is_found(line: str, kind: str) -> None:
    assert kind in secrets_in(line, literals=("op-token-xyz",))


@pytest.mark.parametrize(
    "line",
    [
        '{"route": "/v1/billing/teams/{team_id}/prepaid/top-up", "status": 200}',
        "redacted xai-...AbCd, Bearer xai-nope",
        "amount 4242424242424241 pico",  # fails Luhn
        "event aud_00062a1f4242424242424242ab, ts 1733630000000000",
        "bfop_... in the docs; whsec_ prefix; sk_ prefix",
    ],
)
def test_what_is_not_a_secret_passes(line: str) -> None:
    assert secrets_in(line) == []


def test_a_logged_secret_is_caught_from_the_capture(tmp_path: Path) -> None:
    path = tmp_path / "capture.jsonl"
    # A logger of its own: the run's capture must not see these (it would fail the run).
    canary = logging.getLogger("log-secrets-canary")
    canary.propagate = False
    with captured_logs(path, names=("log-secrets-canary",)):
        canary.debug("fine %s", "nothing here")
        canary.info("oops", extra={"card": "4242424242424242"})
    assert scan(path) == ["line 2: card number"]
