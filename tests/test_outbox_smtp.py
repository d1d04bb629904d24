"""The outbox delivering through the smtp notifier (selected and configured as an
operator would: by name and environment) to a real SMTP server (aiosmtpd on
loopback) that misbehaves, against a real PostgreSQL: every admin gets each notification
exactly once after the server recovers — counted per Message-ID per recipient — except
where a message went out without an answer, which may be repeated once (and is asserted
as such).

Timing comes from settings (retry backoff, NOTIFY_TIMEOUT, the lease), never from sleeps
in the code under test; the server's misbehaviour is scripted by count, not by clock."""

from __future__ import annotations

import asyncio
import contextlib
import email
import threading
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.policy import default as default_policy
from typing import Any
from uuid import UUID

import pytest
from aiosmtpd.controller import Controller

from wrktalk_agent import metrics
from wrktalk_agent.bootstrap import open_services
from wrktalk_agent.db.repository import Repository
from wrktalk_agent.log import get_logger
from wrktalk_agent.outbox import Deliverer, event_json
from wrktalk_agent.testing import add_admins, add_release, free_port, notification_event

ALICE, BOB, CAROL = "alice@acme.example", "bob@acme.example", "carol@acme.example"


@dataclass
class Scripted:
    """An aiosmtpd handler whose misbehaviour is scripted per recipient, by count:

    - ``rcpt[address]``: replies to RCPT TO for that address, used up in order
      (``"450 ..."``, ``"550 ..."``; ``None`` entries accept), then 250;
    - ``data[address]``: what happens to each DATA for that address, in order:
      ``"drop"`` stores the message and closes the connection before answering,
      ``"slow"`` stores it and answers 250 after ``slow_seconds``; then a plain 250.
    ``received`` holds every message stored, whatever the client was told.
    """

    rcpt: dict[str, list[str | None]] = field(default_factory=dict)
    data: dict[str, list[str]] = field(default_factory=dict)
    slow_seconds: float = 0.0
    received: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        with self.lock:
            script = self.rcpt.get(address) or []
            reply = script.pop(0) if script else None
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=default_policy)
        [address] = envelope.rcpt_tos
        with self.lock:
            self.received.append((address, str(message["Message-ID"])))
            script = self.data.get(address) or []
            what = script.pop(0) if script else "ok"
        if what == "drop":
            server.transport.close()
            return "250 OK (nobody hears this)"
        if what == "slow":
            await asyncio.sleep(self.slow_seconds)
        return "250 OK"

    def copies(self) -> Counter[tuple[str, str]]:
        """How many times each recipient got each Message-ID."""
        with self.lock:
            return Counter(self.received)

    def per_recipient(self) -> dict[str, int]:
        """Copies per recipient, each of a single Message-ID (asserted)."""
        copies = self.copies()
        by_address: dict[str, set[str]] = {}
        for address, message_id in copies:
            by_address.setdefault(address, set()).add(message_id)
        assert all(len(ids) == 1 for ids in by_address.values()), copies
        return {address: n for (address, _), n in copies.items()}


