"""Crash points for the tests that kill a server between the steps of a charge.

``crash_point(name)`` ends the process at once (``os._exit(9)``, as ``kill -9`` would: no cleanup,
no commit) when the environment variable ``BILLFOLD_TEST_CRASH_AT`` names that point, and does
nothing otherwise. Only a test sets it (tests/stripe_provider/test_crashes.py).
"""

from __future__ import annotations

import os

CRASH_ENV = "BILLFOLD_TEST_CRASH_AT"


def crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os._exit(9)
