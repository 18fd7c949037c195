from __future__ import annotations

import smtplib
import socket
import ssl
import time
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from agent_pipeline.errors import ConfigurationError
from agent_pipeline.resources.smtp import Smtp, is_loopback, is_transient, rejects_message
from agent_pipeline_tests.helpers import EVERY_RECIPIENT_REFUSED, RecipientRefuser, SmtpCatcher
from agent_pipeline_tests.raw_server import ScriptedServer
from agent_pipeline_tests.services import free_port


def deliver(smtp: Smtp, message: EmailMessage | None = None) -> str:
    """A delivery with the resource's retry policy, as delivery.deliver_window_email makes it."""
    return smtp.retrying()(smtp.send_attempt, message or a_message())


def a_message() -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = "hello"
    message["From"] = "agent@example.com"
    message["To"] = "a@example.com, b@example.com"
    message.set_content("body")
    return message


def test_plain_smtp_delivers_to_every_recipient(smtp_server):
    smtp = Smtp(host=smtp_server.host, port=smtp_server.port, security="none", timeout=5)
    assert deliver(smtp) == f"smtp 127.0.0.1:{smtp_server.port} (none)"
    (mail,) = smtp_server.received
    assert mail.rcpt_tos == ["a@example.com", "b@example.com"]
    assert mail.message["Subject"] == "hello"


def test_without_host_the_email_lands_in_the_outbox(tmp_path):
    smtp = Smtp(outbox_dir=str(tmp_path / "outbox"))
    where = deliver(smtp)
    (path,) = (tmp_path / "outbox").glob("*.eml")
    assert where == f"outbox file {path}"
    saved = message_from_bytes(path.read_bytes(), policy=policy.default)
    assert saved["Subject"] == "hello" and saved.get_content().strip() == "body"


@pytest.fixture(scope="module")
def certificate_authority():
    return trustme.CA()


@pytest.fixture
def tls_smtp_server(certificate_authority, request):
    """aiosmtpd with a certificate for 127.0.0.1, STARTTLS or implicit TLS, with login."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority.issue_cert("127.0.0.1").configure_cert(server_context)
    catcher = SmtpCatcher("127.0.0.1", free_port())

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.password == b"right"
        # handled=False: aiosmtpd then answers 535 itself.
        return AuthResult(success=ok, handled=False)

    implicit = request.param == "ssl"
    controller = Controller(
        catcher,
        hostname=catcher.host,
        port=catcher.port,
        ssl_context=server_context if implicit else None,
        tls_context=None if implicit else server_context,
        require_starttls=not implicit,
        authenticator=authenticate,
        # aiosmtpd only counts STARTTLS as TLS; an implicit-TLS session is encrypted anyway.
        auth_require_tls=not implicit,
    )
    controller.start()
    yield catcher
    controller.stop()


@pytest.fixture
def ca_file(certificate_authority, tmp_path) -> str:
    path = tmp_path / "ca.pem"
    certificate_authority.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.mark.parametrize("tls_smtp_server", ["starttls", "ssl"], indirect=True)
def test_tls_with_login_and_a_verified_certificate(tls_smtp_server, request, ca_file):
    mode = request.node.callspec.params["tls_smtp_server"]
    smtp = Smtp(
        host="127.0.0.1", port=tls_smtp_server.port, security=mode, username="agent",
        password="right", ca_file=ca_file, timeout=5,
    )
    deliver(smtp)
    assert [mail.message["Subject"] for mail in tls_smtp_server.received] == ["hello"]


@pytest.mark.parametrize("tls_smtp_server", ["starttls", "ssl"], indirect=True)
def test_certificates_are_verified_by_default(tls_smtp_server, request):
    mode = request.node.callspec.params["tls_smtp_server"]
    smtp = Smtp(host="127.0.0.1", port=tls_smtp_server.port, security=mode, timeout=5)
    with pytest.raises(ssl.SSLCertVerificationError):
        deliver(smtp)
    assert tls_smtp_server.received == []


@pytest.mark.parametrize("tls_smtp_server", ["starttls"], indirect=True)
def test_a_wrong_password_is_refused(tls_smtp_server, ca_file):
    smtp = Smtp(
        host="127.0.0.1", port=tls_smtp_server.port, security="starttls", username="agent",
        password="wrong", ca_file=ca_file, timeout=5,
    )
    with pytest.raises(smtplib.SMTPAuthenticationError):
        deliver(smtp)
    assert tls_smtp_server.received == []


def plain(smtp_server, **settings) -> Smtp:
    return Smtp(host=smtp_server.host, port=smtp_server.port, security="none",
                retry_backoff_seconds=0.01, **settings)


def test_transient_refusals_are_retried(smtp_server):
    refusals = iter(["451 4.3.0 busy, try later", "421 4.7.0 closing", None])
    smtp_server.fail_with = lambda: next(refusals)
    deliver(plain(smtp_server, retries=3))
    assert smtp_server.attempts == 3 and len(smtp_server.received) == 1


def test_delivery_gives_up_after_the_retries(smtp_server):
    smtp_server.fail_with = lambda: "451 4.3.0 busy"
    with pytest.raises(smtplib.SMTPDataError) as failure:
        deliver(plain(smtp_server, retries=2))
    assert failure.value.smtp_code == 451 and is_transient(failure.value)
    assert smtp_server.attempts == 3 and smtp_server.received == []


@pytest.mark.parametrize("reply", ["550 5.7.1 no", "554 5.7.1 rejected"])
def test_a_5xx_rejection_is_not_retried(smtp_server, reply):
    smtp_server.fail_with = lambda: reply
    with pytest.raises(smtplib.SMTPDataError) as failure:
        deliver(plain(smtp_server, retries=3))
    assert failure.value.smtp_code == int(reply[:3])
    assert rejects_message(failure.value) and not is_transient(failure.value)
    assert smtp_server.attempts == 1 and smtp_server.received == []


@pytest.fixture
def recipient_refuser(request):
    """aiosmtpd on loopback refusing the recipients given as the test's parameter."""
    refuser = RecipientRefuser("127.0.0.1", free_port(), request.param)
    controller = Controller(refuser, hostname=refuser.host, port=refuser.port)
    controller.start()
    yield refuser
    controller.stop()