@dataclass
class Rig:
    """The outbox of one notification for three admins (one per test), the server's port
    and how to start in-process deliverers (each its own services and pool)."""

    repo: Repository
    port: int
    notification_id: UUID
    task_id: UUID
    settings: Any
    smtp: dict[str, str]
    monkeypatch: pytest.MonkeyPatch
    controllers: list[Controller] = field(default_factory=list)
    repos: list[Repository] = field(default_factory=list)

    def serve(self, handler: Scripted) -> None:
        controller = Controller(handler, hostname="127.0.0.1", port=self.port)
        controller.start()
        self.controllers.append(controller)

    async def deliverer(self, agent_id: str = "agent-a") -> Deliverer:
        """A deliverer with the smtp notifier, selected and configured through the
        environment as in a real agent."""
        for name, value in self.smtp.items():
            self.monkeypatch.setenv(name, value)
        services = await open_services(self.settings.model_copy(update={"agent_id": agent_id}))
        self.repos.append(services.repo)
        return Deliverer(services, get_logger(agent_id=agent_id))

    async def row(self) -> Any:
        return await self.repo.pool.fetchrow(
            "SELECT status, attempts, deliveries FROM agent_notification WHERE id = $1",
            self.notification_id,
        )

    async def recipients(self) -> dict[str, Any]:
        rows = await self.repo.pool.fetch(
            "SELECT * FROM agent_notification_recipient WHERE notification_id = $1",
            self.notification_id,
        )
        return {r["recipient"]: r for r in rows}

    async def settled(
        self, *deliverers: Deliverer, timeout: float = 30.0, every: bool = False
    ) -> Any:
        """Run the deliverers until the notification (``every``: each one) is no longer
        pending."""
        stop = asyncio.Event()
        runs = [asyncio.create_task(d.run(stop)) for d in deliverers]
        try:
            async with asyncio.timeout(timeout):
                while (row := await self.row())["status"] == "pending" or (
                    every and await self.repo.pending_notifications()
                ):
                    await asyncio.sleep(0.05)
            return row
        finally:
            stop.set()
            for run in runs:
                run.cancel()
            for run in runs:
                with contextlib.suppress(asyncio.CancelledError):
                    await run


@pytest.fixture
async def rig(agent_settings, repo, monkeypatch) -> AsyncIterator[Rig]:
    await add_admins(repo, ("Alice", ALICE), ("Bob", BOB), ("Carol", CAROL))
    release = await add_release(repo, "1.1.0")
    task = await repo.create_task("deploy", release.id)
    # the task is over (an agent would otherwise run it); its notification is promised
    await repo.pool.execute(
        "UPDATE agent_task SET status = 'completed', completed_at = now() WHERE id = $1", task.id
    )
    event = notification_event("deploy_succeeded", task_id=task.id, installation="Acme")
    nid = await repo.pool.fetchval(
        "INSERT INTO agent_notification (task_id, notifier, event) VALUES ($1, 'smtp', $2)"
        " RETURNING id",
        task.id,
        event_json(event),
    )
    settings = agent_settings.model_copy(
        update={
            "deployer": "script",
            "notifiers": ["smtp"],
            "notify_timeout": 1.5,
            "notify_retry_min": 0.05,
            "notify_retry_max": 0.2,
            # lease 4 s, renewed every 0.5 s: a loaded machine does not lose it
            "heartbeat_interval": 0.5,
            "stale_after": 2.0,
            "stale_margin": 2.0,
            "poll_interval": 0.2,
        }
    )
    port = free_port()
    smtp = {
        "WRKTALK_AGENT_SMTP_HOST": "127.0.0.1",
        "WRKTALK_AGENT_SMTP_PORT": str(port),
        "WRKTALK_AGENT_SMTP_TLS": "none",
        "WRKTALK_AGENT_SMTP_SENDER": "WrkTalk <agent@acme.example>",
        "WRKTALK_AGENT_SMTP_RETRIES": "0",  # the outbox retries, visibly, in these tests
        "WRKTALK_AGENT_SMTP_TIMEOUT": "10",
    }
    rig = Rig(repo, port, nid, task.id, settings, smtp, monkeypatch)
    try:
        yield rig
    finally:
        for controller in rig.controllers:
            controller.stop()
        for opened in rig.repos:
            await opened.close()


def failed_total() -> float:
    return metrics.NOTIFICATIONS_FAILED.labels(notifier="smtp")._value.get()


