from __future__ import annotations

import logging
from email.message import EmailMessage

import pytest

from agent_pipeline.delivery import deliver_once, redeliver_failed
from agent_pipeline.resources.digest import DigestSettings
from agent_pipeline.resources.smtp import Smtp


def message(window: str) -> EmailMessage:
    mail = EmailMessage()
    mail["Subject"], mail["From"], mail["To"] = window, "a@example.com", "b@example.com"
    mail.set_content("body")
    return mail


def test_the_claim_is_released_while_waiting_to_retry(pg_store, smtp_server):
    replies = iter(["451 4.3.0 try later", None])
    smtp_server.fail_with = lambda: next(replies)
    row_id = pg_store.start_run("run-1", "w", "keywords")
    states_while_waiting = []

    class Watching(Smtp):
        def wait_before_retry(self, attempt, exc):
            states_while_waiting.append(pg_store.get_run(row_id)["email_status"])

    smtp = Watching(host=smtp_server.host, port=smtp_server.port, security="none", retries=2)
    assert deliver_once(pg_store, smtp, row_id, message("w")) is not None
    # Between attempts the window was free: a process killed then leaves no stuck claim.
    assert states_while_waiting == ["failed"]
    assert pg_store.get_run(row_id)["email_status"] == "sent"
    assert len(smtp_server.received) == 1


def test_a_permanently_rejected_window_does_not_hold_up_the_others(pg_store, smtp_server):
    for n, window in enumerate(["2026-11-26-09:00", "2026-11-26-09:10"]):
        row_id = pg_store.start_run(f"run-{n}", window, "keywords")
        pg_store.complete_run(row_id, {"top_five": [{"title": f"T{n}", "score": 1.0}]})
        pg_store.claim_email(row_id)
        pg_store.record_email_failed(row_id, "SMTPDataError: earlier")
    smtp_server.fail_with = lambda: "554 5.7.1 rejected" if smtp_server.attempts == 1 else None
    smtp = Smtp(host=smtp_server.host, port=smtp_server.port, security="none", retries=0)
    digest = DigestSettings(
        email_from="a@example.com", email_to="b@example.com",
        webserver_url="https://dagster.example.com/",
    )
    delivered = redeliver_failed(pg_store, smtp, digest, logging.getLogger("test"))
    assert delivered == ["2026-11-26-09:10"]
    assert len(smtp_server.received) == 1
    # The late email links to the run that produced its top five, not to the one sending it.
    text = smtp_server.received[0].message.get_body(("plain",)).get_content()
    assert "https://dagster.example.com/runs/run-1" in text


@pytest.mark.parametrize("hours, expected", [(24, 1), (0, 0)])
def test_redelivery_leaves_old_windows_alone(pg_store, hours, expected):
    row_id = pg_store.start_run("run-1", "2026-11-26-09:00", "keywords")
    pg_store.complete_run(row_id, {"top_five": [{"title": "T", "score": 1.0}]})
    pg_store.claim_email(row_id)
    pg_store.record_email_failed(row_id, "SMTPDataError: earlier")
    assert len(pg_store.undelivered_windows(10, max_age_hours=hours)) == expected