@pytest.mark.parametrize("recipient_refuser", [EVERY_RECIPIENT_REFUSED], indirect=True)
def test_every_recipient_refused_for_good_is_not_retried(recipient_refuser):
    """Not a rejection of this message either: every digest would get it (a mistyped
    EMAIL_TO, relay denied), so it is the configuration's to fix."""
    with pytest.raises(smtplib.SMTPRecipientsRefused) as failure:
        deliver(plain(recipient_refuser, retries=3))
    assert not rejects_message(failure.value) and not is_transient(failure.value)
    assert recipient_refuser.rcpt_attempts == 2  # one attempt, two recipients
    assert recipient_refuser.received == []


SOME_REFUSED_FOR_NOW = {
    "a@example.com": "550 5.1.1 no such user",
    "b@example.com": "450 4.2.1 mailbox busy",
}


@pytest.mark.parametrize("recipient_refuser", [SOME_REFUSED_FOR_NOW], indirect=True)
def test_recipients_refused_for_now_are_retried(recipient_refuser):
    with pytest.raises(smtplib.SMTPRecipientsRefused) as failure:
        deliver(plain(recipient_refuser, retries=2))
    assert is_transient(failure.value) and not rejects_message(failure.value)
    assert recipient_refuser.rcpt_attempts == 6  # three attempts, two recipients each


def test_a_refused_connection_is_retried_then_raised():
    smtp = Smtp(host="127.0.0.1", port=free_port(), security="none", retries=2,
                retry_backoff_seconds=0.01)
    with pytest.raises(ConnectionRefusedError):
        deliver(smtp)


@pytest.mark.parametrize(
    "error, transient",
    [
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (smtplib.SMTPServerDisconnected("gone"), True),
        (smtplib.SMTPDataError(451, b"later"), True),
        (smtplib.SMTPDataError(550, b"5.7.1 no"), False),
        (smtplib.SMTPSenderRefused(553, b"not yours", "a@example.com"), False),
        (smtplib.SMTPHeloError(554, b"go away"), False),
        (smtplib.SMTPAuthenticationError(535, b"wrong password"), False),
        (ssl.SSLCertVerificationError("untrusted"), False),
        (ValueError("a bug"), False),
    ],
)
def test_what_counts_as_transient(error, transient):
    assert is_transient(error) is transient


@pytest.mark.parametrize(
    "error, rejection",
    [
        (smtplib.SMTPDataError(550, b"5.7.1 spam"), True),
        (smtplib.SMTPDataError(451, b"later"), False),
        (smtplib.SMTPRecipientsRefused({"a@x.org": (550, b"no")}), False),
        (smtplib.SMTPRecipientsRefused({"a@x.org": (550, b"no"), "b@x.org": (451, b"")}), False),
        # Every message would get these: the configuration's to fix, not this message's.
        (smtplib.SMTPSenderRefused(553, b"not yours", "a@example.com"), False),
        (smtplib.SMTPHeloError(554, b"go away"), False),
        (smtplib.SMTPResponseException(530, b"authentication required"), False),
    ],
)
def test_what_counts_as_a_rejection_of_the_message(error, rejection):
    assert rejects_message(error) is rejection


