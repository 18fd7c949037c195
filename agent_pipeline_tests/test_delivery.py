from __future__ import annotations

import logging
import smtplib
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller

from agent_pipeline.delivery import deliver_window_email, redeliver_failed
from agent_pipeline.resources.digest import DigestSettings
from agent_pipeline.resources.smtp import Smtp
from agent_pipeline_tests.helpers import EVERY_RECIPIENT_REFUSED, RecipientRefuser, SmtpCatcher
from agent_pipeline_tests.services import free_port

LOG = logging.getLogger("test")
DIGEST = DigestSettings(email_from="a@example.com", email_to="b@example.com")


def message(window: str) -> EmailMessage:
    mail = EmailMessage()
    mail["Subject"], mail["From"], mail["To"] = window, "a@example.com", "b@example.com"
    mail.set_content("body")
    return mail


def test_the_claim_is_released_while_waiting_to_retry(pg_store, smtp_server):
    replies = iter(["451 4.3.0 try later", None])
    smtp_server.fail_with = lambda: next(replies)
    row_id = pg_store.get_or_create_row("run-1", "w", "keywords")
    states_while_waiting = []

    class Watching(Smtp):
        def retrying(self):
            # The policy's own, with a wait that looks at the row instead of sleeping.
            return super().retrying().copy(
                sleep=lambda seconds: states_while_waiting.append(
                    pg_store.get_row(row_id)["email_status"]
                )
            )

    smtp = Watching(host=smtp_server.host, port=smtp_server.port, security="none", retries=2)
    assert deliver_window_email(pg_store, smtp, row_id, message("w")).status == "sent"
    # Between attempts the window was free: a process killed then leaves no stuck claim.
    assert states_while_waiting == ["failed"]
    assert pg_store.get_row(row_id)["email_status"] == "sent"
    assert len(smtp_server.received) == 1


def test_a_permanently_rejected_window_does_not_hold_up_the_others(pg_store, smtp_server):
    for n, window in enumerate(["2026-11-26-09:00", "2026-11-26-09:10"]):
        row_id = pg_store.get_or_create_row(f"run-{n}", window, "keywords")
        pg_store.complete_run(row_id, {"top_five": [{"title": f"T{n}", "score": 1.0}]})
        pg_store.claim_email(row_id)
        pg_store.record_email_failed(row_id, "SMTPDataError: earlier")
    smtp_server.fail_with = lambda: "554 5.7.1 rejected" if smtp_server.attempts == 1 else None
    smtp = Smtp(host=smtp_server.host, port=smtp_server.port, security="none", retries=0)
    digest = DigestSettings(
        email_from="a@example.com", email_to="b@example.com",
        webserver_url="https://dagster.example.com/",
    )
    delivered = redeliver_failed(pg_store, smtp, digest, LOG)
    assert delivered == ["2026-11-26-09:10"]
    rejected = pg_store.runs_for_window("2026-11-26-09:00")[0]
    assert rejected["email_status"] == "rejected"
    assert len(smtp_server.received) == 1
    # The late email links to the run that produced its top five, not to the one sending it.
    text = smtp_server.received[0].message.get_body(("plain",)).get_content()
    assert "https://dagster.example.com/runs/run-1" in text


@pytest.mark.parametrize("hours, expected", [(24, 1), (0, 0)])
def test_redelivery_leaves_old_windows_alone(pg_store, hours, expected):
    row_id = pg_store.get_or_create_row("run-1", "2026-11-26-09:00", "keywords")
    pg_store.complete_run(row_id, {"top_five": [{"title": "T", "score": 1.0}]})
    pg_store.claim_email(row_id)
    pg_store.record_email_failed(row_id, "SMTPDataError: earlier")
    assert len(pg_store.undelivered_windows(10, max_age_hours=hours)) == expected


def plain(smtp_server, retries: int = 3) -> Smtp:
    return Smtp(host=smtp_server.host, port=smtp_server.port, security="none",
                retries=retries, retry_backoff_seconds=0.01)


def finished_row(store, run_id: str, window: str) -> int:
    row_id = store.get_or_create_row(run_id, window, "keywords")
    store.complete_run(row_id, {"top_five": [{"title": window, "score": 1.0}]})
    return row_id


def test_a_rejected_digest_is_tried_once_and_recorded(pg_store, smtp_server):
    smtp_server.fail_with = lambda: "550 5.7.1 no"
    row_id = finished_row(pg_store, "run-1", "w")
    delivery = deliver_window_email(pg_store, plain(smtp_server), row_id, message("w"))
    assert smtp_server.attempts == 1
    assert delivery.status == "rejected" and "5.7.1 no" in delivery.detail
    row = pg_store.get_row(row_id)
    assert row["email_status"] == "rejected"
    assert row["email_error"] == "SMTPDataError: (550, b'5.7.1 no')" == delivery.detail
    # Not for redelivery either.
    assert pg_store.undelivered_windows(10) == []
    assert redeliver_failed(pg_store, plain(smtp_server), DIGEST, LOG) == []
    assert smtp_server.attempts == 1


