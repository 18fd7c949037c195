"""Smtp: delivers a ready EmailMessage; builds nothing. Unconfigured, it writes .eml files."""

from __future__ import annotations

import ipaddress
import logging
import os
import smtplib
import socket
import ssl
import threading
import time
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

import tenacity
from dagster import ConfigurableResource
from pydantic import Field

from agent_pipeline.errors import ConfigurationError
from agent_pipeline.retries import retry_policy

# SMTP_TIMEOUT bounds each read, which a server answering a byte at a time never trips; one
# delivery attempt ends by this deadline whatever the server does. smtplib caps a reply's
# lines, not their number: a reply is cut off past MAX_REPLY_BYTES.
ATTEMPT_DEADLINE_SECONDS = 120.0
MAX_REPLY_BYTES = 65_536

log = logging.getLogger(__name__)


def is_transient(exc: BaseException) -> bool:
    """Worth another attempt: refused or dropped connections, timeouts, and 4xx replies.
    Not a 5xx reply, which the server would repeat, nor a wrong login or an untrusted
    certificate: those need a person."""
    if isinstance(exc, smtplib.SMTPAuthenticationError | ssl.SSLCertVerificationError):
        return False
    if rejects_message(exc):
        return False
    if isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code >= 500:
        return False
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        return not codes or any(code < 500 for code in codes)
    return isinstance(exc, smtplib.SMTPException | OSError)


def rejects_message(exc: BaseException) -> bool:
    """The server refused this one message for good: a 5xx reply to its content (DATA).
    Other messages may still go through. Not a 5xx to the greeting, the login, the sender or
    every recipient (relay denied, a mistyped EMAIL_TO), which every message would get: that
    is the configuration's to fix, and fails the run."""
    return isinstance(exc, smtplib.SMTPDataError) and exc.smtp_code >= 500


def is_loopback(host: str) -> bool:
    """Whether host is this machine: a loopback address, `localhost`, or a name whose every
    address is loopback. A name that does not resolve is not."""
    name = host.strip().removeprefix("[").removesuffix("]")
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    if name.lower().rstrip(".") == "localhost":
        return True
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
    except (OSError, UnicodeError):
        return False
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def check_login_is_encrypted(host: str | None, security: str, username: str | None) -> None:
    """Refuse a login over plain SMTP, which sends the password in clear, unless the server
    is on this machine (a local relay): a ConfigurationError naming SMTP_SECURITY."""
    if host and username and security == "none" and not is_loopback(host):
        raise ConfigurationError(
            "SMTP_SECURITY",
            f"none would send the SMTP_USERNAME login's password unencrypted to {host}; "
            "use starttls or ssl (a plain login is allowed only to a server on loopback)",
        )


class _CappedLines:
    """The reply stream smtplib reads lines from, cut off past a number of bytes a reply."""

    def __init__(self, file: Any, limit: int):
        self._file, self._limit, self._read = file, limit, 0

    def start_reply(self) -> None:
        self._read = 0

    def readline(self, size: int = -1) -> bytes:
        line = self._file.readline(size)
        self._read += len(line)
        if self._read > self._limit:
            raise OSError(f"the server's reply is over {self._limit:,} bytes")
        return line

    def close(self) -> None:
        self._file.close()


class _Bounded:
    """smtplib with one deadline for a whole session and a cap on each reply. At the deadline
    a timer shuts the socket down, which ends any read in progress."""

    def __init__(self, *args: Any, deadline_seconds: float, **kwargs: Any):
        self._deadline = time.monotonic() + deadline_seconds
        self._timer: threading.Timer | None = None
        super().__init__(*args, **kwargs)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the delivery deadline passed")
        sock = super()._get_socket(host, port, min(timeout, remaining))
        # A second handle on the same connection: STARTTLS detaches the first when it wraps
        # it, and a shutdown through this one still ends the wrapped session's reads.
        self._watch = socket.socket(fileno=os.dup(sock.fileno()))
        self._timer = threading.Timer(self._deadline - time.monotonic(), self._expire)
        self._timer.daemon = True
        self._timer.start()
        return sock

    def _expire(self) -> None:
        try:
            self._watch.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # closed already

    def getreply(self) -> tuple[int, bytes]:
        if self.file is None and self.sock is not None:
            self.file = _CappedLines(self.sock.makefile("rb"), MAX_REPLY_BYTES)
        if isinstance(self.file, _CappedLines):
            self.file.start_reply()
        return super().getreply()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._watch.close()
        super().close()


