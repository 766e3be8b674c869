"""Wire models of the console's operator route (operator-api.md, "Console links")."""

from __future__ import annotations

from pydantic import Field

from billfold.console.service import IssuedLink
from billfold.kit.schemas import UtcDateTime, WireModel


class ConsoleLinkRequest(WireModel):
    ttl_minutes: int = Field(default=60)


class ConsoleLinkOut(WireModel):
    url: str
    expire_time: UtcDateTime


def link_out(link: IssuedLink) -> ConsoleLinkOut:
    return ConsoleLinkOut(url=link.url, expire_time=link.link.expires_at)
