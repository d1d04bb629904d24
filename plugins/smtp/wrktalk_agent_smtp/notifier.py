"""The smtp notifier: one email per active admin after each task."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid, parseaddr
from typing import Any, ClassVar, Literal

import aiosmtplib
from aiosmtplib.response import SMTPResponse
from aiosmtplib.typing import Default
from pydantic import SecretStr
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from wrktalk_agent.interfaces import (
    BackendError,
    CheckResult,
    Deliveries,
    Delivery,
    DeliveryAttempt,
    DeliveryOutcome,
    NotificationEvent,
    PluginContext,
    Recipient,
    SmtpConfig,
)
from wrktalk_agent.log import get_logger
from wrktalk_agent_smtp.render import Rendered, Templates
from wrktalk_agent_smtp.settings import SmtpSettings, TlsMode

_DEFAULT_PORTS: dict[TlsMode, int] = {"starttls": 587, "tls": 465, "none": 25}

#: Mail providers cap concurrent sessions per account (often at a handful), so recipients
#: are sent to in parallel only this far.
_PARALLEL_SENDS = 3


@dataclass(frozen=True)
class Server:
    """Where and as whom to send, resolved from the environment and the database."""

    host: str | None
    port: int
    user: str | None
    password: SecretStr | None
    sender: str | None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class SmtpNotifier:
    """Emails the outcome of each task to every active admin, one message per admin.

    One message per recipient (rather than one message with Bcc) keeps admins from seeing
    each other's addresses even on servers that mishandle Bcc, and gives a delivery result
    per admin for the task's record.
    """

    name: ClassVar[str] = "smtp"
    settings_model: ClassVar[type[SmtpSettings]] = SmtpSettings

    def __init__(self, settings: SmtpSettings | None, context: PluginContext) -> None:
        self.settings = settings if settings is not None else SmtpSettings()
        self.context = context
        self.templates = Templates(self.settings.template_dir)
        self.log = get_logger(plugin=self.name)
        self._tls_context = self._make_tls_context()

    # -- the Notifier protocol --------------------------------------------------------
    async def notify(self, event: NotificationEvent) -> Deliveries:
        """Send to every active admin now (outside the outbox: tests, one-off sends)."""
        try:
            return await self.deliver(event, DeliveryAttempt())
        except BackendError as exc:
            return [Delivery.of("active admins", "temporary", str(exc), attempts=0)]

    async def deliver(self, event: NotificationEvent, attempt: DeliveryAttempt) -> Deliveries:
        """Send to every active admin not in ``attempt.skip``, each their own message;
        report each outcome as soon as it is known. Raises :class:`BackendError` only when
        the recipients cannot be read (nothing was sent)."""
        log = self.log.bind(task_id=str(event.task_id), kind=event.kind.value)
        try:
            admins = await self.context.directory.active_admins()
        except Exception as exc:
            log.error("smtp.recipients_unavailable", error=str(exc))
            raise BackendError(f"could not read active admins: {exc}") from exc
        if not admins:
            log.warning("smtp.no_recipients", detail="no active admin in the database")
            return []
        recipients = [r for r in admins if r.email not in attempt.skip]
        if not recipients:
            return []

        try:
            rendered = self.templates.render(event)
        except Exception as exc:  # an operator's template failing at render time
            reason = f"could not render the email templates: {exc}"
            return await self._not_sent(recipients, reason, log, attempt)
        server = await self._resolve_server(log)
        problem = self._refusal(server)
        if problem is not None:
            return await self._not_sent(recipients, problem, log, attempt)

        limit = asyncio.Semaphore(_PARALLEL_SENDS)

        # the same notification delivered again (after a crash) keeps its Message-ID
        key = str(event.notification_id) if event.notification_id is not None else None

        async def deliver(recipient: Recipient) -> Delivery:
            async with limit:
                delivery = await self._deliver(server, rendered, recipient, log, key, attempt)
            await attempt.report(delivery)
            return delivery

        return await asyncio.gather(*(deliver(r) for r in recipients))

    async def check(self) -> Sequence[CheckResult]:
        server = await self._resolve_server(self.log)
        where = f"{server.address} ({self.settings.tls})"
        problem = self._refusal(server)
        if problem is not None:
            return [CheckResult("smtp server", False, problem)]
        results = [CheckResult("smtp settings", True, f"{where}, from {server.sender}")]
        try:
            async with self._client(server):
                pass  # connect, TLS and AUTH happen on entry, QUIT on exit
        except Exception as exc:
            results.append(CheckResult("smtp connect", False, self._describe(exc, server)))
        else:
            detail = f"connected to {where}"
            if server.user:
                detail += f", logged in as {server.user}"
            results.append(CheckResult("smtp connect", True, detail))
        try:
            admins = await self.context.directory.active_admins()
        except Exception as exc:
            results.append(CheckResult("smtp recipients", False, f"could not read admins: {exc}"))
        else:
            count = f"{len(admins)} active admin(s)" if admins else "no active admin to tell"
            results.append(CheckResult("smtp recipients", bool(admins), count))
        return results

    async def _not_sent(
        self, recipients: list[Recipient], reason: str, log: Any, attempt: DeliveryAttempt
    ) -> list[Delivery]:
        """Nothing was attempted (``attempts=0``): the same reason for every recipient.
        Temporary: once the configuration is fixed, the outbox's next attempt sends."""
        log.error("smtp.not_sent", reason=reason, recipients=len(recipients))
        deliveries = [Delivery.of(r.email, "temporary", reason, attempts=0) for r in recipients]
        for delivery in deliveries:
            await attempt.report(delivery)
        return deliveries

    # -- configuration ----------------------------------------------------------------
    async def _resolve_server(self, log: Any) -> Server:
        """Environment settings win; the database fills the gaps. Read on every send so an
        admin's change in ``deployment_config`` applies without restarting the agent."""
        try:
            stored = await self.context.directory.smtp_config()
        except Exception as exc:  # the env settings alone may still be enough
            log.warning("smtp.config_unavailable", error=str(exc))
            stored = SmtpConfig()
        env = self.settings
        return Server(
            host=env.host or stored.host or None,
            port=env.port or stored.port or _DEFAULT_PORTS[env.tls],
            user=env.user or stored.user or None,
            password=_nonempty(env.password) or _nonempty(stored.password),
            sender=env.sender or stored.sender or _address_or_none(env.user or stored.user),
        )

    def _refusal(self, server: Server) -> str | None:
        """Why nothing can be sent with this configuration, or ``None``."""
        if not server.host:
            return (
                "SMTP host not configured (set deployment_config.smtp_host "
                "or WRKTALK_AGENT_SMTP_HOST)"
            )
        if not server.sender:
            return (
                "SMTP sender not configured (set deployment_config.smtp_from "
                "or WRKTALK_AGENT_SMTP_SENDER)"
            )
        if server.user and self.settings.tls == "none" and not self.settings.allow_insecure_auth:
            return (
                "refusing to send the SMTP password over an unencrypted connection "
                "(WRKTALK_AGENT_SMTP_TLS=none); use starttls or tls, or set "
                "WRKTALK_AGENT_SMTP_ALLOW_INSECURE_AUTH=true"
            )
        return None

    def _make_tls_context(self) -> ssl.SSLContext:
        ca_file = str(self.settings.ca_file) if self.settings.ca_file else None
        context = ssl.create_default_context(cafile=ca_file)
        # The chain is still verified: turning off the name check is for servers reached
        # by an address their certificate does not list, not for trusting anyone.
        context.check_hostname = self.settings.verify_hostname
        return context

    def _client(self, server: Server, gate: _Gate | None = None) -> aiosmtplib.SMTP:
        tls = self.settings.tls
        return _GatedSMTP(
            gate or _Gate(),
            hostname=server.host,
            port=server.port,
            username=server.user,
            password=server.password.get_secret_value() if server.password else None,
            use_tls=tls == "tls",
            # True, not aiosmtplib's default None: never fall back to plaintext when a
            # server (or someone in between) does not offer STARTTLS.
            start_tls=tls == "starttls",
            tls_context=self._tls_context if tls != "none" else None,
            timeout=self.settings.timeout,
        )

    # -- sending ----------------------------------------------------------------------
    async def _deliver(
        self,
        server: Server,
        rendered: Rendered,
        recipient: Recipient,
        log: Any,
        key: str | None,
        attempt: DeliveryAttempt,
    ) -> Delivery:
        """One recipient: temporary failures before the message went out are retried here
        (``RETRIES``, with backoff); the outbox retries what is still temporary after that.
        A failure after the message went out without a reply is ``unknown`` and never
        retried here: only the outbox may repeat it, once."""
        log = log.bind(recipient=recipient.email)

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            log.warning(
                "smtp.retrying",
                attempt=state.attempt_number,
                error=self._describe(error, server) if error else "",
                wait_seconds=state.upcoming_sleep,
            )

        attempts = 0
        try:
            # Inside the try: a malformed name or address from the database must fail
            # this recipient only.
            message = build_message(rendered, server.sender or "", recipient, key=key)
            async for retrying in AsyncRetrying(
                retry=retry_if_exception(_worth_retrying_now),
                stop=stop_after_attempt(self.settings.retries + 1),
                wait=wait_exponential(multiplier=self.settings.retry_backoff),
                before_sleep=before_sleep,
                reraise=True,
            ):
                with retrying:
                    attempts = retrying.retry_state.attempt_number
                    await self._send_once(server, message, recipient.email, attempt)
        except Exception as exc:
            outcome = _outcome(exc)
            detail = self._failure_detail(exc, outcome, attempts, server)
            log.error("smtp.failed", attempts=attempts, outcome=outcome, detail=detail)
            return Delivery.of(recipient.email, outcome, detail, attempts)
        log.info("smtp.sent", attempts=attempts, server=server.address)
        detail = f"accepted by {server.address}"
        return Delivery.of(recipient.email, "delivered", detail, attempts)

    async def _send_once(
        self, server: Server, message: EmailMessage, address: str, attempt: DeliveryAttempt
    ) -> None:
        """One SMTP session for one recipient. Raises :class:`_Withheld` when the outbox
        says not to send, :class:`_Unanswered` when the message went out and no reply
        came; a reply after the message (``4xx``/``5xx``) is reported to the outbox at
        once, so that a retry here counts as a new send, not as a repeat."""
        gate = _Gate(lambda: attempt.sending(address))
        try:
            async with self._client(server, gate) as smtp:
                await smtp.send_message(message, recipients=[address])
        except _Withheld:
            raise
        except Exception as exc:
            if gate.accepted:
                return  # 250 came; only the goodbye (QUIT) failed
            if not gate.sent:
                raise
            if isinstance(exc, aiosmtplib.SMTPResponseException):
                # the server answered: it has not taken the message
                outcome = _outcome(exc)
                await attempt.report(Delivery.of(address, outcome, self._describe(exc, server), 1))
                raise
            raise _Unanswered(exc) from exc

    def _failure_detail(
        self, exc: BaseException, outcome: DeliveryOutcome, attempts: int, server: Server
    ) -> str:
        if isinstance(exc, _Withheld):
            return "not sent: the outbox withheld it (lease lost or repeat used up)"
        if isinstance(exc, _Unanswered):
            cause = self._describe(exc.cause, server)
            return f"outcome unknown: no reply after the message was sent: {cause}"
        return f"{outcome} failure after {attempts} attempt(s): {self._describe(exc, server)}"

    def _describe(self, exc: BaseException, server: Server) -> str:
        if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
            text = "; ".join(f"{r.code} {r.message}" for r in exc.recipients)
        elif isinstance(exc, aiosmtplib.SMTPResponseException):
            text = f"{exc.code} {exc.message}"
        else:
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        # Servers echo odd things; the password must not reach a log line or task result.
        secrets = [p.get_secret_value() for p in (server.password, self.settings.password) if p]
        for secret in secrets:
            text = text.replace(secret, "***")
        return text


