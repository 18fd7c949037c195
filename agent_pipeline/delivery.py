"""Delivering a window's email at most once, and catching up on deliveries that failed.
Plain functions over the store and the Smtp resource."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from email.message import EmailMessage

from agent_pipeline.emails import build_digest_email
from agent_pipeline.partitions import window_bounds
from agent_pipeline.resources.agent_runs import AgentRunsStore, describe_error
from agent_pipeline.resources.smtp import Smtp

# Windows caught up per run: a long outage is worked off over several runs, not in one.
REDELIVERIES_PER_RUN = 10


def deliver_once(
    store: AgentRunsStore, smtp: Smtp, row_id: int, message: EmailMessage
) -> str | None:
    """Claim the row's window, send, record. None when the window is claimed already; the
    delivery's error (recorded on the row, which releases the claim) when sending fails."""
    if not store.claim_email(row_id):
        return None
    try:
        destination = smtp.send(message)
    except Exception as exc:
        store.record_email_failed(row_id, describe_error(exc))
        raise
    store.record_email_sent(row_id)
    return destination


def redeliver_failed(
    store: AgentRunsStore,
    smtp: Smtp,
    sender: str,
    recipients: Sequence[str],
    log: logging.Logger,
    limit: int = REDELIVERIES_PER_RUN,
) -> list[str]:
    """Send the emails of earlier windows whose delivery failed; the windows delivered. Stops
    at the first failure: the server is likely still down, and the next run tries again."""
    delivered = []
    for row in store.undelivered_windows(limit):
        window = row["partition_key"]
        start, end = window_bounds(window)
        message = build_digest_email(
            partition_key=window,
            window_start=start,
            window_end=end,
            top=row["result"]["top_five"],
            sender=sender,
            recipients=recipients,
        )
        try:
            if deliver_once(store, smtp, row["id"], message) is not None:
                delivered.append(window)
        except Exception as exc:
            log.warning(f"Redelivery of window {window} failed again: {describe_error(exc)}")
            break
    return delivered
