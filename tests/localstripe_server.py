"""localstripe for the tests, with the few gaps that Billfold's calls hit filled in.

Run as ``python tests/localstripe_server.py --port N --from-scratch``. localstripe (PyPI) is a
stateful fake of Stripe's API; these patches make it accept what Stripe itself accepts and
Billfold sends, without changing what it answers:

* ``off_session`` on ``POST /v1/payment_intents/{id}/confirm`` (Stripe takes it; localstripe
  only on create with ``confirm=true``): ignored, so a card that needs authentication leaves the
  PaymentIntent in ``requires_action`` (Billfold keeps such a charge pending);
* ``description`` on ``POST /v1/payment_intents``: kept;
* the store is not pickled to ``/tmp/localstripe.pickle`` after every write (slow, and shared by
  every instance on the machine).
"""

from __future__ import annotations

from typing import Any

from localstripe import resources

resources.Store.dump_to_disk = lambda self: None  # type: ignore[method-assign]

_init = resources.PaymentIntent.__init__
_confirm = resources.PaymentIntent._api_confirm


def _pi_init(self: Any, *args: Any, description: Any = None, **kwargs: Any) -> None:
    _init(self, *args, **kwargs)
    self.description = description


def _pi_confirm(id: Any, off_session: Any = None, **kwargs: Any) -> Any:
    return _confirm(id, **kwargs)


resources.PaymentIntent.__init__ = _pi_init  # type: ignore[method-assign]
resources.extra_apis[:] = [
    (method, url, _pi_confirm if url == "/v1/payment_intents/{id}/confirm" else func)
    for method, url, func in resources.extra_apis
]

from localstripe import server  # noqa: E402 (builds its routes from extra_apis on import)

if __name__ == "__main__":
    server.start()
