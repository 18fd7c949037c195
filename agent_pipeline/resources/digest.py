"""DigestSettings: who the digest email is from and to."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from agent_pipeline.emails import parse_address, parse_address_list


class DigestSettings(ConfigurableResource):
    """Sender and recipients of each window's top-five email."""

    email_from: str = Field(description="EMAIL_FROM: the sender address.")
    email_to: str = Field(description="EMAIL_TO: recipient addresses, comma separated.")
    only_new: bool = Field(
        default=True,
        description="EMAIL_ONLY_NEW: leave out of the top five the items that earlier "
        "windows' emails already had.",
    )

    def sender(self) -> str:
        return parse_address(self.email_from, "EMAIL_FROM")

    def recipients(self) -> list[str]:
        return parse_address_list(self.email_to, "EMAIL_TO")
