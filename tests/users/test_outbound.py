"""The mail senders against real local SMTP servers: plain, STARTTLS, implicit TLS, AUTH."""

from __future__ import annotations

import ipaddress
import logging
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from authserver.outbound import (
    Mail,
    MailError,
    OutboxMailer,
    SmtpMailer,
    build_mailer,
    deliver,
)
from authserver.settings import ConfigError, Settings
from tests.users.conftest import Inbox, free_port

USER, PASSWORD = "mailer", "s3cret pass"


class RecordingInbox(Inbox):
    """Also notes, per message, whether it came over TLS and after a successful login."""

    def __init__(self) -> None:
        super().__init__()
        self.sessions: list[tuple[bool, bool]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        encrypted = server.transport.get_extra_info("ssl_object") is not None
        self.sessions.append((encrypted, bool(session.authenticated)))
        return await super().handle_DATA(server, session, envelope)


def check_login(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: (cert file, key file)."""
    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


def trusting(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate[0]))


def serve(inbox: Inbox, host: str = "127.0.0.1", **options: Any) -> Iterator[int]:
    port = free_port(host)
    controller = Controller(inbox, hostname=host, port=port, **options)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def test_plain_smtp_delivers_a_plain_text_message() -> None:
    inbox = RecordingInbox()
    for port in serve(inbox):
        mailer = SmtpMailer(f"smtp://127.0.0.1:{port}", "ID <no-reply@id.example.com>")
        mailer.send("ann@example.com", "Hello", "Line one\nhttps://id.example.com/x?token=abc\n")

    assert inbox.sessions == [(False, False)]
    (message,) = inbox.messages
    assert message["From"] == "ID <no-reply@id.example.com>"
    assert message["To"] == "ann@example.com"
    assert message["Subject"] == "Hello"
    assert message["Message-ID"]
    assert message.get_content_type() == "text/plain"
    assert "https://id.example.com/x?token=abc" in message.get_content()


def test_starttls_is_used_when_offered_and_the_certificate_is_checked(
    certificate: tuple[Path, Path],
) -> None:
    inbox = RecordingInbox()
    for port in serve(inbox, tls_context=server_tls(certificate)):
        url = f"smtp://127.0.0.1:{port}"
        SmtpMailer(url, "a@b.example", tls_context=trusting(certificate)).send("x@y.z", "s", "t")
        with pytest.raises(MailError, match="CERTIFICATE_VERIFY_FAILED"):
            SmtpMailer(url, "a@b.example").send("x@y.z", "s", "t")

    assert [tls for tls, _ in inbox.sessions] == [True]


def test_smtps_speaks_tls_from_the_first_byte(certificate: tuple[Path, Path]) -> None:
    inbox = RecordingInbox()
    options = {"authenticator": check_login, "auth_require_tls": False}
    for port in serve(inbox, ssl_context=server_tls(certificate), **options):
        url = f"smtps://{USER}:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{port}"
        mailer = SmtpMailer(url, "a@b.example", tls_context=trusting(certificate))
        mailer.send("x@y.z", "s", "t")

    assert inbox.sessions == [(True, True)]


def test_credentials_in_the_url_log_in(certificate: tuple[Path, Path]) -> None:
    inbox = RecordingInbox()
    options = {
        "tls_context": server_tls(certificate),
        "authenticator": check_login,
        "auth_required": True,
        "auth_exclude_mechanism": ["LOGIN"],
    }
    for port in serve(inbox, **options):
        url = f"smtp://{USER}:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{port}"
        right = SmtpMailer(url, "a@b.example", tls_context=trusting(certificate))
        wrong = SmtpMailer(url.replace("%20pass", "%20x"), "a@b", tls_context=trusting(certificate))
        right.send("x@y.z", "s", "t")
        with pytest.raises(MailError, match="SMTPAuthenticationError"):
            wrong.send("x@y.z", "s", "t")

    assert inbox.sessions == [(True, True)]


def test_credentials_never_cross_the_network_in_the_clear() -> None:
    """A server that offers no TLS (or an attacker who strips STARTTLS) gets no password."""
    inbox = RecordingInbox()
    options = {"authenticator": check_login, "auth_require_tls": False}
    for port in serve(inbox, "127.0.0.2", **options):
        mailer = SmtpMailer(f"smtp://{USER}:x@127.0.0.2:{port}", "a@b.example")
        with pytest.raises(MailError, match="no TLS"):
            mailer.send("x@y.z", "s", "t")

    assert inbox.messages == []


def test_deliver_logs_a_refused_connection_instead_of_raising(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mailer = SmtpMailer(f"smtp://127.0.0.1:{free_port()}", "a@b.example", timeout=2)

    with caplog.at_level(logging.ERROR, logger="authserver.mail"):
        assert deliver(mailer, Mail("x@y.z", "Reset your password", "secret link")) is False

    assert "could not send mail 'Reset your password'" in caplog.text
    assert "secret link" not in caplog.text


def test_the_outbox_logs_and_keeps_the_latest_messages(caplog: pytest.LogCaptureFixture) -> None:
    outbox = OutboxMailer(size=2)

    with caplog.at_level(logging.INFO, logger="authserver.mail"):
        for n in range(3):
            assert deliver(outbox, Mail(f"u{n}@example.com", f"Subject {n}", f"link {n}"))

    assert [m.to for m in outbox.messages] == ["u1@example.com", "u2@example.com"]
    assert "link 2" in caplog.text


def test_settings_choose_the_sender() -> None:
    assert isinstance(build_mailer(Settings()), OutboxMailer)
    smtp = build_mailer(Settings(issuer="https://id.example.com", smtp_url="smtps://mx:465"))
    assert isinstance(smtp, SmtpMailer)
    assert (smtp.host, smtp.port, smtp.implicit_tls) == ("mx", 465, True)
    assert smtp.sender == "no-reply@id.example.com"
    assert build_mailer(Settings(smtp_url="smtp://mx")).port == 587  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AUTHSERVER_SMTP_URL", "http://mail.example.com"),
        ("AUTHSERVER_SMTP_URL", "smtp://"),
        ("AUTHSERVER_SMTP_URL", "smtp://mx:99999"),
        ("AUTHSERVER_MAIL_FROM", "nobody"),
        ("AUTHSERVER_MAIL_FROM", "a@b.example\r\nBcc: victim@example.com"),
        ("AUTHSERVER_PASSWORD_RESET_TTL", "0"),
    ],
)
def test_bad_mail_settings_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: value}, env_file=None)
    assert caught.value.variable == variable
