"""STARTTLS, implicit TLS and AUTH against a real server with a certificate made here;
the password never travels in clear text unless allowed, and never reaches logs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from socket import socket
from typing import Any

import pytest
from structlog.testing import capture_logs


@pytest.fixture
def notifier_at(directory, notifier_for) -> Callable[..., Any]:
    """``notifier_at(server, **settings)``: a notifier for ``directory`` that sends to
    ``server`` on loopback."""

    def make(server: Any, **settings: Any) -> Any:
        return notifier_for(directory, host="127.0.0.1", port=server.port, **settings)

    return make


def login(authenticator: Any) -> dict[str, str]:
    """The settings that log in with the credentials the server accepts."""
    return {"user": authenticator.user, "password": authenticator.password}


@pytest.mark.parametrize(
    ("tls", "server_tls"),
    [
        ("starttls", {"require_starttls": True, "auth_require_tls": True}),
        # aiosmtpd only counts STARTTLS as TLS for this check; the session is TLS already
        ("tls", {"auth_require_tls": False}),
    ],
    ids=["starttls", "implicit-tls"],
)
async def test_tls_with_ca_file_and_auth_delivers(
    tls, server_tls, smtp_server, localhost_cert, authenticator, notifier_at, make_event
):
    context = "tls_context" if tls == "starttls" else "ssl_context"
    server = smtp_server(
        **{context: localhost_cert.server_context()}, authenticator=authenticator, **server_tls
    )
    notifier = notifier_at(server, tls=tls, ca_file=localhost_cert.cert, **login(authenticator))

    deliveries = await notifier.notify(make_event())

    assert [(d.ok, d.attempts) for d in deliveries] == [(True, 1), (True, 1)]
    assert len(server.mailbox.received) == 2
    # (user, password, over TLS) once per message
    assert authenticator.attempts == [(authenticator.user, authenticator.password, True)] * 2


@pytest.mark.parametrize(
    ("offers_starttls", "detail"),
    [
        # no ca_file: the self-signed certificate is not in the system store
        (True, "certificate verify failed"),
        # the server offers no STARTTLS: no fallback to plaintext
        (False, "STARTTLS"),
    ],
    ids=["rejects-a-certificate-it-cannot-verify", "never-falls-back-to-plaintext"],
)
async def test_starttls_fails_without_sending(
    offers_starttls, detail, smtp_server, localhost_cert, directory, notifier_at, make_event
):
    if offers_starttls:
        server = smtp_server(tls_context=localhost_cert.server_context(), require_starttls=True)
    else:
        server = smtp_server()
    directory.admins = directory.admins[:1]

    [delivery] = await notifier_at(server, tls="starttls").notify(make_event())

    assert (delivery.ok, delivery.attempts) == (False, 1)  # retrying cannot help
    assert detail in delivery.detail
    assert server.mailbox.data_commands == 0


async def test_hostname_check_can_be_turned_off_but_the_chain_is_still_verified(
    smtp_server, other_host_cert, localhost_cert, directory, notifier_at, make_event
):
    server = smtp_server(tls_context=other_host_cert.server_context(), require_starttls=True)
    directory.admins = directory.admins[:1]

    async def deliver(**settings):
        [delivery] = await notifier_at(server, tls="starttls", **settings).notify(make_event())
        return delivery

    checked = await deliver(ca_file=other_host_cert.cert)
    unchecked = await deliver(ca_file=other_host_cert.cert, verify_hostname=False)
    wrong_ca = await deliver(ca_file=localhost_cert.cert, verify_hostname=False)

    assert (checked.ok, checked.attempts) == (False, 1)
    assert "127.0.0.1" in checked.detail  # "IP address mismatch, certificate is not valid for..."
    assert unchecked.ok
    assert not wrong_ca.ok and "certificate verify failed" in wrong_ca.detail
    assert len(server.mailbox.received) == 1


async def test_password_is_not_sent_over_plaintext_unless_allowed(
    smtp_server, authenticator, notifier_at, make_event
):
    server = smtp_server(authenticator=authenticator, auth_require_tls=False)

    def notifier(**settings):
        return notifier_at(server, tls="none", **login(authenticator), **settings)

    refused = await notifier().notify(make_event())

    assert [(d.ok, d.attempts) for d in refused] == [(False, 0), (False, 0)]
    assert all(d.detail.startswith("refusing to send the SMTP password") for d in refused)
    assert authenticator.attempts == []
    assert server.mailbox.data_commands == 0

    allowed = await notifier(allow_insecure_auth=True).notify(make_event())

    assert [d.ok for d in allowed] == [True, True]
    assert authenticator.attempts == [(authenticator.user, authenticator.password, False)] * 2


async def test_password_never_reaches_details_logs_or_check_lines(
    smtp_server, localhost_cert, authenticator, notifier_at, make_event, caplog
):
    caplog.set_level(logging.DEBUG)
    secret = "leaky-Pa55-word"  # wrong password: the server quotes it back in its 535 reply
    authenticator.echo_password = True
    server = smtp_server(tls_context=localhost_cert.server_context(), authenticator=authenticator)
    notifier = notifier_at(
        server,
        tls="starttls",
        ca_file=localhost_cert.cert,
        user=authenticator.user,
        password=secret,
    )

    with capture_logs() as logs:
        deliveries = await notifier.notify(make_event())
        checks = await notifier.check()

    assert authenticator.attempts[0][1] == secret  # the server really got (and echoed) it
    assert [(d.ok, d.attempts) for d in deliveries] == [(False, 1), (False, 1)]
    assert all("535 bad password ***" in d.detail for d in deliveries)
    connect = next(c for c in checks if c.name == "smtp connect")
    assert not connect.ok and "535 bad password ***" in connect.detail
    assert any(e["event"] == "smtp.failed" for e in logs)
    # the test server's own log (mail.log) quotes its reply; everything else is ours
    ours = [r.getMessage() for r in caplog.records if not r.name.startswith("mail.log")]
    everything = repr(deliveries) + repr(checks) + repr(logs) + repr(ours) + repr(notifier.settings)
    assert secret not in everything


async def test_check_connects_with_tls_and_auth_then_quits(
    smtp_server, localhost_cert, authenticator, notifier_at
):
    server = smtp_server(
        tls_context=localhost_cert.server_context(),
        require_starttls=True,
        authenticator=authenticator,
    )
    notifier = notifier_at(server, ca_file=localhost_cert.cert, **login(authenticator))

    checks = await notifier.check()

    assert [(c.name, c.ok) for c in checks] == [
        ("smtp settings", True),
        ("smtp connect", True),
        ("smtp recipients", True),
    ]
    assert checks[1].detail == (
        f"connected to 127.0.0.1:{server.port} (starttls), logged in as {authenticator.user}"
    )
    assert checks[2].detail == "2 active admin(s)"
    assert len(authenticator.attempts) == 1
    assert server.mailbox.data_commands == 0


async def test_check_reports_problems_without_raising(directory, notifier_for):
    with socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    directory.admins = []

    down = await notifier_for(directory, host="127.0.0.1", port=port, tls="none").check()
    unconfigured = await notifier_for(directory).check()

    assert [(c.name, c.ok) for c in down] == [
        ("smtp settings", True),
        ("smtp connect", False),
        ("smtp recipients", False),
    ]
    assert "Error connecting to 127.0.0.1" in down[1].detail
    assert [(c.name, c.ok) for c in unconfigured] == [("smtp server", False)]
    assert unconfigured[0].detail.startswith("SMTP host not configured")
