"""DigestSettings: who the digest email is from and to, and where it links to."""

from __future__ import annotations

from typing import Literal

from dagster import ConfigurableResource
from pydantic import Field

from agent_pipeline.emails import parse_address, parse_address_list

# An agent that breaks fails every window: six windows an hour, summed up in one email.
DEFAULT_ALERT_REPEAT_MINUTES = 60


class DigestSettings(ConfigurableResource):
    """Sender and recipients of each window's top-five email and of the failure alerts."""

    email_from: str = Field(description="EMAIL_FROM: the sender address.")
    email_to: str = Field(description="EMAIL_TO: recipient addresses, comma separated.")
    only_new: bool = Field(
        default=True,
        description="EMAIL_ONLY_NEW: leave out of the top five the items that earlier "
        "windows' emails already had.",
    )

    backfill_email: Literal["none", "each"] = Field(
        default="none",
        description="BACKFILL_EMAIL: none (a backfill's runs send no email; their rows say "
        "skipped, backfill) or each (every backfilled window is emailed).",
    )

    alert_email_to: str = Field(
        default="",
        description="ALERT_EMAIL_TO, else EMAIL_TO: who is emailed when a window fails for "
        "good. Empty: alerts are off.",
    )
    alert_repeat_minutes: int = Field(
        default=DEFAULT_ALERT_REPEAT_MINUTES,
        ge=1,
        description="ALERT_REPEAT_MINUTES: while windows go on failing, at most one alert "
        "email per this many minutes, summing up the failures since the last one.",
    )
    webserver_url: str | None = Field(
        default=None,
        description="DAGSTER_WEBSERVER_URL: the Dagster UI as readers of the email reach it; "
        "each email links to its run there.",
    )

    def sender(self) -> str:
        return parse_address(self.email_from, "EMAIL_FROM")

    def recipients(self) -> list[str]:
        return parse_address_list(self.email_to, "EMAIL_TO")

    def alert_recipients(self) -> list[str]:
        """Who gets failure alerts; none when alerts are off."""
        if not self.alert_email_to.strip():
            return []
        return parse_address_list(self.alert_email_to, "ALERT_EMAIL_TO")
