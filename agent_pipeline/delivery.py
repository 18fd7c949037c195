"""Delivering a window's email at most once, and catching up on deliveries that failed.
Plain functions over the store and the Smtp resource."""

from __future__ import annotations

import logging
from email.message import EmailMessage

from agent_pipeline.resources.agent_runs import AgentRunsStore, describe_error
from agent_pipeline.resources.digest import DigestSettings
from agent_pipeline.resources.smtp import Smtp, is_transient, rejects_message

# Windows caught up per run: a long outage is worked off over several runs, not in one.
REDELIVERIES_PER_RUN = 10
# Older digests are left undelivered (their rows say so): after a long outage nobody wants a
# week of them.
REDELIVERY_MAX_AGE_HOURS = 24


def deliver_once(
    store: AgentRunsStore, smtp: Smtp, row_id: int, message: EmailMessage
) -> str | None:
    """Claim the row's window, send, record; retried as SMTP_RETRIES says. None when the
    window is claimed already; the last error (recorded on the row) when every attempt fails.
    The claim covers one attempt at a time and is released while waiting to retry, so a
    process killed between attempts leaves the window free for a later run."""
    for attempt in range(smtp.retries + 1):
        if not store.claim_email(row_id):
            return None
        try:
            destination = smtp.send_once(message)
        except Exception as exc:
            store.record_email_failed(row_id, describe_error(exc))
            if attempt == smtp.retries or not is_transient(exc):
                raise
            smtp.wait_before_retry(attempt, exc)
            continue
        store.record_email_sent(row_id)
        return destination
    raise AssertionError("unreachable")


def redeliver_failed(
    store: AgentRunsStore,
    smtp: Smtp,
    digest: DigestSettings,
    log: logging.Logger,
    limit: int = REDELIVERIES_PER_RUN,
) -> list[str]:
    """Send the emails of earlier windows whose delivery failed; the windows delivered. Stops
    at the first failure: the server is likely still down, and the next run tries again."""
    delivered = []
    for row in store.undelivered_windows(limit, max_age_hours=REDELIVERY_MAX_AGE_HOURS):
        window = row["partition_key"]
        try:
            message = digest.build_email(window, row["result"]["top_five"], row["dagster_run_id"])
            if deliver_once(store, smtp, row["id"], message) is not None:
                delivered.append(window)
        except Exception as exc:
            log.warning(f"Redelivery of window {window} failed again: {describe_error(exc)}")
            # A message the server rejects for good must not hold up the others; anything
            # else (the server down, a timeout) would fail for the rest too.
            if not rejects_message(exc):
                break
    return delivered