def is_temporary(exc: BaseException) -> bool:
    """Worth retrying: 4xx replies, lost or refused connections, timeouts.

    5xx replies, certificate problems and missing server features are permanent.
    """
    if isinstance(exc, _Unanswered | _Withheld):
        return True
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return all(is_temporary(r) for r in exc.recipients)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return 400 <= exc.code < 500
    if _caused_by(exc, ssl.SSLCertVerificationError):
        return False
    # OSError covers refused connections, aiosmtplib's disconnect/connect errors and
    # (since Python 3.11, where asyncio.TimeoutError is TimeoutError) its timeouts.
    return isinstance(exc, OSError)


def _worth_retrying_now(exc: BaseException) -> bool:
    """Retried within this attempt: temporary failures before the message went out, and
    replies refusing it. Never an unanswered send (only the outbox may repeat it) nor a
    send the outbox withheld."""
    return not isinstance(exc, _Unanswered | _Withheld) and is_temporary(exc)


def _outcome(exc: BaseException) -> DeliveryOutcome:
    if isinstance(exc, _Unanswered):
        return "unknown"
    return "temporary" if is_temporary(exc) else "permanent"


class _Withheld(Exception):
    """The outbox said not to send to this recipient now."""


class _Unanswered(Exception):
    """The message went out (SMTP ``DATA``) and no reply came: it may have arrived."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Gate:
    """Where one SMTP session stands: asks before ``DATA`` (the point of no return) and
    remembers whether the message went out and whether the server took it."""

    def __init__(self, ask: Callable[[], Awaitable[bool]] | None = None) -> None:
        self.ask = ask
        self.sent = False
        self.accepted = False


class _GatedSMTP(aiosmtplib.SMTP):
    """aiosmtplib's client with a gate before ``DATA``: everything before it (connect,
    TLS, AUTH, ``MAIL``, ``RCPT``) can fail and be retried without anyone getting the
    message; from ``DATA`` on, a failure without a reply leaves the outcome unknown."""

    def __init__(self, gate: _Gate, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = gate

    async def data(
        self,
        message: str | bytes,
        /,
        *,
        timeout: float | Literal[Default.token] | None = Default.token,
    ) -> SMTPResponse:
        if self.gate.ask is not None and not await self.gate.ask():
            raise _Withheld()
        self.gate.sent = True
        response = await super().data(message, timeout=timeout)
        self.gate.accepted = True
        return response


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``exc`` or an exception it was raised from is a ``kind``
    (aiosmtplib wraps TLS failures in its own connection errors)."""
    current: BaseException | None = exc
    seen: set[int] = set()
    while current is not None and id(current) not in seen:  # chains can loop
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


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


def _nonempty(secret: SecretStr | None) -> SecretStr | None:
    return secret if secret is not None and secret.get_secret_value() else None


def _address_or_none(user: str | None) -> str | None:
    """Many providers log in with the mailbox address; it is then the natural sender."""
    return user if user and "@" in user else None
