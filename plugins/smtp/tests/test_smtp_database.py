"""Recipients and SMTP settings come from a real database at send time."""

from __future__ import annotations

from wrktalk_agent.testing import add_admins


async def test_recipients_and_server_are_read_from_the_database_before_each_send(
    repo, smtp_server, notifier_for, make_event
):
    first, second = smtp_server(), smtp_server()
    await add_admins(
        repo,
        ("Alice Admin", "alice@acme.example", True),
        ("Bob Ops", "bob@acme.example", True),
        ("Carol Former", "carol@acme.example", False),
    )
    await repo.pool.execute(
        "INSERT INTO deployment_config (smtp_host, smtp_port, smtp_from) VALUES ($1, $2, $3)",
        "127.0.0.1",
        first.port,
        "WrkTalk <noreply@acme.example>",
    )
    notifier = notifier_for(repo, tls="none")  # nothing about the server in the environment

    deliveries = await notifier.notify(make_event())

    assert [(d.recipient, d.ok) for d in deliveries] == [
        ("alice@acme.example", True),
        ("bob@acme.example", True),
    ]
    assert sorted(r.rcpt_tos[0] for r in first.mailbox.received) == [
        "alice@acme.example",
        "bob@acme.example",
    ]
    assert {r.message["From"] for r in first.mailbox.received} == {"WrkTalk <noreply@acme.example>"}

    # An admin changes the server and who is active; the running notifier follows.
    await repo.pool.execute("UPDATE deployment_config SET smtp_port = $1", second.port)
    await repo.pool.execute(
        "UPDATE admin SET is_active = NOT is_active WHERE email IN ($1, $2)",
        "bob@acme.example",
        "carol@acme.example",
    )

    deliveries = await notifier.notify(make_event())

    assert [(d.recipient, d.ok) for d in deliveries] == [
        ("alice@acme.example", True),
        ("carol@acme.example", True),
    ]
    assert len(first.mailbox.received) == 2  # nothing more went to the old server
    assert sorted(r.rcpt_tos[0] for r in second.mailbox.received) == [
        "alice@acme.example",
        "carol@acme.example",
    ]


async def test_environment_settings_override_the_database(
    repo, smtp_server, localhost_cert, authenticator, notifier_for, make_event
):
    stale, current = (
        smtp_server(),
        smtp_server(
            tls_context=localhost_cert.server_context(),
            require_starttls=True,
            authenticator=authenticator,
        ),
    )
    await add_admins(repo, ("Alice Admin", "alice@acme.example", True))
    # the database holds the login; the environment points at another port and sender
    await repo.pool.execute(
        "INSERT INTO deployment_config (smtp_host, smtp_port, smtp_user, smtp_password, smtp_from)"
        " VALUES ($1, $2, $3, $4, $5)",
        "127.0.0.1",
        stale.port,
        authenticator.user,
        authenticator.password,
        "db-sender@acme.example",
    )
    notifier = notifier_for(
        repo,
        port=current.port,
        sender="env-sender@acme.example",
        ca_file=localhost_cert.cert,
    )

    [delivery] = await notifier.notify(make_event())

    assert delivery.ok, delivery.detail
    assert stale.mailbox.data_commands == 0
    assert [r.message["From"] for r in current.mailbox.received] == ["env-sender@acme.example"]
    assert authenticator.attempts == [(authenticator.user, authenticator.password, True)]
