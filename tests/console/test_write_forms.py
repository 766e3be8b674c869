"""The write pages' form reading (console/forms.py): dollars typed by people, and the API's
validation errors as field errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billfold.console.forms import (
    FormErrors,
    dollars_text,
    error_of,
    form_field,
    parse_dollars,
    validate,
)
from billfold.console.web import dollars
from billfold.kit.errors import InvalidField
from billfold.teams.schemas import SetBillingInfoRequest


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_dollars_read_back_exactly(cents: int) -> None:
    """What a page shows (``$1,234.56``) and puts in a form (``1234.56``) reads back to the same
    cents: no float on the way."""
    assert parse_dollars(dollars_text(cents), "amount") == cents
    assert parse_dollars(dollars(cents), "amount") == cents


@pytest.mark.parametrize(
    ("text", "cents"), [("50", 5000), ("12.5", 1250), (" $1,234.56 ", 123456), ("-3", -300)]
)
def test_dollars_accepted(text: str, cents: int) -> None:
    assert parse_dollars(text, "amount") == cents


@pytest.mark.parametrize("text", ["", "  ", "12.345", "abc", "1e3", "0x10", "1.2.3", "--5"])
def test_dollars_refused_name_the_field(text: str) -> None:
    with pytest.raises(FormErrors) as refused:
        parse_dollars(text, "amount")
    assert list(refused.value.errors) == ["amount"]


def test_api_validation_errors_by_form_field() -> None:
    wire = {
        "billingInfo": {
            "name": "",
            "email": "nope",
            "address": {"country": "XX"},
        }
    }
    with pytest.raises(FormErrors) as refused:
        validate(SetBillingInfoRequest, wire)
    errors = refused.value.errors
    assert set(errors) == {"name", "email", "country"}
    assert errors["country"].startswith("Must be an ISO 3166-1 alpha-2 country code")
    assert form_field("billingInfo.address.postalCode") == "postalCode"
    assert form_field("amount.val") == "amount"
    assert form_field("emails.2") == "emails"


def test_service_refusal_by_field() -> None:
    refusal = InvalidField("billingInfo.taxNumber", "taxIdType and taxNumber are set together")
    assert error_of(refusal, "name").errors == {
        "taxNumber": "taxIdType and taxNumber are set together."
    }
    assert error_of(refusal, "x", only=True).errors == {
        "x": "taxIdType and taxNumber are set together."
    }
