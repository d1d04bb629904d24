"""What admins receive: structure, subject, wording and values of every kind of email."""

from __future__ import annotations

from email.message import EmailMessage

import jinja2
import pytest
from structlog.testing import capture_logs

from wrktalk_agent.interfaces import NotificationKind

K = NotificationKind


def bodies(message: EmailMessage) -> tuple[str, str]:
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None and html is not None
    # SMTP carries CRLF line ends; compare with the templates' LF
    return text.get_content().replace("\r\n", "\n"), html.get_content().replace("\r\n", "\n")


@pytest.mark.parametrize(
    ("kind", "subject", "wording"),
    [
        (
            K.DEPLOY_SUCCEEDED,
            "[Acme WrkTalk] deploy 1.2.0 succeeded",
            "Release 1.2.0 was deployed.",
        ),
        (K.DEPLOY_FAILED, "[Acme WrkTalk] deploy 1.2.0 failed", "Deploying release 1.2.0 failed."),
        (
            K.ROLLBACK_SUCCEEDED,
            "[Acme WrkTalk] rollback 1.1.0 succeeded",
            "rolled back to release 1.1.0.",
        ),
        (
            K.ROLLBACK_FAILED,
            "[Acme WrkTalk] rollback 1.1.0 failed",
            "Rolling back to release 1.1.0 failed.",
        ),
        (K.TASK_ABANDONED, "[Acme WrkTalk] deploy 1.2.0 abandoned", "stopped sending heartbeats"),
        (
            K.AUTO_ROLLBACK,
            "[Acme WrkTalk] deploy 1.2.0 failed, automatic rollback failed too",
            "the automatic rollback to 1.1.0 failed too",
        ),
    ],
)
async def test_each_kind_reaches_every_admin_as_text_and_html(
    kind, subject, wording, smtp_server, directory, notifier_for, make_event
):
    server = smtp_server()
    notifier = notifier_for(directory, host="127.0.0.1", port=server.port, tls="none")
    event = make_event(kind)

    deliveries = await notifier.notify(event)

    assert [(d.recipient, d.ok, d.attempts) for d in deliveries] == [
        ("alice@acme.example", True, 1),
        ("bob@acme.example", True, 1),
    ]
    received = sorted(server.mailbox.received, key=lambda r: r.rcpt_tos)
    # one message per admin, each addressed to that admin only
    assert [r.rcpt_tos for r in received] == [["alice@acme.example"], ["bob@acme.example"]]
    for item, admin in zip(received, directory.admins, strict=True):
        message = item.message
        assert message["To"] == f"{admin.name} <{admin.email}>"
        assert message["Cc"] is None and message["Bcc"] is None
        assert message["From"] == "WrkTalk Agent <agent@acme.example>"
        assert message["Subject"] == subject
        assert message.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
        text, html = bodies(message)
        for body in (text, html):
            assert wording in body
        if kind is K.AUTO_ROLLBACK:  # both causes on the first line of the mail
            first = text.splitlines()[0]
            assert "context deadline exceeded" in first and "release not found" in first
            assert str(event.task_id) in body
            assert "agent-7" in body
            assert "2024-05-01 12:00:00 UTC" in body and "2024-05-01 12:03:05 UTC" in body
            assert "artifact.verify" in body and "1.2 s" in body
            assert "deployer.run" in body and "3 min 0 s" in body
            if event.error:
                assert event.error in body
            if event.rollback_error:
                assert event.rollback_error in body
        assert f"{event.from_version} → {event.to_version}" in text
        assert f"{event.from_version} &rarr; {event.to_version}" in html


async def test_auto_rollback_that_worked_names_the_release_restored(
    smtp_server, directory, notifier_for, make_event
):
    server = smtp_server()
    notifier = notifier_for(directory, host="127.0.0.1", port=server.port, tls="none")

    await notifier.notify(make_event(K.AUTO_ROLLBACK, rollback_error=None))

    message = server.mailbox.received[0].message
    assert message["Subject"] == "[Acme WrkTalk] deploy 1.2.0 failed, rolled back to 1.1.0"
    text, _ = bodies(message)
    assert "Deploy error:\nhelm upgrade: context deadline exceeded" in text
    assert "Rollback error" not in text


async def test_markup_in_an_error_is_escaped_in_html_and_verbatim_in_text(
    smtp_server, directory, notifier_for, make_event
):
    server = smtp_server()
    notifier = notifier_for(directory, host="127.0.0.1", port=server.port, tls="none")
    error = 'chart hook said <script>alert("x")</script> & stopped'

    await notifier.notify(make_event(K.DEPLOY_FAILED, error=error))

    text, html = bodies(server.mailbox.received[0].message)
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; stopped" in html
    assert error in text


async def test_templates_in_template_dir_replace_the_shipped_ones(
    tmp_path, smtp_server, directory, notifier_for, make_event
):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "body.txt.j2").write_text("Custom for {{ event.task_id }}: {{ headline }}\n")
    server = smtp_server()
    notifier = notifier_for(
        directory, host="127.0.0.1", port=server.port, tls="none", template_dir=templates
    )
    event = make_event(K.DEPLOY_SUCCEEDED)

    await notifier.notify(event)

    text, html = bodies(server.mailbox.received[0].message)
    assert text == f"Custom for {event.task_id}: Release 1.2.0 was deployed.\n"
    assert "<table" in html  # body.html.j2 was not overridden: the shipped one is used


async def test_template_that_fails_to_render_fails_deliveries_without_raising(
    tmp_path, smtp_server, directory, notifier_for, make_event
):
    (tmp_path / "body.html.j2").write_text("<p>{{ event.no_such_field }}</p>")
    server = smtp_server()
    notifier = notifier_for(
        directory, host="127.0.0.1", port=server.port, tls="none", template_dir=tmp_path
    )

    deliveries = await notifier.notify(make_event())

    assert [(d.ok, d.attempts) for d in deliveries] == [(False, 0), (False, 0)]
    assert all("could not render the email templates" in d.detail for d in deliveries)
    assert server.mailbox.data_commands == 0


def test_template_with_a_syntax_error_stops_the_notifier_at_startup(
    tmp_path, directory, notifier_for
):
    (tmp_path / "body.txt.j2").write_text("{% if %}")
    with pytest.raises(jinja2.TemplateSyntaxError):
        notifier_for(directory, host="127.0.0.1", template_dir=tmp_path)


async def test_no_active_admin_logs_a_warning_and_sends_nothing(
    smtp_server, directory, notifier_for, make_event
):
    server = smtp_server()
    directory.admins = []
    notifier = notifier_for(directory, host="127.0.0.1", port=server.port, tls="none")

    with capture_logs() as logs:
        deliveries = await notifier.notify(make_event())

    assert deliveries == []
    assert [(e["event"], e["log_level"]) for e in logs] == [("smtp.no_recipients", "warning")]
    assert server.mailbox.data_commands == 0
