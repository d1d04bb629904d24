"""The poll on its hot path: a claim when there is one, nothing written when there is not,
and the quarantine and the takeover still done (by their own statements) when it saw one."""

from __future__ import annotations

import uuid

from wrktalk_agent.db.models import PollResult
from wrktalk_agent.db.repository import Repository
from wrktalk_agent.testing import add_release

AGENT = "poller"


async def poll(repo: Repository, instance: uuid.UUID, *, seen_every: float = 60.0) -> PollResult:
    return await repo.poll(
        AGENT, 20.0, claim_token=uuid.uuid4(), instance_id=instance, seen_every=seen_every
    )


async def row_versions(repo: Repository) -> tuple[str, str]:
    """The transaction ids that last wrote the agent's row and the installation's row."""
    async with repo.pool.acquire() as conn:
        instance = await conn.fetchval(
            "SELECT xmin::text FROM agent_instance WHERE agent_id = $1", AGENT
        )
        config = await conn.fetchval("SELECT max(xmin::text) FROM deployment_config")
    return instance, config


async def test_an_idle_poll_writes_nothing_after_the_first(repo: Repository) -> None:
    instance = uuid.uuid4()
    await poll(repo, instance)  # the first poll records this process and the poll
    async with repo.pool.acquire() as conn:
        assert await conn.fetchval("SELECT max(last_agent_poll) FROM deployment_config")
    first = await row_versions(repo)
    for _ in range(5):
        result = await poll(repo, instance)
        assert result.claimed is None and result.rejected == []
    assert await row_versions(repo) == first


async def test_a_claim_is_recorded_and_so_is_its_end(repo: Repository) -> None:
    instance = uuid.uuid4()
    await poll(repo, instance)
    release = await add_release(repo, "1.0.0")
    task = await repo.create_task("deploy", release.id)
    claimed = (await poll(repo, instance)).claimed
    assert claimed is not None and claimed.id == task.id
    async with repo.pool.acquire() as conn:
        current = await conn.fetchval(
            "SELECT current_task_id FROM agent_instance WHERE agent_id = $1", AGENT
        )
        assert current == task.id
        await conn.execute("UPDATE agent_task SET status = 'completed' WHERE id = $1", task.id)
    await poll(repo, instance)  # nothing to claim, but the agent's row no longer names it
    async with repo.pool.acquire() as conn:
        assert (
            await conn.fetchval(
                "SELECT current_task_id FROM agent_instance WHERE agent_id = $1", AGENT
            )
            is None
        )


async def test_a_new_process_with_the_same_id_is_recorded_at_once(repo: Repository) -> None:
    await poll(repo, uuid.uuid4())
    later = uuid.uuid4()
    await poll(repo, later)
    async with repo.pool.acquire() as conn:
        recorded = await conn.fetchval(
            "SELECT instance_id FROM agent_instance WHERE agent_id = $1", AGENT
        )
    assert recorded == later


async def test_a_bad_row_is_rejected_and_the_good_one_behind_it_claimed(repo: Repository) -> None:
    instance = uuid.uuid4()
    release = await add_release(repo, "1.0.0")
    async with repo.pool.acquire() as conn:
        bad = await conn.fetchval(
            "INSERT INTO agent_task (type, release_artifact_id, execute_after)"
            " VALUES ('deploy', $1, '-infinity') RETURNING id",
            release.id,
        )
    good = await repo.create_task("deploy", release.id)
    result = await poll(repo, instance)
    assert result.claimed is not None and result.claimed.id == good.id
    [(rejected_id, error)] = result.rejected
    assert rejected_id == bad
    assert "execute_after '-infinity' is not a time the agent can wait for" in error


async def test_an_expired_lease_is_taken_over(repo: Repository) -> None:
    release = await add_release(repo, "1.0.0")
    task = await repo.create_task("deploy", release.id)
    async with repo.pool.acquire() as conn:
        await conn.execute(
            "UPDATE agent_task SET status = 'inProgress', claimed_by = 'gone',"
            " claim_token = gen_random_uuid(), lease_seconds = 20,"
            " picked_up_at = now() - interval '1 hour',"
            " last_heartbeat = now() - interval '1 hour' WHERE id = $1",
            task.id,
        )
    result = await poll(repo, uuid.uuid4())
    assert result.claimed is None
    assert result.taken_over is not None and result.taken_over.id == task.id
    assert result.taken_over.claimed_by == AGENT
    assert (result.taken_over.error_message or "").startswith("abandoned: agent gone")
