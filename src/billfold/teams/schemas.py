from __future__ import annotations

import itertools
import uuid
from typing import Annotated, ClassVar

import pycountry
from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BeforeValidator, Field, StrictInt, StringConstraints

from billfold.kit.schemas import Int64, UtcDateTime, WireModel
from billfold.teams.models import ManagementKey, Team

# Stripe's tax ID types (https://docs.stripe.com/api/tax_ids/object#tax_id_object-type).
TAX_ID_TYPES = frozenset(
    [
        "ad_nrt",
        "ae_trn",
        "al_tin",
        "am_tin",
        "ao_tin",
        "ar_cuit",
        "au_abn",
        "au_arn",
        "ba_tin",
        "bb_tin",
        "bg_uic",
        "bh_vat",
        "bo_tin",
        "br_cnpj",
        "br_cpf",
        "bs_tin",
        "by_tin",
        "ca_bn",
        "ca_gst_hst",
        "ca_pst_bc",
        "ca_pst_mb",
        "ca_pst_sk",
        "ca_qst",
        "cd_nif",
        "ch_uid",
        "ch_vat",
        "cl_tin",
        "cn_tin",
        "co_nit",
        "cr_tin",
        "de_stn",
        "do_rcn",
        "ec_ruc",
        "eg_tin",
        "es_cif",
        "eu_oss_vat",
        "eu_vat",
        "gb_vat",
        "ge_vat",
        "gn_nif",
        "hk_br",
        "hr_oib",
        "hu_tin",
        "id_npwp",
        "il_vat",
        "in_gst",
        "is_vat",
        "jp_cn",
        "jp_rn",
        "jp_trn",
        "ke_pin",
        "kh_tin",
        "kr_brn",
        "kz_bin",
        "li_uid",
        "li_vat",
        "ma_vat",
        "md_vat",
        "me_pib",
        "mk_vat",
        "mr_nif",
        "mx_rfc",
        "my_frp",
        "my_itn",
        "my_sst",
        "ng_tin",
        "no_vat",
        "no_voec",
        "np_pan",
        "nz_gst",
        "om_vat",
        "pe_ruc",
        "ph_tin",
        "ro_tin",
        "rs_pib",
        "ru_inn",
        "ru_kpp",
        "sa_vat",
        "sg_gst",
        "sg_uen",
        "si_tin",
        "sn_ninea",
        "sr_fin",
        "sv_nit",
        "th_vat",
        "tj_tin",
        "tr_tin",
        "tw_vat",
        "tz_vat",
        "ua_vat",
        "ug_tin",
        "us_ein",
        "uy_ruc",
        "uz_tin",
        "uz_vat",
        "ve_rif",
        "vn_tin",
        "za_vat",
        "zm_tin",
        "zw_tin",
    ]
)

ACL_BILLING_READ = "team-token:endpoint:BillingRead"
ACL_BILLING_WRITE = "team-token:endpoint:BillingWrite"
KNOWN_ACLS = (ACL_BILLING_READ, ACL_BILLING_WRITE)


def _country(value: str) -> str:
    code = value.strip().upper()
    if len(code) != 2 or pycountry.countries.get(alpha_2=code) is None:
        raise ValueError('must be an ISO 3166-1 alpha-2 country code such as "US"')
    return code


def _email(value: str) -> str:
    try:
        return validate_email(value.strip(), check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"is not a valid email address ({exc})") from None


def _tax_id_type(value: str) -> str:
    if value and value not in TAX_ID_TYPES:
        raise ValueError('is not a known tax id type (Stripe\'s list, e.g. "eu_vat", "us_ein")')
    return value


class Address(WireModel):
    line1: Annotated[str, StringConstraints(max_length=200)] = ""
    line2: Annotated[str, StringConstraints(max_length=200)] = ""
    city: Annotated[str, StringConstraints(max_length=200)] = ""
    country: str = ""
    postal_code: Annotated[str, StringConstraints(max_length=20)] = ""
    state: Annotated[str, StringConstraints(max_length=200)] = ""


class BillingInfoBody(WireModel):
    """The billing info object as read (every field present, empty strings when unset)."""

    name: str = ""
    address: Address = Field(default_factory=Address)
    email: str = ""
    tax_id_type: str = ""
    tax_number: str = ""


class AddressInput(Address):
    country: Annotated[str, StringConstraints(max_length=2), AfterValidator(_country)]


class BillingInfoInput(WireModel):
    """The billing info object as written: validated, every bad field named in the 400."""

    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    address: AddressInput
    email: Annotated[str, StringConstraints(max_length=254), AfterValidator(_email)]
    tax_id_type: Annotated[str, StringConstraints(max_length=16), AfterValidator(_tax_id_type)] = ""
    tax_number: Annotated[str, StringConstraints(strip_whitespace=True, max_length=64)] = ""


class GetBillingInfoResponse(WireModel):
    billing_info: BillingInfoBody


class SetBillingInfoRequest(WireModel):
    billing_info: BillingInfoInput


class Empty(WireModel):
    pass


# --- management key validation (GET /auth/management-keys/validation) -----------------------