# -- (a) a server that refuses connections for a while -----------------------------------
async def test_a_server_refusing_connections_gets_each_mail_once_after_it_recovers(rig):
    deliverer = await rig.deliverer()
    # nothing listens on the port: every connection is refused
    for _ in range(3):
        await rig.repo.pool.execute(
            "UPDATE agent_notification SET next_attempt_at = now() WHERE id = $1",
            rig.notification_id,
        )
        await deliverer.deliver_due()
    row = await rig.row()
    assert row["status"] == "pending" and row["attempts"] == 3  # not "delivered" to nobody
    states = await rig.recipients()
    assert {r: s["state"] for r, s in states.items()} == dict.fromkeys(
        (ALICE, BOB, CAROL), "pending"
    )
    assert all(s["sends"] == 0 for s in states.values())  # nothing ever went out
    assert "Error connecting" in states[ALICE]["detail"]

    server = Scripted()
    rig.serve(server)
    row = await rig.settled(deliverer)

    assert row["status"] == "delivered"
    assert server.per_recipient() == {ALICE: 1, BOB: 1, CAROL: 1}
    assert {r: (s["state"], s["sends"]) for r, s in (await rig.recipients()).items()} == {
        ALICE: ("delivered", 1), BOB: ("delivered", 1), CAROL: ("delivered", 1),
    }  # fmt: skip
    task = await rig.repo.get_task(rig.task_id)
    assert [d["ok"] for d in task.result["notifications"]["smtp"]] == [True, True, True]
    timeline = [(e.status, e.message) for e in await rig.repo.task_events(rig.task_id)]
    assert any("retrying (attempt 1)" in m for _, m in timeline), timeline
    assert timeline[-1] == ("info", "smtp: 3/3 delivered")


# -- (b) a flapping server: stores the message, drops the connection before 250 ------------
async def test_a_flapping_server_gets_at_most_one_repeat_per_recipient(rig):
    before = failed_total()
    server = Scripted(data={ALICE: ["drop"], CAROL: ["drop", "drop", "drop", "drop"]})
    rig.serve(server)

    row = await rig.settled(await rig.deliverer())

    # alice: the first message was stored but unanswered (outcome unknown), so it is
    # repeated once: the allowed repeat. bob: once. carol's server drops every time: two
    # copies, then no more (sent twice without an answer).
    assert server.per_recipient() == {ALICE: 1 + 1, BOB: 1, CAROL: 1 + 1}
    states = await rig.recipients()
    assert {r: (s["state"], s["sends"]) for r, s in states.items()} == {
        ALICE: ("delivered", 2), BOB: ("delivered", 1), CAROL: ("unknown", 2),
    }  # fmt: skip
    assert row["status"] == "failed"  # carol's outcome is unknown: not "delivered"
    assert failed_total() == before + 1
    assert "outcome unknown" in states[CAROL]["detail"]


# -- (c) a slow server: 250 only after NOTIFY_TIMEOUT ------------------------------------
async def test_a_server_answering_after_the_notify_timeout_gets_one_repeat_at_most(rig):
    server = Scripted(
        data={ALICE: ["slow"], BOB: ["slow"]}, slow_seconds=rig.settings.notify_timeout + 1.0
    )
    rig.serve(server)

    row = await rig.settled(await rig.deliverer())

    # the first attempt is cut off by NOTIFY_TIMEOUT while alice's and bob's messages
    # wait for their 250: unknown outcomes, each repeated once (the allowed repeat);
    # carol's answer came in time, she is not sent to again
    assert row["status"] == "delivered"
    assert server.per_recipient() == {ALICE: 1 + 1, BOB: 1 + 1, CAROL: 1}
    assert row["attempts"] == 2


# -- (d) a temporary refusal of one recipient --------------------------------------------
async def test_a_4xx_for_one_recipient_retries_only_that_recipient(rig):
    busy = "450 4.2.1 Mailbox busy, try again later"
    server = Scripted(rcpt={BOB: [busy, busy, busy]})
    rig.serve(server)

    row = await rig.settled(await rig.deliverer())

    assert row["status"] == "delivered" and row["attempts"] == 4
    assert server.per_recipient() == {ALICE: 1, BOB: 1, CAROL: 1}
    states = await rig.recipients()
    assert (states[BOB]["state"], states[BOB]["sends"], states[BOB]["attempts"]) == (
        "delivered", 1, 4,
    )  # fmt: skip
    assert states[ALICE]["attempts"] == 1  # never tried again


