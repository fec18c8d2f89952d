"""Outbound mail: the one seam through which the server talks to a mail server.

Pages build a message and hand it to `deliver` as a background task, so it is sent after the
response (and so after the transaction that made the link has committed), in the threadpool,
and neither a slow nor a broken mail server can fail a request or tell visitors apart by
timing. Tests point `AUTHSERVER_SMTP_URL` at a local SMTP server.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
import threading
from collections import deque
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Protocol
from urllib.parse import unquote, urlsplit

from authserver.settings import LOOPBACK_HOSTS, Settings

log = logging.getLogger("authserver.mail")

SMTP_TIMEOUT = 10.0
DEFAULT_PORTS = {"smtp": 587, "smtps": 465}
OUTBOX_SIZE = 100


class MailError(Exception):
    """The message could not be handed to the mail server."""


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    text: str


class Mailer(Protocol):
    def send(self, to: str, subject: str, text: str) -> None:
        """Hand one plain-text message to the mail system; raise `MailError` if it refuses."""


class SmtpMailer:
    """Send through an SMTP server named by a URL: `smtp://user:pass@host:port` or `smtps://`.

    `smtps://` speaks TLS from the first byte (port 465). `smtp://` upgrades with STARTTLS when
    the server offers it; credentials are only ever sent over TLS (or to a loopback server),
    so a network attacker who strips STARTTLS gets a refused message, not the password.
    Certificates are verified, against the system trust store unless `tls_context` says else.
    """

    def __init__(
        self,
        url: str,
        sender: str,
        *,
        local_hostname: str = "localhost",
        timeout: float = SMTP_TIMEOUT,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        self.implicit_tls = parts.scheme == "smtps"
        self.host = parts.hostname or "localhost"
        self.port = parts.port or DEFAULT_PORTS[parts.scheme]
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password or "")
        self.sender = sender
        self.local_hostname = local_hostname
        self.timeout = timeout
        self._tls = tls_context or ssl.create_default_context()

    def send(self, to: str, subject: str, text: str) -> None:
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = to
        message["Subject"] = subject
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = make_msgid(domain=self.local_hostname)
        message.set_content(text)
        try:
            with self._connect() as smtp:
                smtp.send_message(message)
        except (smtplib.SMTPException, OSError) as exc:
            raise MailError(f"{type(exc).__name__}: {exc}") from exc

    def _connect(self) -> smtplib.SMTP:
        if self.implicit_tls:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                self.host,
                self.port,
                local_hostname=self.local_hostname,
                timeout=self.timeout,
                context=self._tls,
            )
        else:
            smtp = smtplib.SMTP(
                self.host, self.port, local_hostname=self.local_hostname, timeout=self.timeout
            )
        try:
            encrypted = self.implicit_tls
            smtp.ehlo()
            if not encrypted and smtp.has_extn("starttls"):
                smtp.starttls(context=self._tls)
                smtp.ehlo()
                encrypted = True
            if self.username is not None:
                if not encrypted and self.host not in LOOPBACK_HOSTS:
                    raise MailError("the mail server offers no TLS: credentials not sent")
                smtp.login(self.username, self.password)
        except BaseException:
            smtp.close()
            raise
        return smtp


class OutboxMailer:
    """The development sender: logs each message, links included, and keeps the latest ones.

    Meant for a laptop with no mail server: the sign-up and reset links show up in the server
    log. Anyone who reads that log can use them, so production sets `AUTHSERVER_SMTP_URL`.
    """

    def __init__(self, size: int = OUTBOX_SIZE) -> None:
        self._messages: deque[Mail] = deque(maxlen=size)
        self._lock = threading.Lock()

    def send(self, to: str, subject: str, text: str) -> None:
        with self._lock:
            self._messages.append(Mail(to, subject, text))
        log.info("mail not sent (no AUTHSERVER_SMTP_URL) to %s: %s\n%s", to, subject, text)

    @property
    def messages(self) -> list[Mail]:
        with self._lock:
            return list(self._messages)


def build_mailer(settings: Settings) -> Mailer:
    """SMTP when a server is configured, else the logging outbox."""
    if settings.smtp_url is None:
        return OutboxMailer()
    host = urlsplit(settings.issuer).hostname or "localhost"
    return SmtpMailer(
        settings.smtp_url, settings.mail_from or f"no-reply@{host}", local_hostname=host
    )


def deliver(mailer: Mailer, mail: Mail) -> bool:
    """Send `mail`, logging instead of raising when the mail system refuses it.

    Runs after the response, so there is nobody left to show an error to; what needed the
    message (an account, a reset link) is already committed, and the person can ask again.
    """
    try:
        mailer.send(mail.to, mail.subject, mail.text)
    except MailError as exc:
        log.error("could not send mail %r: %s", mail.subject, exc)
        return False
    return True
