"""Delivery outcomes: retries on temporary failures, none on permanent ones, never a raise."""

from __future__ import annotations

import socket

from structlog.testing import capture_logs

from wrktalk_agent.interfaces import Recipient, SmtpConfig


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_server_down_gives_failed_deliveries_after_all_retries(
    directory, notifier_for, make_event
):
    notifier = notifier_for(directory, host="127.0.0.1", port=free_port(), tls="none", retries=2)

    with capture_logs() as logs:
        deliveries = await notifier.notify(make_event())

    assert [(d.recipient, d.ok, d.attempts) for d in deliveries] == [
        ("alice@acme.example", False, 3),
        ("bob@acme.example", False, 3),
    ]
    for delivery in deliveries:
        assert delivery.detail.startswith("temporary failure after 3 attempt(s): ")
        assert "Error connecting to 127.0.0.1" in delivery.detail
    retries = [e for e in logs if e["event"] == "smtp.retrying"]
    assert sorted((e["recipient"], e["attempt"]) for e in retries) == [
        ("alice@acme.example", 1),
        ("alice@acme.example", 2),
        ("bob@acme.example", 1),
        ("bob@acme.example", 2),
    ]


async def test_a_server_that_never_answers_times_out_and_is_retried(
    directory, notifier_for, make_event
):
    # The kernel accepts the connection; nobody ever sends the SMTP greeting.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        notifier = notifier_for(
            directory,
            host="127.0.0.1",
            port=silent.getsockname()[1],
            tls="none",
            timeout=0.3,
            retries=1,
        )
        directory.admins = directory.admins[:1]

        [delivery] = await notifier.notify(make_event())

    assert (delivery.ok, delivery.attempts) == (False, 2)
    assert delivery.detail.startswith("temporary failure after 2 attempt(s): ")
    assert "Timeout" in delivery.detail


async def test_temporary_4xx_reply_is_retried_and_then_delivered(
    smtp_server, directory, notifier_for, make_event
):
    server = smtp_server(replies=("451 4.3.0 Mailbox busy, try later",))
    directory.admins = directory.admins[:1]
    notifier = notifier_for(directory, host="127.0.0.1", port=server.port, tls="none")

    [delivery] = await notifier.notify(make_event())

    assert (delivery.recipient, delivery.ok, delivery.attempts) == ("alice@acme.example", True, 2)
    assert server.mailbox.data_commands == 2
    assert len(server.mailbox.received) == 1


async def test_permanent_5xx_reply_is_not_retried(smtp_server, directory, notifier_for, make_event):
    server = smtp_server(replies=("550 5.1.1 No such mailbox",))
    directory.admins = directory.admins[:1]
    notifier = notifier_for(directory, host="127.0.0.1", port=server.port, tls="none", retries=3)

    [delivery] = await notifier.notify(make_event())

    assert (delivery.ok, delivery.attempts) == (False, 1)
    assert delivery.detail == "permanent failure after 1 attempt(s): 550 5.1.1 No such mailbox"
    assert server.mailbox.data_commands == 1


async def test_missing_host_fails_every_delivery_without_trying(
    directory, notifier_for, make_event
):
    notifier = notifier_for(directory, tls="none")

    deliveries = await notifier.notify(make_event())

    assert [(d.recipient, d.ok, d.attempts) for d in deliveries] == [
        ("alice@acme.example", False, 0),
        ("bob@acme.example", False, 0),
    ]
    assert all(d.detail.startswith("SMTP host not configured") for d in deliveries)


async def test_missing_sender_fails_every_delivery_without_trying(
    smtp_server, directory, notifier_for, make_event
):
    server = smtp_server()
    directory.smtp = SmtpConfig()
    notifier = notifier_for(directory, host="127.0.0.1", port=server.port, tls="none")

    deliveries = await notifier.notify(make_event())

    assert [d.ok for d in deliveries] == [False, False]
    assert all(d.detail.startswith("SMTP sender not configured") for d in deliveries)
    assert server.mailbox.data_commands == 0


async def test_unreadable_database_settings_fall_back_to_the_environment(
    smtp_server, directory, notifier_for, make_event
):
    class ConfigUnreadable:  # admins readable, deployment_config not
        async def active_admins(self) -> list[Recipient]:
            return directory.admins

        async def smtp_config(self) -> SmtpConfig:
            raise ConnectionError("database went away")

    server = smtp_server()
    notifier = notifier_for(
        ConfigUnreadable(),
        host="127.0.0.1",
        port=server.port,
        tls="none",
        sender="ops@acme.example",
    )

    deliveries = await notifier.notify(make_event())

    assert [d.ok for d in deliveries] == [True, True]
    assert {r.message["From"] for r in server.mailbox.received} == {"ops@acme.example"}


async def test_a_malformed_admin_row_fails_only_that_recipient(
    smtp_server, directory, notifier_for, make_event
):
    server = smtp_server()
    directory.admins.insert(0, Recipient(name="Mallory\nBcc: all@acme.example", email="m@x"))
    notifier = notifier_for(directory, host="127.0.0.1", port=server.port, tls="none")

    deliveries = await notifier.notify(make_event())

    assert [(d.recipient, d.ok) for d in deliveries] == [
        ("m@x", False),
        ("alice@acme.example", True),
        ("bob@acme.example", True),
    ]
    assert deliveries[0].detail.startswith("permanent failure after 0 attempt(s): ValueError")
    assert len(server.mailbox.received) == 2


async def test_a_repeated_notification_keeps_its_message_id_per_recipient(
    smtp_server, directory, notifier_for, make_event
):
    """After a crash the outbox delivers the same notification again: each recipient's
    mail carries the same Message-ID both times, so a repeat is recognisable."""
    import uuid

    server = smtp_server()
    notifier = notifier_for(directory, host="127.0.0.1", port=server.port, tls="none")
    event = make_event(notification_id=uuid.uuid4(), changes=("added Service/api",))
    await notifier.notify(event)
    await notifier.notify(event)
    ids: dict[str, list[str]] = {}
    for received in server.mailbox.received:
        ids.setdefault(received.rcpt_tos[0], []).append(received.message["Message-ID"])
    assert len(ids) == len(directory.admins) >= 2
    for first, again in ids.values():
        assert first == again and str(event.notification_id) in first
    assert len({pair[0] for pair in ids.values()}) == len(ids)  # one per recipient
    body = server.mailbox.received[0].message.get_body(("plain",)).get_content()
    assert "added Service/api" in body
