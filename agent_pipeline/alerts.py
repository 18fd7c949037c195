"""Failure alerts: one email per failed window, sent once Dagster has given up retrying it.
Plain functions over the store and the Smtp resource; the sensors call them."""

from __future__ import annotations

import logging
import smtplib
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from agent_pipeline.emails import WINDOW_HEADER, run_link, window_label
from agent_pipeline.errors import ConfigurationError
from agent_pipeline.partitions import window_bounds
from agent_pipeline.resources.agent_runs import AgentRunsStore, describe_error
from agent_pipeline.resources.digest import DigestSettings
from agent_pipeline.resources.smtp import Smtp, rejects_message
from agent_pipeline.text import storable_text

# Alerts delivered per sensor tick; the rest wait for the next tick.
ALERTS_PER_TICK = 10
# The key of an alert about a window's email (not about a failed run) starts so.
EMAIL_ALERT_PREFIX = "email:"


def alert_key(partition_key: str | None, run_id: str) -> str:
    """What an alert is unique to: the window, or the run when it has none."""
    return partition_key or f"run:{run_id}"


def queue_alert(
    store: AgentRunsStore,
    partition_key: str | None,
    run_id: str,
    error_message: str,
    attempts: int,
) -> bool:
    """Record the alert of a run that failed for good; False when its window has one."""
    return store.add_alert(
        alert_key(partition_key, run_id), partition_key, run_id, error_message, attempts
    )


def queue_unknown_email_alert(store: AgentRunsStore, partition_key: str | None,
                              run_id: str, reason: str) -> bool:
    """Record the alert of a window whose email an attempt died sending; False if queued
    already. Its own key: the window may have a failure alert too."""
    key = EMAIL_ALERT_PREFIX + alert_key(partition_key, run_id)
    return store.add_alert(key, partition_key, run_id, reason, 1)


def build_alert_email(
    *,
    partition_key: str | None,
    run_id: str,
    error_message: str,
    attempts: int,
    sender: str,
    recipients: list[str],
    run_url: str | None,
    about_email: bool = False,
) -> EmailMessage:
    """A plain-text alert: the window, the error, the attempts, the link to the run."""
    if partition_key:
        what = f"window {window_label(*window_bounds(partition_key))}"
    else:
        what = f"run {run_id} (no window)"
    tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
    message = EmailMessage()
    # The error often carries the agent's words: it goes in the body, never in a header.
    message["Subject"] = (
        f"agent_pipeline: the email of {what} may not have gone out"
        if about_email
        else f"agent_pipeline: {what} failed after {tries}"
    )
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain="agent-pipeline.local")
    if partition_key:
        message[WINDOW_HEADER] = partition_key
    lines = [
        f"The digest email of {what} may or may not have gone out."
        if about_email
        else f"agent_job failed for {what} after {tries}.",
        "",
        "Error:",
        f"  {storable_text(error_message)}",
        "",
        f"Run: {run_id}",
    ]
    if run_url:
        lines.append(f"Open it in Dagster: {run_url}")
    lines += [
        "",
        "It is not sent again on its own. If it did not arrive, set its row's email_status "
        "to failed in agent_runs and launch the window."
        if about_email
        else "This is the only alert for this window. Once the cause is fixed, re-execute the "
        "run from the Dagster UI, or backfill the window with the dagster CLI.",
    ]
    message.set_content("\n".join(lines) + "\n")
    return message


def send_pending_alerts(
    store: AgentRunsStore,
    smtp: Smtp,
    digest: DigestSettings,
    log: logging.Logger,
    limit: int = ALERTS_PER_TICK,
) -> list[str]:
    """Deliver queued alerts, oldest first; the alert keys delivered. Each is claimed before
    its one attempt, so two sensor evaluations never send the same alert. A message the
    server rejects for good is marked failed and the others go on; any other failure (the
    server down, a refused login) leaves it pending for the next tick and stops there, as it
    would fail the rest too."""
    recipients = digest.alert_recipients()
    if not recipients:
        return []
    delivered = []
    for alert in store.pending_alerts(limit):
        if not store.claim_alert(alert["id"]):
            continue
        try:
            smtp.send_once(
                build_alert_email(
                    partition_key=alert["partition_key"],
                    run_id=alert["dagster_run_id"],
                    error_message=alert["error_message"],
                    attempts=alert["attempts"],
                    sender=digest.sender(),
                    recipients=recipients,
                    run_url=run_link(digest.webserver_url, alert["dagster_run_id"]),
                    about_email=alert["alert_key"].startswith(EMAIL_ALERT_PREFIX),
                )
            )
        except Exception as exc:
            error = describe_error(exc)
            # An alert that cannot be built (a partition tag that is no window) will not
            # build next time either. A setting the resource refuses (a plain login) is fixed
            # by a person, after which the alert should still go out.
            retryable = smtplib.SMTPException | OSError | ConfigurationError
            if rejects_message(exc) or not isinstance(exc, retryable):
                store.record_alert_rejected(alert["id"], error)
                log.warning(f"Alert for {alert['alert_key']} given up: {error}")
                continue
            store.release_alert(alert["id"], error)
            log.warning(f"Alert for {alert['alert_key']} not delivered, retried later: {error}")
            break
        store.record_alert_sent(alert["id"])
        delivered.append(alert["alert_key"])
    return delivered
