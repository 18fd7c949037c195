"""Delivering a window's email at most once, and catching up on deliveries that failed.
Plain functions over the store and the Smtp resource."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from typing import Any, NamedTuple

from agent_pipeline.emails import build_digest_email, run_link
from agent_pipeline.errors import describe_error
from agent_pipeline.resources.agent_runs import AgentRunsStore
from agent_pipeline.resources.digest import DigestSettings
from agent_pipeline.resources.smtp import Smtp, rejects_message
from agent_pipeline.schema import (
    EMAIL_REJECTED,
    EMAIL_SENDING,
    EMAIL_SENT,
    EMAIL_SKIPPED,
    EMAIL_UNKNOWN,
)

# Windows caught up per run: a long outage is worked off over several runs, not in one.
REDELIVERIES_PER_RUN = 10
# Older digests are left undelivered (their rows say so): after a long outage nobody wants a
# week of them.
REDELIVERY_MAX_AGE_HOURS = 24
ALREADY_SENT = "already sent for this window by another run"


class Delivery(NamedTuple):
    """What became of a window's email, as its row now records it."""

    # EMAIL_SENT, EMAIL_REJECTED (the server refused it for good) or EMAIL_SKIPPED.
    status: str
    # Sent: where it went. Rejected: the server's reply. Skipped: why it was not sent.
    detail: str


def window_email(
    digest: DigestSettings, partition_key: str, top: Sequence[Mapping[str, Any]],
    run_id: str | None,
    result: Mapping[str, Any] | None = None,
) -> EmailMessage:
    """The digest of a window, from DigestSettings' sender to its recipients, linking to the
    run in the Dagster UI; what the LLM cost from the row's result (its agent_stats)."""
    return build_digest_email(
        partition_key=partition_key,
        top=top,
        sender=digest.sender(),
        recipients=digest.recipients(),
        run_url=run_link(digest.webserver_url, run_id),
        agent_stats=(result or {}).get("agent_stats"),
    )


def deliver_window_email(
    store: AgentRunsStore, smtp: Smtp, row_id: int, message: EmailMessage
) -> Delivery:
    """Claim the row's window, send, record; retried as SMTP_RETRIES says. Skipped when the
    window is claimed already, or its email was rejected by the server in an earlier run;
    rejected, and not retried, when the server refuses it for good (5xx). Raises the last
    error (recorded on the row) when every attempt fails otherwise. The claim covers one
    attempt at a time and is released while waiting to retry, so a process killed between
    attempts leaves the window free for a later run."""
    rejected = store.rejected_email(row_id)
    if rejected is not None:
        return _rejected_before(store, row_id, rejected)
    return smtp.retrying()(_attempt, store, smtp, row_id, message)


def _attempt(store: AgentRunsStore, smtp: Smtp, row_id: int, message: EmailMessage) -> Delivery:
    """One claimed attempt; a failure worth retrying is recorded on the row and raised."""
    if not store.claim_email(row_id):
        reason = claim_refused_reason(store.email_claim(row_id))
        store.record_email_skipped(row_id, reason)
        return Delivery(EMAIL_SKIPPED, reason)
    try:
        destination = smtp.send_attempt(message)
    except Exception as exc:
        error = describe_error(exc)
        if rejects_message(exc):
            store.record_email_rejected(row_id, error)
            return Delivery(EMAIL_REJECTED, error)
        store.record_email_failed(row_id, error)
        raise
    store.record_email_sent(row_id)
    return Delivery(EMAIL_SENT, destination)


def claim_refused_reason(holder: dict[str, Any] | None) -> str:
    """Why a row could not claim its window's email, from the row that holds it. Runs of
    agent_job never overlap, so a holder still sending is an attempt that died mid-delivery:
    the server may or may not have taken its email, and it is not sent again."""
    if holder is not None and holder["email_status"] in (EMAIL_SENDING, EMAIL_UNKNOWN):
        return (
            f"a dead attempt (run {holder['dagster_run_id']}) left this window's email "
            "sending: it may or may not have gone out, so it is not sent again"
        )
    return ALREADY_SENT


def _rejected_before(store: AgentRunsStore, row_id: int, rejected: dict[str, Any]) -> Delivery:
    """The server would refuse the window's email again: this row does not try."""
    if rejected["id"] == row_id:
        return Delivery(EMAIL_REJECTED, rejected["email_error"])
    reason = (
        f"the SMTP server rejected this window's email for good in run "
        f"{rejected['dagster_run_id']}: {rejected['email_error']}"
    )
    store.record_email_skipped(row_id, reason)
    return Delivery(EMAIL_SKIPPED, reason)


def redeliver_failed(
    store: AgentRunsStore,
    smtp: Smtp,
    digest: DigestSettings,
    log: logging.Logger,
    limit: int = REDELIVERIES_PER_RUN,
) -> list[str]:
    """Send the emails of earlier windows whose delivery failed; the windows delivered. Stops
    at the first failure: the server is likely still down, and the next run tries again. A
    window the server rejects is recorded so and the others go on."""
    delivered = []
    for row in store.undelivered_windows(limit, max_age_hours=REDELIVERY_MAX_AGE_HOURS):
        window = row["partition_key"]
        try:
            message = window_email(
                digest, window, row["result"]["top_five"], row["dagster_run_id"], row["result"]
            )
            delivery = deliver_window_email(store, smtp, row["id"], message)
        except Exception as exc:
            log.warning(f"Redelivery of window {window} failed again: {describe_error(exc)}")
            break
        if delivery.status == EMAIL_SENT:
            delivered.append(window)
        elif delivery.status == EMAIL_REJECTED:
            log.error(f"The SMTP server rejected the email of window {window}: {delivery.detail}")
    return delivered