@pytest.fixture
def plain_auth_server():
    """aiosmtpd on loopback offering AUTH without TLS, as a local relay may."""
    catcher = SmtpCatcher("127.0.0.1", free_port())
    logins = []

    def authenticate(server, session, envelope, mechanism, auth_data):
        logins.append((mechanism, auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"right", handled=False)

    controller = Controller(
        catcher, hostname=catcher.host, port=catcher.port,
        authenticator=authenticate, auth_require_tls=False,
    )
    controller.start()
    yield catcher, logins
    controller.stop()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_plain_login_to_a_loopback_relay_works(plain_auth_server, host):
    catcher, logins = plain_auth_server
    smtp = Smtp(host=host, port=catcher.port, security="none", username="agent",
                password="right", timeout=5)
    deliver(smtp)
    assert [mail.message["Subject"] for mail in catcher.received] == ["hello"]
    assert [(login, password) for _, login, password in logins] == [(b"agent", b"right")]


def test_a_plain_login_to_another_machine_is_refused_before_connecting():
    # mail.invalid resolves nowhere: even a broken check would send nothing off the machine.
    smtp = Smtp(host="mail.invalid", port=587, security="none", username="agent",
                password="secret", retries=2, retry_backoff_seconds=0.01, timeout=1)
    with pytest.raises(ConfigurationError) as failure:
        deliver(smtp)
    assert failure.value.variable == "SMTP_SECURITY"
    assert "starttls or ssl" in str(failure.value) and "mail.invalid" in str(failure.value)
    assert not is_transient(failure.value)


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LocalHost.", True),
        ("192.0.2.1", False),
        ("::ffff:192.0.2.1", False),
        ("mail.invalid", False),
    ],
)
def test_what_counts_as_loopback(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    "addresses, loopback",
    [(["127.0.0.1", "::1"], True), (["127.0.0.1", "192.0.2.1"], False)],
)
def test_a_name_is_loopback_only_if_every_address_is(monkeypatch, addresses, loopback):
    # The resolver's answers for a made-up name: no DNS here can be told what to answer.
    def resolve(host, port, *args, **kwargs):
        assert host == "relay.example"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0)) for a in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    assert is_loopback("relay.example") is loopback


def drip_banner(server: ScriptedServer, connection: socket.socket) -> None:
    """A greeting one byte every 0.2 s: each byte well within SMTP_TIMEOUT, for minutes."""
    for byte in b"220-slow.example ESMTP\r\n" * 100 + b"220 ready\r\n":
        server.send(connection, bytes([byte]))
        time.sleep(0.2)


def endless_reply(server: ScriptedServer, connection: socket.socket) -> None:
    """A greeting, then an EHLO reply of endless continuation lines (50 MB at most)."""
    server.send(connection, b"220 flood.example ESMTP\r\n")
    connection.recv(1024)
    line = b"250-" + b"x" * 500 + b"\r\n"
    for _ in range(100_000):
        server.send(connection, line)


def test_a_server_that_drips_its_greeting_meets_the_attempt_deadline():
    with ScriptedServer(drip_banner) as server:
        smtp = Smtp(host="127.0.0.1", port=server.port, security="none", timeout=5,
                    attempt_deadline_seconds=1.5, retries=0)
        with pytest.raises(TimeoutError, match="did not finish within 1.5 s") as failure:
            deliver(smtp)
    assert server.sent < 20  # cut off inside the greeting
    assert is_transient(failure.value)  # the next attempt, or the next run, tries again


def test_an_endless_reply_is_cut_off_at_the_cap():
    with ScriptedServer(endless_reply) as server:
        smtp = Smtp(host="127.0.0.1", port=server.port, security="none", retries=0)
        with pytest.raises(smtplib.SMTPServerDisconnected, match="reply is over 65,536 bytes"):
            deliver(smtp)
    assert server.sent < 10_000_000  # of 50 MB offered


def test_the_attempt_deadline_holds_across_starttls(certificate_authority, ca_file):
    """The deadline passes while the client waits in the TLS handshake (each wait shorter
    than a read's timeout), then the server would drip its reply to the second EHLO for a
    minute: the session still ends at the deadline, though STARTTLS replaced the socket."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority.issue_cert("127.0.0.1").configure_cert(server_context)

    def slow_starttls(server: ScriptedServer, connection: socket.socket) -> None:
        lines = connection.makefile("rb")
        server.send(connection, b"220 slow.example ESMTP\r\n")
        lines.readline()  # EHLO
        time.sleep(0.5)
        server.send(connection, b"250-slow.example\r\n250 STARTTLS\r\n")
        lines.readline()  # STARTTLS
        time.sleep(0.5)
        server.send(connection, b"220 go ahead\r\n")
        time.sleep(0.7)  # the 1.5 s deadline passes in the handshake
        tls = server_context.wrap_socket(connection, server_side=True)
        tls.makefile("rb").readline()  # EHLO again
        for byte in b"250-" + b"x" * 200:
            server.send(tls, bytes([byte]))
            time.sleep(0.3)

    with ScriptedServer(slow_starttls) as server:
        smtp = Smtp(host="127.0.0.1", port=server.port, security="starttls", timeout=5,
                    attempt_deadline_seconds=1.5, ca_file=ca_file, retries=0)
        with pytest.raises(TimeoutError, match="did not finish within 1.5 s"):
            deliver(smtp)
        greeting_and_replies = 24 + 36 + 14
        assert server.sent <= greeting_and_replies  # not one byte of the drip went out
