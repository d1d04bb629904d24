"""The email one recipient gets."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid, parseaddr

from wrktalk_agent.interfaces import Recipient
from wrktalk_agent_smtp.render import Rendered


def build_message(
    rendered: Rendered, sender: str, recipient: Recipient, *, key: str | None = None
) -> EmailMessage:
    """The mail to one recipient. With ``key`` (the notification's id) the Message-ID is
    derived from it and the recipient, so a repeated delivery carries the same one and
    mail systems can tell it is a repeat."""
    message = EmailMessage()
    message["Subject"] = rendered.subject
    message["From"] = sender
    message["To"] = formataddr((recipient.name, recipient.email))
    message["Date"] = format_datetime(datetime.now(UTC))
    domain = parseaddr(sender)[1].rpartition("@")[2] or "wrktalk-agent.invalid"
    if key is not None:
        who = hashlib.sha256(recipient.email.lower().encode()).hexdigest()[:16]
        message["Message-ID"] = f"<{key}.{who}@{domain}>"
    else:
        # make_msgid's default domain is socket.getfqdn(), which can block on DNS.
        message["Message-ID"] = make_msgid(domain=domain)
    # RFC 3834: keeps vacation responders from answering the agent.
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(rendered.text)
    message.add_alternative(rendered.html, subtype="html")
    return message