# -- (e) a permanent refusal of one recipient --------------------------------------------
async def test_a_5xx_for_one_recipient_fails_only_that_recipient(rig):
    before = failed_total()
    server = Scripted(rcpt={CAROL: ["550 5.1.1 No such user"] * 5})
    rig.serve(server)

    row = await rig.settled(await rig.deliverer())

    assert server.per_recipient() == {ALICE: 1, BOB: 1}
    assert row["attempts"] == 1  # nothing was left to retry
    assert row["status"] == "failed" and failed_total() == before + 1
    states = await rig.recipients()
    assert states[CAROL]["state"] == "failed"
    assert "550 5.1.1 No such user" in states[CAROL]["detail"]
    [last] = [e for e in await rig.repo.task_events(rig.task_id) if e.step == "notify"]
    assert last.status == "failed"
    assert last.message.startswith("notification failed: smtp: 2/3 delivered; failed: carol@")


# -- the final deadline ------------------------------------------------------------------
async def test_recipients_not_reached_by_the_deadline_are_given_up_and_shown(rig):
    rig.settings = rig.settings.model_copy(update={"notify_give_up_after": 1.0})
    before = failed_total()

    row = await rig.settled(await rig.deliverer())  # no server ever answers

    assert row["status"] == "failed"
    lived = await rig.repo.pool.fetchval(
        "SELECT extract(epoch FROM finished_at - created_at) FROM agent_notification WHERE id = $1",
        rig.notification_id,
    )
    assert lived >= 1.0  # retried until the deadline, not given up before
    assert failed_total() == before + 1
    states = await rig.recipients()
    assert {s["state"] for s in states.values()} == {"failed"}
    assert states[ALICE]["detail"].startswith("gave up at the deadline; last: temporary failure")
    task = await rig.repo.get_task(rig.task_id)
    assert {d["state"] for d in task.result["notifications"]["smtp"]} == {"failed"}
    events = [e for e in await rig.repo.task_events(rig.task_id) if e.step == "notify"]
    assert events[-1].status == "failed" and "0/3 delivered" in events[-1].message


# -- two agents --------------------------------------------------------------------------
async def test_two_agents_never_send_to_the_same_recipient_at_once(rig):
    # three more notifications of the same task; a slow-ish server keeps sends overlapping
    for _ in range(3):
        event = notification_event("deploy_failed", task_id=rig.task_id)
        await rig.repo.pool.execute(
            "INSERT INTO agent_notification (task_id, notifier, event) VALUES ($1, 'smtp', $2)",
            rig.task_id,
            event_json(event),
        )
    server = Scripted(data={ALICE: ["slow"] * 4}, slow_seconds=0.3)
    rig.serve(server)
    await rig.settled(await rig.deliverer(), await rig.deliverer("agent-b"), every=True)

    copies = server.copies()
    assert len(copies) == 4 * 3  # four notifications, three admins, distinct Message-IDs
    assert set(copies.values()) == {1}, copies
    statuses = await rig.repo.pool.fetch("SELECT DISTINCT status FROM agent_notification")
    assert [r["status"] for r in statuses] == ["delivered"]
    sends = await rig.repo.pool.fetch("SELECT DISTINCT sends FROM agent_notification_recipient")
    assert [r["sends"] for r in sends] == [1]