def test_a_later_run_of_a_rejected_window_does_not_try_again(pg_store, smtp_server):
    smtp_server.fail_with = lambda: "550 5.7.1 no"
    first = finished_row(pg_store, "run-1", "w")
    deliver_window_email(pg_store, plain(smtp_server), first, message("w"))
    smtp_server.fail_with = None
    second = finished_row(pg_store, "run-2", "w")
    delivery = deliver_window_email(pg_store, plain(smtp_server), second, message("w"))
    assert smtp_server.attempts == 1 and smtp_server.received == []
    assert delivery.status == "skipped"
    assert delivery.detail == (
        "the SMTP server rejected this window's email for good in run run-1: "
        "SMTPDataError: (550, b'5.7.1 no')"
    )
    row = pg_store.get_row(second)
    assert (row["email_status"], row["email_error"]) == ("skipped", delivery.detail)
    # The rejected row keeps what the server said.
    assert pg_store.get_row(first)["email_status"] == "rejected"
    # Its own row asked again: still rejected, not retried.
    delivery = deliver_window_email(pg_store, plain(smtp_server), first, message("w"))
    assert delivery.status == "rejected"
    assert smtp_server.attempts == 1


def test_rejected_windows_never_crowd_out_a_window_to_redeliver(pg_store, smtp_server):
    windows = [f"2026-11-26-{9 + n // 6:02d}:{n % 6}0" for n in range(11)]
    *rejected, last = windows
    smtp_server.fail_with = lambda: "550 5.7.1 no"
    for n, window in enumerate(rejected):
        row_id = finished_row(pg_store, f"run-{n}", window)
        delivery = deliver_window_email(pg_store, plain(smtp_server), row_id, message(window))
        assert delivery.status == (
            "rejected"
        )
    smtp_server.fail_with = lambda: "451 4.3.0 try later"
    row_id = finished_row(pg_store, "run-last", last)
    with pytest.raises(smtplib.SMTPDataError):
        deliver_window_email(pg_store, plain(smtp_server, retries=0), row_id, message(last))
    assert pg_store.get_row(row_id)["email_status"] == "failed"
    assert smtp_server.attempts == 11

    smtp_server.fail_with = None
    assert redeliver_failed(pg_store, plain(smtp_server), DIGEST, LOG) == [last]
    assert [mail.message["X-Agent-Pipeline-Window"] for mail in smtp_server.received] == [last]
    assert smtp_server.attempts == 12
    statuses = [pg_store.runs_for_window(w)[0]["email_status"] for w in windows]
    assert statuses == ["rejected"] * 10 + ["sent"]


def test_a_digest_every_recipient_refuses_fails_and_stays_deliverable(pg_store):
    """Every digest would be refused so: the delivery fails (the run fails and alerts), and
    once EMAIL_TO is fixed a later run delivers it."""
    refuser = RecipientRefuser("127.0.0.1", free_port(), EVERY_RECIPIENT_REFUSED)
    controller = Controller(refuser, hostname=refuser.host, port=refuser.port)
    controller.start()
    try:
        row_id = finished_row(pg_store, "run-1", "w")
        mail = message("w")
        del mail["To"]
        mail["To"] = ", ".join(EVERY_RECIPIENT_REFUSED)
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            deliver_window_email(pg_store, plain(refuser), row_id, mail)
    finally:
        controller.stop()
    assert refuser.rcpt_attempts == 2  # one attempt, two recipients
    row = pg_store.get_row(row_id)
    assert row["email_status"] == "failed"
    assert row["email_error"].startswith("SMTPRecipientsRefused:")
    assert [r["id"] for r in pg_store.undelivered_windows(10)] == [row_id]


class SenderRefuser(SmtpCatcher):
    """Refuses every sender: what a server answers a wrong EMAIL_FROM or a missing login."""

    async def handle_MAIL(self, server, session, envelope, address, options):  # noqa: N802
        self.attempts += 1
        return "553 5.7.1 sender not allowed"


def test_a_5xx_every_message_would_get_fails_the_delivery_not_the_window(pg_store):
    """A refused sender is the configuration's to fix: the row is failed (redelivered once it
    is fixed, and the run fails and alerts), not rejected for good."""
    refuser = SenderRefuser("127.0.0.1", free_port())
    controller = Controller(refuser, hostname=refuser.host, port=refuser.port)
    controller.start()
    try:
        row_id = finished_row(pg_store, "run-1", "2026-11-26-09:00")
        with pytest.raises(smtplib.SMTPSenderRefused):
            deliver_window_email(pg_store, plain(refuser), row_id, message("w"))
    finally:
        controller.stop()
    assert refuser.attempts == 1  # a 5xx is not retried
    row = pg_store.get_row(row_id)
    assert row["email_status"] == "failed" and "553" in row["email_error"]


def test_a_claim_a_dead_attempt_left_is_named_so_not_sent_again(pg_store, smtp_server):
    """Run 1's worker died while sending: its row still holds the window's email. Run 2 does
    not send (the server may have taken it), and its row says why, truly."""
    dead = finished_row(pg_store, "run-1", "2026-11-26-09:00")
    assert pg_store.claim_email(dead)  # and then the worker was killed
    later = finished_row(pg_store, "run-2", "2026-11-26-09:00")
    delivery = deliver_window_email(pg_store, plain(smtp_server), later, message("w"))
    assert delivery.status == "skipped" and smtp_server.attempts == 0
    assert pg_store.get_row(later)["email_error"] == (
        "a dead attempt (run run-1) left this window's email sending: it may or may not "
        "have gone out, so it is not sent again"
    )
    pg_store.record_email_sent(dead)  # had it finished, the reason would be the usual one
    third = finished_row(pg_store, "run-3", "2026-11-26-09:00")
    assert deliver_window_email(pg_store, plain(smtp_server), third, message("w")).detail == (
        "already sent for this window by another run"
    )
