"""Reading the write pages' forms: dollars typed by people, and field-level errors from the same
validation the API runs (its pydantic request models and its services' ``InvalidField``).

A form field is named by the last part of the API's dotted field (``billingInfo.address.country``
is the form's ``country``), so one error message reads the same on the page and in the API's 400.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from billfold.kit.errors import BillfoldError
from billfold.kit.money import Cents

M = TypeVar("M", bound=BaseModel)

_DOLLARS = re.compile(r"^-?\d+(\.\d{1,2})?$")


class FormErrors(Exception):
    """Field name -> message, for the page shown again (status 400) with its errors."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__(errors)
        self.errors = errors


def parse_dollars(text: str, field: str) -> Cents:
    """``"50"``, ``"$1,234.56"`` or ``"-3.5"`` as cents; anything else is a field error. Money
    never goes through a float: the text is read as a decimal with at most two places."""
    cleaned = text.strip().replace(",", "").replace("$", "").replace(" ", "")
    if not cleaned:
        raise FormErrors({field: "Enter an amount in dollars, e.g. 50 or 12.50."})
    if not _DOLLARS.match(cleaned):
        raise FormErrors({field: "Enter dollars and cents only, e.g. 50 or 12.50."})
    try:
        cents = Decimal(cleaned) * 100
    except InvalidOperation:  # pragma: no cover (the pattern admits only decimals)
        raise FormErrors({field: "Enter an amount in dollars."}) from None
    if abs(cents) >= 2**63:
        raise FormErrors({field: "This amount is too large."})
    return Cents(int(cents))


def dollars_text(cents: int | None) -> str:
    """Cents as a form's value: ``1234.50`` (no sign of currency, no float); ``""`` for None."""
    if cents is None:
        return ""
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(int(cents)), 100)
    return f"{sign}{whole}.{part:02d}"


def form_field(api_field: str) -> str:
    """The form's name of an API field: its last dotted part (``amount.val`` -> ``amount``)."""
    parts = [p for p in api_field.split(".") if p not in ("val", "body") and not p.isdigit()]
    return parts[-1] if parts else api_field


def _message(error: Any) -> str:
    if error.get("type") == "missing":
        return "is required"
    return str(error.get("msg", "invalid value")).removeprefix("Value error, ")


def validate(model: type[M], wire: dict[str, Any]) -> M:
    """``wire`` validated by the API's request model; its errors by form field."""
    try:
        return model.model_validate(wire)
    except ValidationError as exc:
        errors: dict[str, str] = {}
        for error in exc.errors():
            loc = ".".join(str(p) for p in error.get("loc", ()))
            errors.setdefault(form_field(loc), _sentence(_message(error)))
        raise FormErrors(errors) from None


def error_of(exc: BillfoldError, default_field: str, *, only: bool = False) -> FormErrors:
    """A service's refusal as a field error: the field it names, else ``default_field``
    (``only``: always ``default_field``, for a form with one input)."""
    field = exc.extra.get("field")
    message = exc.message
    if isinstance(field, str):
        message = message.removeprefix(f"{field}: ")
        if not only:
            return FormErrors({form_field(field): _sentence(message)})
    return FormErrors({default_field: _sentence(message)})


def _sentence(message: str) -> str:
    message = message.strip()
    if not message:
        return message
    first = message.split(" ", 1)[0]
    if first.islower():  # a word, not an API name such as "taxIdType"
        message = message[0].upper() + message[1:]
    return message if message.endswith((".", "!", "?")) else message + "."