# -- a frozen agent ----------------------------------------------------------------------
async def test_a_frozen_agent_causes_at_most_the_one_repeat(rig, database_url, tmp_path):
    """A real `wrktalk-agent run` is stopped (SIGSTOP) while alice's message waits for its
    answer. Another agent takes the notification over once the lease ran out: alice's
    send counts as an unknown outcome and is repeated once; bob and carol, recorded as
    delivered, are not. When the frozen agent resumes, it sends nothing more."""
    import os
    import signal
    import subprocess
    import sys

    release = threading.Event()
    server = Scripted()
    held: list[str] = []

    class Holding(Scripted):
        async def handle_DATA(self, srv: Any, session: Any, envelope: Any) -> str:
            if envelope.rcpt_tos == [ALICE] and not held:
                held.append(ALICE)
                await asyncio.get_running_loop().run_in_executor(None, release.wait, 60)
            return await server.handle_DATA(srv, session, envelope)

    rig.serve(Holding())
    s = rig.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRKTALK_AGENT_")}
    env.update(rig.smtp)
    env.update(
        {
            "WRKTALK_AGENT_DATABASE_URL": database_url,
            "WRKTALK_AGENT_AGENT_ID": "agent-frozen",
            "WRKTALK_AGENT_DEPLOYER": "script",
            "WRKTALK_AGENT_SCRIPT_WORKING_DIR": str(tmp_path / "script"),
            "WRKTALK_AGENT_MAINTENANCE_MODE_HANDLER": "none",
            "WRKTALK_AGENT_NOTIFIERS": "smtp",
            "WRKTALK_AGENT_WORK_DIR": str(tmp_path / "work-frozen"),
            "WRKTALK_AGENT_SMTP_TIMEOUT": "60",
            "WRKTALK_AGENT_LOG_FORMAT": "json",
            **{
                f"WRKTALK_AGENT_{name.upper()}": str(getattr(s, name))
                for name in (
                    "notify_timeout",
                    "notify_retry_min",
                    "notify_retry_max",
                    "heartbeat_interval",
                    "stale_after",
                    "stale_margin",
                    "poll_interval",
                )
            },
        }
    )
    log = tmp_path / "frozen.log"
    with open(log, "wb") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "wrktalk_agent.cli", "run"], env=env, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        async with asyncio.timeout(30):
            while not held or {
                s["state"] for r, s in (await rig.recipients()).items() if r != ALICE
            } != {"delivered"}:
                assert child.poll() is None, log.read_text()
                await asyncio.sleep(0.05)
        child.send_signal(signal.SIGSTOP)
        row = await rig.settled(await rig.deliverer("agent-b"))
        release.set()  # alice's first message is stored now; its 250 waits in the socket
        async with asyncio.timeout(10):
            while server.per_recipient().get(ALICE) != 2:
                await asyncio.sleep(0.05)
        child.send_signal(signal.SIGCONT)
        # time for the resumed agent to act on what it finds: several lease renewals
        await asyncio.sleep(s.heartbeat_interval * 4)
        assert child.poll() is None, log.read_text()
    finally:
        release.set()
        child.send_signal(signal.SIGCONT)
        child.terminate()
        child.wait(20)

    assert row["status"] == "delivered"
    # alice: the frozen agent's message (stored when released) plus the taker's repeat —
    # the one repeat allowed for an unknown outcome; bob and carol once
    assert server.per_recipient() == {ALICE: 1 + 1, BOB: 1, CAROL: 1}
    states = await rig.recipients()
    assert (states[ALICE]["state"], states[ALICE]["sends"]) == ("delivered", 2)
    assert (await rig.row())["status"] == "delivered"  # the resumed agent changed nothing
    assert "Traceback" not in log.read_text()


# -- db init -----------------------------------------------------------------------------
async def test_db_init_adds_recipient_states_to_an_older_outbox_once(repo):
    """A database whose outbox predates per-recipient states: `db init` adds the table and
    the lease token without touching promised notifications; a second run changes nothing."""
    task = await repo.create_task("deploy", (await add_release(repo, "1.0.0")).id)
    await repo.pool.execute(
        "DROP TABLE agent_notification_recipient;"
        " ALTER TABLE agent_notification DROP COLUMN lease_token"
    )
    event = notification_event("deploy_succeeded", task_id=task.id)
    await repo.pool.execute(
        "INSERT INTO agent_notification (task_id, notifier, event) VALUES ($1, 'smtp', $2)",
        task.id,
        event_json(event),
    )
    assert set(await repo.check_schema()) >= {
        "table agent_notification_recipient is missing",
        "column agent_notification.lease_token is missing",
    }

    assert await repo.init_schema() != []
    assert await repo.check_schema() == []
    assert await repo.init_schema() == []  # nothing missing: nothing applied
    assert await repo.pending_notifications() == 1
