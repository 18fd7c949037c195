from __future__ import annotations

import smtplib
import ssl
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from agent_pipeline.resources.smtp import Smtp, is_transient
from agent_pipeline_tests.conftest import SmtpCatcher
from agent_pipeline_tests.services import free_port


def a_message() -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = "hello"
    message["From"] = "agent@example.com"
    message["To"] = "a@example.com, b@example.com"
    message.set_content("body")
    return message


def test_plain_smtp_delivers_to_every_recipient(smtp_server):
    smtp = Smtp(host=smtp_server.host, port=smtp_server.port, security="none", timeout=5)
    assert smtp.send(a_message()) == f"smtp 127.0.0.1:{smtp_server.port} (none)"
    (mail,) = smtp_server.received
    assert mail.rcpt_tos == ["a@example.com", "b@example.com"]
    assert mail.message["Subject"] == "hello"


def test_without_host_the_email_lands_in_the_outbox(tmp_path):
    smtp = Smtp(outbox_dir=str(tmp_path / "outbox"))
    where = smtp.send(a_message())
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
    smtp.send(a_message())
    assert [mail.message["Subject"] for mail in tls_smtp_server.received] == ["hello"]


@pytest.mark.parametrize("tls_smtp_server", ["starttls", "ssl"], indirect=True)
def test_certificates_are_verified_by_default(tls_smtp_server, request):
    mode = request.node.callspec.params["tls_smtp_server"]
    smtp = Smtp(host="127.0.0.1", port=tls_smtp_server.port, security=mode, timeout=5)
    with pytest.raises(ssl.SSLCertVerificationError):
        smtp.send(a_message())
    assert tls_smtp_server.received == []


@pytest.mark.parametrize("tls_smtp_server", ["starttls"], indirect=True)
def test_a_wrong_password_is_refused(tls_smtp_server, ca_file):
    smtp = Smtp(
        host="127.0.0.1", port=tls_smtp_server.port, security="starttls", username="agent",
        password="wrong", ca_file=ca_file, timeout=5,
    )
    with pytest.raises(smtplib.SMTPAuthenticationError):
        smtp.send(a_message())
    assert tls_smtp_server.received == []


def plain(smtp_server, **settings) -> Smtp:
    return Smtp(host=smtp_server.host, port=smtp_server.port, security="none",
                retry_backoff_seconds=0.01, **settings)


def test_transient_refusals_are_retried(smtp_server):
    refusals = iter(["451 4.3.0 busy, try later", "421 4.7.0 closing", None])
    smtp_server.fail_with = lambda: next(refusals)
    plain(smtp_server, retries=3).send(a_message())
    assert smtp_server.attempts == 3 and len(smtp_server.received) == 1


@pytest.mark.parametrize("reply", ["451 4.3.0 busy", "554 5.7.1 rejected"])
def test_delivery_gives_up_after_the_retries(smtp_server, reply):
    smtp_server.fail_with = lambda: reply
    with pytest.raises(smtplib.SMTPDataError) as failure:
        plain(smtp_server, retries=2).send(a_message())
    assert failure.value.smtp_code == int(reply[:3])
    assert smtp_server.attempts == 3 and smtp_server.received == []


def test_a_refused_connection_is_retried_then_raised():
    smtp = Smtp(host="127.0.0.1", port=free_port(), security="none", retries=2,
                retry_backoff_seconds=0.01)
    with pytest.raises(ConnectionRefusedError):
        smtp.send(a_message())


@pytest.mark.parametrize(
    "error, transient",
    [
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (smtplib.SMTPServerDisconnected("gone"), True),
        (smtplib.SMTPDataError(451, b"later"), True),
        (smtplib.SMTPAuthenticationError(535, b"wrong password"), False),
        (ssl.SSLCertVerificationError("untrusted"), False),
        (ValueError("a bug"), False),
    ],
)
def test_what_counts_as_transient(error, transient):
    assert is_transient(error) is transient
