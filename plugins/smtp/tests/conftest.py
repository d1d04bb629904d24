"""A real SMTP server (aiosmtpd on loopback), certificates and events for the smtp tests.

With ``--import-mode=importlib`` test modules cannot import this file, so everything they
need is a fixture.
"""

from __future__ import annotations

import datetime as dt
import email
import ipaddress
import os
import socket
import ssl
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from wrktalk_agent.interfaces import (
    NotificationEvent,
    NotificationKind,
    PluginContext,
    Recipient,
    SmtpConfig,
    StepTiming,
)
from wrktalk_agent_smtp import SmtpNotifier, SmtpSettings

SENDER = "WrkTalk Agent <agent@acme.example>"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Received:
    rcpt_tos: list[str]
    message: EmailMessage


@dataclass
class Mailbox:
    """aiosmtpd handler that keeps what it accepts; ``replies`` are answered to DATA first
    (e.g. ``["451 4.3.0 try again"]``), then ``250``."""

    replies: list[str] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    data_commands: int = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.data_commands += 1
        if self.replies:
            return self.replies.pop(0)
        message = email.message_from_bytes(envelope.content, policy=default_policy)
        assert isinstance(message, EmailMessage)
        self.received.append(Received(list(envelope.rcpt_tos), message))
        return "250 OK"


@dataclass
class Authenticator:
    """Accepts ``user``/``password``; records every attempt and whether it came over TLS.
    ``echo_password`` makes the failure reply quote the password, as a careless server might."""

    user: str = "agent@acme.example"
    password: str = "s3cret-Pa55word"  # a test credential
    attempts: list[tuple[str, str, bool]] = field(default_factory=list)
    echo_password: bool = False

    def __call__(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        # session.ssl is set only after STARTTLS; the transport knows about implicit TLS too
        encrypted = server.transport.get_extra_info("ssl_object") is not None
        self.attempts.append((login, password, encrypted))
        if (login, password) == (self.user, self.password):
            return AuthResult(success=True)
        if self.echo_password:
            return AuthResult(success=False, handled=False, message=f"535 bad password {password}")
        return AuthResult(success=False, handled=False)


@dataclass
class SmtpServer:
    port: int
    mailbox: Mailbox
    controller: Controller


@pytest.fixture
def smtp_server() -> Iterator[Callable[..., SmtpServer]]:
    """Start aiosmtpd servers on 127.0.0.1: ``smtp_server(**aiosmtpd_smtp_kwargs)``;
    ``ssl_context=`` makes it an implicit-TLS server, ``tls_context=`` offers STARTTLS."""
    started: list[Controller] = []

    def start(replies: tuple[str, ...] = (), **kwargs: Any) -> SmtpServer:
        mailbox = Mailbox(replies=list(replies))
        port = free_port()
        controller = Controller(mailbox, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        started.append(controller)
        return SmtpServer(port, mailbox, controller)

    yield start
    for controller in started:
        controller.stop()


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context


def make_self_signed(directory: Path, dns_names: list[str], ips: list[str]) -> CertFiles:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])])
    now = dt.datetime.now(dt.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return CertFiles(cert_path, key_path)


@pytest.fixture(scope="session")
def localhost_cert(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    """Self-signed, valid for localhost and 127.0.0.1."""
    return make_self_signed(tmp_path_factory.mktemp("tls-local"), ["localhost"], ["127.0.0.1"])


@pytest.fixture(scope="session")
def other_host_cert(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    """Self-signed for a name the tests never connect to."""
    return make_self_signed(tmp_path_factory.mktemp("tls-other"), ["mail.example.test"], [])


@dataclass
class StaticDirectory:
    """The plugin's view of the database, held in memory (the database-backed one is
    exercised in test_smtp_database.py)."""

    admins: list[Recipient] = field(default_factory=list)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)

    async def active_admins(self) -> list[Recipient]:
        return list(self.admins)

    async def smtp_config(self) -> SmtpConfig:
        return self.smtp


@pytest.fixture
def authenticator() -> Authenticator:
    return Authenticator()


@pytest.fixture
def directory() -> StaticDirectory:
    """Two active admins; the 'database' names only the sender, tests add the server."""
    return StaticDirectory(
        admins=[
            Recipient(name="Alice Admin", email="alice@acme.example"),
            Recipient(name="Bob Ops", email="bob@acme.example"),
        ],
        smtp=SmtpConfig(sender=SENDER),
    )


@pytest.fixture(autouse=True)
def _no_smtp_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from each test, never from the developer's shell."""
    for name in list(os.environ):
        if name.startswith("WRKTALK_AGENT_SMTP_"):
            monkeypatch.delenv(name)


def make_context(directory: Any, tmp_path: Path) -> PluginContext:
    return PluginContext(
        agent_id="agent-7",
        installation="Acme WrkTalk",
        work_dir=tmp_path,
        directory=directory,
    )


@pytest.fixture
def notifier_for(tmp_path: Path) -> Callable[..., SmtpNotifier]:
    """``notifier_for(directory, **settings)``: fast retries unless a test says otherwise."""

    def make(directory: Any, **settings: Any) -> SmtpNotifier:
        settings.setdefault("retry_backoff", 0.01)
        settings.setdefault("timeout", 5.0)
        return SmtpNotifier(SmtpSettings(**settings), make_context(directory, tmp_path))

    return make


TASK_ID = uuid.UUID("7d6f3c1e-2a4b-4c5d-9e8f-0123456789ab")


@pytest.fixture
def make_event() -> Callable[..., NotificationEvent]:
    """``make_event(kind, **changes)``: a realistic event of that kind."""
    return _make_event


def _make_event(
    kind: NotificationKind = NotificationKind.DEPLOY_FAILED, **changes: Any
) -> NotificationEvent:
    failed = kind not in (NotificationKind.DEPLOY_SUCCEEDED, NotificationKind.ROLLBACK_SUCCEEDED)
    rollback = kind in (NotificationKind.ROLLBACK_SUCCEEDED, NotificationKind.ROLLBACK_FAILED)
    values: dict[str, Any] = {
        "kind": kind,
        "installation": "Acme WrkTalk",
        "task_id": TASK_ID,
        "task_type": "rollback" if rollback else "deploy",
        "outcome": "failed" if failed else "completed",
        "version": "1.1.0" if rollback else "1.2.0",
        "from_version": "1.2.0" if rollback else "1.1.0",
        "to_version": "1.1.0" if rollback else "1.2.0",
        "error": "helm upgrade: context deadline exceeded" if failed else None,
        "agent_id": "agent-7",
        "started_at": dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC),
        "finished_at": dt.datetime(2024, 5, 1, 12, 3, 5, tzinfo=dt.UTC),
        "steps": (
            StepTiming("artifact.verify", 1.25, True),
            StepTiming("deployer.run", 180.0, not failed),
        ),
        "rollback_error": None,
    }
    if kind is NotificationKind.AUTO_ROLLBACK:
        values["rollback_error"] = "helm rollback: release not found"
    values.update(changes)
    return NotificationEvent(**values)
