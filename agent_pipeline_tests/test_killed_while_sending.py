"""A run worker killed while it sends the digest, with the real daemon (`make dev`): the SMTP
server has taken the whole message and never answers, so nobody knows whether it went out.

The sweeper that settles such an email runs every 5 minutes and its last tick is kept in the
instance: a restart alone does not make it tick again. Instead of waiting, the stack is
restarted with its clock (shifted_clock/sitecustomize.py) 6 minutes on, as after a daemon
restart 6 minutes later."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy

import pytest
from aiosmtpd.controller import Controller

from agent_pipeline.jobs import agent_job
from agent_pipeline.resources.agent_runs import DIED_WHILE_SENDING
from agent_pipeline_tests.helpers import (
    RUN_ENDED,
    RUN_SECONDS,
    ReceivedMail,
    SmtpCatcher,
    agent_rows,
    run_worker_pid,
    shifted_clock,
    stop_the_schedule,
)
from agent_pipeline_tests.services import free_port
from agent_pipeline_tests.topology import launch_window, local_dev, run_status, wait_for

pytestmark = pytest.mark.slow

DIGEST_TO = "team@example.com"
ALERT_TO = "ops@example.com"
WINDOW_HEADER = "X-Agent-Pipeline-Window"


@dataclass
class StallingCatcher(SmtpCatcher):
    """An aiosmtpd catcher that takes the whole of the first message of window `stall_window`
    and then never answers it (until `release`); every other message is caught as usual."""

    stall_window: str = ""
    stalled: list[ReceivedMail] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        message = message_from_bytes(envelope.original_content, policy=policy.default)
        if message[WINDOW_HEADER] == self.stall_window and not self.stalled and (
            DIGEST_TO in envelope.rcpt_tos
        ):
            self.stalled.append(ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos), message))
            while not self.release.is_set():
                await asyncio.sleep(0.2)
            return "451 4.3.0 too late"
        return await super().handle_DATA(server, session, envelope)


@contextmanager
def stalling_smtp_server(window: str) -> Iterator[StallingCatcher]:
    catcher = StallingCatcher("127.0.0.1", free_port(), stall_window=window)
    controller = Controller(catcher, hostname=catcher.host, port=catcher.port)
    controller.start()
    try:
        yield catcher
    finally:
        catcher.release.set()
        controller.stop()


def test_a_worker_killed_while_sending_leaves_the_email_unknown_alerts_once_and_never_resends(
    tmp_path,
):
    window = agent_job.partitions_def.get_partition_keys()[-160]  # a day back: no tick's
    with stalling_smtp_server(window) as smtp:
        settings = {
            "AGENT_PIPELINE_HOME": str(tmp_path / "agent"),
            "SMTP_HOST": smtp.host,
            "SMTP_PORT": str(smtp.port),
            "SMTP_SECURITY": "none",
            # Longer than the test takes to kill the worker: the stall is never cut short.
            "SMTP_TIMEOUT": "600",
            "EMAIL_FROM": "Agent <agent@example.com>",
            "EMAIL_TO": DIGEST_TO,
            "ALERT_EMAIL_TO": ALERT_TO,
        }

        def row_of(run_id):
            (row,) = [r for r in agent_rows(tmp_path) if r["dagster_run_id"] == run_id]
            return row

        with local_dev(tmp_path, settings) as dev:
            port = dev.web_port
            # No tick's run of another window among the test's (nor a catch-up after the
            # restart's clock jump).
            stop_the_schedule(port)
            killed = launch_window(port, window)

            # The server holds the whole digest, the row holds the window's claim: the worker
            # waits inside send_email for the server's answer.
            def waiting_for_the_server():
                return (
                    smtp.stalled
                    and row_of(killed)["email_status"] == "sending"
                    and run_worker_pid(port, killed)
                )

            pid = wait_for(waiting_for_the_server, "the digest was not being sent",
                           RUN_SECONDS, dev.processes)
            os.kill(pid, signal.SIGKILL)

            def row_failed():
                row = row_of(killed)
                return row["status"] == "failed" and row

            row = wait_for(row_failed, "the killed run's row was not marked failed", 120,
                           dev.processes)
            assert row["error_message"].startswith("run killed or lost: ")
            assert "signal 9" in row["error_message"]
            assert run_status(port, killed) == "FAILURE"
            # The sweeper ticked when the stack started; its next tick is 5 minutes after that.
            assert row["email_status"] == "sending", row
        stopped_at = datetime.now(UTC)

        # The stack again, its clock 6 minutes on: the sweeper is due at once.
        later = shifted_clock(stopped_at + timedelta(minutes=6))
        with local_dev(tmp_path, {**settings, **later}) as dev:
            port = dev.web_port

            def email_unknown():
                row = row_of(killed)
                return row["email_status"] == "unknown" and row

            row = wait_for(email_unknown, "the sweeper did not settle the email", 180,
                           dev.processes)
            assert row["status"] == "failed"
            assert row["email_error"] == DIED_WHILE_SENDING

            def email_alerts():
                return [
                    mail for mail in smtp.received
                    if "may not have gone out" in mail.message["Subject"]
                ]

            wait_for(email_alerts, "no alert about the email arrived", 180, dev.processes)

            # The window again: it runs, and sends nothing.
            rerun = launch_window(port, window)
            wait_for(lambda: run_status(port, rerun) in RUN_ENDED, "the re-run did not finish",
                     RUN_SECONDS, dev.processes)
            assert run_status(port, rerun) == "SUCCESS"
            rerun_row = row_of(rerun)

    assert rerun_row["status"] == "succeeded"
    assert rerun_row["email_status"] == "skipped"
    assert rerun_row["email_error"] == (
        f"a dead attempt (run {killed}) left this window's email sending: it may or may not "
        "have gone out, so it is not sent again"
    )
    assert row_of(killed)["email_status"] == "unknown"  # the re-run took nothing from it
    # The one digest of the window is the one the server held; the re-run sent none.
    (stalled,) = smtp.stalled
    assert stalled.message[WINDOW_HEADER] == window and stalled.rcpt_tos == [DIGEST_TO]
    digests = [m for m in smtp.received if DIGEST_TO in m.rcpt_tos]
    assert not [m for m in digests if m.message[WINDOW_HEADER] == window]
    # Exactly one alert says the window's email may not have gone out (the run's own failure
    # alert, "failed after 1 attempt", may come too).
    (alert,) = email_alerts()
    assert alert.rcpt_tos == [ALERT_TO] and alert.message[WINDOW_HEADER] == window
    body = alert.message.get_content()
    assert "may or may not have gone out" in body and f"Run: {killed}" in body
