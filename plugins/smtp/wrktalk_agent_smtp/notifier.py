"""The smtp notifier: one email per active admin after each task."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any, ClassVar

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
from wrktalk_agent_smtp.message import build_message
from wrktalk_agent_smtp.outcomes import (
    Gate,
    Unanswered,
    Withheld,
    aiosmtplib_module,
    delivery_outcome,
    worth_retrying_now,
)
from wrktalk_agent_smtp.render import Rendered, Templates
from wrktalk_agent_smtp.settings import SmtpSettings, TlsMode

if TYPE_CHECKING:
    import aiosmtplib

__all__ = ["Server", "SmtpNotifier", "build_message"]

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

    def _client(self, server: Server, gate: Gate | None = None) -> aiosmtplib.SMTP:
        from wrktalk_agent_smtp.client import GatedSMTP

        tls = self.settings.tls
        return GatedSMTP(
            gate or Gate(),
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
                retry=retry_if_exception(worth_retrying_now),
                stop=stop_after_attempt(self.settings.retries + 1),
                wait=wait_exponential(multiplier=self.settings.retry_backoff),
                before_sleep=before_sleep,
                reraise=True,
            ):
                with retrying:
                    attempts = retrying.retry_state.attempt_number
                    await self._send_once(server, message, recipient.email, attempt)
        except Exception as exc:
            outcome = delivery_outcome(exc)
            detail = self._failure_detail(exc, outcome, attempts, server)
            log.error("smtp.failed", attempts=attempts, outcome=outcome, detail=detail)
            return Delivery.of(recipient.email, outcome, detail, attempts)
        log.info("smtp.sent", attempts=attempts, server=server.address)
        detail = f"accepted by {server.address}"
        return Delivery.of(recipient.email, "delivered", detail, attempts)

    async def _send_once(
        self, server: Server, message: EmailMessage, address: str, attempt: DeliveryAttempt
    ) -> None:
        """One SMTP session for one recipient. Raises :class:`Withheld` when the outbox
        says not to send, :class:`Unanswered` when the message went out and no reply
        came; a reply after the message (``4xx``/``5xx``) is reported to the outbox at
        once, so that a retry here counts as a new send, not as a repeat."""
        gate = Gate(lambda: attempt.sending(address))
        try:
            async with self._client(server, gate) as smtp:
                await smtp.send_message(message, recipients=[address])
        except Withheld:
            raise
        except Exception as exc:
            if gate.accepted:
                return  # 250 came; only the goodbye (QUIT) failed
            if not gate.sent:
                raise
            if isinstance(exc, aiosmtplib_module().SMTPResponseException):
                # the server answered: it has not taken the message
                outcome = delivery_outcome(exc)
                await attempt.report(Delivery.of(address, outcome, self._describe(exc, server), 1))
                raise
            raise Unanswered(exc) from exc

    def _failure_detail(
        self, exc: BaseException, outcome: DeliveryOutcome, attempts: int, server: Server
    ) -> str:
        if isinstance(exc, Withheld):
            return "not sent: the outbox withheld it (lease lost or repeat used up)"
        if isinstance(exc, Unanswered):
            cause = self._describe(exc.cause, server)
            return f"outcome unknown: no reply after the message was sent: {cause}"
        return f"{outcome} failure after {attempts} attempt(s): {self._describe(exc, server)}"

    def _describe(self, exc: BaseException, server: Server) -> str:
        if isinstance(exc, aiosmtplib_module().SMTPRecipientsRefused):
            text = "; ".join(f"{r.code} {r.message}" for r in exc.recipients)
        elif isinstance(exc, aiosmtplib_module().SMTPResponseException):
            text = f"{exc.code} {exc.message}"
        else:
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        # Servers echo odd things; the password must not reach a log line or task result.
        secrets = [p.get_secret_value() for p in (server.password, self.settings.password) if p]
        for secret in secrets:
            text = text.replace(secret, "***")
        return text


def _nonempty(secret: SecretStr | None) -> SecretStr | None:
    return secret if secret is not None and secret.get_secret_value() else None


def _address_or_none(user: str | None) -> str | None:
    """Many providers log in with the mailbox address; it is then the natural sender."""
    return user if user and "@" in user else None