class _BoundedSmtp(_Bounded, smtplib.SMTP):
    pass


class _BoundedSmtpSsl(_Bounded, smtplib.SMTP_SSL):
    pass


class Smtp(ConfigurableResource):
    """An SMTP server (STARTTLS, implicit TLS or plain), or a local outbox folder of .eml
    files when SMTP_HOST is unset."""

    host: str | None = Field(
        default=None, description="SMTP server from SMTP_HOST; unset writes to the outbox."
    )
    port: int = Field(
        default=587, ge=1, le=65535, description="SMTP_PORT: 587 starttls, 465 ssl, 25 none."
    )
    security: Literal["starttls", "ssl", "none"] = Field(
        default="starttls", description="SMTP_SECURITY: starttls, ssl (implicit TLS) or none."
    )
    username: str | None = Field(default=None, description="SMTP_USERNAME; unset: no login.")
    password: str | None = Field(default=None, description="SMTP_PASSWORD (an EnvVar).")
    timeout: float = Field(
        default=30.0, gt=0, description="SMTP_TIMEOUT: seconds per SMTP network operation."
    )
    ca_file: str | None = Field(
        default=None,
        description="SMTP_CA_FILE: a CA bundle for a private server certificate; "
        "certificates are always verified.",
    )
    retries: int = Field(
        default=3, ge=0, description="SMTP_RETRIES: further attempts after a failed delivery."
    )
    retry_backoff_seconds: float = Field(
        default=2.0,
        ge=0,
        description="SMTP_RETRY_BACKOFF: seconds before the first retry; doubles each time.",
    )
    attempt_deadline_seconds: float = Field(
        default=ATTEMPT_DEADLINE_SECONDS,
        description="Seconds one delivery attempt may take in all, however the server answers.",
    )
    outbox_dir: str = Field(
        default=".agent_pipeline/outbox",
        description="Where emails go as .eml files when SMTP_HOST is unset.",
    )

    @property
    def destination(self) -> str:
        """Where send_attempt() delivers, for the log and the UI."""
        if not self.host:
            return f"outbox {Path(self.outbox_dir).resolve()}"
        return f"smtp {self.host}:{self.port} ({self.security})"

    def retrying(self) -> tenacity.Retrying:
        """The retry policy of a delivery: SMTP_RETRIES more attempts after a transient
        failure, SMTP_RETRY_BACKOFF seconds before the first, doubling, with jitter."""
        return retry_policy(
            attempts=self.retries + 1,
            backoff_seconds=self.retry_backoff_seconds,
            worth_retrying=is_transient,
            least_jitter=0.5,
            on_retry=lambda exc, delay: log.warning(
                "SMTP delivery failed (%s: %s); retrying in %.1f s",
                type(exc).__name__, exc, delay,
            ),
        )

    def send_attempt(self, message: EmailMessage) -> str:
        """One delivery attempt; returns where it went."""
        if not self.host:
            return self._write_to_outbox(message)
        # Before connecting: settings.py refuses this at load, but a resource may be built by
        # hand.
        check_login_is_encrypted(self.host, self.security, self.username)
        self._send_once(message)
        return self.destination

    def _send_once(self, message: EmailMessage) -> None:
        # Loading the CA bundle costs tens of milliseconds: only when TLS is used.
        tls = ssl.create_default_context(cafile=self.ca_file) if self.security != "none" else None
        started = time.monotonic()
        try:
            if self.security == "ssl":
                client: _Bounded = _BoundedSmtpSsl(
                    self.host, self.port, timeout=self.timeout, context=tls,
                    deadline_seconds=self.attempt_deadline_seconds,
                )
            else:
                client = _BoundedSmtp(
                    self.host, self.port, timeout=self.timeout,
                    deadline_seconds=self.attempt_deadline_seconds,
                )
            with client:
                if self.security == "starttls":
                    client.starttls(context=tls)
                if self.username:
                    client.login(self.username, self.password or "")
                client.send_message(message)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            if time.monotonic() - started >= self.attempt_deadline_seconds:
                raise TimeoutError(
                    f"the SMTP server did not finish within {self.attempt_deadline_seconds:g} s"
                ) from exc
            raise

    def _write_to_outbox(self, message: EmailMessage) -> str:
        outbox = Path(self.outbox_dir)
        outbox.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = outbox / f"{stamp}-{uuid.uuid4().hex[:8]}.eml"
        path.write_bytes(message.as_bytes())
        return f"outbox file {path.resolve()}"