class ValidateKeyResponse(WireModel):
    api_key_id: str
    team_id: str
    scope: str = "SCOPE_TEAM"
    scope_id: str
    owner_user_id: str
    create_time: UtcDateTime
    modify_time: UtcDateTime
    name: str
    acls: list[str]
    redacted_api_key: str


# --- operator API -----------------------------------------------------------------------------


class CreateTeamRequest(WireModel):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    team_id: uuid.UUID | None = None


class TeamOut(WireModel):
    team_id: str
    name: str
    create_time: UtcDateTime


class TeamList(WireModel):
    teams: list[TeamOut]
    next_page_token: str = ""


def _acls_given(value: object) -> object:
    if value is None:
        raise ValueError("must be a list of ACLs, not null (leave acls out for both)")
    return value


def _some_acls(value: list[str]) -> list[str]:
    if not value:
        raise ValueError(
            f"must name at least one ACL (leave acls out for both); known: {', '.join(KNOWN_ACLS)}"
        )
    return value


class CreateKeyRequest(WireModel):
    # ``acls`` left out is both ACLs (operator-api.md); ``null`` and ``[]`` are a 400, not read
    # as that default (a key that can write where the caller meant "none" or "I forgot").
    keep_nulls: ClassVar[bool] = True
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    acls: Annotated[
        list[str],
        BeforeValidator(_acls_given),
        Field(max_length=8),
        AfterValidator(_some_acls),
    ] = Field(default_factory=lambda: list(KNOWN_ACLS))


class KeyOut(WireModel):
    key_id: str
    team_id: str
    name: str
    acls: list[str]
    redacted_api_key: str
    create_time: UtcDateTime
    revoked: bool = False


class CreatedKey(KeyOut):
    api_key: str


class KeyList(WireModel):
    keys: list[KeyOut]


# --- shaping ----------------------------------------------------------------------------------


def key_validation_out(key: ManagementKey) -> ValidateKeyResponse:
    """What the gateway learns of a valid management key (its team is its scope)."""
    return ValidateKeyResponse(
        api_key_id=str(key.id),
        team_id=str(key.team_id),
        scope_id=str(key.team_id),
        owner_user_id=key.owner_user_id,
        create_time=key.created_at,
        modify_time=key.modified_at,
        name=key.name,
        acls=list(key.acls),
        redacted_api_key=key.redacted,
    )


def team_out(team: Team) -> TeamOut:
    return TeamOut(team_id=str(team.id), name=team.name, create_time=team.created_at)


def team_page_out(teams: list[Team], page_size: int) -> TeamList:
    """One page of teams, read one past ``page_size``: that extra team says another page follows."""
    page = teams[:page_size]
    return TeamList(
        teams=[team_out(t) for t in page],
        next_page_token=str(page[-1].id) if len(teams) > page_size else "",
    )


def key_out(key: ManagementKey) -> KeyOut:
    return KeyOut(
        key_id=str(key.id),
        team_id=str(key.team_id),
        name=key.name,
        acls=list(key.acls),
        redacted_api_key=key.redacted,
        create_time=key.created_at,
        revoked=key.revoked_at is not None,
    )


# --- alert settings ------------------------------------------------------------------------

MAX_ALERT_THRESHOLDS = 10
MAX_ALERT_EMAILS = 10


def _thresholds(value: list[int]) -> list[int]:
    if len(value) > MAX_ALERT_THRESHOLDS:
        raise ValueError(f"at most {MAX_ALERT_THRESHOLDS} thresholds")
    if any(not 1 <= v <= 1000 for v in value):
        raise ValueError("each threshold must be a whole percent from 1 to 1000")
    if any(a >= b for a, b in itertools.pairwise(value)):
        raise ValueError("must be sorted ascending, without repeats")
    return value


def _low_credit(value: int | None) -> int | None:
    if value is not None and value < 0:
        raise ValueError("must be at least 0 (or null: no low-credit alert)")
    return value


def _emails(value: list[str]) -> list[str]:
    if len(value) > MAX_ALERT_EMAILS:
        raise ValueError(f"at most {MAX_ALERT_EMAILS} addresses")
    normalized = [_email(v) for v in value]
    if len({v.casefold() for v in normalized}) != len(normalized):
        raise ValueError("must not repeat an address")
    return normalized


class AlertSettingsRequest(WireModel):
    """``PUT .../alerts``: the whole settings (an omitted or null field takes its default)."""

    spend_thresholds_percent: Annotated[list[StrictInt], AfterValidator(_thresholds)] = Field(
        default_factory=lambda: [50, 80, 100]
    )
    low_credit_cents: Annotated[Int64 | None, AfterValidator(_low_credit)] = None
    emails: Annotated[
        list[Annotated[str, StringConstraints(max_length=254)]], AfterValidator(_emails)
    ] = Field(default_factory=list)


class AlertSettingsOut(WireModel):
    spend_thresholds_percent: list[int]
    low_credit_cents: Int64 | None = None  # left out when none (as every unset field)
    emails: list[str]
    effective_emails: list[str]
    """Who is actually e-mailed: ``emails``, else the billing-info e-mail, else nobody."""
